"""Scenarios: the grid to build, the jobs to run and the nodes that die.

Everything random here is drawn from ``random.Random`` seeded by the
scenario's seed (one generator per purpose), once per run: the three policies
then see the same grid, the same jobs at the same times and the same node
deaths.

The ``hot-spot`` scenario (``hot_spot``):

* sites of uneven size (lognormal weights), each node 8 cores and a disk;
  a site's WAN link is 1 Gb/s per node, at least 10 and at most 100 Gb/s;
* datasets of 1-50 GB (log-uniform: many small, few big) in files of at most
  2 GB; a job reads 1-4 of its dataset's files (all of a small one);
* background jobs pick their dataset by a Zipf law (exponent 1.0) whose
  ranking shifts: every 6 hours a fifth of the ranks are shuffled.  Interest
  is regional: each dataset has 3 sites (drawn in proportion to their
  cores) whose users submit 70% of its background jobs (``locality``); the
  other 30% come from any site, in proportion to the sites' cores;
* hot spots: every 4 hours on average an episode starts: 3 datasets drawn
  from the whole catalogue (mostly tail ones) become hot, wanted mostly (85%)
  from 1-2 sites; its share of all jobs ramps up over 1 hour to 10-25%,
  stays 3-8 hours and cools over 2 hours;
* jobs arrive as a Poisson process sized for 70% of the grid's cores busy on
  average; compute time lognormal, mean 1.5 hours, at most 12 hours;
* each node dies once per 30 days on average (exponential); half of the dead
  come back empty after 1-4 hours, the others never;
* disks of 1 TB per node, 20 datasets per node: the minimum replicas fill
  about half of the disks.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from dataclasses import dataclass

from .model import GB, Gbps

HOUR = 3600.0


class ScenarioError(ValueError):
    """A scenario that cannot be built (the message says which value)."""


@dataclass(frozen=True)
class Scenario:
    name: str
    seed: int
    nodes: int
    jobs: int
    nodes_per_site: int = 20
    cores_per_node: int = 8
    disk_per_node: int = 1000 * GB
    lan_rate: float = 10 * Gbps        # each node's network card
    wan_flow: float = 1 * Gbps         # most one transfer between sites gets
    wan_per_node: float = 1 * Gbps
    wan_min: float = 10 * Gbps
    wan_max: float = 100 * Gbps
    datasets_per_node: float = 20.0     # the minimum replicas fill about half the disks
    size_min: int = 1 * GB
    size_max: int = 50 * GB
    file_size: int = 2 * GB
    files_per_job: tuple[int, int] = (1, 4)
    repl_per_node: int = 2             # replication copies at once per node (max_pulls)
    repl_rate: float = 100 * 10**6     # bytes/s of replication copies per node (rate_mb_s)
    min_replicas: int = 2
    max_replicas: int = 8
    utilization: float = 0.7
    compute_mean: float = 1.5 * HOUR
    compute_sigma: float = 0.8
    walltime: float = 12 * HOUR        # no job computes longer
    zipf_s: float = 1.0
    interest_sites: int = 3            # sites whose users read a dataset most
    locality: float = 0.7              # share of a dataset's background reads from them
    shift_every: float = 6 * HOUR
    shift_fraction: float = 0.2
    episode_every: float = 4 * HOUR
    episode_datasets: int = 3
    episode_sites: tuple[int, int] = (1, 2)
    episode_site_share: float = 0.85
    episode_peak: tuple[float, float] = (0.10, 0.25)
    episode_ramp: float = 1 * HOUR
    episode_plateau: tuple[float, float] = (3 * HOUR, 8 * HOUR)
    episode_cool: float = 2 * HOUR
    hot_cap: float = 0.6
    mtbf: float = 30 * 24 * HOUR
    return_share: float = 0.5
    downtime: tuple[float, float] = (1 * HOUR, 4 * HOUR)

    def check(self) -> None:
        if self.nodes < 2:
            raise ScenarioError(f"nodes must be at least 2, not {self.nodes}")
        if self.jobs < 1:
            raise ScenarioError(f"jobs must be at least 1, not {self.jobs}")
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ScenarioError(f"replicas need 1 <= min <= max, not {self.min_replicas}, "
                                f"{self.max_replicas}")
        if not 0 < self.utilization <= 1:
            raise ScenarioError(f"utilization {self.utilization} must be in (0, 1]")
        if not 0 < self.size_min <= self.size_max:
            raise ScenarioError(f"dataset sizes {self.size_min}..{self.size_max} are wrong")


def hot_spot(seed: int = 1, nodes: int = 200, jobs: int = 20_000) -> Scenario:
    return Scenario("hot-spot", seed, nodes, jobs)


SCENARIOS = {"hot-spot": hot_spot}


# -- what a run is made of --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SiteSpec:
    name: str
    nodes: int
    wan: float


@dataclass(frozen=True, slots=True)
class DatasetSpec:
    name: str
    size: int
    holders: tuple[int, ...]   # node indexes of the first replicas, on distinct sites


@dataclass(frozen=True, slots=True)
class JobSpec:
    index: int
    submit: float
    site: int
    dataset: int
    input: int                 # bytes the job reads
    compute: float
    hot: bool                  # submitted for a hot-spot episode


@dataclass(frozen=True, slots=True)
class Failure:
    at: float
    node: int
    back: float | None         # when it comes back empty; None: never


@dataclass(frozen=True, slots=True)
class Episode:
    start: float
    datasets: tuple[int, ...]
    sites: tuple[int, ...]
    peak: float
    plateau: float

    def share(self, t: float, ramp: float, cool: float) -> float:
        x = t - self.start
        if x < 0:
            return 0.0
        if x < ramp:
            return self.peak * x / ramp
        x -= ramp
        if x < self.plateau:
            return self.peak
        x -= self.plateau
        return self.peak * (1 - x / cool) if x < cool else 0.0


@dataclass(frozen=True)
class Workload:
    scenario: Scenario
    sites: tuple[SiteSpec, ...]
    datasets: tuple[DatasetSpec, ...]
    jobs: tuple[JobSpec, ...]
    failures: tuple[Failure, ...]
    episodes: tuple[Episode, ...]
    duration: float            # last submission
    node_cores: tuple[int, ...] = ()   # per node; empty: every node ``cores_per_node``

    def cores_of(self, node: int) -> int:
        return self.node_cores[node] if self.node_cores else self.scenario.cores_per_node

    @property
    def total_cores(self) -> int:
        return sum(self.node_cores) if self.node_cores else (
            self.scenario.nodes * self.scenario.cores_per_node)


def _rng(seed: int, purpose: str) -> random.Random:
    return random.Random(f"{seed}/{purpose}")


def build(sc: Scenario) -> Workload:
    sc.check()
    sites = _sites(sc, _rng(sc.seed, "sites"))
    node_site = [i for i, s in enumerate(sites) for _ in range(s.nodes)]
    datasets = _datasets(sc, sites, node_site, _rng(sc.seed, "datasets"))
    jobs, episodes = _jobs(sc, sites, datasets, _rng(sc.seed, "jobs"))
    duration = jobs[-1].submit
    failures = _failures(sc, duration, _rng(sc.seed, "failures"))
    return Workload(sc, sites, datasets, jobs, failures, episodes, duration)


def _sites(sc: Scenario, rng: random.Random) -> tuple[SiteSpec, ...]:
    n = max(min(8, sc.nodes // 2), round(sc.nodes / sc.nodes_per_site))
    weights = [rng.lognormvariate(0, 0.6) for _ in range(n)]
    total = sum(weights)
    # Every site has a node; the rest go by weight (largest remainders).
    share = [w / total * (sc.nodes - n) for w in weights]
    counts = [1 + int(x) for x in share]
    order = sorted(range(n), key=lambda i: int(share[i]) - share[i])
    for i in order[: sc.nodes - sum(counts)]:
        counts[i] += 1
    return tuple(SiteSpec(f"site-{i:02d}", c,
                          min(sc.wan_max, max(sc.wan_min, c * sc.wan_per_node)))
                 for i, c in enumerate(counts))


def _datasets(sc: Scenario, sites: tuple[SiteSpec, ...], node_site: list[int],
              rng: random.Random) -> tuple[DatasetSpec, ...]:
    """The datasets and their first replicas: ``min_replicas`` nodes with room, on
    distinct sites (as many as there are)."""
    n = max(1, round(sc.nodes * sc.datasets_per_node))
    by_site: list[list[int]] = [[] for _ in sites]
    for node, site in enumerate(node_site):
        by_site[site].append(node)
    free = [sc.disk_per_node] * len(node_site)
    lo, hi = math.log(sc.size_min), math.log(sc.size_max)
    out = []
    for i in range(n):
        size = int(math.exp(rng.uniform(lo, hi)))
        k = min(sc.min_replicas, len(sites))
        holders: list[int] = []
        for s in rng.sample(range(len(sites)), len(sites)):
            room = [node for node in by_site[s] if free[node] >= size]
            if room:
                holders.append(rng.choice(room))
                free[holders[-1]] -= size
                if len(holders) == k:
                    break
        if len(holders) < k:
            raise ScenarioError(f"the datasets do not fit on the disks: dataset {i} of {n} "
                                f"({size} bytes) finds room on {len(holders)} sites")
        out.append(DatasetSpec(f"sim:ds{i:05d}", size, tuple(holders)))
    return tuple(out)


def _zipf_cdf(n: int, s: float) -> list[float]:
    weights = [1.0 / (r + 1) ** s for r in range(n)]
    return list(itertools.accumulate(weights))


def _jobs(sc: Scenario, sites: tuple[SiteSpec, ...], datasets: tuple[DatasetSpec, ...],
          rng: random.Random) -> tuple[tuple[JobSpec, ...], tuple[Episode, ...]]:
    cores = sc.nodes * sc.cores_per_node
    rate = sc.utilization * cores / sc.compute_mean          # jobs per second
    span = sc.jobs / rate                                    # expected submission span
    nds = len(datasets)
    cdf = _zipf_cdf(nds, sc.zipf_s)
    ranking = list(range(nds))
    rng.shuffle(ranking)
    site_cdf = list(itertools.accumulate(s.nodes for s in sites))
    interest = [weighted_sample(rng, [s.nodes for s in sites],
                                 min(sc.interest_sites, len(sites)))
                for _ in range(nds)]
    episodes = _episodes(sc, len(sites), nds, span, rng)
    mu = math.log(sc.compute_mean) - sc.compute_sigma ** 2 / 2
    jobs = []
    t = 0.0
    next_shift = sc.shift_every
    for i in range(sc.jobs):
        t += rng.expovariate(rate)
        while t >= next_shift:
            k = max(2, int(nds * sc.shift_fraction))
            ranks = rng.sample(range(nds), min(k, nds))
            moved = [ranking[r] for r in ranks]
            rng.shuffle(moved)
            for r, d in zip(ranks, moved, strict=True):
                ranking[r] = d
            next_shift += sc.shift_every
        shares = [(e, e.share(t, sc.episode_ramp, sc.episode_cool)) for e in episodes
                  if e.start <= t]
        hot = sum(s for _, s in shares)
        x = rng.random()
        episode = None
        if hot > 0 and x < min(hot, sc.hot_cap):
            scale = min(hot, sc.hot_cap) / hot
            acc = 0.0
            for e, s in shares:
                acc += s * scale
                if x < acc:
                    episode = e
                    break
        if episode is not None:
            dataset = rng.choice(episode.datasets)
            if rng.random() < sc.episode_site_share:
                site = rng.choice(episode.sites)
            else:
                site = bisect.bisect_right(site_cdf, rng.random() * site_cdf[-1])
        else:
            rank = bisect.bisect_right(cdf, rng.random() * cdf[-1])
            dataset = ranking[min(rank, nds - 1)]
            if interest[dataset] and rng.random() < sc.locality:
                site = rng.choice(interest[dataset])
            else:
                site = bisect.bisect_right(site_cdf, rng.random() * site_cdf[-1])
        site = min(site, len(sites) - 1)
        size = datasets[dataset].size
        files = rng.randint(*sc.files_per_job)
        read = min(size, files * sc.file_size)
        compute = min(sc.walltime, rng.lognormvariate(mu, sc.compute_sigma))
        jobs.append(JobSpec(i, t, site, dataset, read, compute, episode is not None))
    return tuple(jobs), episodes


def weighted_sample(rng: random.Random, weights: list[float], k: int) -> tuple[int, ...]:
    """Up to ``k`` distinct indexes, each drawn in proportion to its weight (never
    one of weight 0)."""
    left = {i: w for i, w in enumerate(weights) if w > 0}
    out = []
    for _ in range(min(k, len(left))):
        x = rng.random() * sum(left.values())
        keys = list(left)
        chosen = keys[-1]
        for i in keys:
            x -= left[i]
            if x < 0:
                chosen = i
                break
        out.append(chosen)
        del left[chosen]
    return tuple(out)


def _episodes(sc: Scenario, nsites: int, nds: int, span: float,
              rng: random.Random) -> tuple[Episode, ...]:
    out = []
    t = rng.expovariate(1 / sc.episode_every)
    while t < span:
        k = rng.randint(*sc.episode_sites)
        out.append(Episode(
            start=t,
            datasets=tuple(rng.sample(range(nds), min(sc.episode_datasets, nds))),
            sites=tuple(rng.sample(range(nsites), min(k, nsites))),
            peak=rng.uniform(*sc.episode_peak),
            plateau=rng.uniform(*sc.episode_plateau)))
        t += rng.expovariate(1 / sc.episode_every)
    return tuple(out)


def _failures(sc: Scenario, duration: float, rng: random.Random) -> tuple[Failure, ...]:
    out = []
    for node in range(sc.nodes):
        t = rng.expovariate(1 / sc.mtbf)
        while t < duration:
            back = None
            if rng.random() < sc.return_share:
                back = t + rng.uniform(*sc.downtime)
            out.append(Failure(t, node, back))
            if back is None:
                break
            t = back + rng.expovariate(1 / sc.mtbf)
    out.sort(key=lambda f: (f.at, f.node))
    return tuple(out)
