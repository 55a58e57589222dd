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

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from overlay import (
    BadMessage,
    ChannelClosed,
    Credentials,
    RpcClient,
    Unavailable,
    open_rpc,
)

from .admin import AdminError, admin_call
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


class Client:
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
        try:
            async with open_rpc(host, port, identity.creds, expect_id=node_id) as rpc:
                yield cls(rpc, identity, address)
        except (OSError, trio.TooSlowError, ChannelClosed) as exc:
            raise Unavailable(f"cannot reach the node at {address}: "
                              f"{getattr(exc, 'strerror', None) or exc or 'timed out'}"
                              ) from None
        except BadMessage as exc:
            code = getattr(exc, "code", None)
            if code is None:
                raise Unavailable(f"the node at {address} spoke garbage: {exc}") from None
            raise

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
