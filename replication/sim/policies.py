"""The three replica policies compared by the simulator.

``static``           the minimum replicas, placed at the start; after a node dies
                     its datasets are repaired back to the minimum once the
                     death is noticed (``grace`` seconds later, as the trend
                     policy notices it).
``cache-on-access``  the same origin replicas, repaired the same way (a complete
                     cached copy is promoted to origin if there is one, else a
                     copy is made), and every read that does not find the
                     dataset on the job's node copies the whole dataset there as
                     a cached replica: the bytes the job reads come first (the
                     job waits for those only), the rest follows.  Jobs on the
                     same node that want a dataset being cached wait for the
                     whole copy.  A node whose disk is full evicts its cached
                     replicas least recently used first (not one being read
                     from, not a dataset's last copy); origin replicas are never
                     evicted.  Where no room can be made the read is a plain
                     stage-in.
``trend``            gridnode's policy: the real ``replication.trends`` and
                     ``replication.policy`` cores.  Each node keeps an
                     ``AccessLog`` of its reads; every ``interval`` seconds (60,
                     the daemon's ``[replication] interval``) the
                     nodes send the summaries of the datasets they read since the
                     last round to the custodian (its ``DemandBook``), and the
                     custodian calls ``decide`` for each dataset and carries out
                     the actions: ``add`` copies the dataset to that node
                     through the rate-limited replicator, ``announce_drop`` marks
                     the replica leaving (it still serves reads), ``drop``
                     deletes it, ``cancel_drop`` keeps it.  A dead holder stays
                     in the holder list with the time it was last seen until
                     the provider record expires (``record_ttl``); past the
                     grace it no longer counts, so ``decide`` repairs.
                     Custodians never fail here.

In all three a job's stage-in copy that is not a replica is scratch: it is the
job's alone and goes with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ..policy import (
    DatasetState,
    Decision,
    Holder,
    Memory,
    NodeInfo,
    PolicyParams,
    decide,
)
from ..trends import AccessLog, DemandBook, TrendParams
from .grid import Grid, Job
from .model import CACHE, ORIGIN, POLICY, Dataset, Node, Replica, Transfer


class Policy:
    """The ``static`` policy; the others change what they need."""

    name = "static"

    def __init__(self, grace: float | None = None) -> None:
        self.grace = PolicyParams().grace if grace is None else grace
        self._grid: Grid | None = None

    @property
    def grid(self) -> Grid:
        assert self._grid is not None, "the policy is not attached to a grid"
        return self._grid

    def attach(self, grid: Grid) -> None:
        self._grid = grid

    def start(self) -> None:
        """The run begins (the clock is at 0)."""

    def on_read(self, job: Job) -> None:
        """``job`` begins to stage its dataset in."""

    def fetch(self, job: Job, ds: Dataset) -> None:
        """Bring the job's input to its node (it is not there)."""
        self.grid.fetch_scratch(job, ds)

    def make_room(self, node: Node, size: int) -> bool:
        """Free ``size`` bytes on ``node`` if that can be done; whether they are free."""
        return node.free_disk >= size

    def on_death(self, node: Node, lost: list[Replica]) -> None:
        engine = self.grid.engine
        for r in lost:
            if r.kind == ORIGIN and not r.dataset.lost:
                engine.after(self.grace, self.repair, r.dataset)

    def repair(self, ds: Dataset) -> None:
        """Bring the origin replicas of ``ds`` back to the minimum."""
        grid = self.grid
        if ds.lost or grid.done:
            return
        origins = sum(1 for r in ds.replicas.values() if r.kind == ORIGIN)
        for _ in range(ds.min_replicas - origins):
            if self.promote(ds):
                continue
            node = grid.target_for(ds, self.make_room)
            if node is None:
                return
            grid.replicator.copy(ds, node, ORIGIN)

    def promote(self, ds: Dataset) -> bool:
        return False


class Static(Policy):
    name = "static"


class CacheOnAccess(Policy):
    name = "cache-on-access"

    def __init__(self, grace: float | None = None) -> None:
        super().__init__(grace)
        self.waiting: dict[Replica, list[Job]] = {}   # cached copies under way -> jobs
        self.evictions = 0

    def fetch(self, job: Job, ds: Dataset) -> None:
        grid = self.grid
        node = job.node
        assert node is not None
        r = node.replicas.get(ds.index)
        if r is not None:
            jobs = self.waiting.get(r)
            if jobs is None:               # a repair copy under way: read as usual
                grid.fetch_scratch(job, ds)
            else:
                jobs.append(job)
            return
        source = grid.best_source(ds, node)
        if source is None or not self.make_room(node, ds.size):
            grid.fetch_scratch(job, ds)
            return
        r = grid.add_replica(ds, node, CACHE, complete=False)
        self.waiting[r] = []
        grid.count_stage_in(source.node, node)
        first = min(job.spec.input, ds.size)

        def job_part_done(tr: Transfer) -> None:
            grid.ready(job)
            self._fill(r, ds.size - first)

        def job_part_aborted(tr: Transfer) -> None:
            self._forget(r)
            grid.stage_aborted(job, tr)

        grid.network.start(source.node, node, first, "stage-in", job_part_done,
                           job_part_aborted, source=source, target=r)

    def _fill(self, r: Replica, left: float) -> None:
        """Copy the rest of the dataset into the cached replica ``r``."""
        grid = self.grid
        node, ds = r.node, r.dataset
        if node.replicas.get(ds.index) is not r:
            return
        source = grid.best_source(ds, node, lambda s: s is not r)
        if source is None:
            self._forget(r)
            return

        def done(tr: Transfer) -> None:
            grid.completed(r)
            for job in self.waiting.pop(r, []):
                if job.node is node:
                    grid.ready(job)

        def aborted(tr: Transfer) -> None:
            if node.alive and node.replicas.get(ds.index) is r:
                self._fill(r, tr.remaining)       # its source died: the rest from another
            else:
                self._forget(r)

        grid.network.start(source.node, node, int(left), "cache-fill", done, aborted,
                           source=source, target=r)

    def _forget(self, r: Replica) -> None:
        """Drop a cached copy that will not be made; jobs waiting on it stage in again."""
        jobs = self.waiting.pop(r, [])
        node = r.node
        if node.alive and node.replicas.get(r.dataset.index) is r:
            self.grid.remove_replica(r)
        for job in jobs:
            if job.node is node and node.alive:
                self.grid.stage_in(job)

    def make_room(self, node: Node, size: int) -> bool:
        if node.free_disk >= size:
            return True
        victims = sorted((r for r in node.replicas.values()
                          if r.kind == CACHE and r.complete and r.reading == 0
                          and len(r.dataset.sources()) > 1),
                         key=lambda r: (r.last_used, r.dataset.index))
        need = size - node.free_disk
        chosen = []
        for r in victims:
            if need <= 0:
                break
            chosen.append(r)
            need -= r.dataset.size
        if need > 0:
            return False
        for r in chosen:
            self.evictions += 1
            self.grid.remove_replica(r)
        return True

    def promote(self, ds: Dataset) -> bool:
        held = {r.node.site.index for r in ds.replicas.values() if r.kind == ORIGIN}
        cached = [r for r in ds.replicas.values() if r.kind == CACHE and r.complete]
        if not cached:
            return False
        best = max(cached, key=lambda r: (r.node.site.index not in held, -r.node.index))
        best.kind = ORIGIN
        return True


class Trend(Policy):
    """gridnode's policy, run by the real trend and policy cores."""

    name = "trend"

    def __init__(self, trend: TrendParams | None = None, policy: PolicyParams | None = None,
                 interval: float = 60.0, record_ttl: float = 600.0,
                 shortcuts: bool = True) -> None:
        self.tp = trend or TrendParams()
        self.pp = policy or PolicyParams()
        super().__init__(self.pp.grace)
        self.interval = interval
        self.record_ttl = max(record_ttl, self.pp.grace)
        self.book = DemandBook(self.tp)
        self.logs: dict[int, AccessLog] = {}          # node index -> its reads
        self.memory: dict[int, Memory] = {}           # dataset index -> custodian memory
        self.watch: dict[int, None] = {}              # datasets not at rest
        self.by_name: dict[str, Dataset] = {}
        self.shortcuts = shortcuts
        # dataset -> (bucket, version, until when) of a decision that changed nothing
        self.quiet: dict[int, tuple[int, int, float]] = {}
        self.bucket = -1
        self.decisions = 0
        self.skipped = 0
        self.actions: dict[str, int] = {"add": 0, "announce_drop": 0, "drop": 0,
                                        "cancel_drop": 0}
        self.on_decision: Callable[[Dataset, float, Decision], None] | None = None
        self._infos: dict[int, NodeInfo] = {}

    def attach(self, grid: Grid) -> None:
        super().attach(grid)
        self.by_name = {d.name: d for d in grid.datasets}

    def start(self) -> None:
        self.grid.engine.after(self.interval, self._round)

    def on_read(self, job: Job) -> None:
        node = job.node
        assert node is not None
        log = self.logs.get(node.index)
        if log is None:
            log = self.logs[node.index] = AccessLog(self.tp)
        log.add(self.grid.datasets[job.spec.dataset].name, node.site.name, self.grid.now)

    def on_death(self, node: Node, lost: list[Replica]) -> None:
        self.logs.pop(node.index, None)       # its counts die with it
        for r in lost:
            self.watch[r.dataset.index] = None

    def _round(self) -> None:
        grid = self.grid
        if grid.done:
            return
        now = grid.now
        book = self.book
        bucket = self.tp.bucket(now)
        new_bucket = bucket != self.bucket
        self.bucket = bucket
        for index, log in self.logs.items():
            reporter = grid.nodes[index].id
            for name in sorted(log.take_changed()):
                book.merge(reporter, name, log.summary(name, now))
                self.quiet.pop(self.by_name[name].index, None)  # new reads: new facts
            if new_bucket:
                log.prune(now)
        if new_bucket:
            book.prune(now)
        datasets = grid.datasets
        if not self.shortcuts:                  # as the daemon: every dataset, every round
            todo = dict.fromkeys(d.index for d in datasets if not d.lost)
        else:
            # A dataset at rest (at its minimum, all replicas counted, idle memory,
            # no reads in the window: see _decide) would get a decision that does
            # nothing; so would one whose facts have not changed since a decision
            # that did nothing (same buckets, no new reads, same replicas, idle
            # memory).
            # Both are left out; a test checks the figures do not change.
            todo = dict.fromkeys(self.by_name[name].index for name in book.reports)
            todo.update(self.watch)
            quiet = self.quiet
            before = len(todo)
            todo = {i: None for i in todo if not self._asleep(quiet.get(i), bucket,
                                                              datasets[i].version, now)}
            self.skipped += before - len(todo)
        if todo:
            nodes = self._node_infos()
            for index in sorted(todo):
                self._decide(datasets[index], nodes, now)
        grid.engine.after(self.interval, self._round)

    @staticmethod
    def _asleep(quiet: tuple[int, int, float] | None, bucket: int, version: int,
                now: float) -> bool:
        return quiet is not None and quiet[:2] == (bucket, version) and now < quiet[2]

    def _node_infos(self) -> dict[bytes, NodeInfo]:
        """What the custodian knows of the live nodes now."""
        cache = self._infos
        out = {}
        for n in self.grid.nodes:
            if n.alive:
                info = cache.get(n.index)
                free, load = n.free_disk, n.load
                if info is None or info.free_bytes != free or info.load != load:
                    info = cache[n.index] = NodeInfo(n.id, n.site.name, free, load)
                out[n.id] = info
        return out

    def _decide(self, ds: Dataset, nodes: dict[bytes, NodeInfo], now: float) -> None:
        grid = self.grid
        if ds.lost:
            self.watch.pop(ds.index, None)
            return
        for n, t in list(ds.gone.items()):
            if now - t > self.record_ttl:
                del ds.gone[n]
        holders = [Holder(r.node.id, now, r.leaving) for r in ds.replicas.values()
                   if r.complete]
        holders += [Holder(grid.nodes[n].id, t) for n, t in ds.gone.items()
                    if n not in ds.replicas]
        state = DatasetState(ds.name, ds.size, ds.min_replicas, ds.max_replicas,
                             tuple(holders))
        memory = self.memory.get(ds.index)
        if memory is None:
            memory = self.memory[ds.index] = Memory()
        trend = self.book.trend(ds.name, now)
        by_site = self.book.by_site(ds.name, now)
        decision = decide(state, trend, by_site, nodes, memory, self.pp, now)
        self.decisions += 1
        if self.on_decision is not None:
            self.on_decision(ds, now, decision)
        for action in decision.actions:
            self.actions[action.kind] += 1
            node = grid.nodes[int.from_bytes(action.node, "big")]
            r = ds.replicas.get(node.index)
            if action.kind == "add":
                if r is None and node.alive and self.make_room(node, ds.size):
                    grid.replicator.copy(ds, node, POLICY)
                    nodes[node.id] = NodeInfo(node.id, node.site.name, node.free_disk,
                                              node.load)
            elif r is None:
                continue                       # the holder is gone already
            elif action.kind == "announce_drop":
                r.leaving = True
            elif action.kind == "cancel_drop":
                r.leaving = False
            elif action.kind == "drop":
                grid.remove_replica(r)
                nodes[node.id] = NodeInfo(node.id, node.site.name, node.free_disk, node.load)
        # Nothing asked, nothing under way: the next decision does the same until the
        # buckets, the reads or the replicas change, or the cool-down ends.  Not so
        # while a site reads enough for a replica it lacks: a node there may free up.
        steady = (not decision.actions and not memory.adding and not memory.leaving
                  and not ds.gone and len(decision.counted) >= decision.target)
        if steady:
            sites = {nodes[n].site for n in decision.counted if n in nodes}
            steady = all(reads < self.pp.site_add_reads or s in sites
                          for s, reads in by_site.items())
        idle = steady and memory.above_since is None and len(decision.counted) == \
            decision.target
        if steady:
            wake = (math.inf if memory.above_since is None
                    else memory.above_since + self.pp.cooldown)
            self.quiet[ds.index] = (self.bucket, ds.version, wake)
        else:
            self.quiet.pop(ds.index, None)
        if idle and decision.target == ds.min_replicas and len(ds.replicas) == len(holders):
            self.watch.pop(ds.index, None)      # at rest: looked at again when read
        else:
            self.watch[ds.index] = None


POLICIES: dict[str, Callable[[], Policy]] = {
    "static": Static,
    "cache-on-access": CacheOnAccess,
    "trend": Trend,
}
