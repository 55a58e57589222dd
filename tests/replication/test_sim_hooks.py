"""The simulator's hooks for the layers above: a link's capacity changed mid-run, a job
requeued mid-stage-in or mid-compute."""

from __future__ import annotations

import pytest

from replication.sim import GB, Gbps, Grid, SimError, Static

from .simkit import world


def test_a_link_set_to_a_tenth_mid_transfer_slows_the_rest_tenfold():
    # 10 GB between sites over 1 Gb/s site links: 80 s alone.  At 40 s the source
    # site's link drops to 0.1 Gb/s: the 5 GB left take 400 s.
    w = world([1, 1], [(10 * GB, (0,))], [(0.0, 1, 0, 10 * GB, 10.0)], wan=1 * Gbps)
    grid = Grid(w, Static())
    grid.engine.at(40.0, grid.network.set_capacity, grid.sites[0].wan, 0.1 * Gbps)
    stats = grid.run()
    assert stats.waits == [pytest.approx(40.0 + 5 * GB / (0.1 * Gbps))]
    grid.check()


def test_a_capacity_must_be_positive():
    w = world([1, 1], [(GB, (0,))], [(0.0, 1, 0, GB, 1.0)])
    grid = Grid(w, Static())
    with pytest.raises(SimError, match="capacity"):
        grid.network.set_capacity(grid.sites[0].wan, 0.0)


def test_requeue_mid_stage_in_stops_the_transfer_frees_the_core_and_queues_the_job():
    w = world([1, 1], [(10 * GB, (0,))], [(0.0, 1, 0, 10 * GB, 10.0)], wan=1 * Gbps)
    grid = Grid(w, Static())
    job = grid.jobs[0]
    seen = []

    def requeue() -> None:
        node = job.node
        assert node is not None and job.transfer is not None
        grid.requeue(job, front=True)             # dispatches: it starts again at once
        seen.append((job.node is node, grid.network.stats.aborted, job.attempts))

    grid.engine.at(40.0, requeue)
    stats = grid.run()
    grid.check()
    assert seen == [(True, 1, 2)]
    assert stats.waits == [pytest.approx(80.0)]   # the second stage-in, from the start
    assert stats.jobs_finished == 1
    assert stats.makespan == pytest.approx(40.0 + 80.0 + 10.0)


def test_requeue_mid_compute_cancels_it():
    w = world([1], [(GB, (0,))], [(0.0, 0, 0, GB, 100.0)])
    grid = Grid(w, Static())
    job = grid.jobs[0]
    grid.engine.at(30.0, grid.requeue, job)
    stats = grid.run()
    assert stats.jobs_finished == 1 and job.attempts == 2
    assert stats.makespan == pytest.approx(130.0)
    with pytest.raises(SimError, match="not running"):
        grid.requeue(job)
