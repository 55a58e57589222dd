"""The simulated grid: stage-ins, node deaths and repair, caching, placement, determinism."""

from __future__ import annotations

import dataclasses

import pytest

from replication import PolicyParams
from replication.sim import (
    GB,
    CacheOnAccess,
    Gbps,
    Grid,
    SimError,
    Static,
    Trend,
    build,
    hot_spot,
    run_one,
)
from replication.sim.model import ORIGIN
from replication.sim.workload import Failure

from .simkit import world


def test_stage_in_waits_for_the_bytes_from_the_best_source():
    # Dataset 0 on node 0 (site 0) and node 2 (site 1).  A job at site 0 runs on
    # node 0 and finds it there; a job at site 2 pulls 2 GB over the WAN at the
    # flow cap (1 Gb/s); a job at site 1 landing on node 3 reads it over the LAN.
    w = world([2, 2, 2], [(10 * GB, (0, 2))],
              [(0.0, 0, 0, 2 * GB, 50.0), (0.0, 2, 0, 2 * GB, 50.0),
               (100.0, 1, 0, 2 * GB, 50.0), (100.5, 1, 0, 2 * GB, 50.0)])
    grid = Grid(w, Static())
    stats = grid.run()
    grid.check()
    assert stats.waits[:2] == [0.0, pytest.approx(2 * GB / (1 * Gbps))]
    assert sorted(stats.waits[2:]) == [0.0, pytest.approx(2 * GB / (10 * Gbps))]
    assert (stats.local_hits, stats.lan_stage_ins, stats.wan_stage_ins) == (2, 1, 1)
    assert grid.network.stats.wan_bytes == 2 * GB
    assert stats.jobs_finished == 4
    assert stats.makespan == pytest.approx(100.5 + 2 * GB / (10 * Gbps) + 50.0)


def test_a_dead_node_loses_its_replicas_and_static_repairs_to_the_minimum():
    w = world([2, 2, 2], [(10 * GB, (0, 2)), (4 * GB, (0, 4))],
              [(0.0, 1, 0, GB, 10.0), (5000.0, 1, 1, GB, 10.0)],
              failures=[Failure(100.0, 0, None)])
    policy = Static()
    grid = Grid(w, policy)
    stats = grid.run()
    grid.check()
    assert stats.node_deaths == 1 and stats.replicas_lost == 2
    assert not grid.nodes[0].replicas and not grid.nodes[0].alive
    for ds in grid.datasets:
        live = [r for r in ds.replicas.values() if r.complete and r.node.alive]
        assert len(live) == ds.min_replicas == 2
        assert all(r.kind == ORIGIN for r in live)
        assert len({r.node.site.index for r in live}) == 2   # on distinct sites
    assert stats.replications == 2 and stats.datasets_lost == 0
    # Repair waited for the grace (600 s), then copied at the pull rate (100 MB/s).
    assert grid.network.stats.transfers >= 2


def test_a_dataset_whose_holders_all_die_is_lost_and_its_jobs_fail():
    w = world([2, 2], [(10 * GB, (0, 2)), (1 * GB, (1, 3))],
              [(1000.0, 0, 0, GB, 10.0), (1000.0, 1, 1, GB, 10.0)],
              failures=[Failure(100.0, 0, None), Failure(200.0, 2, 3000.0)])
    grid = Grid(w, Static())
    stats = grid.run()
    grid.check()
    assert stats.datasets_lost == 1 and grid.datasets[0].lost
    assert not grid.datasets[0].replicas
    assert (stats.jobs_failed, stats.jobs_finished) == (1, 1)


def test_cache_on_access_evicts_least_recently_used_never_origin():
    # Node 4 (alone at site 2, 130 GB of disk) holds the origin of dataset 3 and
    # reads A, B, A again, then C: C needs room, and B is the least recently used
    # cached replica; the older origin replica stays.
    a, b, c, d = 0, 1, 2, 3
    size = 40 * GB
    w = world([2, 2, 1], [(size, (0, 2)), (size, (1, 3)), (size, (0, 3)), (size, (1, 4))],
              [(0.0, 2, a, GB, 10.0), (1000.0, 2, b, GB, 10.0), (2000.0, 2, a, GB, 10.0),
               (3000.0, 2, c, GB, 10.0)],
              disk_per_node=130 * GB)
    policy = CacheOnAccess()
    grid = Grid(w, policy)
    stats = grid.run()
    grid.check()
    node = grid.nodes[4]
    assert set(node.replicas) == {a, c, d}
    assert node.replicas[d].kind == ORIGIN
    assert policy.evictions == 1
    assert stats.local_hits == 1                      # the second read of A
    assert node.used == 3 * size <= node.disk


def test_cache_on_access_falls_back_to_a_plain_read_when_nothing_can_go():
    # Node 3 (alone at site 1, 60 GB) holds an origin of 40 GB: no room for
    # dataset 0, and origins are never evicted.
    size = 40 * GB
    w = world([3, 1], [(size, (0, 1)), (size, (2, 3))],
              [(0.0, 1, 0, GB, 10.0)], disk_per_node=60 * GB)
    policy = CacheOnAccess()
    grid = Grid(w, policy)
    stats = grid.run()
    grid.check()
    assert set(grid.nodes[3].replicas) == {1}
    assert policy.evictions == 0 and stats.jobs_finished == 1
    assert grid.network.stats.wan_bytes == GB


class ToTheData:
    """A placement strategy: a free node holding the job's dataset, else none."""

    def __init__(self) -> None:
        self.calls = 0

    def choose(self, job, grid):
        self.calls += 1
        ds = grid.datasets[job.spec.dataset]
        for r in ds.replicas.values():
            if r.complete and r.node.alive and r.node.free_cores:
                return r.node
        return None


def test_the_placement_strategy_is_pluggable():
    w = world([2, 2, 2], [(5 * GB, (1, 3))],
              [(float(t), t % 3, 0, GB, 30.0) for t in range(0, 600, 20)])
    default = Grid(w, Static()).run()
    strategy = ToTheData()
    placed = Grid(w, Static(), strategy).run()
    assert strategy.calls >= len(w.jobs)
    assert placed.local_hits == len(w.jobs) and max(placed.waits) == 0.0
    assert default.local_hits < len(w.jobs) and max(default.waits) > 0.0


def _figures(seed: int, policy) -> dict:
    grid, fig = run_one(build(hot_spot(seed, nodes=30, jobs=1500)), policy)
    grid.check()
    fig.pop("wall_s")
    return fig


@pytest.mark.parametrize("policy", [Static, CacheOnAccess, Trend])
def test_a_seed_gives_the_same_figures(policy):
    first, again = _figures(3, policy()), _figures(3, policy())
    assert first == again
    assert _figures(4, policy()) != first
    assert first["jobs_finished"] + first["jobs_failed"] == 1500


def test_the_trend_custodian_skips_only_decisions_that_would_change_nothing():
    # With shortcuts off the custodian decides every dataset every round, as the
    # daemon does; the figures must be the same.  Short jobs: enough reads per
    # dataset for adds and drops; deaths: repairs.
    # A cool-down of 30 minutes: trims within the 4 hours of this run.
    sc = dataclasses.replace(hot_spot(2, nodes=20, jobs=3000), datasets_per_node=4,
                             compute_mean=600.0, mtbf=5 * 86400.0)
    w = build(sc)
    pp = PolicyParams(cooldown=1800.0)
    fast, slow = Trend(policy=pp, shortcuts=True), Trend(policy=pp, shortcuts=False)
    _, a = run_one(w, fast)
    _, b = run_one(w, slow)
    for fig in (a, b):
        fig.pop("wall_s")
        fig.pop("decisions")
    assert a == b
    assert a["actions"]["add"] > 0 and a["actions"]["drop"] > 0 and a["node_deaths"] > 0
    assert fast.skipped > 0 and fast.decisions * 3 < slow.decisions


@pytest.mark.parametrize("policy", [Static, CacheOnAccess, Trend])
def test_the_books_balance_through_heavy_churn(policy):
    # Each node dies about once a day, most come back: every path of death
    # (mid-transfer, mid-copy, mid-job, last holder) is taken many times.
    sc = dataclasses.replace(hot_spot(9, nodes=40, jobs=3000), mtbf=24 * 3600.0,
                             return_share=0.8, disk_per_node=300 * GB, datasets_per_node=8)
    grid = Grid(build(sc), policy())
    stats = grid.run()
    grid.check()
    assert stats.node_deaths > 20 and stats.jobs_restarted > 0
    assert stats.jobs_finished + stats.jobs_failed == 3000
    assert all(ds.lost == (not ds.replicas) for ds in grid.datasets)


def test_check_sees_books_that_disagree():
    grid = Grid(world([2, 2], [(GB, (0, 2))], [(0.0, 0, 0, GB, 1.0)]), Static())
    grid.run()
    grid.check()
    grid.nodes[2].used += 1
    with pytest.raises(SimError, match="node 2: used"):
        grid.check()
