"""Rule (c) on the node: which stage-ins it gives back, and how a release ends a job."""

from __future__ import annotations

import time

import trio

from node.release import stuck_stage_ins
from steering import BrokerParams, Classifier, HealthParams, NodeView
from steering.record import apply, grant, new_record
from tests.conftest import make_grid
from tests.node.test_jobs import grid_of
from tests.steering.common import job

P = BrokerParams(release_after=60.0, release_gain=2.0)
CONGESTED = NodeView("congested", 1.2, 0.0, 1, 4, 1)
MB = 1e6


def verdict(started, fetch, here=CONGESTED, now=100.0):
    return stuck_stage_ins({"j": (started, ("alice/ds",))}, {"alice/ds": fetch}, now, here,
                           P, nominal_rate=10 * MB)


def test_a_crawling_stage_in_at_a_congested_node_is_released():
    # 70 s in, 7 MB of 700 MB (0.1 MB/s): 6930 s left here, 70 s at the nominal rate.
    [(job_id, why)] = verdict(30.0, [30.0, 7 * MB, 700 * MB])
    assert job_id == "j" and "stage-in for 70 s at a congested node" in why
    assert "6930 s left here" in why and "70 s at the nominal rate" in why
    assert verdict(30.0, [30.0, 0.0, 700 * MB])[0][1].count("no byte yet") == 1


def test_what_is_kept():
    crawl = [30.0, 7 * MB, 700 * MB]
    assert verdict(30.0, crawl, here=NodeView("ok", 0.2, 0.0, 1, 4, 1)) == []  # not its fault
    assert verdict(50.0, crawl) == []                          # not waited release_after yet
    assert verdict(30.0, [30.0, 650 * MB, 700 * MB]) == []     # nearly through: kept
    assert verdict(30.0, [30.0, 7 * MB, 10 * MB]) == []        # 30 s left: < release_after
    assert stuck_stage_ins({"j": (30.0, ("alice/ds",))}, {}, 100.0, CONGESTED, P,
                           10 * MB) == []                      # not fetching: nothing to weigh
    # Crawling and large, but would crawl as long elsewhere: 100 MB/s nominal is not it.
    assert stuck_stage_ins({"j": (30.0, ("alice/ds",))}, {"alice/ds": crawl}, 100.0,
                           CONGESTED, P, nominal_rate=0.05 * MB) == []


async def test_a_released_job_ends_as_released_and_is_no_failure_of_the_node(short_tmp):
    dirs = make_grid(short_tmp, 1)
    async with trio.open_nursery() as nursery:
        [node] = await grid_of(nursery, dirs, monitor={"interval": 3600.0, "metrics_listen": "",
                                                       "release_after": 1.0})
        runner, mon = node.runner, node.monitor
        stuck = trio.Event()

        async def stage_in_forever(*args, **kw):  # a transfer that never moves
            stuck.set()
            await trio.sleep_forever()

        node.data.stage_in = stage_in_forever
        j = job(0, inputs=["alice/ds"])
        rec = apply(new_record(j, (node.key.id,), now=0.0, node=node.key.id), "activate",
                    now=0.0, reason="test")
        rec = grant(rec, node.key.id, epoch=1, now=0.0, duration=60.0)
        result: list = []

        async def run():
            result.append(await runner.run(rec))

        nursery.start_soon(run)
        await stuck.wait()
        assert j.hex_id in runner.stage_ins
        mon.health = Classifier(HealthParams(), 0.0)
        assert mon.release_stuck() == 0  # ok: the wait is not this node's doing
        node.data.fetch_progress["alice/ds"] = [trio.current_time() - 5.0, 0.0, 1e9]
        runner.stage_ins[j.hex_id] = (trio.current_time() - 5.0, ("alice/ds",))
        # Its CPU and disk are fine but the one link it read over lately crawls: its
        # stage-ins are stuck behind its own bottleneck all the same.
        now, peer = time.time(), b"\x07" * 20
        for i, rate in enumerate([100e6] * 5 + [5e6] * 5):
            mon.links.observe(now - 100 + 10 * i, peer, 8 << 20, (8 << 20) / rate)
            mon.links.sample(now - 100 + 10 * i)
        assert mon.links.state(peer) == "congested" and mon.health.state == "ok"
        assert mon.release_stuck() == 1
        with trio.fail_after(10):
            while not result:  # noqa: ASYNC110 - the executor ends the job
                await trio.sleep(0.05)
        ok, failure, outputs = result[0]
        assert (ok, failure.code) == (False, "released")
        assert "1 of the 1 links it read over lately are congested" in failure.diagnosis
        mon.links.links.clear()
        result.clear()
        stuck = trio.Event()
        nursery.start_soon(run)  # the same attempt again, to be released by the CPU
        await stuck.wait()
        for t in range(4):
            mon.health.sample(float(t), 1.5)
        assert mon.health.state == "congested"
        node.data.fetch_progress["alice/ds"] = [trio.current_time() - 5.0, 0.0, 1e9]
        runner.stage_ins[j.hex_id] = (trio.current_time() - 5.0, ("alice/ds",))
        before = dict(runner.outcomes)
        assert mon.release_stuck() == 1
        with trio.fail_after(10):
            while not result:  # noqa: ASYNC110 - the executor ends the job
                await trio.sleep(0.05)
        ok, failure, outputs = result[0]
        assert (ok, failure.code, outputs) == (False, "released", [])
        assert "at a congested node" in failure.diagnosis
        assert dict(runner.outcomes) == before  # not an outcome of the classifier
        assert mon.counters["jobs_released"] == 2 and not runner.released
        nursery.cancel_scope.cancel()
