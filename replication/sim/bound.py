"""How far any placement can go on a workload: replays of its reads, no simulation.

The simulator measures a policy; this asks what the reads themselves allow.
Each job's read is replayed in submission order against a set of (dataset,
site) pairs that hold a replica, under a model kinder than the simulator in
every way: copies are instant, nothing fails, links are never shared, so a
read from the job's site takes ``input / lan_rate`` and one from another
site ``input / wan_flow``.  The bytes are those of the remote reads plus one
dataset size per replica placed (repairs are left out).

* ``static``: the first replicas only;
* ``oracle``: knows the future: a replica from the start at every site whose
  reads of the dataset over the whole run add up to more than its size (the
  ones that read most, up to ``max_replicas``), and nowhere else;
* ``online``: a rule that sees only the past, as a custodian does: after a
  read, a site that read the dataset ``add`` times within ``window`` seconds
  gets a replica (optionally also a site that read it once, when the dataset
  was read ``popular`` times within the window over all sites), while the
  dataset has fewer than ``max_replicas``; a replica that its site has not
  read for ``keep`` seconds goes.

``frontier`` runs a grid of online rules and keeps those that no other beats
on both the wait and the bytes.  Used by ``scripts/placement_bound.py``;
``docs/simulator.md`` says what it showed.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from dataclasses import dataclass

from .workload import Workload

__all__ = ["Replay", "frontier", "online", "oracle", "static"]

HOUR = 3600.0


@dataclass(frozen=True)
class Replay:
    rule: str
    mean_wait_s: float       # per read, in the kind model
    remote_reads: int        # reads from another site
    read_bytes: int          # bytes read from another site
    copy_bytes: int          # one dataset size per replica placed
    replicas: int            # replicas placed

    @property
    def wan_bytes(self) -> int:
        return self.read_bytes + self.copy_bytes


def _origins(w: Workload) -> list[set[int]]:
    node_site = [i for i, s in enumerate(w.sites) for _ in range(s.nodes)]
    return [{node_site[n] for n in d.holders} for d in w.datasets]


def _replay(w: Workload, rule: str, placed: set[tuple[int, int]],
            decide: _Rule | None = None) -> Replay:
    sc = w.scenario
    origins = _origins(w)
    wait = 0.0
    remote = read = 0
    copies = sum(w.datasets[d].size for d, _ in placed)
    replicas = len(placed)
    held = {pair: 0.0 for pair in placed}       # pair -> last read there
    count = [len(o) for o in origins]           # replicas per dataset
    for d, _ in placed:
        count[d] += 1
    for job in w.jobs:
        pair = (job.dataset, job.site)
        if decide is not None and pair in held and job.submit - held[pair] > decide.keep:
            del held[pair]                       # idle too long: trimmed
            count[job.dataset] -= 1
        if job.site in origins[job.dataset] or pair in held:
            wait += job.input / sc.lan_rate
            if pair in held:
                held[pair] = job.submit
        else:
            wait += job.input / sc.wan_flow
            remote += 1
            read += job.input
            if (decide is not None and count[job.dataset] < sc.max_replicas
                    and decide.wants(job.dataset, job.site, job.submit)):
                held[pair] = job.submit
                count[job.dataset] += 1
                copies += w.datasets[job.dataset].size
                replicas += 1
        if decide is not None:
            decide.seen(job.dataset, job.site, job.submit)
    n = max(1, len(w.jobs))
    return Replay(rule, wait / n, remote, read, copies, replicas)


class _Rule:
    def __init__(self, window: float, add: int, keep: float, popular: int) -> None:
        self.window, self.add, self.keep, self.popular = window, add, keep, popular
        self.site_reads: dict[tuple[int, int], list[float]] = defaultdict(list)
        self.reads: dict[int, list[float]] = defaultdict(list)

    def seen(self, dataset: int, site: int, t: float) -> None:
        self.site_reads[(dataset, site)].append(t)
        self.reads[dataset].append(t)

    def _within(self, times: list[float], t: float) -> int:
        return len(times) - bisect.bisect_right(times, t - self.window)

    def wants(self, dataset: int, site: int, t: float) -> bool:
        """After this read (not yet ``seen``), does the site get a replica?"""
        here = self._within(self.site_reads[(dataset, site)], t) + 1
        if here >= self.add:
            return True
        return bool(self.popular) and self._within(self.reads[dataset], t) + 1 >= self.popular


def static(w: Workload) -> Replay:
    return _replay(w, "static", set())


def oracle(w: Workload) -> Replay:
    origins = _origins(w)
    moved: dict[tuple[int, int], int] = defaultdict(int)
    for job in w.jobs:
        if job.site not in origins[job.dataset]:
            moved[(job.dataset, job.site)] += job.input
    best: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for (d, site), n in moved.items():
        if n > w.datasets[d].size:
            best[d].append((n, site))
    placed = set()
    for d, sites in best.items():
        room = max(0, w.scenario.max_replicas - len(origins[d]))
        placed |= {(d, site) for _, site in sorted(sites, reverse=True)[:room]}
    return _replay(w, "oracle", placed)


def online(w: Workload, window: float, add: int, keep: float = math.inf,
           popular: int = 0) -> Replay:
    name = (f"online: {add} reads at the site within "
            + ("the run" if math.isinf(window) else f"{window / HOUR:g} h")
            + (f" (1 if the dataset had {popular})" if popular else "")
            + ", kept " + ("for ever" if math.isinf(keep) else f"{keep / HOUR:g} h idle"))
    return _replay(w, name, set(), _Rule(window, add, keep, popular))


def frontier(w: Workload) -> list[Replay]:
    """The online rules of a grid that no other rule of it beats on both counts,
    by mean wait."""
    runs = [online(w, window, add, keep, popular)
            for window in (0.5 * HOUR, HOUR, 2 * HOUR, 6 * HOUR, math.inf)
            for add in (1, 2, 3, 4)
            for keep in (3 * HOUR, 12 * HOUR, math.inf)
            for popular in ((0, 3, 5) if add > 1 and not math.isinf(window) else (0,))]
    runs.sort(key=lambda r: (r.mean_wait_s, r.wan_bytes))
    out: list[Replay] = []
    for r in runs:
        if not out or r.wan_bytes < out[-1].wan_bytes:
            out.append(r)
    return out
