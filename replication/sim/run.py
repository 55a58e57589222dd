"""Run a scenario under each policy and sum the runs up in figures.

``run_policies`` builds the workload once (same seed: same grid, jobs and
node deaths for every policy) and runs one fresh ``Grid`` per policy.  The
figures of a run (``figures``):

* ``mean_wait_s``, ``p95_wait_s``: stage-in wait per stage-in completed (a job
  restarted after its node died counts once per start), seconds;
* ``wan_bytes``: bytes moved between sites, stage-ins, cache fills and
  replication copies together (``wan_bytes_by_purpose`` splits them);
* ``storage_mean_bytes``: replica bytes on live nodes (complete or being
  written), averaged over time from 0 to the makespan; ``storage_end_bytes``
  the same at the makespan; ``storage_max_bytes`` the most at any time;
* ``datasets_lost``: datasets whose every replica died;
* ``jobs_finished``, ``jobs_failed`` (their dataset was lost), ``makespan_s``
  (when the last job ended), ``mean_queue_s`` (submission to first start,
  per job), ``wall_s`` (seconds of real time the run took).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Any

from .grid import Grid, Placement
from .policies import POLICIES, CacheOnAccess, Policy, Trend
from .workload import Workload


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank ``q`` percentile (0-100) of ``values``; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    k = max(0, math.ceil(q / 100 * len(ordered)) - 1)
    return ordered[k]


def run_one(workload: Workload, policy: Policy,
            placement: Placement | None = None) -> tuple[Grid, dict[str, Any]]:
    started = time.perf_counter()
    grid = Grid(workload, policy, placement)
    stats = grid.run()
    wall = time.perf_counter() - started
    waits = stats.waits
    net = grid.network.stats
    span = stats.makespan
    fig: dict[str, Any] = {
        "mean_wait_s": round(sum(waits) / len(waits), 3) if waits else 0.0,
        "p95_wait_s": round(percentile(waits, 95), 3),
        "stage_ins": len(waits),
        "local_hits": stats.local_hits,
        "lan_stage_ins": stats.lan_stage_ins,
        "wan_stage_ins": stats.wan_stage_ins,
        "wan_bytes": round(net.wan_bytes),
        "wan_bytes_by_purpose": {k: round(v) for k, v in
                                 sorted(net.wan_bytes_by_purpose.items())},
        "lan_bytes": round(net.lan_bytes),
        "storage_mean_bytes": round(stats.replica_byte_seconds / span) if span > 0 else 0,
        "storage_end_bytes": stats.replica_bytes,
        "storage_max_bytes": stats.max_replica_bytes,
        "datasets_lost": stats.datasets_lost,
        "jobs_finished": stats.jobs_finished,
        "jobs_failed": stats.jobs_failed,
        "jobs_restarted": stats.jobs_restarted,
        "makespan_s": round(span, 1),
        "mean_queue_s": round(stats.queued_seconds / len(grid.jobs), 1) if grid.jobs else 0.0,
        "node_deaths": stats.node_deaths,
        "replicas_lost": stats.replicas_lost,
        "replications": stats.replications,
        "replication_bytes": stats.replication_bytes,
        "events": grid.engine.events_run,
        "wall_s": round(wall, 2),
    }
    if isinstance(policy, CacheOnAccess):
        fig["evictions"] = policy.evictions
    if isinstance(policy, Trend):
        fig["decisions"] = policy.decisions
        fig["actions"] = dict(policy.actions)
    return grid, fig


def run_policies(workload: Workload, names: Iterable[str] = tuple(POLICIES),
                 placement: Callable[[], Placement] | None = None,
                 progress: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    out = {}
    for name in names:
        if progress is not None:
            progress(f"running {name} ...")
        _, fig = run_one(workload, POLICIES[name](), placement() if placement else None)
        out[name] = fig
        if progress is not None:
            progress(f"  {name}: mean wait {fig['mean_wait_s']:.1f} s, "
                     f"WAN {fig['wan_bytes'] / 1e12:.2f} TB, {fig['wall_s']:.1f} s")
    return out


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 4) if b else None


def summary(policies: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The headline ratios of the trend policy against the baselines."""
    trend = policies.get("trend", {})
    static = policies.get("static", {})
    cache = policies.get("cache-on-access", {})
    cut = None
    if trend and static and static["mean_wait_s"]:
        cut = round(1 - trend["mean_wait_s"] / static["mean_wait_s"], 4)
    return {
        "wait_cut_vs_static": cut,
        "bytes_ratio_vs_cache": (ratio(trend["wan_bytes"], cache["wan_bytes"])
                                 if trend and cache else None),
        "datasets_lost": trend.get("datasets_lost"),
    }
