"""Run the bottleneck scenario under each scheduler; the oracle; the figures.

Figures of a run (``run_one``):

* ``throughput_jobs_per_h``: jobs finished over the makespan;
* ``makespan_s``: when the last job ended (finished or failed for good);
  ``t90_s``: when 90% of all the jobs had finished (None if fewer ever did):
  the makespan hangs on the few longest jobs to start last, this does not;
* ``mean_job_wait_s``: per finished job, from its submission to the start of
  the compute that finished it (queue, stage-ins, failed and released
  attempts, restarts after node deaths);
* ``mean_stage_in_s``, ``p95_stage_in_s``: per stage-in completed (0 when the
  input was on the node);
* ``failed_attempts``: attempts that failed (at a failing site);
  ``lost_core_hours``: the core time they held; ``jobs_failed``: jobs that
  failed ``max_attempts`` times;
* ``core_hours``: where the cores' time went: ``compute`` (of the jobs that
  finished), ``stage_in`` (completed stage-ins), ``failed_attempts``,
  ``idle_jobs_waiting`` (free cores while jobs wait: failing nodes held back,
  congested nodes' caps, push's uneven queues), ``idle_arrivals`` (no job
  waits, more are to be submitted) and ``idle_tail`` (no job waits, all
  were submitted: the last jobs running); sampled every minute;
* ``wan_bytes``: bytes between sites; ``local_hits``, ``lan_stage_ins``,
  ``wan_stage_ins``;
* for ``gridnode``: ``released``, ``probes``, ``probes_failed``, and the
  node-hours spent in each state.

The oracle (``oracle``) is a lower bound on the makespan that no scheduler
can beat.  Its core (``work_bound_s``, the issue's "total work over total
usable capacity") is the time at which the grid's usable cores, run flat out
from time 0, have done all the jobs' compute: cores of dead nodes (the node
deaths are known in advance) and of failing sites (for their hour) are not
usable; a slow link or disk takes no core away, and stage-ins cost nothing
(the data could have been placed in advance).  Two more bounds, as valid:
the work submitted at or after any submission time cannot be done before
it (``release_bound_s``: the same computation from each submission on), and
no job ends before its submission plus its compute (``job_bound_s``).  The
oracle is the largest of the three.  It ignores that jobs are indivisible:
the last jobs to start may run for hours while most cores are idle.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Any

from replication import sim

from .. import brokerage as bk
from ..health import HealthParams
from .grid import SCHEDULERS, BottleneckGrid, make_scheduler
from .scenario import World


def run_one(world: World, name: str, broker: bk.BrokerParams | None = None,
            health: HealthParams | None = None) -> tuple[BottleneckGrid, dict[str, Any]]:
    started = time.perf_counter()
    grid = BottleneckGrid(world, make_scheduler(name, world.scenario.seed, broker, health))
    stats = grid.run()
    wall = time.perf_counter() - started
    span = stats.makespan
    jobs = grid.jobs
    waits = [grid.compute_start[j.spec.index] - j.spec.submit for j in jobs
             if not math.isnan(grid.compute_start[j.spec.index])]
    stage = stats.waits
    ends = sorted(grid.compute_start[j.spec.index] + j.spec.compute for j in jobs
                  if not math.isnan(grid.compute_start[j.spec.index]))
    k90 = math.ceil(0.9 * len(jobs)) - 1
    fig: dict[str, Any] = {
        "throughput_jobs_per_h": round(stats.jobs_finished / span * 3600, 2) if span else 0.0,
        "makespan_s": round(span, 1),
        "t90_s": round(ends[k90], 1) if 0 <= k90 < len(ends) else None,
        "mean_job_wait_s": round(sum(waits) / len(waits), 1) if waits else 0.0,
        "mean_stage_in_s": round(sum(stage) / len(stage), 2) if stage else 0.0,
        "p95_stage_in_s": round(sim.percentile(stage, 95), 2),
        "jobs_finished": stats.jobs_finished,
        "jobs_failed": stats.jobs_failed,
        "failed_attempts": grid.failed_attempts,
        "core_hours": {
            "compute": round(sum(j.spec.compute for j in jobs
                                 if not math.isnan(grid.compute_start[j.spec.index])) / 3600),
            "stage_in": round(sum(stage) / 3600),
            "failed_attempts": round(grid.lost_core_seconds / 3600),
            "idle_jobs_waiting": round(grid.idle_waiting / 3600),
            "idle_arrivals": round(grid.idle_arrivals / 3600),
            "idle_tail": round(grid.idle_tail / 3600),
        },
        "restarts": stats.jobs_restarted,
        "local_hits": stats.local_hits,
        "lan_stage_ins": stats.lan_stage_ins,
        "wan_stage_ins": stats.wan_stage_ins,
        "wan_bytes": round(grid.network.stats.wan_bytes),
        "node_deaths": stats.node_deaths,
        "datasets_lost": stats.datasets_lost,
        "events": grid.engine.events_run,
        "wall_s": round(wall, 2),
    }
    fig.update(grid.scheduler.figures())
    return grid, fig


def capacity_steps(world: World) -> list[tuple[float, int]]:
    """(time, usable cores from then on), in time order, from time 0."""
    sc = world.scenario
    cores_of = world.workload.cores_of
    nsites = len(world.workload.sites)
    site_of = [i for i, s in enumerate(world.workload.sites) for _ in range(s.nodes)]
    changes: list[tuple[float, str, int, int]] = []   # time, what, whom, +1 up / -1 down
    for f in world.workload.failures:
        changes.append((f.at, "node", f.node, -1))
        if f.back is not None:
            changes.append((f.back, "node", f.node, +1))
    for b in world.bottlenecks:
        if b.kind == "failing":
            changes.append((b.start, "site", b.site, -1))
            changes.append((b.end, "site", b.site, +1))
    changes.sort()
    alive = [True] * sc.nodes
    failing = [0] * nsites

    def usable() -> int:
        return sum(cores_of(n) for n in range(sc.nodes) if alive[n] and not failing[site_of[n]])

    steps = [(0.0, usable())]
    for t, what, who, d in changes:
        if what == "node":
            alive[who] = d > 0
        else:
            failing[who] -= d
        cap = usable()
        if steps[-1][0] == t:
            steps[-1] = (t, cap)
        elif steps[-1][1] != cap:
            steps.append((t, cap))
    return steps


def _done_at(steps: list[tuple[float, int]], start: float, work: float) -> float:
    """When the usable cores from ``start`` on have done ``work`` core-seconds."""
    for k, (t, cap) in enumerate(steps):
        end = steps[k + 1][0] if k + 1 < len(steps) else math.inf
        if end <= start:
            continue
        t = max(t, start)
        if cap > 0:
            if work <= cap * (end - t):
                return t + work / cap
            work -= cap * (end - t)
    return math.inf


def oracle(world: World) -> dict[str, Any]:
    """The lower bound on the makespan (see the module's docstring)."""
    steps = capacity_steps(world)
    jobs = world.workload.jobs
    t_work = _done_at(steps, 0.0, world.work)
    # Work submitted at or after t cannot start before t: the bound from each
    # submission time (the jobs are in submission order).
    t_release = t_work
    after = world.work
    k = 0
    while k < len(jobs):
        t = jobs[k].submit
        if k:
            t_release = max(t_release, _done_at(steps, t, after))
        while k < len(jobs) and jobs[k].submit == t:
            after -= jobs[k].compute
            k += 1
    t_jobs = max(j.submit + j.compute for j in jobs)
    best = max(t_release, t_jobs)
    return {
        "makespan_s": round(best, 1),
        "work_bound_s": round(t_work, 1),
        "release_bound_s": round(t_release, 1),
        "job_bound_s": round(t_jobs, 1),
        "work_core_hours": round(world.work / 3600, 1),
        "throughput_jobs_per_h": round(len(jobs) / best * 3600, 2),
    }


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 4) if b else None


def run_all(world: World, names: Iterable[str] = SCHEDULERS,
            broker: bk.BrokerParams | None = None, health: HealthParams | None = None,
            progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The policies' figures, the oracle and the headline ratios."""
    policies: dict[str, dict[str, Any]] = {}
    for name in names:
        if progress is not None:
            progress(f"running {name} ...")
        _, fig = run_one(world, name, broker, health)
        policies[name] = fig
        if progress is not None:
            progress(f"  {name}: {fig['throughput_jobs_per_h']:.0f} jobs/h, makespan "
                     f"{fig['makespan_s'] / 3600:.2f} h, {fig['failed_attempts']} failed "
                     f"attempts, {fig['wall_s']:.1f} s")
    orc = oracle(world)
    g = policies.get("gridnode")
    out: dict[str, Any] = {"policies": policies, "oracle": orc}
    for base in ("round-robin", "random", "least-loaded"):
        b = policies.get(base)
        key = "throughput_ratio_vs_" + base.replace("-", "_")
        out[key] = (ratio(g["throughput_jobs_per_h"], b["throughput_jobs_per_h"])
                    if g and b else None)
    out["makespan_ratio_vs_oracle"] = ratio(g["makespan_s"], orc["makespan_s"]) if g else None
    return out
