"""Small hand-made worlds for the simulator's tests."""

from __future__ import annotations

import dataclasses

from replication.sim import GB, Gbps, Scenario, Workload
from replication.sim.workload import DatasetSpec, Failure, JobSpec, SiteSpec

BASE = Scenario("test", seed=0, nodes=4, jobs=1, lan_rate=10 * Gbps, wan_flow=1 * Gbps,
                disk_per_node=100 * GB, cores_per_node=2, repl_rate=100 * 10**6)


def world(sites: list[int], datasets: list[tuple[int, tuple[int, ...]]],
          jobs: list[tuple[float, int, int, int, float]], failures: list[Failure] = (),
          wan: float = 10 * Gbps, **changes: object) -> Workload:
    """``sites``: nodes per site; ``datasets``: (size, holder nodes); ``jobs``:
    (submit, site, dataset, bytes read, compute seconds)."""
    nodes = sum(sites)
    sc = dataclasses.replace(BASE, nodes=nodes, jobs=max(1, len(jobs)), **changes)
    return Workload(
        scenario=sc,
        sites=tuple(SiteSpec(f"s{i}", n, wan) for i, n in enumerate(sites)),
        datasets=tuple(DatasetSpec(f"t:d{i}", size, holders)
                       for i, (size, holders) in enumerate(datasets)),
        jobs=tuple(JobSpec(i, t, site, ds, read, compute, False)
                   for i, (t, site, ds, read, compute) in enumerate(jobs)),
        failures=tuple(failures),
        episodes=(),
        duration=max((j[0] for j in jobs), default=0.0))
