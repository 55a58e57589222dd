"""The ``bottleneck`` scenario: a saturated grid that reads datasets, and the
bottlenecks that hit it.

The grid and its datasets are the hot-spot scenario's (``replication.sim``:
sites of uneven size, 1 TB disks, datasets of 1-50 GB with 2 replicas on
distinct sites, nodes that die about once a month).  What differs:

* **Nodes of three sizes**: each node has 4, 8 or 12 cores (``node_cores``,
  drawn per node with equal chances: generations of worker nodes; 8 on
  average, as the hot-spot grid's).  ``node_cores=(8,)`` gives an even grid,
  on which round-robin loses little (``docs/simulator.md``).
* **Jobs come in tasks** (bulk submissions, as PanDA's): a task has 50-1000
  jobs (log-uniform) submitted at once, reads 1-5 datasets picked by a Zipf
  law (s = 1) over a shuffled ranking, each job 1-4 files of 2 GB of one of
  them; a task's jobs compute for about the same time (lognormal, sigma 0.25,
  around the task's mean, which is itself lognormal over tasks: mean 1 hour,
  sigma 0.5; at most 12 hours).  Tasks arrive as a Poisson process bringing
  work at ``backlog`` (2) times what the grid's cores can do, so a queue builds
  up and the grid is busy until the end: the run measures throughput, not
  latency.
* **Bottlenecks**, each at a time drawn uniformly in a part of the expected
  span (total work over total cores), on targets drawn by the seed:

  - ``link``: a site's WAN link drops to ``link_factor`` (a tenth) of its
    capacity for ``link_hours`` (4); the site is drawn in proportion to its
    nodes; starts in 10-60% of the span;
  - ``storage``: a storage node slows: its network card (every transfer in or
    out of it) drops to ``storage_factor`` (1/20: 500 Mb/s of 10 Gb/s, a
    degraded disk server) for ``storage_hours`` (3); the node is drawn in
    proportion to the jobs that read the datasets it holds (busy servers are
    the ones that degrade); starts in 10-70% of the span;
  - ``failing``: every job at a site fails ``fail_after`` (120) seconds after
    its input is ready — and the ones computing there when it starts, 120 s
    after the start — for ``failing_hours`` (1) (a broken software area, a
    black hole); the site is drawn in proportion to its nodes; starts in
    20-70% of the span.

  ``link_drops``, ``slow_storage`` and ``failing_sites`` are counts per 200
  nodes (at least one each, targets distinct within a kind).

Every random draw comes from ``random.Random`` seeded by the seed and a
purpose, so a seed gives one workload and one schedule for every policy.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import math
import random
from dataclasses import dataclass

from replication import sim

HOUR = 3600.0
KINDS = ("link", "storage", "failing")


@dataclass(frozen=True)
class BottleneckScenario:
    base: sim.Scenario                         # the grid, datasets and node deaths
    task_jobs: tuple[int, int] = (50, 1000)    # jobs per task, log-uniform
    task_datasets: tuple[int, int] = (1, 5)    # datasets a task reads
    compute_mean: float = 1 * HOUR             # mean over tasks of their mean compute
    task_sigma: float = 0.5                    # lognormal sigma of the task means
    job_sigma: float = 0.25                    # ... of a task's jobs around its mean
    backlog: float = 2.0                       # work arrives at this x the grid's cores
    max_attempts: int = 3                      # the job spec's default
    fail_after: float = 120.0                  # s: a job at a failing site fails then
    link_drops: float = 1.0                    # per 200 nodes
    link_factor: float = 0.1
    link_hours: float = 4.0
    slow_storage: float = 1.0
    storage_factor: float = 0.05
    storage_hours: float = 3.0
    failing_sites: float = 1.0
    failing_hours: float = 1.0
    node_cores: tuple[int, ...] = (4, 8, 12)   # cores of a node: drawn per node

    @property
    def name(self) -> str:
        return "bottleneck"

    @property
    def seed(self) -> int:
        return self.base.seed

    @property
    def nodes(self) -> int:
        return self.base.nodes

    @property
    def jobs(self) -> int:
        return self.base.jobs

    def check(self) -> None:
        self.base.check()
        bad = sim.ScenarioError
        for name in ("task_jobs", "task_datasets"):
            lo, hi = getattr(self, name)
            if not 1 <= lo <= hi:
                raise bad(f"{name} needs 1 <= low <= high, not {lo}, {hi}")
        for name in ("compute_mean", "backlog", "fail_after", "link_hours",
                     "storage_hours", "failing_hours"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise bad(f"{name} must be > 0, not {value}")
        for name in ("task_sigma", "job_sigma", "link_drops", "slow_storage", "failing_sites"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise bad(f"{name} must be >= 0, not {value}")
        for name in ("link_factor", "storage_factor"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise bad(f"{name} must be in (0, 1], not {value}")
        if not self.node_cores or not all(1 <= c <= 4096 for c in self.node_cores):
            raise bad(f"node_cores needs one or more core counts of 1-4096, not "
                      f"{self.node_cores}")
        if not 1 <= self.max_attempts <= 100:
            raise bad(f"max_attempts must be 1-100, not {self.max_attempts}")


def bottleneck(seed: int = 1, nodes: int = 200, jobs: int = 20_000,
               **changes: object) -> BottleneckScenario:
    sc = BottleneckScenario(sim.hot_spot(seed, nodes, jobs))
    return dataclasses.replace(sc, **changes) if changes else sc  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Bottleneck:
    kind: str                  # link | storage | failing
    start: float
    end: float
    site: int                  # the site hit (the node's, for storage)
    node: int | None = None    # storage: the node that slows
    factor: float = 1.0        # link, storage: the share of capacity left


@dataclass(frozen=True)
class World:
    """One workload and its bottleneck schedule: what every policy plays."""

    scenario: BottleneckScenario
    workload: sim.Workload
    bottlenecks: tuple[Bottleneck, ...]
    tasks: int
    work: float                # core-seconds of compute in all the jobs

    @property
    def span(self) -> float:
        """The expected span: the work over every core of the grid."""
        return self.work / self.workload.total_cores


def _rng(seed: int, purpose: str) -> random.Random:
    return random.Random(f"{seed}/bottleneck/{purpose}")


def build_world(sc: BottleneckScenario) -> World:
    sc.check()
    base = sc.base
    # The hot-spot builder makes the sites and the datasets (and one throw-away job).
    grid = sim.build(dataclasses.replace(base, jobs=1))
    rng = _rng(sc.seed, "cores")
    node_cores = tuple(rng.choice(sc.node_cores) for _ in range(sc.nodes))
    cores = sum(node_cores)
    jobs, tasks = _jobs(sc, grid.sites, grid.datasets, cores, _rng(sc.seed, "jobs"))
    work = sum(j.compute for j in jobs)
    horizon = 3 * work / cores + 24 * HOUR       # node deaths planned well past the end
    failures = _failures(base, horizon, _rng(sc.seed, "failures"))
    workload = sim.Workload(base, grid.sites, grid.datasets, jobs, failures, (),
                            jobs[-1].submit, node_cores)
    bottlenecks = _bottlenecks(sc, workload, work / cores, _rng(sc.seed, "bottlenecks"))
    return World(sc, workload, bottlenecks, tasks, work)


def _lognormal(rng: random.Random, mean: float, sigma: float) -> float:
    return rng.lognormvariate(math.log(mean) - sigma ** 2 / 2, sigma) if sigma else mean


def _jobs(sc: BottleneckScenario, sites: tuple[sim.workload.SiteSpec, ...],
          datasets: tuple[sim.workload.DatasetSpec, ...], cores: int,
          rng: random.Random) -> tuple[tuple[sim.workload.JobSpec, ...], int]:
    base = sc.base
    nds = len(datasets)
    ranking = list(range(nds))
    rng.shuffle(ranking)
    cdf = list(itertools.accumulate(1.0 / (r + 1) ** base.zipf_s for r in range(nds)))
    site_cdf = list(itertools.accumulate(s.nodes for s in sites))
    lo, hi = (math.log(x) for x in sc.task_jobs)
    out: list[sim.workload.JobSpec] = []
    t = 0.0
    tasks = 0
    while len(out) < sc.jobs:
        tasks += 1
        n = min(sc.jobs - len(out), round(math.exp(rng.uniform(lo, hi))))
        k = min(nds, rng.randint(*sc.task_datasets))
        chosen: list[int] = []
        while len(chosen) < k:
            d = ranking[min(nds - 1, bisect.bisect_right(cdf, rng.random() * cdf[-1]))]
            if d not in chosen:
                chosen.append(d)
        site = min(len(sites) - 1, bisect.bisect_right(site_cdf, rng.random() * site_cdf[-1]))
        mean = _lognormal(rng, sc.compute_mean, sc.task_sigma)
        work = 0.0
        for _ in range(n):
            d = rng.choice(chosen)
            read = min(datasets[d].size, rng.randint(*base.files_per_job) * base.file_size)
            compute = min(base.walltime, _lognormal(rng, mean, sc.job_sigma))
            work += compute
            out.append(sim.workload.JobSpec(len(out), t, site, d, read, compute, False))
        # The next task comes when, on average, this one's work has been brought in
        # at ``backlog`` times what the grid can do.
        t += rng.expovariate(1.0) * work / (sc.backlog * cores)
    return tuple(out), tasks


def _failures(base: sim.Scenario, horizon: float,
              rng: random.Random) -> tuple[sim.workload.Failure, ...]:
    """Node deaths as in the hot-spot scenario: one per ``mtbf`` per node on average,
    ``return_share`` of the dead back empty after ``downtime``."""
    out = []
    for node in range(base.nodes):
        t = rng.expovariate(1 / base.mtbf)
        while t < horizon:
            back = None
            if rng.random() < base.return_share:
                back = t + rng.uniform(*base.downtime)
            out.append(sim.workload.Failure(t, node, back))
            if back is None:
                break
            t = back + rng.expovariate(1 / base.mtbf)
    out.sort(key=lambda f: (f.at, f.node))
    return tuple(out)


def _count(per_200: float, nodes: int, most: int) -> int:
    return min(most, max(1, round(per_200 * nodes / 200))) if per_200 > 0 else 0


def _bottlenecks(sc: BottleneckScenario, w: sim.Workload, span: float,
                 rng: random.Random) -> tuple[Bottleneck, ...]:
    out = []
    site_weights = [float(s.nodes) for s in w.sites]
    node_site = [i for i, s in enumerate(w.sites) for _ in range(s.nodes)]
    k = _count(sc.link_drops, sc.nodes, len(w.sites))
    for s in sim.weighted_sample(rng, site_weights, k):
        t = rng.uniform(0.1, 0.6) * span
        out.append(Bottleneck("link", t, t + sc.link_hours * HOUR, s, None, sc.link_factor))
    reads = [0.0] * len(w.datasets)
    for j in w.jobs:
        reads[j.dataset] += 1
    node_weights = [0.0] * sc.nodes
    for d, spec in enumerate(w.datasets):
        for n in spec.holders:
            node_weights[n] += reads[d]
    k = _count(sc.slow_storage, sc.nodes, sc.nodes)
    for n in sim.weighted_sample(rng, node_weights, k):
        t = rng.uniform(0.1, 0.7) * span
        out.append(Bottleneck("storage", t, t + sc.storage_hours * HOUR, node_site[n], n,
                              sc.storage_factor))
    k = _count(sc.failing_sites, sc.nodes, len(w.sites))
    for s in sim.weighted_sample(rng, site_weights, k):
        t = rng.uniform(0.2, 0.7) * span
        out.append(Bottleneck("failing", t, t + sc.failing_hours * HOUR, s))
    out.sort(key=lambda b: (b.start, KINDS.index(b.kind), b.site))
    return tuple(out)
