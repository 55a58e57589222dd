"""The node's side of datasets: its chunk store, uploads, the catalog, replicas.

- uploads: a user's client sends the chunks of its files in pieces
  (``data.upload``; an interrupted upload resumes where it stopped), then the
  signed dataset record (``dataset.put``): the node checks that it holds
  every chunk, stores the record on a majority of the dataset's catalog
  nodes, holds the replica and announces it, and only then answers;
- replicas: a node that holds every file of a dataset version keeps it in
  its ``holdings`` and announces itself in the dataset's DHT provider set,
  refreshed every ``storage.announce_interval``; after a put, the node asks
  storage nodes to pull copies until the policy's minimum is reached;
- reads: ``dataset.read`` streams a file to a client, fetching the chunks
  this node lacks from the holders first (``replication.transfer``).
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from overlay import (
    BadMessage,
    CallContext,
    Method,
    RpcClient,
    RpcError,
    SignedRecord,
    bad_request,
    packb,
    provider_key,
)
from overlay import unpackb_untrusted as unpack
from replication import (
    CHUNK_SIZE,
    CatalogClient,
    CatalogError,
    CatalogNode,
    ChunkError,
    ChunkStore,
    DatasetName,
    DatasetNameError,
    DatasetRecord,
    Fetcher,
    FetchError,
    FileManifest,
    ManifestError,
    QuotaExceeded,
    catalog_key,
    catalog_methods,
    chunk_hash,
    chunk_methods,
    may_write_scope,
    parse_dataset_name,
    write_file,
)
from steering import MAX_OUTPUTS

from .executor import StageInError, StageOutError
from .logs import log
from .outputs import OutputView, task_of
from .replicas import ReplicaService
from .sources import fetch_from

if TYPE_CHECKING:
    from .daemon import Node

logger = logging.getLogger("gridnode.data")

# Bytes of one upload piece and of one streamed piece of a file (frame cap 1 MiB).
PIECE = 512 * 1024
PULL_TIMEOUT = 3600.0
# Bytes of records in one listing answer (the frame cap is 1 MiB).
LIST_BUDGET = 768 * 1024


class DataService:
    """Chunk store, catalog and replicas of one node."""

    def __init__(self, node: Node) -> None:
        self.node = node
        cfg = node.cfg.storage
        root = node.datadir.root
        self.store = ChunkStore(root / "chunks", quota_bytes=int(cfg.quota_gb * 1e9))
        self.uploads = root / "uploads"
        self.counters: Counter[str] = Counter()
        self.catalog_node = (CatalogNode(node.grid, node.state, self._revoked)
                             if "catalog" in node.roles else None)
        self.catalog = CatalogClient(node.grid, node.pool, node.key.id, self._catalog_nodes,
                                     self.catalog_node, r=cfg.catalog_replicas,
                                     revoked=self._revoked)
        self.fetcher = Fetcher(self.store, self._open_client)
        self.holdings: dict[str, DatasetRecord] = {}
        self._fetching: dict[str, trio.Event] = {}
        # Dataset -> [started (trio clock), bytes done, bytes to fetch] while it is fetched.
        self.fetch_progress: dict[str, list[float]] = {}
        self._readers: dict[str, int] = {}  # reads in progress per dataset
        self._reading: dict[str, DatasetRecord] = {}
        self._nursery: trio.Nursery | None = None
        self.replicas = ReplicaService(node, self)

    def _revoked(self) -> frozenset[bytes]:
        return self.node.revocations.revoked

    # -- peers -------------------------------------------------------------

    def _addresses(self, role: str) -> dict[bytes, tuple[str, int]]:
        return self.node.role_addresses(role)

    def _catalog_nodes(self) -> dict[bytes, tuple[str, int]]:
        return self._addresses("catalog")

    def storage_nodes(self) -> dict[bytes, tuple[str, int]]:
        return self._addresses("storage")

    async def _open_client(self, holder: bytes) -> RpcClient:
        address = self._addresses("storage").get(holder)
        if address is None:
            raise RpcError("unavailable", f"holder {holder.hex()} has no known address")
        return await self.node.pool.client(*address, expect_id=holder)

    # -- lifecycle -----------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        await trio.to_thread.run_sync(_clear_uploads, self.uploads)
        if self.catalog_node is not None:
            await self.catalog_node.load()
        for name, _, raw, _ in await self.node.state.load_holdings():
            try:
                rec = DatasetRecord.from_bytes_untrusted(raw, self.node.grid)
            except BadMessage as exc:
                log(logger, "holding.unreadable", logging.ERROR, dataset=name, reason=str(exc))
                continue
            self.holdings[name] = rec
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._announce_loop)
            await nursery.start(self.replicas.run)
            task_status.started()

    async def _announce_loop(self) -> None:
        interval = self.node.cfg.storage.announce_interval
        while True:
            for rec in list(self.holdings.values()):
                await self.announce(rec)
            await trio.sleep(interval)

    async def announce(self, rec: DatasetRecord, flag: str | None = None) -> None:
        """Put this node in the dataset's provider set; ``flag`` "gone" takes it out,
        and a replica announced as leaving says so (it serves reads, counts for none)."""
        now = time.time()
        seq = max(int(now * 1000), self.counters["announce_seq"] + 1)
        self.counters["announce_seq"] = seq
        record = SignedRecord.create(
            self.node.key, self.node.cert, key=provider_key("dataset", str(rec.name)),
            kind="provider", seq=seq, expires=int(now) + self.node.cfg.record_ttl,
            value=packb([rec.version, flag or ("leaving" if str(rec.name) in
                                               self.replicas.leaving else "held")]))
        try:
            await self.node.dht.put(record)
        except Exception as exc:  # the next round tries again
            log(logger, "replica.announce_failed", logging.WARNING, dataset=rec.name,
                reason=repr(exc))

    # -- replicas ------------------------------------------------------------

    async def holder_views(self, name: DatasetName) -> dict[bytes, tuple[int, float, bool]]:
        """Holders of a dataset from its DHT provider set: node id -> (version held,
        when it last announced, leaving); nodes that announced "gone" are left out."""
        out: dict[bytes, tuple[int, float, bool]] = {}
        storage = self._addresses("storage")
        newest: dict[bytes, int] = {}
        for rec in await self.node.dht.get(provider_key("dataset", str(name))):
            if (rec.kind != "provider" or rec.signer not in storage
                    or rec.seq <= newest.get(rec.signer, -1)):
                continue
            try:
                value = unpack(rec.value)
                version, flag = value[0], (value[1] if len(value) > 1 else "held")
                if type(version) is not int or flag not in ("held", "leaving", "gone"):
                    raise BadMessage("version")
            except (BadMessage, TypeError, IndexError, KeyError):
                continue
            newest[rec.signer] = rec.seq
            out[rec.signer] = (version, rec.seq / 1000, flag == "leaving")
            if flag == "gone":
                del out[rec.signer]
        mine = self.holdings.get(str(name))
        out.pop(self.node.key.id, None)
        if mine is not None:
            out[self.node.key.id] = (mine.version, time.time(),
                                     str(name) in self.replicas.leaving)
        return out

    async def holders(self, name: DatasetName) -> dict[bytes, int]:
        """Live holders of a dataset (node id -> version they hold), from the DHT."""
        return {n: v for n, (v, _, _) in (await self.holder_views(name)).items()}

    async def hold(self, rec: DatasetRecord, reason: str) -> None:
        """Every file of ``rec`` is here: keep it, announce it."""
        name = str(rec.name)
        old = self.holdings.get(name)
        if old is not None and old.version >= rec.version:
            return
        await self.node.state.save_holding(name, rec.version, rec.raw, time.time())
        self.holdings[name] = rec
        self.counters["replicas_added"] += 1
        log(logger, "replica.held", dataset=name, version=rec.version, files=len(rec.files),
            bytes=rec.size, reason=reason)
        await self.announce(rec)

    async def drop(self, rec: DatasetRecord, reason: str) -> int:
        """Stop holding ``rec``: out of the holdings and the provider set, then its
        chunks that no other replica here and no job output needs; bytes freed."""
        name = str(rec.name)
        await self.node.state.remove_holding(name)
        del self.holdings[name]
        await self.announce(rec, "gone")
        keep = {h for r in self.holdings.values() for m in r.files for h in m.chunks}
        keep |= await self.node.state.output_chunks()
        doomed = {h for m in rec.files for h in m.chunks} - keep
        freed = await trio.to_thread.run_sync(_delete_chunks, self.store, doomed)
        self.counters["replicas_dropped"] += 1
        log(logger, "replica.dropped", dataset=name, version=rec.version, chunks=len(doomed),
            bytes=freed, reason=reason)
        return freed

    async def missing(self, rec: DatasetRecord, files: list[str] | None = None) -> list[bytes]:
        """The chunks of these files (default: all) that are not in the store."""
        wanted = [m for m in rec.files if files is None or m.name in files]
        hashes = list(dict.fromkeys(h for m in wanted for h in m.chunks))
        have = await trio.to_thread.run_sync(lambda: [self.store.has(h) for h in hashes])
        return [h for h, ok in zip(hashes, have, strict=True) if not ok]

    async def ensure_local(self, rec: DatasetRecord, files: list[str] | None = None,
                           why: str = "read", hold: bool = True) -> int:
        """Fetch what this node lacks of ``rec`` (or of some files) from its holders;
        the bytes fetched. With ``hold``, the whole dataset here makes this node a
        holder; without, what was fetched is scratch for one read (:meth:`reading`)."""
        name = str(rec.name)
        while name in self._fetching:  # one fetch of a dataset at a time
            await self._fetching[name].wait()
        self._fetching[name] = done = trio.Event()
        try:
            need = await self.missing(rec, files)
            fetched = 0
            if need:
                known = {h: v for h, v in (await self.holders(rec.name)).items()
                         if h != self.node.key.id}
                # Holders of this version have every file; older ones only the first.
                holders = ([h for h, v in known.items() if v >= rec.version]
                           or list(known))
                if not holders:
                    raise RpcError("unavailable", f"no live node holds dataset {name}")
                log(logger, "transfer.started", dataset=name, chunks=len(need),
                    holders=len(holders), reason=why)
                progress = self.fetch_progress[name] = [trio.current_time(), 0.0, 0.0]

                def landed(done: int, total: int) -> None:
                    progress[1:] = [float(done), float(total)]

                try:
                    stats = await fetch_from(self, need, holders, name, landed,
                                             self.node.monitor.transferred)
                except FetchError as exc:
                    self.node.monitor.transferred(exc.stats)
                    self.counters["transfers_failed"] += 1
                    log(logger, "transfer.failed", logging.WARNING, dataset=name,
                        reason=str(exc))
                    raise RpcError("transfer_failed", f"dataset {name}: {exc}") from None
                except QuotaExceeded as exc:
                    raise RpcError("quota", f"dataset {name} does not fit this node's "
                                   f"storage quota: {exc}") from None
                self.node.monitor.transferred(stats)
                fetched = stats.bytes_fetched
                self.counters["transfers"] += 1
                self.counters["bytes_fetched"] += fetched
                log(logger, "transfer.done", dataset=name, chunks=stats.chunks_fetched,
                    bytes=fetched, seconds=round(stats.seconds, 3), reason=why)
            if hold and (files is None or not await self.missing(rec)):
                await self.hold(rec, f"all files here after a {why}")
            return fetched
        finally:
            del self._fetching[name]
            self.fetch_progress.pop(name, None)
            done.set()

    def begin_read(self, rec: DatasetRecord) -> bool:
        """A read of ``rec`` starts here; whether this node holds it (then what the read
        fetches updates the replica; otherwise it is scratch, removed by the last
        reader: only the custodian's decisions add replicas)."""
        name = str(rec.name)
        self._readers[name] = self._readers.get(name, 0) + 1
        self._reading[name] = rec
        return name in self.holdings

    def end_read(self, rec: DatasetRecord) -> None:
        name = str(rec.name)
        self._readers[name] -= 1
        if self._readers[name]:
            return
        del self._readers[name], self._reading[name]
        if name not in self.holdings and self._nursery is not None:
            self._nursery.start_soon(self._clear_scratch, rec)

    async def _clear_scratch(self, rec: DatasetRecord) -> None:
        name = str(rec.name)
        if name in self.holdings or name in self._readers or name in self._fetching:
            return
        keep = {h for r in (*self.holdings.values(), *self._reading.values())
                for m in r.files for h in m.chunks}
        keep |= await self.node.state.output_chunks()
        doomed = {h for m in rec.files for h in m.chunks} - keep
        freed = await trio.to_thread.run_sync(_delete_chunks, self.store, doomed)
        if freed:
            self.counters["scratch_bytes_freed"] += freed
            log(logger, "scratch.cleared", dataset=name, chunks=len(doomed), bytes=freed,
                reason="read done; this node holds no replica of it")

    async def replicate_to_min(self, rec: DatasetRecord) -> int:
        """Ask storage nodes to pull copies until the policy's minimum holds them."""
        holders = await self.holders(rec.name)
        need = rec.policy.min_replicas - len(holders)
        if need <= 0:
            return 0
        key = catalog_key(rec.name)
        candidates = sorted((n for n in self._addresses("storage") if n not in holders),
                            key=lambda n: int.from_bytes(n, "big") ^ int.from_bytes(key, "big"))
        added = 0
        for node_id in candidates:
            if added >= need:
                break
            try:
                client = await self._open_client(node_id)
                answer = await client.call("dataset.pull", {"name": str(rec.name),
                                                            "version": rec.version},
                                           timeout=PULL_TIMEOUT)
            except RpcError as exc:
                log(logger, "replica.pull_refused", logging.WARNING, dataset=rec.name,
                    node=node_id, reason=str(exc))
                continue
            if answer == "held":
                added += 1
                self.counters["replicas_requested"] += 1
                log(logger, "replica.requested", dataset=rec.name, node=node_id,
                    reason=f"below the minimum of {rec.policy.min_replicas} replicas")
        if added < need:
            log(logger, "replica.below_minimum", logging.WARNING, dataset=rec.name,
                holders=len(holders) + added, minimum=rec.policy.min_replicas,
                reason="not enough storage nodes took a copy")
        return added

    async def collect_outputs(self, patterns: tuple[str, ...], sandbox: Path,
                              prefix: str) -> list[Any]:
        """The files of a finished job's sandbox that match its output patterns, into the
        chunk store; their manifests (wire form), named ``PREFIX/PATH``."""
        try:
            manifests = await trio.to_thread.run_sync(_collect, self.store, patterns, sandbox,
                                                      prefix)
        except (QuotaExceeded, ChunkError, ManifestError, OSError) as exc:
            self.counters["stage_outs_failed"] += 1
            raise StageOutError(f"outputs: {exc}") from None
        self.counters["output_files"] += len(manifests)
        await self.node.state.pin_output_chunks({h for m in manifests for h in m.chunks})
        return [m.to_wire() for m in manifests]

    async def check_inputs(self, inputs: tuple[str, ...], user: str) -> tuple[str, str]:
        """Are a job's input datasets ready: ("ready" | "waiting" | "missing", why)."""
        for text in inputs:
            try:
                name = parse_dataset_name(text, user)
                rec = await self.catalog.get(name)
            except DatasetNameError as exc:
                return "missing", f"input {text!r}: {exc}"
            except CatalogError as exc:
                return "waiting", f"input {text}: {exc}"
            if rec is None:
                return "missing", f"input dataset {name} is not in the catalog"
            if not await self.holders(name):
                return "waiting", f"no live node holds input dataset {name}"
        return "ready", "its input datasets are in the grid"

    async def stage_in(self, inputs: tuple[str, ...], user: str, job: str,
                       sandbox: Path) -> None:
        """Put every file of the job's input datasets under ``sandbox/inputs/SCOPE/NAME``:
        hard links to the chunk store where a file is one chunk, a copy otherwise;
        what this node lacks is fetched from the holders first."""
        for text in inputs:
            try:
                name = parse_dataset_name(text, user)
                rec = await self.record(name)
                self.counters["stage_ins"] += 1
                self.replicas.read(str(rec.name), "stage_in")
                held = self.begin_read(rec)
                try:
                    await self.ensure_local(rec, why=f"stage-in of job {job[:12]}", hold=held)
                    dest = sandbox / "inputs" / name.scope / name.name
                    await trio.to_thread.run_sync(_place_files, self.store, rec, dest)
                finally:
                    self.end_read(rec)
            except (DatasetNameError, RpcError, ChunkError, ManifestError, OSError) as exc:
                self.counters["stage_ins_failed"] += 1
                raise StageInError(f"input {text}: {exc}") from None

    def statistics(self) -> dict[str, Any]:
        return {**self.store.statistics(), **{k: v for k, v in self.counters.items()
                                              if k != "announce_seq"},
                "datasets_held": len(self.holdings),
                "catalog": self.catalog_node.statistics() if self.catalog_node else {}}

    # -- RPC -----------------------------------------------------------------

    def methods(self) -> dict[str, Method]:
        table = {
            **chunk_methods(self.store, self.counters),
            **self.replicas.methods(),
            "data.upload": Method(self._upload, access="user"),
            "dataset.put": Method(self._put, access="user"),
            "dataset.get": Method(self._get),
            "dataset.list": Method(self._list),
            "dataset.replicas": Method(self._replicas),
            "dataset.read": Method(self._read, streaming=True),
            "dataset.pull": Method(self._pull, access="node"),
        }
        if self.catalog_node is not None:
            table.update(catalog_methods(self.catalog_node))
        return table

    def _name(self, args: Any, ctx: CallContext) -> DatasetName:
        if not (isinstance(args, dict) and isinstance(args.get("name"), str)):
            raise bad_request("expected {name: 'scope:name'}")
        try:
            return parse_dataset_name(args["name"], ctx.peer.name)
        except DatasetNameError as exc:
            raise bad_request(str(exc)) from None

    async def record(self, name: DatasetName) -> DatasetRecord:
        try:
            rec = await self.catalog.get(name)
        except CatalogError as exc:
            raise RpcError("unavailable", str(exc)) from None
        if rec is None:
            raise RpcError("not_found", f"no dataset {name} in this grid")
        return rec

    async def _upload(self, ctx: CallContext, args: Any) -> dict[str, Any]:
        if not (isinstance(args, dict) and isinstance(args.get("hash"), bytes)
                and len(args["hash"]) == 32 and type(args.get("size")) is int
                and type(args.get("offset")) is int and isinstance(args.get("data"), bytes)):
            raise bad_request("upload takes {hash, size, offset, data}")
        h, size, offset, data = args["hash"], args["size"], args["offset"], args["data"]
        if not (0 < size <= CHUNK_SIZE and 0 <= offset and offset + len(data) <= size
                and len(data) <= PIECE):
            raise bad_request(f"a piece is at most {PIECE} bytes of a chunk of at most "
                              f"{CHUNK_SIZE} bytes")
        try:
            done, at = await trio.to_thread.run_sync(
                _take_piece, self.store, self.uploads, h, size, offset, data)
        except QuotaExceeded as exc:
            raise RpcError("quota", f"this node's storage quota is full: {exc}") from None
        except ChunkError as exc:
            self.counters["uploads_refused"] += 1
            raise RpcError("bad_chunk", str(exc)) from None
        if done:
            self.counters["chunks_uploaded"] += 1
        return {"stored": done, "offset": at}

    async def _put(self, ctx: CallContext, args: Any) -> dict[str, Any]:
        if not (isinstance(args, dict) and isinstance(args.get("record"), bytes)):
            raise bad_request("put takes {record}")
        try:
            rec = DatasetRecord.from_bytes_untrusted(args["record"], self.node.grid,
                                                     now=time.time(), revoked=self._revoked())
        except BadMessage as exc:
            raise bad_request(f"bad dataset record: {exc}") from None
        if rec.owner_id != ctx.peer_id and not may_write_scope(ctx.peer, rec.name.scope):
            raise RpcError("forbidden", f"{ctx.peer.name} may not put dataset {rec.name}")
        missing = await self.missing(rec)
        if missing:
            raise RpcError("missing_chunks", f"{len(missing)} chunks of dataset {rec.name} "
                           f"are not on this node; upload them first")
        try:
            copies = await self.catalog.put(rec)
        except CatalogError as exc:
            raise RpcError("not_stored", str(exc)) from None
        await self.hold(rec, f"put by {ctx.peer.name}")
        log(logger, "dataset.put", dataset=rec.name, version=rec.version, files=len(rec.files),
            bytes=rec.size, closed=rec.closed, catalog_copies=copies,
            reason=f"put by {ctx.peer.name}")
        if self._nursery is not None:
            self._nursery.start_soon(self._replicate_quietly, rec)
        return {"name": str(rec.name), "version": rec.version, "catalog_copies": copies}

    async def _replicate_quietly(self, rec: DatasetRecord) -> None:
        try:
            await self.replicate_to_min(rec)
        except Exception as exc:  # the replication issue's repair loop retries
            log(logger, "replica.failed", logging.WARNING, dataset=rec.name, reason=repr(exc))

    async def output_view(self, name: DatasetName) -> OutputView | None:
        """``USER:TASK.out`` from the task's job records (node.outputs), or None."""
        task = task_of(name)
        if task is None:
            return None
        records = await self.node.job_service.list_jobs(task=task, limit=100_000)
        view = OutputView.of_records(name, records)
        if view.version == 0 and not view.closed and not any(
                r.job.user.name == name.scope for r in records):
            raise RpcError("not_found", f"no task {task} of {name.scope} in this grid")
        return view

    async def _get(self, ctx: CallContext, args: Any) -> bytes | dict[str, Any]:
        name = self._name(args, ctx)
        view = await self.output_view(name)
        if view is not None:
            return view.to_wire()
        return (await self.record(name)).raw

    async def _list(self, ctx: CallContext, args: Any) -> dict[str, Any]:
        if not isinstance(args, dict):
            raise bad_request("list takes {scope, limit}")
        scope, limit = args.get("scope"), args.get("limit", 1000)
        if not ((scope is None or isinstance(scope, str)) and type(limit) is int
                and 0 < limit <= 10_000):
            raise bad_request("scope must be a string and limit 1-10000")
        try:
            records = await self.catalog.list(scope=scope, limit=limit)
        except CatalogError as exc:
            raise RpcError("unavailable", str(exc)) from None
        out: list[bytes] = []
        size = 0
        for r in records:  # the answer must fit one frame
            size += len(r.raw) + 16
            if size > LIST_BUDGET:
                return {"records": out, "complete": False}
            out.append(r.raw)
        return {"records": out, "complete": True}

    async def _replicas(self, ctx: CallContext, args: Any) -> dict[str, Any]:
        name = self._name(args, ctx)
        view = await self.output_view(name)
        if view is not None:
            nodes = sorted(set(view.holders.values()))
            return {"name": str(name), "version": view.version, "min_replicas": 1,
                    "max_replicas": 1, "holders": [
                        {"id": h.hex(), "version": view.version, "complete": False,
                         "site": self.node.peers[h].site if h in self.node.peers
                         else self.node.cert.name} for h in nodes]}
        rec = await self.record(name)
        holders = await self.holders(rec.name)
        peers = self.node.peers
        return {"name": str(rec.name), "version": rec.version,
                "min_replicas": rec.policy.min_replicas,
                "max_replicas": rec.policy.max_replicas,
                "holders": [{"id": h.hex(), "version": v,
                             "site": peers[h].site if h in peers else self.node.cert.name,
                             "complete": v >= rec.version} for h, v in sorted(holders.items())]}

    async def _read(self, ctx: CallContext, args: Any) -> AsyncIterator[bytes]:
        name = self._name(args, ctx)
        file_name = args.get("file")
        if not isinstance(file_name, str):
            raise bad_request("read takes {name, file}")
        view = await self.output_view(name)
        rec: DatasetRecord | OutputView = view if view is not None else await self.record(name)
        manifest = rec.file(file_name)
        if manifest is None:
            raise RpcError("not_found", f"dataset {name} has no file {file_name!r}")
        self.counters["dataset_reads"] += 1
        if not isinstance(rec, OutputView):
            self.replicas.read(str(rec.name), "get")

        async def fetch(why: str) -> None:
            if isinstance(rec, OutputView):
                await self._fetch_output(rec, manifest, why)
            else:
                await self.ensure_local(rec, [file_name], why=why, hold=held)

        held = isinstance(rec, OutputView) or self.begin_read(rec)
        try:
            await fetch(f"read by {ctx.peer.name}")
            for h in manifest.chunks:
                try:
                    data = await trio.to_thread.run_sync(self.store.get, h)
                except ChunkError as exc:  # corrupt on disk: quarantined; fetch it again
                    log(logger, "chunk.refetch", logging.WARNING, chunk=h, reason=str(exc))
                    await fetch("a chunk was corrupt on disk")
                    data = await trio.to_thread.run_sync(self.store.get, h)
                for i in range(0, len(data), PIECE):
                    yield data[i:i + PIECE]
        finally:
            if isinstance(rec, DatasetRecord):
                self.end_read(rec)

    async def _fetch_output(self, view: OutputView, m: FileManifest, why: str) -> None:
        """The chunks of one output file this node lacks, from the node that made it."""
        have = await trio.to_thread.run_sync(lambda: [self.store.has(h) for h in m.chunks])
        need = [h for h, ok in zip(m.chunks, have, strict=True) if not ok]
        holder = view.holders.get(m.name)
        if not need:
            return
        if holder is None or holder == self.node.key.id:
            raise RpcError("unavailable", f"output file {m.name} of {view.name} is gone")
        try:
            stats = await self.fetcher.fetch(need, [holder])
        except FetchError as exc:
            raise RpcError("transfer_failed", f"{view.name}/{m.name}: {exc}") from None
        self.counters["transfers"] += 1
        self.counters["bytes_fetched"] += stats.bytes_fetched
        log(logger, "transfer.done", dataset=view.name, file=m.name, bytes=stats.bytes_fetched,
            reason=why)

    async def _pull(self, ctx: CallContext, args: Any) -> str:
        return await self.pull(str(self._name(args, ctx)),
                               f"replica asked for by {ctx.peer_id.hex()[:12]}")

    async def pull(self, name: str, why: str) -> str:
        """Take a replica: at most ``replication.max_pulls`` at once, and their bytes
        admitted by the node's replication token bucket."""
        rec = await self.record(parse_dataset_name(name, ""))
        if name in self.holdings and self.holdings[name].version >= rec.version:
            return "held"
        async with self.replicas.pulls:
            need = len(await self.missing(rec)) * CHUNK_SIZE
            limit = self.replicas.rate
            if limit is not None and need:
                await trio.sleep(limit.take(min(need, rec.size), trio.current_time()))
            await self.ensure_local(rec, why=why)
        return "held"


def _collect(store: ChunkStore, patterns: tuple[str, ...], sandbox: Path,
             prefix: str) -> list[FileManifest]:
    """Regular files under the sandbox matching the patterns (not the staged inputs,
    not links leading out), each once, in name order."""
    root = sandbox.resolve()
    found: dict[str, Path] = {}
    for pattern in patterns:
        for path in sandbox.glob(pattern):
            if path.is_symlink() or not path.is_file():
                continue
            rel = path.relative_to(sandbox).as_posix()
            if rel.startswith("inputs/") or rel in ("stdout", "stderr"):
                continue
            if not path.resolve().is_relative_to(root):
                continue
            found[rel] = path
    if len(found) > MAX_OUTPUTS:
        raise StageOutError(f"{len(found)} files match the output patterns; "
                            f"at most {MAX_OUTPUTS}")
    return [FileManifest.of_file(path, f"{prefix}/{rel}", store=store)
            for rel, path in sorted(found.items())]


def _place_files(store: ChunkStore, rec: DatasetRecord, dest: Path) -> None:
    for m in rec.files:
        path = dest / m.name
        path.parent.mkdir(parents=True, exist_ok=True)
        if len(m.chunks) == 1 and m.size:
            try:
                os.link(store.path(m.chunks[0]), path)  # read-only, like the chunk
                continue
            except OSError:
                pass  # another file system: copy it
        write_file(m, store, path)


def _delete_chunks(store: ChunkStore, hashes: set[bytes]) -> int:
    freed = 0
    for h in hashes:
        try:
            size = store.path(h).stat().st_size
        except OSError:
            continue
        if store.delete(h):
            freed += size
    return freed


def _clear_uploads(uploads: Path) -> None:
    """Pieces of uploads a restart interrupted: the client sends them again."""
    uploads.mkdir(parents=True, exist_ok=True)
    for p in uploads.glob("*.part"):
        p.unlink(missing_ok=True)


def _take_piece(store: ChunkStore, uploads: Path, h: bytes, size: int, offset: int,
                data: bytes) -> tuple[bool, int]:
    """Append a piece of an uploaded chunk; (chunk stored, bytes of it held)."""
    if store.has(h):
        return True, size
    part = uploads / f"{h.hex()}.part"
    held = part.stat().st_size if part.exists() else 0
    if offset != held:
        return False, held  # out of order or sent twice: the client resumes from here
    with open(part, "ab") as f:
        f.write(data)
    held += len(data)
    if held < size:
        return False, held
    chunk = part.read_bytes()
    part.unlink()
    if chunk_hash(chunk) != h:
        raise ChunkError(f"chunk {h.hex()[:16]}: the uploaded bytes do not match its hash")
    store.put_verified(h, chunk)
    return True, size


