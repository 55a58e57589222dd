"""The Python client: reach any node of a grid over the secure channel.

::

    import trio
    from node.client import Client

    async def main():
        async with Client.connect(via="192.0.2.10:7400") as grid:
            print(await grid.whoami())
            print(await grid.ping())

    trio.run(main)

Who you are comes from the user dir (``user_dir``, ``$GRIDNODE_USER_DIR``,
``~/.config/gridnode``): the user certificate of the grid picked by
``grid`` (an id prefix or a name), by ``data_dir``'s grid, or the only one
there.  With ``data_dir`` and no user certificate for its grid, the client
speaks as that node (whoever can read its key is its admin).  Without
``via``, it connects to the node running on ``data_dir``.

Errors are ``overlay.RpcError`` (``.code`` names the reason:
``unavailable``, ``timeout``, ``forbidden``, ``not_found`` ...),
``overlay.HandshakeRefused`` when the node will not talk to us, and
``node.errors.UserError`` when local files are missing.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from overlay import (
    BadMessage,
    ChannelClosed,
    Credentials,
    RpcClient,
    RpcError,
    Unavailable,
    open_rpc,
)
from steering import FINAL, JobRecord, JobSpec, SignedJob

from .admin import AdminError, admin_call
from .client_data import DataClient
from .config import parse_hostport
from .datadir import DataDir
from .errors import UserError
from .userdir import UserDir, default_user_dir


@dataclass(frozen=True)
class Identity:
    creds: Credentials
    source: str  # "user alice (USER_DIR/...)" or "node of DATA_DIR"


def resolve_identity(*, user_dir: Path | None = None, grid: str | None = None,
                     data_dir: Path | None = None) -> Identity:
    """Pick the credentials to speak with (see the module doc)."""
    ud = UserDir(user_dir or default_user_dir())
    dd = DataDir(data_dir) if data_dir is not None else None
    grid_id = dd.load_grid().grid_id if dd is not None and dd.grid_info.exists() else None
    try:
        membership, info = ud.pick(grid, grid_id=grid_id)
        if membership.user_cert.exists() or dd is None:
            key = membership.load_key()
            cert = membership.load_cert(key, info)
            return Identity(Credentials(key, cert, info),
                            f"user {cert.name} ({membership.root})")
    except UserError:
        if dd is None or grid is not None:
            raise
    assert dd is not None
    key = dd.load_key()
    info = dd.load_grid()
    cert = dd.load_cert(key, info)
    return Identity(Credentials(key, cert, info), f"node {key.id.hex()} of {dd.root}")


def node_address(data_dir: Path) -> tuple[str, int]:
    """Where the node running on ``data_dir`` listens (asked on its admin socket)."""
    dd = DataDir(data_dir)
    dd.require_initialised()
    try:
        status = admin_call(dd.admin_socket, "status")
    except AdminError as exc:
        raise UserError(str(exc)) from None
    for text in status.get("addresses", []):
        host, port = parse_hostport(text, "address")
        return ("127.0.0.1" if host == "0.0.0.0" else "::1" if host == "::" else host), port
    raise UserError(f"the node of {dd.root} advertises no address; use --via HOST:PORT")


class Client(DataClient):
    """Calls to one node of the grid (and through it, to the others)."""

    def __init__(self, rpc: RpcClient, identity: Identity, address: str) -> None:
        self.rpc = rpc
        self.identity = identity
        self.address = address
        self.node = rpc.peer  # the certificate of the node we reached

    @classmethod
    @asynccontextmanager
    async def connect(cls, via: str | None = None, *, data_dir: Path | None = None,
                      user_dir: Path | None = None, grid: str | None = None,
                      node_id: bytes | None = None) -> AsyncIterator[Client]:
        identity = resolve_identity(user_dir=user_dir, grid=grid, data_dir=data_dir)
        if via is not None:
            host, port = parse_hostport(via, "--via")
        else:
            if data_dir is None:
                raise UserError("say which node to reach: --via HOST:PORT or --data-dir")
            host, port = await trio.to_thread.run_sync(node_address, data_dir)
        address = f"{host}:{port}"
        async with AsyncExitStack() as stack:
            try:  # only the connection's errors: the caller's own pass through untouched
                rpc = await stack.enter_async_context(
                    open_rpc(host, port, identity.creds, expect_id=node_id))
            except (OSError, trio.TooSlowError, ChannelClosed) as exc:
                raise Unavailable(f"cannot reach the node at {address}: "
                                  f"{getattr(exc, 'strerror', None) or exc or 'timed out'}"
                                  ) from None
            except BadMessage as exc:
                if getattr(exc, "code", None) is None:
                    raise Unavailable(f"the node at {address} spoke garbage: {exc}") from None
                raise  # HandshakeRefused: the node will not talk to us, and says why
            yield cls(rpc, identity, address)

    async def call(self, method: str, args: Any = None, *,
                   timeout: float | None = None) -> Any:  # noqa: ASYNC109 (per-call timeout)
        return await self.rpc.call(method, args, timeout=timeout)

    async def ping(self, node_id: bytes | None = None) -> dict[str, Any]:
        """Round trip to the node, or through it to ``node_id`` (found via the DHT)."""
        start = time.monotonic()
        answer = await self.call("ping", None if node_id is None else {"target": node_id})
        answer["total_ms"] = (time.monotonic() - start) * 1000
        return dict(answer)

    async def whoami(self) -> dict[str, Any]:
        return dict(await self.call("whoami"))

    async def status(self) -> dict[str, Any]:
        return dict(await self.call("status"))

    async def peers(self) -> list[dict[str, Any]]:
        return list(await self.call("peers"))

    async def health(self) -> dict[str, Any]:
        """Every node's state (ok, congested, failing) with its evidence."""
        return dict(await self.call("health"))

    # -- jobs ----------------------------------------------------------------

    def sign(self, spec: JobSpec) -> SignedJob:
        creds = self.identity.creds
        if creds.cert.kind != "user":
            raise UserError("submitting jobs needs a user certificate; this client speaks as "
                            "a node (run 'gridnode user init' and have it admitted)")
        return SignedJob.create(creds.key, creds.cert, spec, int(time.time()), os.urandom(8))

    async def submit(self, specs: list[JobSpec]) -> list[bytes]:
        """Sign and submit jobs; their ids once a majority of each home set has them."""
        ids: list[bytes] = []
        jobs = [self.sign(s) for s in specs]
        for i in range(0, len(jobs), 500):
            batch = jobs[i:i + 500]
            answer = await self.call("job.submit", {"jobs": [j.raw for j in batch]},
                                     timeout=120)
            errors = answer.get("errors") or {}
            if errors:
                job_id, why = next(iter(errors.items()))
                raise RpcError("not_stored", f"{len(errors)} of {len(batch)} jobs were not "
                               f"stored (job {job_id.hex()}: {why}); {len(ids)} were")
            ids += answer["ids"]
        return ids

    def _record(self, wire: Any) -> JobRecord:
        try:
            return JobRecord.from_wire_untrusted(wire, self.identity.creds.grid)
        except BadMessage as exc:
            raise RpcError("bad_reply", f"the node sent a bad job record: {exc}") from None

    async def job(self, job_id: bytes) -> JobRecord:
        return self._record(await self.call("job.get", {"job": job_id}, timeout=30))

    async def explain(self, job_id: bytes) -> dict[str, Any]:
        """Where the job went and why, attempt by attempt (``gridnode explain``)."""
        from .explain import explain_view

        return explain_view(await self.job(job_id))

    async def jobs(self, *, state: str | None = None, user: str | None = None,
                   task: str | None = None, limit: int = 1000) -> list[JobRecord]:
        query: dict[str, Any] = {"limit": limit}
        for k, v in (("state", state), ("user", user), ("task", task)):
            if v is not None:
                query[k] = v
        return [self._record(w) for w in await self.call("job.list", query, timeout=60)]

    async def resolve(self, ident: bytes) -> list[JobRecord]:
        """A job id, or a task id: the records it names (not_found otherwise)."""
        try:
            return [await self.job(ident)]
        except RpcError as exc:
            if exc.code != "not_found":
                raise
        records = await self.jobs(task=ident.hex(), limit=100_000)
        if not records:
            raise RpcError("not_found", f"no job or task {ident.hex()} in this grid")
        return records

    async def cancel(self, job_id: bytes) -> str:
        return str(await self.call("job.cancel", {"job": job_id}, timeout=60))

    async def wait(self, ident: bytes, *, poll: float = 0.5) -> list[JobRecord]:
        """Wait until every job of ``ident`` (a job or a task) is final.

        A task is watched by asking for its jobs that are not final yet (a
        listing is capped in size, so never "all jobs, then check")."""
        records = await self.resolve(ident)
        while True:
            if len(records) == 1 and records[0].job_id == ident:
                if records[0].state in FINAL:
                    return records
            else:
                pending = False
                for state in ("defined", "activated", "running", "transferring"):
                    if await self.jobs(task=ident.hex(), state=state, limit=1):
                        pending = True
                        break
                if not pending:
                    return await self.jobs(task=ident.hex(), limit=100_000)
            await trio.sleep(poll)
            poll = min(poll * 1.5, 5.0)
            if len(records) == 1 and records[0].job_id == ident:
                records = [await self.job(ident)]

    @asynccontextmanager
    async def logs(self, job_id: bytes, *, stream: str = "stdout", follow: bool = False,
                   attempt: int = 0) -> AsyncIterator[AsyncIterator[bytes]]:
        async with self.rpc.stream("job.logs", {"job": job_id, "stream": stream,
                                                "follow": follow, "attempt": attempt}) as items:
            yield items
