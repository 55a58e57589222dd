"""The steering simulator: bottleneck events, the schedulers, the oracle, determinism,
and ``scripts/simulate.py --scenario bottleneck``."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from replication.sim import GB, Gbps
from steering.brokerage import BrokerParams, NodeView
from steering.sim import (
    SCHEDULERS,
    Bottleneck,
    BottleneckGrid,
    BottleneckScenario,
    World,
    bottleneck,
    build_world,
    capacity_steps,
    make_scheduler,
    oracle,
    run_one,
)
from tests.replication.simkit import world

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "simulate.py"
HOUR = 3600.0


def bworld(sites, datasets, jobs, bottlenecks=(), failures=(), wan=10 * Gbps,
           **changes) -> World:
    """A hand-made world (``tests/replication/simkit.world``) with a bottleneck schedule;
    ``changes`` go to the ``BottleneckScenario``."""
    w = world(sites, datasets, jobs, failures, wan)
    sc = BottleneckScenario(w.scenario, **changes)
    return World(sc, w, tuple(bottlenecks), 1, sum(j.compute for j in w.jobs))


def run(w: World, name: str) -> BottleneckGrid:
    grid = BottleneckGrid(w, make_scheduler(name, 1))
    grid.run()
    grid.check()
    return grid


# -- the events --------------------------------------------------------------------------------


def test_a_link_at_a_tenth_slows_transfers_tenfold_and_comes_back():
    # Dataset on node 0 (site 0), jobs at site 1: 2 GB over 1 Gb/s site links, 16 s.
    jobs = [(0.0, 1, 0, 2 * GB, 10.0), (500.0, 1, 0, 2 * GB, 10.0)]
    calm = run(bworld([1, 1], [(10 * GB, (0,))], jobs, wan=1 * Gbps), "least-loaded")
    drop = Bottleneck("link", 0.0, 400.0, site=0, factor=0.1)
    slow = run(bworld([1, 1], [(10 * GB, (0,))], jobs, [drop], wan=1 * Gbps), "least-loaded")
    assert calm.stats.waits == [pytest.approx(16.0)] * 2
    assert slow.stats.waits == [pytest.approx(160.0), pytest.approx(16.0)]   # mended at 400 s


def test_a_slow_storage_node_slows_what_it_serves():
    # Round-robin puts job 0 on node 0 (holds the data) and job 1 on node 1, which
    # reads 2 GB from node 0 over the LAN: 1.6 s, or 32 s with node 0 at 1/20.
    jobs = [(0.0, 0, 0, 2 * GB, 10.0), (0.0, 0, 0, 2 * GB, 10.0)]
    calm = run(bworld([2], [(10 * GB, (0,))], jobs), "round-robin")
    slow_disk = Bottleneck("storage", 0.0, 1000.0, site=0, node=0, factor=0.05)
    slow = run(bworld([2], [(10 * GB, (0,))], jobs, [slow_disk]), "round-robin")
    assert sorted(calm.stats.waits) == [0.0, pytest.approx(1.6)]
    assert sorted(slow.stats.waits) == [0.0, pytest.approx(32.0)]


def test_a_failing_site_fails_every_job_until_its_attempts_run_out():
    fail = Bottleneck("failing", 0.0, 10_000.0, site=0)
    grid = run(bworld([1], [(GB, (0,))], [(0.0, 0, 0, GB, 50.0)], [fail]), "least-loaded")
    assert (grid.failed_attempts, grid.stats.jobs_failed, grid.stats.jobs_finished) == (3, 1, 0)
    assert grid.stats.makespan == pytest.approx(3 * 120.0)


def test_jobs_computing_when_a_site_starts_failing_fail_too():
    fail = Bottleneck("failing", 100.0, 300.0, site=0)
    grid = run(bworld([1], [(GB, (0,))], [(0.0, 0, 0, GB, 1000.0)], [fail]), "least-loaded")
    # Fails at 220 and 340 (ready again at 220, still failing); the third attempt,
    # ready at 340, computes for 1000 s.
    assert (grid.failed_attempts, grid.stats.jobs_finished) == (2, 1)
    assert grid.stats.makespan == pytest.approx(1340.0)


# -- gridnode's steering in the simulator ------------------------------------------------------


def test_gridnode_gives_a_failing_node_no_job_and_lets_it_back_after_probes():
    # Two sites of two 2-core nodes, each node holding the data; site 0 fails every job
    # for the first hour.
    fail = Bottleneck("failing", 0.0, HOUR, site=0)
    jobs = [(float(i), i % 2, 0, GB, 300.0) for i in range(200)]
    w = bworld([2, 2], [(10 * GB, (0, 1, 2, 3))], jobs, [fail])
    grid = BottleneckGrid(w, make_scheduler("gridnode", 1))
    steer = grid.scheduler
    starts: list[tuple[float, int, str]] = []
    start = grid._start

    def watched(job, node):
        starts.append((grid.now, node.index, steer.cls[node.index].state))
        start(job, node)

    grid._start = watched  # type: ignore[method-assign]
    grid.run()
    grid.check()
    assert all(state != "failing" for _, _, state in starts)
    fig = steer.figures()
    assert fig["probes"] > 0 and fig["probes_failed"] > 0
    assert fig["node_hours_by_state"]["failing"] > 0
    # Back after the hour: passing probes let site 0's nodes in again.
    assert any(t > HOUR and n in (0, 1) for t, n, _ in starts)
    assert all(steer.cls[n].state == "ok" for n in (0, 1))
    assert grid.failed_attempts < 40     # each node judged from a few failures, not all


def test_gridnode_releases_a_stage_in_stuck_behind_a_slow_link():
    # Node 0 holds the data and is busy with two long jobs; the third job goes to
    # node 1, whose site's link is nearly cut, and is released to node 2.
    cut = Bottleneck("link", 0.0, 10 * HOUR, site=1, factor=0.001)
    jobs = [(0.0, 0, 0, GB, 5000.0), (0.0, 0, 0, GB, 5000.0), (1.0, 1, 0, 2 * GB, 100.0)]
    grid = run(bworld([1, 1, 1], [(10 * GB, (0,))], jobs, [cut]), "gridnode")
    assert grid.scheduler.figures()["released"] == 1
    assert grid.stats.jobs_finished == 3
    started = grid.compute_start[2]
    assert 600.0 <= started <= 700.0 + 2 * GB / (1 * Gbps)


def test_gridnode_reads_from_a_healthy_source_before_a_congested_one():
    # Node 2 (site 0) reads a dataset held by node 0 (site 0, the LAN) and node 1
    # (site 1): the LAN copy wins, unless node 0 says it is congested.
    w = bworld([2, 1], [(10 * GB, (0, 2)), (10 * GB, (0, 1))], [(0.0, 0, 0, GB, 10.0)])
    grid = BottleneckGrid(w, make_scheduler("gridnode", 1))
    steer = grid.scheduler
    job, ds, reader = grid.jobs[0], grid.datasets[1], grid.nodes[2]
    assert steer.source(job, ds, reader).node.index == 0
    steer.published[0] = NodeView("congested", 1.5, 0.0, 0, 2)
    assert steer.source(job, ds, reader).node.index == 1
    steer.published[1] = NodeView("failing", 0.0, 0.0, 0, 2)
    assert steer.source(job, ds, reader).node.index == 1     # failing jobs, not disks
    steer.published[1] = NodeView("congested", 1.5, 0.0, 0, 2)
    assert steer.source(job, ds, reader).node.index == 0     # both congested: the LAN


def test_gridnode_scouts_a_task_then_starts_its_long_jobs_first():
    # One 2-core node holding the data. Task S (at 0 s): 30 jobs of 100 s; task L (at
    # 0.5 s): 3 jobs of 1000 s. In queue order L starts at 1500 s and ends at 3500 s.
    # Scouting: one job of L starts as soon as a core frees (100 s). S's jobs are
    # known to take 100 s once the first has finished; once L's scout has computed
    # longer than that, L's rest is known to be longer and takes the next cores to
    # free before S's rest: at 300 s (not at 200 s: a tie, which goes to the older)
    # and at 1100 s, when the scout ends.
    jobs = [(0.0, 0, 0, GB, 100.0)] * 30 + [(0.5, 0, 0, GB, 1000.0)] * 3
    fifo = BottleneckGrid(bworld([1], [(10 * GB, (0,))], jobs),
                          make_scheduler("gridnode", 1, BrokerParams(lpt_weight=0.0)))
    fifo.run()
    assert fifo.stats.makespan == pytest.approx(3500.0, abs=1.0)
    lpt = BrokerParams(lpt_weight=1.0, scouts=1)
    w = bworld([1], [(10 * GB, (0,))], jobs)
    grid = BottleneckGrid(w, make_scheduler("gridnode", 1, lpt))
    grid.run()
    grid.check()
    start = grid.compute_start
    assert start[30] == pytest.approx(100.0, abs=1.0)                  # the scout
    assert start[31] == pytest.approx(300.0, abs=1.0)                  # then the rest
    assert start[32] == pytest.approx(1100.0, abs=1.0)
    assert max(start[:30]) > 2000.0                                    # S's last jobs after
    assert grid.stats.makespan == pytest.approx(3000.0, abs=1.0)
    # Learnt from the finished jobs only: L's mean is its jobs' compute.
    assert grid.scheduler.task_compute[0.5] == pytest.approx([3000.0, 3])


# -- whole runs: every job ends, the books balance, a seed gives one run ---------------------


@pytest.mark.parametrize("name", SCHEDULERS)
def test_each_scheduler_ends_every_job_and_is_deterministic(name):
    w = build_world(bottleneck(5, 30, 1200))
    grid, fig = run_one(w, name)
    grid.check()
    assert fig["jobs_finished"] + fig["jobs_failed"] == 1200
    ch = fig["core_hours"]
    total = sum(ch.values())
    assert total == pytest.approx(w.workload.total_cores * fig["makespan_s"] / 3600, rel=0.05)
    _, again = run_one(w, name)
    fig.pop("wall_s")
    again.pop("wall_s")
    assert again == fig


def test_the_same_seed_builds_the_same_world_and_another_seed_another():
    a, b = build_world(bottleneck(2, 40, 800)), build_world(bottleneck(2, 40, 800))
    assert a.workload.jobs == b.workload.jobs and a.bottlenecks == b.bottlenecks
    c = build_world(bottleneck(3, 40, 800))
    assert c.workload.jobs != a.workload.jobs
    assert sorted(x.kind for x in a.bottlenecks) == ["failing", "link", "storage"]


def test_the_oracle_counts_failing_sites_and_dead_nodes_out_and_waits_for_submissions():
    # Two 2-core nodes at two sites; 4 jobs of an hour at 0.  Site 1 fails for the
    # first half hour: 2 cores then, 4 after: 14400 core-s are done at 1800 + 10800/4.
    jobs = [(0.0, 0, 0, GB, HOUR)] * 4
    fail = Bottleneck("failing", 0.0, 1800.0, site=1)
    w = bworld([1, 1], [(GB, (0, 1))], jobs, [fail])
    assert capacity_steps(w) == [(0.0, 2), (1800.0, 4)]
    o = oracle(w)
    assert o["work_bound_s"] == pytest.approx(1800.0 + 10800.0 / 4)
    assert o["makespan_s"] == o["work_bound_s"]
    # A job submitted late bounds it by its submission plus its compute.
    late = bworld([1, 1], [(GB, (0, 1))], [*jobs, (9000.0, 0, 0, GB, 100.0)], [fail])
    assert oracle(late)["makespan_s"] == pytest.approx(9100.0)
    assert oracle(late)["release_bound_s"] == pytest.approx(9000.0 + 100.0 / 4)


def test_nodes_are_of_the_sizes_asked_and_the_oracle_counts_each_one_s_cores():
    w = build_world(bottleneck(1, 60, 300))
    cores = [w.workload.cores_of(n) for n in range(60)]
    assert set(cores) == {4, 8, 12}
    assert capacity_steps(w)[0] == (0.0, sum(cores)) and w.workload.total_cores == sum(cores)
    grid = BottleneckGrid(w, make_scheduler("random", 1))
    assert [n.cores for n in grid.nodes] == cores
    assert w.span == pytest.approx(w.work / sum(cores))
    even = build_world(bottleneck(1, 60, 300, node_cores=(8,)))
    assert capacity_steps(even)[0] == (0.0, 480)
    with pytest.raises(ValueError, match="node_cores"):
        bottleneck(node_cores=()).check()


def test_no_scheduler_beats_the_oracle():
    w = build_world(bottleneck(1, 30, 900))
    bound = oracle(w)["makespan_s"]
    for name in SCHEDULERS:
        assert run_one(w, name)[1]["makespan_s"] >= bound


# -- the script ---------------------------------------------------------------------------------


def simulate(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)


FIGURES = ("throughput_jobs_per_h", "makespan_s", "t90_s", "mean_job_wait_s", "mean_stage_in_s",
           "failed_attempts", "jobs_finished", "jobs_failed", "core_hours", "wall_s")


def test_the_script_reports_json_for_a_small_bottleneck_run_and_is_deterministic():
    argv = ("--scenario", "bottleneck", "--seed", "4", "--nodes", "30", "--jobs", "1000",
            "--json")
    out = simulate(*argv)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    for key in ("policies", "throughput_ratio_vs_round_robin", "makespan_ratio_vs_oracle",
                "oracle", "targets", "workload", "wall_seconds"):
        assert key in report, key
    assert set(report["policies"]) == set(SCHEDULERS)
    for name, fig in report["policies"].items():
        missing = [k for k in FIGURES if k not in fig]
        assert not missing, (name, missing)
        assert fig["jobs_finished"] + fig["jobs_failed"] == 1000
    p = report["policies"]
    assert report["throughput_ratio_vs_round_robin"] == round(
        p["gridnode"]["throughput_jobs_per_h"] / p["round-robin"]["throughput_jobs_per_h"], 4)
    assert report["makespan_ratio_vs_oracle"] == round(
        p["gridnode"]["makespan_s"] / report["oracle"]["makespan_s"], 4)
    assert {b["kind"] for b in report["workload"]["bottlenecks"]} == {"link", "storage",
                                                                      "failing"}
    assert "running gridnode" in out.stderr and "targets:" in out.stderr

    again = json.loads(simulate(*argv).stdout)
    for r in (report, again):
        r.pop("wall_seconds")
        r.pop("peak_rss_mb")
        for fig in r["policies"].values():
            fig.pop("wall_s")
    assert again == report


def test_the_script_takes_settings_and_a_subset_of_schedulers():
    out = simulate("--scenario", "bottleneck", "--nodes", "20", "--jobs", "300",
                   "--policies", "least-loaded,gridnode", "--set", "failing_sites=0",
                   "--set", "node_cores=6,10",
                   "--set", "lan_rate=2.5e9", "--policy-set", "congested_share=0.5",
                   "--policy-set", "hold=3")
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("grid simulation: bottleneck, seed 1, 20 nodes")
    assert "failing" not in out.stdout.split("policy")[0]
    table = out.stdout.split("policy", 1)[1].splitlines()[1:3]
    assert [ln.split()[0] for ln in table] == ["least-loaded", "gridnode"]
    assert "round-robin" not in out.stdout.split("targets:")[0]
    assert "throughput_ratio_vs_round_robin = n/a" in out.stdout


@pytest.mark.parametrize("argv, message", [
    (["--policies", "static"], "--policies must name some of round-robin"),
    (["--set", "colour=blue"], "no scenario field 'colour'"),
    (["--set", "link_factor=0"], "link_factor must be in (0, 1]"),
    (["--set", "task_jobs=5,1"], "task_jobs needs 1 <= low <= high"),
    (["--set", "node_cores=8,0"], "node_cores needs one or more core counts of 1-4096"),
    (["--set", "node_cores=8,x"], "node_cores: 'x' is not a valid int"),
    (["--policy-set", "congested_share=2"], "congested_share must be in (0, 1]"),
    (["--policy-set", "hold=0"], "hold must be 1-1000"),
    (["--policy-set", "reads_per_replica=2"], "no steering parameter 'reads_per_replica'"),
])
def test_bad_bottleneck_arguments_exit_2_with_one_line(argv, message):
    out = simulate("--scenario", "bottleneck", *argv)
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and message in lines[0], out.stderr
    assert "Traceback" not in out.stderr


def test_the_bottleneck_scenario_refuses_bad_values():
    from replication.sim import ScenarioError

    with pytest.raises(ScenarioError, match="max_attempts"):
        bottleneck(max_attempts=0).check()
    assert not math.isnan(build_world(bottleneck(1, 20, 100)).span)
