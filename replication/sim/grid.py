"""The simulated grid at work: jobs placed, inputs staged, nodes dying, replicas copied.

``Grid`` owns the clock, the model and the statistics; a replica policy
(``policies.py``) decides which replicas exist, a placement strategy which
node runs a job.  A job's life:

1. submitted at its site, it waits in one FIFO queue until the placement
   strategy gives it a node (the head of the queue blocks the rest: when the
   strategy finds no node for it, none is tried for later jobs until a core
   frees up);
2. it takes a core and stages its input in: nothing to wait for if its node
   holds a complete replica of the dataset; otherwise the policy fetches the
   bytes the job reads from the best source (a complete replica at the job's
   site over the LAN, else the remote holder with the best rate now) and
   the job waits for them.  The wait, from the start of the stage-in until
   the input is local, is recorded;
3. it computes on its core, then frees it.

A node that dies loses its replicas, running jobs (they go back to the head of
the queue, to run again) and transfers (a stage-in whose source died starts
over from another source).  A dataset with no complete replica left on a
live node is lost for good; its jobs fail.

Replication transfers (repairs, the trend policy's adds) go through
``Replicator``: at most ``repl_per_node`` at a time per node, as source or
destination; the others wait in a FIFO queue.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from .engine import Engine, Event, SimError
from .model import Dataset, Link, Network, Node, Replica, Site, Transfer
from .workload import Failure, JobSpec, Workload

if TYPE_CHECKING:
    from .policies import Policy


@dataclass(slots=True, eq=False)
class Job:
    spec: JobSpec
    node: Node | None = None
    stage_start: float = 0.0
    event: Event | None = None
    attempts: int = 0
    transfer: Transfer | None = None   # its last stage-in, to stop it on ``requeue``


class Placement(Protocol):
    """Chooses the node that runs a job (steering adds its own strategies)."""

    def choose(self, job: Job, grid: Grid) -> Node | None:
        """A live node with a free core for ``job``, or None to leave it queued."""
        ...


class LeastLoaded:
    """The least loaded node with a free core at the job's site, else at the site with
    the most free cores; ties go to the lowest index (deterministic)."""

    def choose(self, job: Job, grid: Grid) -> Node | None:
        site = grid.sites[job.spec.site]
        if site.free_cores <= 0:
            best = max(grid.sites, key=lambda s: s.free_cores)
            if best.free_cores <= 0:
                return None
            site = best
        node = None
        most = 0.0
        for n in site.nodes:
            if n.alive and n.free_cores:
                free = n.free_cores / n.cores
                if free > most:
                    node, most = n, free
        return node


@dataclass
class Stats:
    waits: list[float] = field(default_factory=list)
    queued_seconds: float = 0.0     # submission to first start, summed
    local_hits: int = 0
    lan_stage_ins: int = 0
    wan_stage_ins: int = 0
    jobs_finished: int = 0
    jobs_failed: int = 0
    jobs_restarted: int = 0
    makespan: float = 0.0
    node_deaths: int = 0
    node_returns: int = 0
    replicas_lost: int = 0
    datasets_lost: int = 0
    replications: int = 0
    replication_bytes: int = 0
    replica_bytes: int = 0          # now, on live nodes (complete or being written)
    replica_byte_seconds: float = 0.0
    max_replica_bytes: int = 0
    _since: float = 0.0

    def storage(self, now: float, delta: int) -> None:
        self.replica_byte_seconds += self.replica_bytes * (now - self._since)
        self._since = now
        self.replica_bytes += delta
        if self.replica_bytes > self.max_replica_bytes:
            self.max_replica_bytes = self.replica_bytes


class Grid:
    def __init__(self, workload: Workload, policy: Policy,
                 placement: Placement | None = None) -> None:
        sc = workload.scenario
        self.workload = workload
        self.scenario = sc
        self.engine = Engine()
        self.network = Network(self.engine, sc.wan_flow)
        self.stats = Stats()
        self.placement: Placement = placement or LeastLoaded()
        self.sites: list[Site] = []
        self.nodes: list[Node] = []
        for i, spec in enumerate(workload.sites):
            site = Site(i, spec.name, Link(spec.wan))
            self.sites.append(site)
            for _ in range(spec.nodes):
                n = len(self.nodes)
                cores = workload.cores_of(n)
                node = Node(n, n.to_bytes(8, "big"), site, Link(sc.lan_rate),
                            cores, sc.disk_per_node, Link(sc.repl_rate), free_cores=cores)
                site.nodes.append(node)
                site.free_cores += node.cores
                self.nodes.append(node)
        self.free_cores = sum(s.free_cores for s in self.sites)
        self.datasets = [Dataset(i, d.name, d.size, sc.min_replicas, sc.max_replicas)
                         for i, d in enumerate(workload.datasets)]
        self.queue: deque[Job] = deque()
        self.jobs = [Job(spec) for spec in workload.jobs]
        self.pending_jobs = len(self.jobs)
        self.replicator = Replicator(self, sc.repl_per_node)
        self.policy = policy
        for d, dspec in zip(self.datasets, workload.datasets, strict=True):
            for n in dspec.holders:
                self.add_replica(d, self.nodes[n], "origin", complete=True)
        full = [n.index for n in self.nodes if n.used > n.disk]
        if full:
            raise SimError(f"the first replicas do not fit on nodes {full[:10]}")
        policy.attach(self)

    @property
    def now(self) -> float:
        return self.engine.now

    @property
    def done(self) -> bool:
        return self.pending_jobs == 0

    # -- running ------------------------------------------------------------------------

    def run(self) -> Stats:
        if self.jobs:
            self.engine.at(self.jobs[0].spec.submit, self._submit, 0)
        if self.workload.failures:
            self.engine.at(self.workload.failures[0].at, self._fail, 0)
        self.policy.start()
        self.engine.run()
        if not self.done:
            raise SimError(f"the events ran out with {self.pending_jobs} jobs not done")
        self.stats.storage(self.stats.makespan, 0)
        return self.stats

    def _submit(self, i: int) -> None:
        self.queue.append(self.jobs[i])
        if i + 1 < len(self.jobs):
            self.engine.at(self.jobs[i + 1].spec.submit, self._submit, i + 1)
        self.dispatch()

    def dispatch(self) -> None:
        queue = self.queue
        while queue and self.free_cores > 0:
            node = self.placement.choose(queue[0], self)
            if node is None:
                return
            if not node.alive or node.free_cores <= 0:
                raise SimError(f"placement chose node {node.index}, which cannot run a job")
            self._start(queue.popleft(), node)

    def _start(self, job: Job, node: Node) -> None:
        node.free_cores -= 1
        node.site.free_cores -= 1
        self.free_cores -= 1
        node.jobs[job.spec.index] = job
        job.node = node
        if job.attempts == 0:
            self.stats.queued_seconds += self.now - job.spec.submit
        job.attempts += 1
        job.stage_start = self.now
        self.policy.on_read(job)
        self.stage_in(job)

    def stage_in(self, job: Job) -> None:
        node = job.node
        assert node is not None
        ds = self.datasets[job.spec.dataset]
        replica = node.replicas.get(ds.index)
        if replica is not None and replica.complete:
            replica.last_used = self.now
            self.stats.local_hits += 1
            self.ready(job)
        elif ds.lost:
            self._end(job, failed=True)
        else:
            self.policy.fetch(job, ds)

    def fetch_scratch(self, job: Job, ds: Dataset) -> None:
        """Copy the bytes the job reads to its node, for it alone (deleted after it)."""
        node = job.node
        assert node is not None
        source = self.best_source(ds, node)
        if source is None:
            self._end(job, failed=True)
            return
        self.count_stage_in(source.node, node)
        job.transfer = self.network.start(source.node, node, job.spec.input, "stage-in",
                                          lambda tr: self.ready(job),
                                          lambda tr: self.stage_aborted(job, tr), source)

    def count_stage_in(self, src: Node, dst: Node) -> None:
        if src.site is dst.site:
            self.stats.lan_stage_ins += 1
        else:
            self.stats.wan_stage_ins += 1

    def stage_aborted(self, job: Job, tr: Transfer) -> None:
        """A stage-in lost its source: start over if the job's node is still there."""
        if job.node is tr.dst and tr.dst.alive:
            self.stage_in(job)

    def ready(self, job: Job) -> None:
        self.stats.waits.append(self.now - job.stage_start)
        job.event = self.engine.after(job.spec.compute, self._end, job)

    def _end(self, job: Job, failed: bool = False) -> None:
        node = job.node
        assert node is not None
        del node.jobs[job.spec.index]
        node.free_cores += 1
        node.site.free_cores += 1
        self.free_cores += 1
        job.node = None
        job.event = None
        self.pending_jobs -= 1
        if failed:
            self.stats.jobs_failed += 1
        else:
            self.stats.jobs_finished += 1
        self.stats.makespan = self.now
        if self.pending_jobs == 0:
            self.engine.stop()
        else:
            self.dispatch()

    def requeue(self, job: Job, front: bool = True) -> None:
        """End the job's attempt without a result (released, or failed where it ran): its
        stage-in (``job.transfer``) or its compute stops, its core frees, and it waits in
        the queue again, at the head (``front``) or the tail.  A hook for the layers
        that extend the simulator; the base grid never calls it."""
        node = job.node
        if node is None:
            raise SimError(f"job {job.spec.index} is not running: nothing to requeue")
        del node.jobs[job.spec.index]
        job.node = None                 # before the abort: its stage-in does not restart
        Engine.cancel(job.event)
        job.event = None
        tr, job.transfer = job.transfer, None
        if tr is not None and tr in tr.dst.transfers:
            self.network.abort(tr)
        node.free_cores += 1
        node.site.free_cores += 1
        self.free_cores += 1
        if front:
            self.queue.appendleft(job)
        else:
            self.queue.append(job)
        self.dispatch()

    # -- sources and targets --------------------------------------------------------------

    def best_source(self, ds: Dataset, dst: Node,
                    usable: Callable[[Replica], bool] | None = None) -> Replica | None:
        """The complete replica to read from: on ``dst`` itself, else at its site (the one
        read by the fewest transfers), else the remote one with the best rate now."""
        best: Replica | None = None
        best_key: tuple[float, float, int] = (0.0, 0.0, 0)
        rate_if = self.network.rate_if_started
        for r in ds.replicas.values():
            if not r.complete or (usable is not None and not usable(r)):
                continue
            if r.node is dst:
                return r
            if r.node.site is dst.site:
                key = (math.inf, -r.reading, -r.node.index)
            else:
                key = (rate_if(r.node, dst), -r.reading, -r.node.index)
            if best is None or key > best_key:
                best, best_key = r, key
        return best

    def add_replica(self, ds: Dataset, node: Node, kind: str, complete: bool) -> Replica:
        if ds.index in node.replicas:
            raise SimError(f"node {node.index} already holds {ds.name}")
        if not node.alive:
            raise SimError(f"replica of {ds.name} on dead node {node.index}")
        r = Replica(ds, node, kind, complete=complete, last_used=self.now)
        node.replicas[ds.index] = r
        ds.replicas[node.index] = r
        ds.version += 1
        node.used += ds.size
        if not complete:
            node.incoming += 1
        self.stats.storage(self.now, ds.size)
        return r

    def remove_replica(self, r: Replica) -> None:
        node, ds = r.node, r.dataset
        if node.replicas.get(ds.index) is not r:
            raise SimError(f"removing a replica of {ds.name} that node {node.index} lacks")
        del node.replicas[ds.index]
        del ds.replicas[node.index]
        ds.version += 1
        node.used -= ds.size
        if not r.complete:
            node.incoming -= 1
        self.stats.storage(self.now, -ds.size)
        # Transfers reading from it lose their source; those writing it are pointless.
        for tr in [t for t in node.transfers if t.source is r or t.target is r]:
            self.network.abort(tr)

    def completed(self, r: Replica) -> None:
        """The copy into ``r`` is done: it serves reads from now on."""
        r.complete = True
        r.last_used = self.now
        r.dataset.version += 1
        r.node.incoming -= 1

    def target_for(self, ds: Dataset, make_room: Callable[[Node, int], bool]) -> Node | None:
        """A live node for a new replica of ``ds``: not holding it, with room for it if
        any node has, at a site that holds none if there is one, then the fewest copies
        already coming in (repairs spread), then the most free disk; None if no node
        has room and ``make_room`` cannot make it on the best."""
        held = {r.node.site.index for r in ds.replicas.values()}
        best: Node | None = None
        best_key: tuple[bool, bool, int, int, int] = (False, False, 0, 0, 0)
        for n in self.nodes:
            if not n.alive or ds.index in n.replicas:
                continue
            key = (n.free_disk >= ds.size, n.site.index not in held, -n.incoming,
                   n.free_disk, -n.index)
            if best is None or key > best_key:
                best, best_key = n, key
        if best is not None and best.free_disk < ds.size and not make_room(best, ds.size):
            return None
        return best

    def check(self) -> None:
        """Raise SimError if the books of nodes and datasets disagree (for tests)."""
        for n in self.nodes:
            size = sum(r.dataset.size for r in n.replicas.values())
            incoming = sum(1 for r in n.replicas.values() if not r.complete)
            if (n.used, n.incoming) != (size, incoming):
                raise SimError(f"node {n.index}: used {n.used} incoming {n.incoming}, its "
                               f"replicas say {size} and {incoming}")
            if n.used > n.disk:
                raise SimError(f"node {n.index} holds {n.used} bytes on a {n.disk} disk")
            if n.alive and not 0 <= n.free_cores <= n.cores:
                raise SimError(f"node {n.index} has {n.free_cores} free cores")
            for r in n.replicas.values():
                if r.dataset.replicas.get(n.index) is not r:
                    raise SimError(f"node {n.index} holds a replica {r.dataset.name} lacks")
        for ds in self.datasets:
            for i, r in ds.replicas.items():
                if not r.node.alive or r.node.index != i:
                    raise SimError(f"{ds.name} lists a replica on node {i} that is gone")
        live = sum(n.used for n in self.nodes if n.alive)
        if live != self.stats.replica_bytes:
            raise SimError(f"replica bytes {self.stats.replica_bytes}, nodes hold {live}")
        if self.free_cores != sum(s.free_cores for s in self.sites) or any(
                s.free_cores != sum(n.free_cores for n in s.nodes if n.alive)
                for s in self.sites):
            raise SimError("free core counts disagree")

    # -- failures -------------------------------------------------------------------------

    def _fail(self, i: int) -> None:
        failures = self.workload.failures
        if i + 1 < len(failures):
            self.engine.at(failures[i + 1].at, self._fail, i + 1)
        f: Failure = failures[i]
        node = self.nodes[f.node]
        if not node.alive:
            return
        self.kill(node)
        if f.back is not None:
            self.engine.at(f.back, self.revive, node)

    def kill(self, node: Node) -> None:
        now = self.now
        self.stats.node_deaths += 1
        node.alive = False
        node.generation += 1
        self.free_cores -= node.free_cores
        node.site.free_cores -= node.free_cores
        node.free_cores = 0
        lost = list(node.replicas.values())
        for r in lost:
            del r.dataset.replicas[node.index]
            r.dataset.gone[node.index] = now
            r.dataset.version += 1
            self.stats.storage(now, -r.dataset.size)
        node.replicas.clear()
        node.used = 0
        node.incoming = 0
        self.stats.replicas_lost += len(lost)
        for tr in list(node.transfers):
            self.network.abort(tr)
        killed = list(node.jobs.values())
        node.jobs.clear()
        for job in reversed(killed):
            Engine.cancel(job.event)
            job.event = None
            job.node = None
            self.stats.jobs_restarted += 1
            self.queue.appendleft(job)
        for r in lost:
            ds = r.dataset
            if not ds.lost and not ds.sources():
                ds.lost = True
                self.stats.datasets_lost += 1
                for other in list(ds.replicas.values()):  # copies that can never finish
                    self.remove_replica(other)
        self.policy.on_death(node, lost)
        self.dispatch()

    def revive(self, node: Node) -> None:
        """The node comes back empty."""
        self.stats.node_returns += 1
        node.alive = True
        node.free_cores = node.cores
        node.site.free_cores += node.cores
        self.free_cores += node.cores
        self.dispatch()


@dataclass(slots=True, eq=False)
class Request:
    replica: Replica
    generation: int
    on_done: Callable[[Replica], None] | None


class Replicator:
    """Replication transfers: at most ``repl_per_node`` per node at a time (as source or
    destination; the daemon's ``max_pulls``), the copies into a node sharing its
    ``pulls`` link (the daemon's ``rate_mb_s``)."""

    def __init__(self, grid: Grid, repl_per_node: int) -> None:
        self.grid = grid
        self.limit = repl_per_node
        self.queue: dict[Request, None] = {}

    def copy(self, ds: Dataset, dst: Node, kind: str,
             on_done: Callable[[Replica], None] | None = None) -> Replica:
        """A new replica of ``ds`` on ``dst``, being written: its disk is reserved now,
        the copy starts when both ends have a free replication slot."""
        r = self.grid.add_replica(ds, dst, kind, complete=False)
        self.queue[Request(r, dst.generation, on_done)] = None
        self.pump()
        return r

    def pump(self) -> None:
        grid = self.grid
        limit = self.limit
        for req in list(self.queue):
            r = req.replica
            dst = r.node
            if dst.generation != req.generation or dst.replicas.get(r.dataset.index) is not r:
                del self.queue[req]     # the node died or the replica was removed
                continue
            if dst.repl_slots >= limit:
                continue
            src = grid.best_source(r.dataset, dst, lambda s: s.node.repl_slots < limit)
            if src is None:
                if not r.dataset.sources():
                    del self.queue[req]
                    grid.remove_replica(r)
                continue
            del self.queue[req]
            self._start(req, src)

    def _start(self, req: Request, src: Replica) -> None:
        grid = self.grid
        r = req.replica
        src.node.repl_slots += 1
        r.node.repl_slots += 1

        def release(tr: Transfer) -> None:
            tr.src.repl_slots -= 1
            tr.dst.repl_slots -= 1

        def done(tr: Transfer) -> None:
            release(tr)
            grid.completed(r)
            grid.stats.replications += 1
            grid.stats.replication_bytes += r.dataset.size
            if req.on_done is not None:
                req.on_done(r)
            self.pump()

        def aborted(tr: Transfer) -> None:
            release(tr)
            if r.node.alive and r.node.replicas.get(r.dataset.index) is r:
                self.queue[req] = None          # the source died: again from another
            self.pump()

        grid.network.start(src.node, r.node, r.dataset.size, "replication", done, aborted,
                           source=src, target=r, limit=r.node.pulls)
