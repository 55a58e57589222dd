"""The replication simulator's grid with bottlenecks, failed attempts, and four ways
of getting jobs to nodes.

``BottleneckGrid`` extends ``replication.sim.Grid`` (same network, nodes,
replicas, node deaths; the ``static`` replica policy) with:

* the bottleneck schedule of a ``World`` (``scenario.py``): a site's WAN link
  or a node's network card set to a share of its capacity for a while
  (``Network.set_capacity``: the transfers on it slow down at once), and
  sites where every job fails ``fail_after`` seconds after its input is
  ready;
* failed attempts: a job that fails goes back to the head of the queue
  (``Grid.requeue``) until it has failed ``max_attempts`` times, then it
  fails for good; node deaths do not count as attempts;
* a ``Scheduler`` that decides how jobs reach nodes (``dispatch``), which
  replica a stage-in reads (``source``), and hears what happens (stage-ins
  started and ended, job outcomes, deaths).

The schedulers (``SCHEDULERS``):

``round-robin``   push: each job, when it enters the queue, is assigned to the
                  next live node in turn and waits in that node's own queue
                  for one of its cores, whatever the node's state; a failed
                  attempt or a job of a dead node is pushed again, to the next
                  node in turn.
``random``        pull: the job at the head of the queue goes to a free core
                  drawn at random (so a node in proportion to its free cores).
``least-loaded``  pull: ``replication.sim.LeastLoaded`` (the least loaded node
                  at the job's site, else at the site with the most free
                  cores); no trends, no data locality.
``gridnode``      pull with steering: every node feeds its own
                  ``steering.Classifier`` from what it observes, and the
                  brokerage core (``steering.brokerage``) decides claims,
                  matches, releases and sources (see ``Steering``).

The three baselines read each stage-in from ``Grid.best_source`` (the
replica at the node's site, else the remote one with the best rate now).
"""

from __future__ import annotations

import math
import random
from collections import deque
from itertools import islice
from typing import Any

from replication import sim

from .. import brokerage as bk
from ..health import Classifier, HealthParams
from .scenario import Bottleneck, World

Job = sim.Job
Node = sim.Node


class Scheduler:
    """Pull by the grid's own loop (head of the queue, ``placement()``); the others
    change what they need."""

    name = "pull"

    def __init__(self) -> None:
        self._grid: BottleneckGrid | None = None

    @property
    def grid(self) -> BottleneckGrid:
        assert self._grid is not None, "the scheduler is not attached to a grid"
        return self._grid

    def placement(self) -> sim.Placement | None:
        return None

    def attach(self, grid: BottleneckGrid) -> None:
        self._grid = grid

    def start(self) -> None:
        """The run begins."""

    def dispatch(self) -> None:
        sim.Grid.dispatch(self.grid)

    def source(self, job: Job, ds: sim.Dataset, node: Node) -> sim.Replica | None:
        return self.grid.best_source(ds, node)

    def retry(self, job: Job) -> None:
        """A failed attempt of ``job`` (still on its node): back to the queue."""
        self.grid.requeue(job, front=True)

    def outcome(self, node: Node, ok: bool) -> None:
        """A job ended on ``node``: done, or its attempt failed."""

    def finished(self, job: Job, compute_s: float) -> None:
        """``job`` finished after computing for ``compute_s`` seconds."""

    def staged(self, job: Job) -> None:
        """``job``'s input is on its node."""

    def transfer_started(self, tr: sim.model.Transfer, job: Job) -> None:
        pass

    def transfer_ended(self, tr: sim.model.Transfer) -> None:
        pass

    def on_death(self, node: Node) -> None:
        pass

    def on_revive(self, node: Node) -> None:
        pass

    def waiting(self) -> bool:
        """Are jobs waiting for a core?"""
        return bool(self.grid.queue)

    def figures(self) -> dict[str, Any]:
        return {}


class RoundRobinPush(Scheduler):
    name = "round-robin"

    def attach(self, grid: BottleneckGrid) -> None:
        super().attach(grid)
        self.local: list[deque[Job]] = [deque() for _ in grid.nodes]
        self.turn = 0
        self.pushed = 0                     # jobs in the nodes' own queues

    def dispatch(self) -> None:
        g = self.grid
        q = g.queue
        nodes = g.nodes
        while q:
            for _ in range(len(nodes)):
                node = nodes[self.turn]
                self.turn = (self.turn + 1) % len(nodes)
                if node.alive:
                    self.local[node.index].append(q.popleft())
                    self.pushed += 1
                    break
            else:
                break                   # no live node: the jobs wait for one to return
        for site in g.sites:
            if site.free_cores <= 0:
                continue
            for node in site.nodes:
                local = self.local[node.index]
                while local and node.free_cores > 0 and node.alive:
                    self.pushed -= 1
                    g._start(local.popleft(), node)

    def on_death(self, node: Node) -> None:
        local = self.local[node.index]
        self.grid.queue.extendleft(reversed(local))   # pushed again, in their order
        self.pushed -= len(local)
        local.clear()

    def waiting(self) -> bool:
        return self.pushed > 0 or bool(self.grid.queue)


class RandomPull(Scheduler):
    name = "random"

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.rng = random.Random(f"{seed}/random-pull")

    def placement(self) -> sim.Placement:
        return self

    def choose(self, job: Job, grid: sim.Grid) -> Node | None:
        """A free core drawn at random: its site in proportion to the sites' free cores,
        then its node in proportion to the nodes' free cores there."""
        if grid.free_cores <= 0:
            return None
        x = self.rng.randrange(grid.free_cores)
        for site in grid.sites:
            if x < site.free_cores:
                for node in site.nodes:
                    if node.alive and x < node.free_cores:
                        return node
                    if node.alive:
                        x -= node.free_cores
                break
            x -= site.free_cores
        raise AssertionError("free core counts disagree")  # pragma: no cover - grid.check


class LeastLoadedPull(Scheduler):
    name = "least-loaded"

    def placement(self) -> sim.Placement:
        return sim.LeastLoaded()


class Steering(Scheduler):
    """gridnode: pull, with each node's classifier and the brokerage core.

    Every ``sample_every`` seconds each live node takes a pressure sample of
    what it can observe and feeds its own ``Classifier``: the largest of

    * the backlog of its network card: the bytes still to move in the
      transfers through it, over the card's capacity now, in seconds, times
      the share of that capacity in use, over ``stage_bound`` (1 when a busy
      card needs ``stage_bound`` seconds for what is queued on it: a hot
      source, or a slow disk; a card whose transfers are held up elsewhere
      moves little and counts little);
    * the backlog of its site's WAN link, measured the same way (the nodes of
      a site see their uplink's counters: a slow or saturated link);
    * its load: ``load_weight`` (0.4) x the share of its cores in use (a full
      node is busy, not pressured: it stays under ``clear_below``).

    A node judges its own resources, not the stage-ins it waits for: a reader
    of a hot source would otherwise call itself congested and claim less,
    which idles its cores and does not make the source faster.  Each job that
    ends there is an outcome (a failed attempt is a failure).  What peers see
    of a node — state, predicted pressure, slope — is what its classifier
    said last.  Then:

    * a node with free cores asks for jobs (at each dispatch: a job ended or
      was submitted, a congested node's stage-in ended, a sample was taken):
      ``brokerage.claim`` with its own view, then ``brokerage.choose`` over
      the first ``per_task`` queued jobs of each task (at most ``window``;
      ``per_task`` 0: the first ``window`` of the queue), each with its
      stage-in predicted on that node (``stage_estimate``: 0 if it holds the
      input, else the nominal LAN or WAN time from the source
      ``pick_source``'s classes would give, stretched by a congested end),
      and, when ``lpt_weight`` > 0, its expected compute: the mean compute of
      its task's jobs that have finished (learnt as they finish, never read
      from a queued job's spec; a task is the jobs submitted at the same
      time), or a scout (one of the first ``scouts`` jobs started of a task
      none of whose jobs has finished); a failing node runs a probe every
      ``probe_every`` seconds instead: a test job that passes after
      ``probe_time`` seconds, or fails like any job at a failing site;
    * at each sample every stage-in at a node that is not ok is weighed by
      ``should_release``: waited since it began, left at its current rate,
      against the whole stage-in on an ok node of another site from the best
      source (stretched if that source is congested); a released job goes
      back to the head of the queue and is not matched to that node again;
    * a stage-in reads from ``pick_source`` over the complete replicas (states
      as published, the rate a new transfer would get now).
    """

    name = "gridnode"

    def __init__(self, broker: bk.BrokerParams | None = None,
                 health: HealthParams | None = None, sample_every: float = 60.0,
                 probe_time: float = 300.0, load_weight: float = 0.4) -> None:
        super().__init__()
        self.p = broker or bk.BrokerParams()
        self.hp = health or HealthParams()
        self.sample_every = sample_every
        self.probe_time = probe_time
        self.load_weight = load_weight
        self.released = 0
        self.release_core_seconds = 0.0
        self.probes = 0
        self.probes_failed = 0
        self.state_seconds = {s: 0.0 for s in bk.STATE_RANK}
        self.claims = 0
        # Per task (its jobs' submission time: a task's jobs are submitted at once), the
        # compute seconds and count of its finished jobs: what scouting has learnt.
        self.task_compute: dict[float, list[float]] = {}
        self.task_started: dict[float, int] = {}     # jobs of the task started, per task
        # Per task, its jobs computing now: job index -> when it began (in that order).
        self.task_running: dict[float, dict[int, float]] = {}
        self._win: tuple[list[int], list[Job]] | None = None   # until the queue changes
        self._busy = False
        self._again = False

    def attach(self, grid: BottleneckGrid) -> None:
        super().attach(grid)
        n = len(grid.nodes)
        self.cls = [Classifier(self.hp, 0.0) for _ in range(n)]
        self.published = [bk.NodeView(slots=node.cores) for node in grid.nodes]
        self.incoming = [0] * n                   # its stage-ins under way
        self.jobs_of: dict[sim.model.Transfer, Job] = {}
        self.last_probe = [-math.inf] * n
        self.probing = [False] * n
        self.released_from: dict[int, int] = {}   # job index -> node it was released by
        self.ok_view = bk.NodeView()
        self.epoch = 0
        self._sources: dict[tuple[int, int], tuple[int, int, Node | None]] = {}
        self.same = [0] * n                      # samples in a row equal to the last
        self.last_pressure = [math.nan] * n
        sc = grid.world.scenario.base
        self.lan_rate = sc.lan_rate
        self.wan_rate = sc.wan_flow

    def start(self) -> None:
        self.grid.engine.after(self.sample_every, self._sample)

    # -- what a node observes ------------------------------------------------------------

    def transfer_started(self, tr: sim.model.Transfer, job: Job) -> None:
        self.incoming[tr.dst.index] += 1
        self.jobs_of[tr] = job

    def transfer_ended(self, tr: sim.model.Transfer) -> None:
        self.jobs_of.pop(tr, None)
        self.incoming[tr.dst.index] -= 1

    def outcome(self, node: Node, ok: bool) -> None:
        self.cls[node.index].outcome(self.grid.now, ok)
        self._publish(node)

    def finished(self, job: Job, compute_s: float) -> None:
        seen = self.task_compute.setdefault(job.spec.submit, [0.0, 0])
        seen[0] += compute_s
        seen[1] += 1
        self._stopped(job)

    def _stopped(self, job: Job) -> None:
        running = self.task_running.get(job.spec.submit)
        if running is not None:
            running.pop(job.spec.index, None)

    def retry(self, job: Job) -> None:
        self._stopped(job)
        super().retry(job)

    def running_for(self, job: Job) -> float:
        """How long the job of ``job``'s task that has computed longest has been
        computing: while none has finished, its compute is at least about that."""
        running = self.task_running.get(job.spec.submit)
        return self.grid.now - next(iter(running.values())) if running else 0.0

    def expected(self, job: Job) -> float | None:
        """The mean compute of the finished jobs of ``job``'s task; None if none."""
        seen = self.task_compute.get(job.spec.submit)
        return seen[0] / seen[1] if seen else None

    def staged(self, job: Job) -> None:
        self.task_running.setdefault(job.spec.submit, {})[job.spec.index] = self.grid.now
        node = job.node
        if node is not None and self.published[node.index].state == "congested":
            self.dispatch()                  # it may claim again

    @staticmethod
    def backlog(link: sim.model.Link, now: float) -> float:
        """Seconds ``link`` needs to move what is queued on it at its capacity now, times
        how busy it is (the share of its capacity in use): a link that moves little of
        what it holds is not where the transfers are held up."""
        left = rate = 0.0
        for tr in link.active:
            left += max(0.0, tr.remaining - tr.rate * (now - tr.last))
            rate += tr.rate
        cap = link.capacity
        return min(1.0, rate / cap) * left / cap

    def _pressure(self, node: Node, now: float, site_backlog: float) -> float:
        load = self.load_weight * (1 - node.free_cores / node.cores)
        return max(load, max(self.backlog(node.nic, now), site_backlog) / self.p.stage_bound)

    def _publish(self, node: Node) -> None:
        c = self.cls[node.index]
        t = c.trend
        if c.state != self.published[node.index].state:
            self.epoch += 1                  # the cached source choices are stale
        self.published[node.index] = bk.NodeView(c.state, t.prediction, t.slope, 0,
                                                 node.cores)

    def _sample(self) -> None:
        g = self.grid
        if g.done:
            return
        now = g.now
        dt = self.sample_every
        for site in g.sites:
            site_backlog = self.backlog(site.wan, now)
            for node in site.nodes:
                if not node.alive:
                    continue
                i = node.index
                c = self.cls[i]
                x = self._pressure(node, now, site_backlog)
                if x == self.last_pressure[i]:
                    self.same[i] += 1
                else:
                    self.same[i], self.last_pressure[i] = 0, x
                # A sample equal to the last window + hold ones changes nothing (the
                # trend of a flat window is flat, and the hold is already met): skipped.
                if self.same[i] < self.hp.window + self.hp.hold:
                    c.sample(now, x)
                    self._publish(node)
                self.state_seconds[c.state] += dt
        self._releases(now)
        g.engine.after(dt, self._sample)
        self.dispatch()

    def _releases(self, now: float) -> None:
        g = self.grid
        p = self.p
        for tr, job in list(self.jobs_of.items()):
            node = job.node
            if node is None or job.transfer is not tr:
                continue
            here = self.published[node.index]
            left = max(0.0, tr.remaining - tr.rate * (now - tr.last))
            rest = left / tr.rate if tr.rate > 0 else math.inf
            if not bk.should_release(now - job.stage_start, rest, 0.0, here, p):
                continue                      # not yet long enough: skip the estimate
            elsewhere = self._elsewhere(job, node)
            if bk.should_release(now - job.stage_start, rest, elsewhere, here, p):
                self.released += 1
                self.release_core_seconds += now - job.stage_start
                self.released_from[job.spec.index] = node.index
                g.requeue(job, front=True)

    def _elsewhere(self, job: Job, node: Node) -> float:
        """The stage-in ``job`` is predicted to take on an ok node of another site: the
        input over the nominal WAN rate from its best source, stretched if that source
        is congested."""
        best: tuple[int, int] | None = None
        best_node: Node | None = None
        for r in self.grid.datasets[job.spec.dataset].replicas.values():
            if r.complete and r.node is not node:
                key = (bk.source_rank(self.published[r.node.index].state), r.node.index)
                if best is None or key < best:
                    best, best_node = key, r.node
        if best_node is None:
            return math.inf
        return bk.stage_estimate(job.spec.input / self.wan_rate, self.ok_view,
                                 self.published[best_node.index], self.p)

    # -- claims ---------------------------------------------------------------------------

    def view(self, node: Node) -> bk.NodeView:
        pub = self.published[node.index]
        c = self.cls[node.index]            # a node knows its own state at once
        return bk.NodeView(c.state, pub.prediction, pub.slope, node.free_cores, node.cores,
                           self.incoming[node.index])

    def dispatch(self) -> None:
        if self._busy:                       # called back from a start: once more after
            self._again = True
            return
        self._busy = True
        try:
            self._again = True
            while self._again:
                self._again = False
                self._dispatch_once()
        finally:
            self._busy = False

    def _dispatch_once(self) -> None:
        g = self.grid
        now = g.now
        self._win = None                     # the queue may have changed since
        for site in g.sites:
            if site.free_cores <= 0:
                continue
            for node in site.nodes:
                if node.free_cores > 0 and node.alive:
                    if not g.queue and self.cls[node.index].state != "failing":
                        continue
                    self._claim(node, now)

    def _claim(self, node: Node, now: float) -> None:
        g = self.grid
        p = self.p
        i = node.index
        view = self.view(node)
        due = (view.state == "failing" and not self.probing[i]
               and now - self.last_probe[i] >= p.probe_every)
        c = bk.claim(view, p, due)
        if c.probe:
            self._probe(node, now)
        if c.jobs <= 0 or not g.queue:
            return
        if p.per_task:
            if self._win is None:
                self._win = self._window()
            at, window = self._win
        else:
            window = list(islice(g.queue, p.window))
            at = list(range(len(window)))
        moves = c.stage_ins > 0
        if not moves:                  # only jobs whose input it holds: any in the window?
            held = node.replicas
            if not any((r := held.get(job.spec.dataset)) is not None and r.complete
                       for job in window):
                return
        self.claims += 1
        options = [self._option(job, node, view, now, moves) for job in window]
        picks = bk.choose(options, c, p)
        chosen = [window[k] for k in picks]
        for k in sorted((at[k] for k in picks), reverse=True):
            del g.queue[k]
        for job in chosen:
            t = job.spec.submit
            self.task_started[t] = self.task_started.get(t, 0) + 1
            g._start(job, node)
        self._win = None

    def _window(self) -> tuple[list[int], list[Job]]:
        """The first ``per_task`` queued jobs of each task, in queue order, at most
        ``window`` of them: their places in the queue, and the jobs."""
        p = self.p
        taken: dict[float, int] = {}
        at: list[int] = []
        out: list[Job] = []
        for n, job in enumerate(self.grid.queue):
            t = job.spec.submit
            k = taken.get(t, 0)
            if k < p.per_task:
                taken[t] = k + 1
                at.append(n)
                out.append(job)
                if len(out) >= p.window:
                    break
        return at, out

    def _option(self, job: Job, node: Node, view: bk.NodeView, now: float,
                moves: bool) -> bk.Option:
        """``job`` as ``node`` would run it; ``moves``: the claim allows stage-ins (if
        not, a job whose input is elsewhere is not looked at further)."""
        ds = self.grid.datasets[job.spec.dataset]
        age = now - job.spec.submit
        excluded = self.released_from.get(job.spec.index) == node.index
        expect: float | None = None
        scout = False
        running = 0.0
        if self.p.lpt_weight:
            expect = self.expected(job)
            if expect is None:
                scout = self.task_started.get(job.spec.submit, 0) < self.p.scouts
                running = self.running_for(job)
        r = node.replicas.get(ds.index)
        if r is not None and r.complete:
            return bk.Option(0.0, age, True, excluded, expect, scout, running)
        if not moves:
            return bk.Option(math.inf, age, False, excluded, expect, scout, running)
        src = self._best_source_class(ds, node.site)
        if src is None:                # no source: it will fail at once wherever it goes
            return bk.Option(0.0, age, True, excluded, expect, scout, running)
        rate = self.lan_rate if src.site is node.site else self.wan_rate
        stage = bk.stage_estimate(job.spec.input / rate, view, self.published[src.index],
                                  self.p)
        return bk.Option(stage, age, False, excluded, expect, scout, running)

    def _best_source_class(self, ds: sim.Dataset, site: sim.Site) -> Node | None:
        """The holder of a complete replica of ``ds`` a node of ``site`` would read from,
        by ``pick_source``'s classes (state, then at the site); cached until a replica
        of ``ds`` or a node's state changes."""
        key = (ds.index, site.index)
        hit = self._sources.get(key)
        if hit is not None and hit[0] == ds.version and hit[1] == self.epoch:
            return hit[2]
        best: tuple[int, bool, int] | None = None
        best_node: Node | None = None
        for r in ds.replicas.values():
            if r.complete:
                k = (bk.source_rank(self.published[r.node.index].state), r.node.site is not site,
                     r.node.index)
                if best is None or k < best:
                    best, best_node = k, r.node
        self._sources[key] = (ds.version, self.epoch, best_node)
        return best_node

    def _probe(self, node: Node, now: float) -> None:
        g = self.grid
        i = node.index
        self.probes += 1
        self.probing[i] = True
        self.last_probe[i] = now
        fails = node.site.index in g.failing
        delay = g.world.scenario.fail_after if fails else self.probe_time
        g.engine.after(delay, self._probe_done, node, node.generation, not fails)

    def _probe_done(self, node: Node, generation: int, ok: bool) -> None:
        if node.generation != generation or not node.alive:
            return
        self.probing[node.index] = False
        if not ok:
            self.probes_failed += 1
        self.outcome(node, ok)
        self.dispatch()

    # -- sources, deaths --------------------------------------------------------------------

    def source(self, job: Job, ds: sim.Dataset, node: Node) -> sim.Replica | None:
        reps = [r for r in ds.replicas.values() if r.complete]
        rate_if = self.grid.network.rate_if_started
        options = [bk.Source(self.published[r.node.index].state, r.node is node,
                             r.node.site is node.site,
                             rate_if(r.node, node) if r.node is not node else math.inf,
                             r.reading) for r in reps]
        k = bk.pick_source(options)
        return None if k is None else reps[k]

    def on_death(self, node: Node) -> None:
        i = node.index
        self.probing[i] = False
        for job in node.jobs.values():
            self._stopped(job)

    def on_revive(self, node: Node) -> None:
        i = node.index
        self.cls[i] = Classifier(self.hp, self.grid.now)   # it comes back empty
        self.same[i], self.last_pressure[i] = 0, math.nan
        self._publish(node)
        self.last_probe[i] = -math.inf

    def figures(self) -> dict[str, Any]:
        return {
            "released": self.released,
            "released_core_hours": round(self.release_core_seconds / 3600, 1),
            "probes": self.probes,
            "probes_failed": self.probes_failed,
            "claims": self.claims,
            "node_hours_by_state": {s: round(v / 3600, 1)
                                    for s, v in self.state_seconds.items()},
        }


class BottleneckGrid(sim.Grid):
    def __init__(self, world: World, scheduler: Scheduler) -> None:
        self.world = world
        self.scheduler = scheduler
        super().__init__(world.workload, sim.Static(), scheduler.placement())
        self.failing: dict[int, Bottleneck] = {}          # site index ->
        self.failures = [0] * len(self.jobs)              # failed attempts per job
        self.failed_attempts = 0
        self.lost_core_seconds = 0.0                      # in failed attempts
        self.compute_start = [math.nan] * len(self.jobs)  # of the attempt that finished
        self.idle_waiting = 0.0                           # core-s free while jobs wait
        self.idle_arrivals = 0.0                          # ... none waits, more to come
        self.idle_tail = 0.0                              # ... none waits, none to come
        self.account_every = 60.0
        self.nominal_wan = [s.wan.capacity for s in self.sites]
        self.nominal_nic = [n.nic.capacity for n in self.nodes]
        scheduler.attach(self)

    def run(self) -> sim.Stats:
        for b in self.world.bottlenecks:
            self.engine.at(b.start, self._begin, b)
            self.engine.at(b.end, self._end_bottleneck, b)
        self.scheduler.start()
        self.engine.at(0.0, self._account)
        return super().run()

    def _account(self) -> None:
        """Every minute: the free cores of live nodes, idle while jobs wait, or while none
        does before the last submission (arrivals) or after it (the tail)."""
        if self.done:
            return
        idle = self.free_cores * self.account_every
        if self.scheduler.waiting():
            self.idle_waiting += idle
        elif self.now < self.workload.duration:
            self.idle_arrivals += idle
        else:
            self.idle_tail += idle
        self.engine.after(self.account_every, self._account)

    # -- bottlenecks -------------------------------------------------------------------------

    def _begin(self, b: Bottleneck) -> None:
        if b.kind == "link":
            self.network.set_capacity(self.sites[b.site].wan, self.nominal_wan[b.site] * b.factor)
        elif b.kind == "storage":
            assert b.node is not None
            self.network.set_capacity(self.nodes[b.node].nic, self.nominal_nic[b.node] * b.factor)
        else:
            self.failing[b.site] = b
            later = self.now + self.world.scenario.fail_after
            for node in self.sites[b.site].nodes:
                for job in list(node.jobs.values()):
                    if job.event is not None:          # computing: it fails too
                        sim.Engine.cancel(job.event)
                        job.event = self.engine.at(later, self._attempt_failed, job)

    def _end_bottleneck(self, b: Bottleneck) -> None:
        if b.kind == "link":
            self.network.set_capacity(self.sites[b.site].wan, self.nominal_wan[b.site])
        elif b.kind == "storage":
            assert b.node is not None
            self.network.set_capacity(self.nodes[b.node].nic, self.nominal_nic[b.node])
        elif self.failing.get(b.site) is b:
            del self.failing[b.site]

    # -- the life of a job, as the scheduler sees it ------------------------------------------

    def dispatch(self) -> None:
        self.scheduler.dispatch()

    def fetch_scratch(self, job: Job, ds: sim.Dataset) -> None:
        node = job.node
        assert node is not None
        source = self.scheduler.source(job, ds, node)
        if source is None:
            self._end(job, failed=True)
            return
        self.count_stage_in(source.node, node)
        sched = self.scheduler

        def done(tr: sim.model.Transfer) -> None:
            sched.transfer_ended(tr)
            self.ready(job)

        def aborted(tr: sim.model.Transfer) -> None:
            sched.transfer_ended(tr)
            self.stage_aborted(job, tr)

        tr = self.network.start(source.node, node, job.spec.input, "stage-in", done, aborted,
                                source)
        job.transfer = tr
        sched.transfer_started(tr, job)

    def ready(self, job: Job) -> None:
        node = job.node
        assert node is not None
        now = self.now
        self.stats.waits.append(now - job.stage_start)
        self.scheduler.staged(job)
        if node.site.index in self.failing:
            job.event = self.engine.after(self.world.scenario.fail_after,
                                          self._attempt_failed, job)
        else:
            self.compute_start[job.spec.index] = now
            job.event = self.engine.after(job.spec.compute, self._completed, job)

    def _completed(self, job: Job) -> None:
        assert job.node is not None
        self.scheduler.outcome(job.node, True)
        self.scheduler.finished(job, self.now - self.compute_start[job.spec.index])
        self._end(job)

    def _attempt_failed(self, job: Job) -> None:
        node = job.node
        assert node is not None
        self.failed_attempts += 1
        self.lost_core_seconds += self.now - job.stage_start
        self.failures[job.spec.index] += 1
        self.scheduler.outcome(node, False)
        if self.failures[job.spec.index] >= self.world.scenario.max_attempts:
            self._end(job, failed=True)
        else:
            self.scheduler.retry(job)

    def kill(self, node: Node) -> None:
        self.scheduler.on_death(node)
        super().kill(node)

    def revive(self, node: Node) -> None:
        self.scheduler.on_revive(node)
        super().revive(node)


SCHEDULERS = ("round-robin", "random", "least-loaded", "gridnode")


def make_scheduler(name: str, seed: int, broker: bk.BrokerParams | None = None,
                   health: HealthParams | None = None) -> Scheduler:
    if name == "round-robin":
        return RoundRobinPush()
    if name == "random":
        return RandomPull(seed)
    if name == "least-loaded":
        return LeastLoadedPull()
    if name == "gridnode":
        return Steering(broker, health)
    raise ValueError(f"no scheduler {name!r}: one of {', '.join(SCHEDULERS)}")
