"""Replicas that follow demand: access counts, summaries, custodians, decisions.

- every read of a dataset on this node (a job's stage-in, a ``gridnode get``)
  is counted per dataset, this node's site and time bucket, in memory and in
  the state file (``replication.trends.AccessLog``);
- every ``replication.interval`` the node sends each custodian one signed
  summary (``replication.summary``) of the datasets of that custodian it
  holds or read within the window: its counts, the version it holds, whether
  that replica is leaving, and the node's free disk and load;
- a dataset's custodian is the storage node closest to the dataset's catalog
  key that this node does not suspect dead; a node that sends to a dead
  custodian notes it, and its next summary goes to the next one;
- as custodian, every round the node asks the pure policy
  (``replication.policy.decide``) and carries the actions out: a node asked
  to pull a copy (``dataset.pull``, admitted there by a token bucket and a
  limit on concurrent pulls), a drop announced (``replica.leave``), a
  replica deleted (``replica.drop``, which the holder refuses unless it was
  announced and another complete replica is live), an announcement taken
  back.  Every action is logged with its reason and counted.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import trio

from overlay import BadMessage, CallContext, Method, RpcError, bad_request
from replication import (
    AccessLog,
    DatasetName,
    DatasetNameError,
    DatasetState,
    DemandBook,
    Holder,
    Memory,
    NodeInfo,
    RateLimit,
    Summary,
    SummaryEntry,
    catalog_key,
    decide,
    open_summary_untrusted,
    seal_summaries,
)

from .logs import log

if TYPE_CHECKING:
    from .daemon import Node
    from .data import DataService

logger = logging.getLogger("gridnode.replicas")

CALL_TIMEOUT = 30.0
PULL_TIMEOUT = 3600.0
UNKNOWN_FREE = 2**50  # a node that has not reported: a pull it cannot take is refused


def parse_name(text: str) -> DatasetName:
    scope, sep, name = text.partition(":")
    if not sep:
        raise DatasetNameError(f"{text!r} is not scope:name")
    return DatasetName(scope, name)


class ReplicaService:
    """One node's part in autonomous replication."""

    def __init__(self, node: Node, data: DataService) -> None:
        self.node, self.data = node, data
        self.cfg = cfg = node.cfg.replication
        self.tp, self.pp = cfg.trend_params(), cfg.policy_params()
        self.access = AccessLog(self.tp)
        self.book = DemandBook(self.tp)
        # dataset -> holder -> (version, when its summary came, leaving)
        self.reported: dict[str, dict[bytes, tuple[int, float, bool]]] = {}
        self.reporters: dict[bytes, tuple[int, float]] = {}  # node -> (free bytes, load)
        self.memory: dict[str, Memory] = {}
        self.leaving: dict[str, float] = {}  # my replicas announced as leaving -> since
        self.unsaved: Counter[tuple[str, str, int]] = Counter()
        self.counters: Counter[str] = Counter()
        self.pulls = trio.Semaphore(cfg.max_pulls)
        self.rate: RateLimit | None = None
        self._nursery: trio.Nursery | None = None

    @property
    def me(self) -> bytes:
        return self.node.key.id

    # -- counting ------------------------------------------------------------

    def read(self, name: str, what: str) -> None:
        now = time.time()
        site = self.node.cert.name
        self.access.add(name, site, now)
        self.unsaved[(name, site, self.tp.bucket(now))] += 1
        self.counters[f"reads_{what}"] += 1

    # -- custodians ----------------------------------------------------------

    def ranked(self, name: str) -> list[bytes]:
        """Storage nodes by closeness to the dataset's key (us included)."""
        key = int.from_bytes(catalog_key(parse_name(name)), "big")
        return sorted(self.data.storage_nodes(), key=lambda n: int.from_bytes(n, "big") ^ key)

    def custodian(self, name: str) -> bytes | None:
        for n in self.ranked(name):
            if not self.node.membership.is_suspect(n):
                return n
        return None

    # -- lifecycle -----------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        now = time.time()
        for name, site, bucket, n in await self.node.state.load_access(
                self.tp.complete(now).start):
            self.access.load(name, site, bucket, n)
        rate = self.cfg.rate_mb_s * 1e6
        self.rate = RateLimit(rate, max(rate, 64 * 2**20), trio.current_time())
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                await trio.sleep(self.cfg.interval)
                try:
                    await self.round()
                except Exception as exc:  # the next round tries again
                    self.counters["round_errors"] += 1
                    log(logger, "replica.round_failed", logging.WARNING, reason=repr(exc))

    async def round(self) -> None:
        now = time.time()
        await self._save_access(now)
        self._expire_leaving(now)
        await self._send_summaries(now)
        await self._decide_all(now)

    async def _save_access(self, now: float) -> None:
        rows, self.unsaved = self.unsaved, Counter()
        if rows:
            await self.node.state.add_access([(*k, n) for k, n in rows.items()])
        self.access.prune(now)
        self.book.prune(now)
        if rows and self.tp.bucket(now) % 16 == 0:
            await self.node.state.prune_access(self.tp.complete(now).start)

    def _expire_leaving(self, now: float) -> None:
        for name, since in list(self.leaving.items()):
            if now - since > 4 * self.cfg.interval:
                del self.leaving[name]
                log(logger, "replica.stays", dataset=name,
                    reason="announced as leaving but no custodian confirmed the drop")
                self._announce_soon(name)

    def _announce_soon(self, name: str) -> None:
        rec = self.data.holdings.get(name)
        if rec is not None and self._nursery is not None:
            self._nursery.start_soon(self.data.announce, rec)

    # -- summaries -----------------------------------------------------------

    def load(self) -> float:
        ex = self.node.executor
        return 0.0 if ex.cores <= 0 else min(1.0, 1 - ex.free()[0] / ex.cores)

    async def _send_summaries(self, now: float) -> None:
        by_custodian: dict[bytes, list[SummaryEntry]] = {}
        for name in sorted(set(self.data.holdings) | set(self.access.counts)):
            try:
                custodian = self.custodian(name)
            except DatasetNameError:
                continue
            if custodian is None:
                continue
            held = self.data.holdings.get(name)
            by_custodian.setdefault(custodian, []).append(SummaryEntry(
                name, held.version if held else 0, name in self.leaving,
                self.access.summary(name, now)))
        free = self.data.store.free_bytes
        free = UNKNOWN_FREE if free is None else free
        load = self.load()
        for custodian, entries in by_custodian.items():
            if custodian == self.me:
                self.take(Summary(self.me, now, free, load, tuple(entries)), now)
                continue
            for raw in seal_summaries(self.node.key, now, free, load, entries):
                try:
                    await self.call(custodian, "replica.summary", {"summary": raw})
                    self.counters["summaries_sent"] += 1
                except RpcError as exc:
                    self.counters["summaries_failed"] += 1
                    log(logger, "replica.summary_failed", logging.DEBUG, node=custodian,
                        reason=str(exc))
                    break

    def take(self, s: Summary, now: float) -> None:
        """A reporter's summary: its reads, its replicas, its room."""
        self.reporters[s.reporter] = (s.free_bytes, s.load)
        for e in s.entries:
            self.book.merge(s.reporter, e.dataset, e.counts)
            holders = self.reported.setdefault(e.dataset, {})
            if e.version:
                holders[s.reporter] = (e.version, now, e.leaving)
            else:
                holders.pop(s.reporter, None)

    async def call(self, node_id: bytes, method: str, args: Any,
                   timeout: float = CALL_TIMEOUT) -> Any:  # noqa: ASYNC109
        address = self.data.storage_nodes().get(node_id)
        if address is None:
            raise RpcError("unavailable", f"storage node {node_id.hex()[:12]} is not known")
        try:
            answer = await self.node.pool.call(address[0], address[1], method, args,
                                               expect_id=node_id, timeout=timeout)
        except RpcError as exc:
            if exc.code in ("unavailable", "timeout", "closed"):
                self.node.membership.note(node_id, False)
            raise
        self.node.membership.note(node_id, True)
        return answer

    # -- the custodian's round -----------------------------------------------

    async def _decide_all(self, now: float) -> None:
        known = set(self.data.holdings) | set(self.book.datasets()) | set(self.reported)
        probe: set[bytes] = set()
        for name in sorted(known):
            try:
                custodian = self.custodian(name)
            except DatasetNameError:
                continue
            if custodian == self.me:
                try:
                    await self.decide(name, now)
                except RpcError as exc:
                    log(logger, "replica.decision_skipped", logging.WARNING, dataset=name,
                        reason=str(exc))
            elif name in self.reported and custodian is not None:
                probe.add(custodian)  # others think we are: is the one before us alive?
            else:
                self.memory.pop(name, None)
        for n in probe:
            try:
                await self.call(n, "ping", None, timeout=5.0)
            except RpcError:
                pass

    async def holders(self, name: str, now: float) -> dict[bytes, Holder]:
        """Holders of the dataset's current version, seen in the DHT or in summaries."""
        version = (await self.data.record(parse_name(name))).version
        out: dict[bytes, Holder] = {}
        views = await self.data.holder_views(parse_name(name))
        for n, (v, seen, leaving) in views.items():
            if v >= version:
                out[n] = Holder(n, seen, leaving)
        for n, (v, seen, leaving) in self.reported.get(name, {}).items():
            if v >= version and n in views and seen >= out.get(n, Holder(n, 0.0)).last_seen:
                out[n] = Holder(n, seen, leaving)
        return out

    async def decide(self, name: str, now: float) -> None:
        rec = await self.data.record(parse_name(name))
        holders = await self.holders(name, now)
        ds = DatasetState(name, rec.size, rec.policy.min_replicas, rec.policy.max_replicas,
                          tuple(holders[n] for n in sorted(holders)))
        nodes = {}
        peers = self.node.peers
        for n in self.data.storage_nodes():
            if self.node.membership.is_suspect(n):
                continue
            free, load = self.reporters.get(n, (UNKNOWN_FREE, 0.0))
            if n == self.me:
                mine = self.data.store.free_bytes
                free, load = (UNKNOWN_FREE if mine is None else mine), self.load()
            site = peers[n].site if n in peers else self.node.cert.name
            nodes[n] = NodeInfo(n, site, free, load)
        memory = self.memory.setdefault(name, Memory())
        decision = decide(ds, self.book.trend(name, now), self.book.by_site(name, now), nodes,
                          memory, self.pp, now)
        self.counters["decisions"] += 1
        for a in decision.actions:
            self.counters[f"actions_{a.kind}"] += 1
            log(logger, f"replica.{a.kind}", dataset=name, node=a.node,
                target=decision.target, reason=a.reason)
            if a.kind == "add":
                assert self._nursery is not None
                self._nursery.start_soon(self._ask_pull, name, rec.version, a.node, memory)
            elif a.kind in ("announce_drop", "cancel_drop"):
                await self._ask(name, a.node, "replica.leave",
                                {"name": name, "leaving": a.kind == "announce_drop"}, memory)
            elif a.kind == "drop":
                await self._ask(name, a.node, "replica.drop", {"name": name}, memory)

    async def _ask_pull(self, name: str, version: int, node_id: bytes, memory: Memory) -> None:
        args = {"name": name, "version": version}
        try:
            if node_id == self.me:
                await self.data.pull(name, "the custodian's decision")
            else:
                await self.call(node_id, "dataset.pull", args, timeout=PULL_TIMEOUT)
            self.counters["replicas_requested"] += 1
        except RpcError as exc:
            memory.adding.pop(node_id, None)
            self.counters["replica_requests_failed"] += 1
            if exc.code == "quota":
                self.reporters[node_id] = (0, 1.0)
            log(logger, "replica.add_failed", logging.WARNING, dataset=name, node=node_id,
                reason=str(exc))

    async def _ask(self, name: str, node_id: bytes, method: str, args: dict[str, Any],
                   memory: Memory) -> None:
        try:
            if node_id == self.me:
                await self.local(method, args)
            else:
                await self.call(node_id, method, args)
        except RpcError as exc:
            memory.leaving.pop(node_id, None)
            self.counters["replica_requests_failed"] += 1
            log(logger, "replica.request_failed", logging.WARNING, dataset=name, node=node_id,
                method=method, reason=str(exc))

    # -- the holder's side ---------------------------------------------------

    async def local(self, method: str, args: dict[str, Any]) -> Any:
        if method == "replica.leave":
            return await self.set_leaving(args["name"], args["leaving"], "the custodian: us")
        return await self.drop(args["name"], "the custodian: us")

    async def set_leaving(self, name: str, leaving: bool, who: str) -> str:
        if name not in self.data.holdings:
            raise RpcError("not_found", f"this node holds no replica of {name}")
        if leaving:
            self.leaving[name] = time.time()
        else:
            self.leaving.pop(name, None)
        log(logger, "replica.leaving" if leaving else "replica.stays", dataset=name,
            reason=f"asked by {who}")
        await self.data.announce(self.data.holdings[name])
        return "leaving" if leaving else "held"

    async def drop(self, name: str, who: str) -> str:
        if name not in self.leaving:
            raise RpcError("refused", f"the replica of {name} here was not announced as "
                           f"leaving; a drop comes in two phases")
        rec = self.data.holdings[name]
        others = [n for n, (v, _, leaving) in
                  (await self.data.holder_views(rec.name)).items()
                  if n != self.me and v >= rec.version and not leaving]
        if not others:
            del self.leaving[name]
            await self.data.announce(rec)
            raise RpcError("refused", f"no other complete replica of {name} is live; "
                           f"the last replica is never deleted")
        del self.leaving[name]
        freed = await self.data.drop(rec, f"asked by {who}; {len(others)} other replicas")
        self.counters["replicas_dropped"] += 1
        return f"dropped {freed} bytes"

    # -- RPC -----------------------------------------------------------------

    def methods(self) -> dict[str, Method]:
        return {
            "replica.summary": Method(self._summary, access="node"),
            "replica.leave": Method(self._leave, access="node"),
            "replica.drop": Method(self._drop, access="node"),
            "replica.explain": Method(self._explain),
        }

    async def _summary(self, ctx: CallContext, args: Any) -> str:
        try:
            if not isinstance(args, dict):
                raise BadMessage("expected {summary}")
            s = open_summary_untrusted(args.get("summary"), ctx.peer_id, ctx.peer.subject_key)
        except BadMessage as exc:
            self.counters["summaries_refused"] += 1
            log(logger, "replica.summary_refused", logging.WARNING, node=ctx.peer_id,
                reason=str(exc))
            raise bad_request(f"bad summary: {exc}") from None
        self.take(s, time.time())
        self.counters["summaries_received"] += 1
        return "ok"

    def _args(self, args: Any) -> str:
        if not (isinstance(args, dict) and isinstance(args.get("name"), str)):
            raise bad_request("expected {name}")
        return str(args["name"])

    async def _leave(self, ctx: CallContext, args: Any) -> str:
        name = self._args(args)
        if type(args.get("leaving")) is not bool:
            raise bad_request("expected {name, leaving: bool}")
        return await self.set_leaving(name, args["leaving"], ctx.peer_id.hex()[:12])

    async def _drop(self, ctx: CallContext, args: Any) -> str:
        return await self.drop(self._args(args), ctx.peer_id.hex()[:12])

    async def _explain(self, ctx: CallContext, args: Any) -> dict[str, Any]:
        name = self._args(args)
        try:
            custodian = self.custodian(name)
        except DatasetNameError as exc:
            raise bad_request(str(exc)) from None
        if custodian not in (None, self.me) and not args.get("forwarded"):
            assert custodian is not None
            return dict(await self.call(custodian, "replica.explain",
                                        {"name": name, "forwarded": True}))
        return await self.explain(name)

    async def explain(self, name: str) -> dict[str, Any]:
        now = time.time()
        trend = self.book.trend(name, now)
        memory = self.memory.get(name)
        last = memory.last if memory else None
        peers = self.node.peers

        def site(n: bytes) -> str:
            return peers[n].site if n in peers else self.node.cert.name

        holders = await self.holders(name, now)
        return {
            "name": name, "custodian": self.me.hex(), "site": self.node.cert.name,
            "bucket_seconds": self.tp.bucket_seconds,
            "trend": {"series": list(trend.series), "level": trend.level,
                      "slope": trend.slope, "prediction": trend.prediction},
            "by_site": self.book.by_site(name, now),
            "target": last.target if last else None,
            "reason": last.reason if last else "no decision yet",
            "holders": [{"id": n.hex(), "site": site(n), "last_seen": h.last_seen,
                         "leaving": h.leaving, "counted": bool(last and n in last.counted)}
                        for n, h in sorted(holders.items())],
            "decisions": [{"t": a.t, "kind": a.kind, "node": a.node.hex(), "site": site(a.node),
                           "reason": a.reason} for a in (memory.history if memory else [])],
        }

    def statistics(self) -> dict[str, Any]:
        return {**self.counters, "custodian_of": sum(
            1 for m in self.memory.values() if m.last is not None),
            "leaving": len(self.leaving)}
