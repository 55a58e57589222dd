"""The daemon: one trio root nursery holding every background loop.

``run_node`` loads identity and state, binds the DHT socket and the admin
socket, then keeps the node in the grid with one maintenance loop:

1. bootstrap from ``--bootstrap``, the config, grid.info hints and the peers
   stored in the state file (so a restarted node needs no ``--bootstrap``);
2. each round: refresh the routing table, republish this node's signed
   record when due, adopt a newer revocation list, and fetch and check the
   records of contacts it does not know yet; new and changed peers are
   written to the state file in one transaction.

Rounds start 1 s apart and back off to ``refresh_interval``, so a fresh
grid converges in seconds and a settled one costs little.
"""

from __future__ import annotations

import inspect
import logging
import os
import time
from dataclasses import replace
from typing import Any

import trio
import trio_asyncio

from overlay import (
    MAX_RECORD_TTL,
    REVOCATIONS_KEY,
    BadMessage,
    CallContext,
    Certificate,
    ChannelServer,
    Contact,
    Credentials,
    GridDht,
    GridInfo,
    KeyPair,
    NodeRecord,
    RevocationList,
    RpcError,
    RpcPool,
    RpcServer,
    SignedRecord,
    node_record_key,
    provider_key,
)
from steering import JobService, QueueConfig, QueueNode, Worker, queue_methods

from .admin import AdminError, claim_socket_path, serve_admin
from .config import Config, parse_hostport
from .console import serve_console
from .data import DataService
from .datadir import DataDir
from .errors import UserError, first_user_error
from .executor import Executor
from .jobs import JobRunner, NodeMembership, SlotStore, sandbox_root
from .jobs import methods as job_methods
from .logs import RecentLogs, log
from .monitor import Monitor
from .service import methods
from .site import SiteControls
from .state import PeerRow, State, StateError, open_state

logger = logging.getLogger("gridnode.daemon")

REVOCATIONS_META = "revocations"
MAX_BOOTSTRAP_FROM_STATE = 32
FETCH_CONCURRENCY = 8
VERSION = "0.1.0"


class NodeRevoked(UserError):
    exit_code = 3


class Node:
    """A running grid node: identity, DHT membership, known peers."""

    def __init__(self, cfg: Config, datadir: DataDir, key: KeyPair, grid: GridInfo,
                 cert: Certificate, state: State, revocations: RevocationList) -> None:
        self.cfg = cfg
        self.datadir = datadir
        self.key = key
        self.grid = grid
        self.cert = cert
        self.state = state
        self.revocations = revocations
        self.roles = tuple(r for r in cfg.roles if r in cert.roles)
        self.dht = GridDht(key, cert, grid, ksize=cfg.dht.ksize, alpha=cfg.dht.alpha)
        self.dht.set_revoked(revocations.revoked)
        ch = cfg.channel
        self.creds = Credentials(key, cert, grid, revocations.revoked, max_frame=ch.max_frame)
        self.channel_counters: dict[str, int] = {}
        self.rpc = RpcServer({}, max_in_flight=ch.max_calls_per_connection,
                             counters=self.channel_counters)
        self.channels = ChannelServer(self.creds, self.rpc.serve_channel,
                                      handshake_timeout=ch.handshake_timeout,
                                      max_connections=ch.max_connections,
                                      counters=self.channel_counters)
        self.pool = RpcPool(self.creds)
        self.bound: tuple[str, int] | None = None
        # node id -> (site, capacity) from node records (and our own config).
        self.capacities: dict[bytes, tuple[str, dict[str, int]]] = {}
        # node id -> the health summary of its newest record (node.monitor).
        self.health: dict[bytes, dict[str, Any]] = {}
        if "compute" in self.roles:
            self.capacities[key.id] = (cert.name, self._capacity())
        self.executor = Executor(sandbox_root(datadir.root), cores=cfg.capacity.cores,
                                 memory_mb=cfg.capacity.memory_mb)
        self.membership = NodeMembership(self)
        self.queue = QueueNode(grid, self.membership, self.pool, SlotStore(state, grid),
                               QueueConfig(r=cfg.queue.replicas,
                                           lease_duration=cfg.queue.lease_duration,
                                           unschedulable_after=cfg.queue.unschedulable_after,
                                           repair_after=cfg.queue.repair_after))
        self.job_service = JobService(self.queue, lambda: self.revocations.revoked)
        self.data = DataService(self)
        self.monitor = Monitor(self)
        self.queue.inputs = self.data.check_inputs
        self.queue.nodes_seen = self.membership.nodes_seen
        self.runner = JobRunner(self.executor, cfg.capacity.disk_gb * 1024, self.data,
                                cfg.capacity.start_delay)
        self.worker = Worker(grid, self.membership, self.pool, cert.name, frozenset(cfg.labels),
                             self.runner.capacity, self.runner.run, self.runner.kill,
                             heartbeat_interval=cfg.queue.lease_duration / 4)
        table = {**methods(self), **self.job_service.methods(), **job_methods(self),
                 **self.data.methods()}
        self.site = SiteControls(self)
        self.worker.claim_plan = self.site.claim_plan
        self.worker.datasets_held = lambda: sorted(self.data.holdings)
        self.recent_logs = RecentLogs()
        self.console: Any = None  # node.console.Console once it serves
        self.runner.on_outcome = self.monitor.outcome
        if "queue" in self.roles:
            table.update(queue_methods(self.queue))
            self.worker.local = self._call_local
            self.worker.known_job = self.queue.known_job
        self.rpc.methods.update(table)
        self.peers: dict[bytes, PeerRow] = {}
        # (seq, expires) of the newest record checked for each peer this run.
        self._record_seen: dict[bytes, tuple[int, int]] = {}
        self.addresses: tuple[str, ...] = ()
        self.started = time.monotonic()
        self.record_seq = 0
        self.counters: dict[str, int] = {
            "admin_refused": 0,
            "admin_errors": 0,
            "maintenance_errors": 0,
        }
        self.rounds = 0
        self._peers_changed = trio.Event()
        self._round_done = trio.Event()
        self.admin_ops = {"status": self._op_status, "peers": self._op_peers,
                          "health": self._op_health}

    async def _call_local(self, method: str, args: Any) -> Any:
        """One of this node's RPC methods, called by the node itself (no network, the
        same argument checks)."""
        return await self.rpc.methods[method].fn(self.local_context(), args)

    def local_context(self) -> CallContext:
        return CallContext(self.cert, "local")

    def site_of(self, node_id: bytes) -> str:
        peer = self.peers.get(node_id)
        return peer.site if peer else self.cert.name if node_id == self.key.id else "?"

    def _site_of_hex(self, text: str) -> str:
        try:
            return self.site_of(bytes.fromhex(text))
        except ValueError:  # a peer's answer: anything may be in it
            return "?"

    def role_addresses(self, role: str) -> dict[bytes, tuple[str, int]]:
        """Every live, unrevoked node with ``role`` we know (us too): id -> address."""
        out: dict[bytes, tuple[str, int]] = {}
        for p in self.peers.values():
            if role in p.roles and p.node_id not in self.revocations.revoked:
                for text in p.addresses:
                    try:
                        out[p.node_id] = parse_hostport(text, "address")
                        break
                    except UserError:
                        continue
        if role in self.roles and self.bound is not None:
            out[self.key.id] = self.bound
        return out

    # -- lifecycle ---------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        self.peers = {p.node_id: p for p in await self.state.peers()}
        # A second daemon on this data dir is told so before it fails on the port.
        claim_socket_path(self.datadir.admin_socket)
        bound = await self._listen()
        self.bound = bound
        await self.site.load()
        self.queue.load(await self.queue.store.load())  # type: ignore[attr-defined]
        self.addresses = self.cfg.advertise or (
            (f"{bound[0]}:{bound[1]}",) if bound[0] not in ("0.0.0.0", "::") else ())
        dropped = sorted(set(self.cfg.roles) - set(self.roles))
        if dropped:
            log(logger, "roles.dropped", logging.WARNING, roles=",".join(dropped),
                reason="the certificate does not grant them")
        logging.getLogger("gridnode").addHandler(self.recent_logs)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.dht.serve)
                await nursery.start(self.channels.serve)
                await nursery.start(self.pool.run)
                if "queue" in self.roles:
                    await nursery.start(self.queue.run)
                if "compute" in self.roles:
                    await nursery.start(self.worker.run)
                await nursery.start(self.data.run)
                await nursery.start(self.monitor.run)
                await nursery.start(serve_admin, self.datadir.admin_socket, self.handle_admin,
                                    self.counters)
                if self.cfg.console.listen:  # "" turns the console off
                    self.console = await nursery.start(serve_console, self)
                log(logger, "node.started", id=self.key.id, grid=self.grid.grid_id,
                    site=self.cert.name, listen=f"{bound[0]}:{bound[1]}",
                    roles=",".join(self.roles), peers_stored=len(self.peers))
                nursery.start_soon(self._maintain)
                task_status.started(self)
        finally:
            logging.getLogger("gridnode").removeHandler(self.recent_logs)
            with trio.CancelScope(shield=True):
                await self.state.upsert_peers(self.peers.values())
            log(logger, "node.stopped", id=self.key.id, peers_stored=len(self.peers),
                reason="shutdown")

    async def _listen(self) -> tuple[str, int]:
        """The DHT (UDP) and the secure channel (TCP) share one host and port."""
        host, port = self.cfg.listen_address
        for attempt in range(20):
            try:
                tcp = await self.channels.listen(host, port)
                try:
                    return await self.dht.bind(host, tcp[1])
                except OSError:
                    self.channels.close_listeners()
                    if port != 0 or attempt == 19:
                        raise
            except OSError as exc:
                reason = exc.strerror or str(exc)
                raise UserError(f"cannot listen on {self.cfg.listen}: {reason}; "
                                f"pick another address or port with --listen") from None
        raise AssertionError("unreachable")

    async def _maintain(self) -> None:
        await self._bootstrap()
        delay = 1.0
        next_publish = 0.0
        while True:
            self.rounds += 1
            if not self.dht.contacts():
                await self._bootstrap()
            for step in (self.dht.refresh, self._sync_revocations, self._discover):
                await self._guarded(step)
            # A record no peer took (we were alone) is retried next round; a change of
            # this node's health is published at once.
            if self.monitor.changed:
                self.monitor.changed, next_publish = False, 0.0
            if time.monotonic() >= next_publish and await self._guarded(self._publish):
                next_publish = time.monotonic() + self.cfg.record_refresh
            self._round_done.set()
            self._round_done = trio.Event()
            await trio.sleep(delay)
            delay = min(delay * 2, self.cfg.refresh_interval)

    async def _guarded(self, step: Any) -> bool:
        """Run one maintenance step; a failure is logged and counted, not fatal."""
        try:
            return await step() is not False
        except NodeRevoked:
            raise
        except Exception as exc:
            self.counters["maintenance_errors"] += 1
            logger.error("maintenance step %s failed: %r", step.__name__, exc, exc_info=True)
            return False

    # -- bootstrap, publish, discover --------------------------------------

    def _bootstrap_candidates(self) -> list[tuple[str, int]]:
        seen: list[tuple[str, int]] = []
        texts = list(self.cfg.bootstrap) + list(self.grid.bootstrap)
        stored = sorted(self.peers.values(), key=lambda p: -p.last_seen)
        for p in stored[:MAX_BOOTSTRAP_FROM_STATE]:
            texts += p.addresses
        for text in texts:
            try:
                addr = parse_hostport(text, "bootstrap")
            except UserError:
                continue
            if addr not in seen and addr != self.dht.address:
                seen.append(addr)
        return seen

    async def _bootstrap(self) -> None:
        candidates = self._bootstrap_candidates()
        if not candidates:
            log(logger, "bootstrap.skipped", logging.INFO if self.rounds <= 1 else logging.DEBUG,
                reason="no bootstrap address and no stored peers")
            return
        found = await self.dht.bootstrap(candidates)
        level = logging.INFO if found else logging.WARNING
        log(logger, "bootstrap.done", level, tried=len(candidates), answered=found,
            reason="joining the grid" if found else "no bootstrap node answered; will retry")

    def _capacity(self) -> dict[str, int]:
        c = self.cfg.capacity
        return {"cores": c.cores, "memory_mb": c.memory_mb, "disk_gb": c.disk_gb}

    async def _publish(self) -> bool:
        now = time.time()
        self.record_seq = max(self.record_seq + 1, int(now * 1000))
        record = NodeRecord.create(
            self.key, self.cert, addresses=self.addresses, roles=self.roles,
            capacity=self._capacity(), health=self.monitor.summary(),
            seq=self.record_seq, expires=int(now) + self.cfg.record_ttl)
        assert record.signed is not None
        stored = await self.dht.put(record.signed)
        for role in self.roles:
            provider = SignedRecord.create(
                self.key, self.cert, key=provider_key("role", role), kind="provider",
                seq=self.record_seq, expires=int(now) + self.cfg.record_ttl, value=b"")
            await self.dht.put(provider)
        log(logger, "record.published", logging.DEBUG if stored else logging.INFO,
            seq=record.seq, stored_on=stored, roles=",".join(self.roles),
            reason="periodic refresh" if stored else "no peer took the record yet")
        return stored > 0

    async def wait_peers(self, count: int) -> None:
        """Wait until this node knows at least ``count`` peers."""
        while len(self.peers) < count:
            await self._peers_changed.wait()

    async def wait_round(self) -> None:
        """Wait until the next maintenance round has finished."""
        await self._round_done.wait()

    def _note_peers_changed(self) -> None:
        self._peers_changed.set()
        self._peers_changed = trio.Event()

    def _needs_record(self, contact: Contact, now: float) -> bool:
        """Fetch a record for a contact we have none for (this run), whose
        record is due for its refresh, or that moved to another address."""
        peer = self.peers.get(contact.node_id)
        seen = self._record_seen.get(contact.node_id)
        if peer is None or seen is None:
            return True
        if peer.addresses and f"{contact.host}:{contact.port}" not in peer.addresses:
            return True  # restarted elsewhere: its new record says where
        return seen[1] - now < self.cfg.record_ttl - self.cfg.record_refresh

    async def _discover(self) -> None:
        now = time.time()
        contacts = self.dht.contacts()
        changed: dict[bytes, PeerRow] = {}
        for c in contacts:
            peer = self.peers.get(c.node_id)
            if peer is not None and c.last_seen > peer.last_seen:
                changed[c.node_id] = replace(peer, last_seen=c.last_seen)
                self.peers[c.node_id] = changed[c.node_id]
        wanted = [c for c in contacts if c.node_id not in self.revocations.revoked
                  and self._needs_record(c, now)]
        limiter = trio.CapacityLimiter(FETCH_CONCURRENCY)

        async def fetch(contact: Any) -> None:
            async with limiter:
                found = await self.dht.get(node_record_key(contact.node_id))
            # The DHT returns only records that verify; under a node's key,
            # only that node's own record is valid.
            mine = [r for r in found if r.signer == contact.node_id and r.kind == "node"]
            if not mine:
                return
            rec = NodeRecord.from_signed(max(mine, key=lambda r: r.seq))
            seen = self._record_seen.get(rec.node_id)
            if seen is not None and rec.seq <= seen[0]:
                return  # the same record again, or an older one: no rollback
            self._record_seen[rec.node_id] = (rec.seq, rec.expires)
            self.health[rec.node_id] = rec.health
            if "compute" in rec.roles:
                self.capacities[rec.node_id] = (rec.site, dict(rec.capacity))
            else:
                self.capacities.pop(rec.node_id, None)
            old = self.peers.get(rec.node_id)
            last_seen = max(contact.last_seen, old.last_seen if old else 0.0)
            row = PeerRow(rec.node_id, rec.site, rec.addresses or (f"{contact.host}:"
                          f"{contact.port}",), rec.roles, last_seen, rec.raw)
            if old is None:
                log(logger, "peer.added", id=rec.node_id, site=rec.site,
                    addresses=",".join(row.addresses), reason="found in the DHT")
            self.peers[rec.node_id] = changed[rec.node_id] = row

        async with trio.open_nursery() as nursery:
            for c in wanted:
                nursery.start_soon(fetch, c)
        await self.state.upsert_peers(changed.values())
        if changed:
            self._note_peers_changed()

    # -- revocations -------------------------------------------------------

    async def _sync_revocations(self) -> None:
        candidates: list[tuple[str, RevocationList]] = []
        if self.datadir.revocations.exists():
            try:
                candidates.append(("authority file",
                                   self.datadir.load_authority_revocations(self.grid)))
            except UserError as exc:
                log(logger, "revocations.refused", logging.WARNING, reason=str(exc))
        in_dht = 0
        for rec in await self.dht.get(REVOCATIONS_KEY):
            if rec.kind != "revocations":
                continue  # a provider record parked here by someone: not a list
            # The record's kind rule already checked the authority's signature.
            rl = RevocationList.from_bytes_untrusted(rec.value, self.grid)
            in_dht = max(in_dht, rl.serial)
            candidates.append(("DHT", rl))
        for source, rl in sorted(candidates, key=lambda c: c[1].serial):
            if rl.serial > self.revocations.serial:
                await self.adopt_revocations(rl, source)
        if self.revocations.serial > in_dht:
            # Anyone holding a newer list republishes it, signed by itself.
            now = int(time.time())
            await self.dht.put(SignedRecord.create(
                self.key, self.cert, key=REVOCATIONS_KEY, kind="revocations",
                seq=self.revocations.serial, expires=now + MAX_RECORD_TTL,
                value=self.revocations.raw))

    async def adopt_revocations(self, rl: RevocationList, source: str) -> None:
        self.revocations = rl
        self.dht.set_revoked(rl.revoked)
        self.channels.set_revoked(rl.revoked)
        for node_id in rl.revoked:
            self.pool.close_peer(node_id)
        await self.state.set_meta(REVOCATIONS_META, rl.raw)
        gone = [i for i in self.peers if i in rl.revoked]
        for i in gone:
            del self.peers[i]
            log(logger, "peer.removed", id=i, reason="revoked by the grid authority")
        await self.state.remove_peers(gone)
        self._note_peers_changed()
        log(logger, "revocations.adopted", serial=rl.serial, revoked=len(rl.revoked),
            reason=f"newer list from the {source}")
        if self.key.id in rl.revoked:
            log(logger, "node.revoked", logging.ERROR, id=self.key.id,
                reason="this node's certificate was revoked; stopping")
            raise NodeRevoked(f"this node's certificate was revoked by the grid authority "
                              f"(revocation list {rl.serial}); ask the grid admin")

    # -- admin -------------------------------------------------------------

    async def handle_admin(self, op: str, args: dict[str, Any]) -> Any:
        handler = self.admin_ops.get(op)
        if handler is None:
            self.counters["admin_refused"] += 1
            raise AdminError(f"unknown operation {op!r} (known: {', '.join(self.admin_ops)})")
        try:
            # Check the arguments against the handler before calling it, so a
            # bad request is refused while a TypeError inside a handler stays a bug.
            inspect.signature(handler).bind(**args)
        except TypeError as exc:
            self.counters["admin_refused"] += 1
            raise AdminError(f"bad arguments for {op!r}: {exc}") from None
        return await handler(**args)

    async def _op_status(self) -> dict[str, Any]:
        return {
            "id": self.key.id.hex(),
            "grid": self.grid.grid_id.hex(),
            "grid_name": self.grid.name,
            "site": self.cert.name,
            "roles": list(self.roles),
            "addresses": list(self.addresses),
            "uptime": round(time.monotonic() - self.started, 3),
            "peers_known": len(self.peers),
            "dht": self.dht.statistics(),
            "channel": {**self.channels.statistics(), **self.pool.statistics()},
            "queue": self.queue.statistics(),
            "data": self.data.statistics(),
            "replication": self.data.replicas.statistics(),
            "monitor": self.monitor.statistics(),
            "site_controls": self.site.view(),
            "console": {"url": self.console.url if self.console else None,
                        **(self.console.counters if self.console else {})},
            "worker": {**self.worker.statistics(), **self.executor.statistics()},
            "refused": dict(self.counters),
            "cert_expires": self.cert.not_after,
            "revocation_serial": self.revocations.serial,
            "rounds": self.rounds,
            "version": VERSION,
            "pid": os.getpid(),
        }

    def own_health(self) -> dict[str, Any]:
        ex = self.executor.statistics()
        return {"id": self.key.id.hex(), "site": self.cert.name, **self.monitor.summary(),
                "evidence": self.monitor.health.evidence(), "last_seen": time.time(),
                "reason": self.monitor.health.current_reason(), "cores": ex["cores"],
                "jobs_running": ex["running"], "jobs_waiting": len(self.queue.match),
                "store_used_bytes": self.data.store.used_bytes,
                "store_quota_bytes": self.data.store.quota_bytes,
                "drained": self.site.drain is not None,
                "links": [{k: v for k, v in link.items() if k != "evidence"}
                          | {"rtt_ms": self.rtt_ms(bytes.fromhex(link["peer"]))}
                          for link in self.monitor.links.view()]}

    def rtt_ms(self, node_id: bytes) -> float | None:
        """Latency to a peer: the least round trip of the last calls to it."""
        rtt = self.pool.rtt(node_id)
        return None if rtt is None else round(rtt * 1000, 2)

    async def _op_health(self) -> dict[str, Any]:
        """Every known node's state with its evidence: asked of each node now, or, from
        one that does not answer within 3 s, the summary in its newest record."""
        nodes = [{**self.own_health(), "self": True, "source": "this node"}]
        limiter = trio.CapacityLimiter(FETCH_CONCURRENCY)

        async def ask(p: PeerRow) -> None:
            entry: dict[str, Any] = {"id": p.node_id.hex(), "site": p.site, "self": False,
                                     "last_seen": p.last_seen}
            try:
                host, port = parse_hostport(p.addresses[0], "address")
                async with limiter:
                    live = await self.pool.call(host, port, "health.self", None,
                                                expect_id=p.node_id, timeout=3.0)
                entry.update(_health_report(live), source="asked now",
                             rtt_ms=self.rtt_ms(p.node_id))
            except (RpcError, UserError, IndexError, TypeError, ValueError) as exc:
                h = self.health.get(p.node_id, {})
                entry.update(state=h.get("state", "unknown"), **h,
                             source=f"its record ({exc})"[:200])
            entry["self"] = False
            nodes.append(entry)

        async with trio.open_nursery() as nursery:
            for p in self.peers.values():
                nursery.start_soon(ask, p)
        nodes[1:] = sorted(nodes[1:], key=lambda n: (n["site"], n["id"]))
        # Each link as the node at its receiving end measured it.
        links = [{**link, "from": n["id"], "from_site": n["site"],
                  "to_site": self._site_of_hex(link["peer"])}
                 for n in nodes for link in map(_link_report, n.pop("links", None) or [])
                 if link is not None]
        return {"nodes": nodes, "links": links}

    async def _op_peers(self) -> list[dict[str, Any]]:
        in_table = {c.node_id for c in self.dht.contacts()}
        return [{"id": p.node_id.hex(), "site": p.site, "addresses": list(p.addresses),
                 "roles": list(p.roles), "last_seen": p.last_seen,
                 "in_routing_table": p.node_id in in_table}
                for p in sorted(self.peers.values(), key=lambda p: p.site)]


_NUMBERS = ("pressure", "failure_rate", "load", "since", "last_seen")
_COUNTS = ("slots_free", "disk_free_gb", "cores", "jobs_running", "jobs_waiting",
           "store_used_bytes", "store_quota_bytes")


def _health_report(live: Any) -> dict[str, Any]:
    """What a peer answered to ``health.self``, with only the fields shown, each
    checked (its answer may hold anything): a bad one is left out."""
    if not isinstance(live, dict):
        raise TypeError("health.self did not answer a map")

    def plain(v: Any) -> bool:
        return (isinstance(v, int | float | str | bool) or v is None
                or isinstance(v, list) and all(isinstance(x, int | float) for x in v))

    out: dict[str, Any] = {"state": live.get("state") if live.get("state") in (
        "ok", "congested", "failing") else "unknown"}
    for k in _NUMBERS:
        if isinstance(live.get(k), int | float) and not isinstance(live[k], bool):
            out[k] = float(live[k])
    for k in _COUNTS:
        if type(live.get(k)) is int and live[k] >= 0:
            out[k] = live[k]
    if isinstance(live.get("reason"), str):
        out["reason"] = live["reason"][:300]
    if isinstance(live.get("drained"), bool):
        out["drained"] = live["drained"]
    ev = live.get("evidence")
    if isinstance(ev, dict):
        out["evidence"] = {str(k)[:40]: v for k, v in list(ev.items())[:20] if plain(v)}
        out["evidence"]["reason"] = str(ev.get("reason", ""))[:300]
    if isinstance(live.get("links"), list):
        out["links"] = live["links"][:1000]
    return out


def _link_report(link: Any) -> dict[str, Any] | None:
    """A link as a node reported it, with only the fields shown, each checked (a
    peer's answer may hold anything); None if it names no peer."""
    if not (isinstance(link, dict) and isinstance(link.get("peer"), str)):
        return None

    def number(key: str) -> float | None:
        v = link.get(key)
        return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None

    state = link.get("state")
    return {"peer": link["peer"][:64],
            "state": state if state in ("ok", "congested", "failing") else "unknown",
            "reason": str(link.get("reason", ""))[:300], "rate": number("rate"),
            "best": number("best"), "rtt_ms": number("rtt_ms"),
            "transfers": int(number("transfers") or 0),
            "failures": int(number("failures") or 0)}


async def _stored_revocations(state: State, datadir: DataDir, grid: GridInfo) -> RevocationList:
    best = datadir.load_authority_revocations(grid)
    raw = await state.get_meta(REVOCATIONS_META)
    if raw is not None:
        try:
            stored = RevocationList.from_bytes_untrusted(raw, grid)
        except BadMessage:
            log(logger, "revocations.refused", logging.WARNING,
                reason="stored revocation list does not verify; ignoring it")
        else:
            if stored.serial > best.serial:
                best = stored
    return best


async def run_node(cfg: Config, datadir: DataDir, *,
                   task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
    """Run one node until cancelled. Raises UserError for anything the admin must fix."""
    try:
        await _run_node(cfg, datadir, task_status)
    except BaseExceptionGroup as group:
        # trio's nurseries (ours and trio-asyncio's) wrap errors in groups;
        # one that holds only UserErrors is the admin's to fix, not a bug.
        err = first_user_error(group)
        if err is None:
            raise
        raise err from None


async def _run_node(cfg: Config, datadir: DataDir, task_status: trio.TaskStatus[Node]) -> None:
    key = datadir.load_key()
    grid = datadir.load_grid()
    async with trio_asyncio.open_loop() as loop:
        errors = {"asyncio_errors": 0}

        def on_asyncio_error(loop: Any, context: dict[str, Any]) -> None:
            # trio-asyncio's default would re-raise into the root nursery and
            # stop the node; an error in a library callback is logged instead.
            errors["asyncio_errors"] += 1
            logger.error("asyncio callback failed: %s", context.get("message"),
                         exc_info=context.get("exception"))

        loop.set_exception_handler(on_asyncio_error)
        try:
            async with open_state(datadir.state) as state:
                revocations = await _stored_revocations(state, datadir, grid)
                cert = datadir.load_cert(key, grid, revocations.revoked)
                node = Node(cfg, datadir, key, grid, cert, state, revocations)
                node.counters.update(errors)
                errors = node.counters  # the handler counts here from now on
                await node.run(task_status=task_status)
        except StateError as exc:
            raise UserError(str(exc)) from None
