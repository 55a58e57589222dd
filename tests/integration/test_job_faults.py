"""Jobs on real node processes while nodes die under them (kill -9)."""

from __future__ import annotations

import os
import signal
from collections import Counter

import pytest
import trio

from node.client import Client
from steering import JobSpec

pytestmark = pytest.mark.slow


def spec(*argv: str, **kw) -> JobSpec:
    return JobSpec.from_mapping({"argv": list(argv), "memory_mb": 64, **kw})


async def wait_all(client: Client, ids: list[bytes], limit: float = 90):
    with trio.fail_after(limit):
        return [(await client.wait(j, poll=0.3))[0] for j in ids]


def finished_once(rec) -> bool:
    return rec.state == "finished" and Counter(e.state for e in rec.history)["finished"] == 1


async def test_worker_killed_mid_job_finishes_once_elsewhere(grid4):
    g = grid4
    async with Client.connect(g.address(0), user_dir=g.user_dir) as c:
        [j] = await c.submit([spec("sh", "-c", "sleep 2; echo done")])
        with trio.fail_after(30):
            while (rec := await c.job(j)).state != "running":  # noqa: ASYNC110 - remote
                await trio.sleep(0.1)
    victim = g.ids.index(rec.lease.worker)
    g.kill(victim)
    alive = next(i for i in range(4) if i != victim)
    async with Client.connect(g.address(alive), user_dir=g.user_dir) as c:
        [rec] = await wait_all(c, [j])
    assert finished_once(rec), (rec, g.logs())
    assert rec.attempt >= 2
    runs = [e.node for e in rec.history if e.state == "running"]
    assert runs[0] == g.ids[victim] and runs[-1] != g.ids[victim]
    assert any("lease expired" in e.reason for e in rec.history)


async def test_home_primary_killed_with_jobs_queued_and_running(grid4):
    g = grid4
    async with Client.connect(g.address(3), user_dir=g.user_dir) as c:
        ids = await c.submit([spec("sleep", "1") for _ in range(16)])
        recs = [await c.job(j) for j in ids]
    primaries = Counter(r.home[0] for r in recs)
    victim = g.ids.index(primaries.most_common(1)[0][0])
    if victim == 3:
        victim = g.ids.index(primaries.most_common(2)[-1][0])
    g.kill(victim)
    alive = next(i for i in range(4) if i != victim)
    async with Client.connect(g.address(alive), user_dir=g.user_dir) as c:
        done = await wait_all(c, ids, limit=120)
    assert all(finished_once(r) for r in done), g.logs()
    assert len({r.job_id for r in done}) == 16


async def test_submit_node_killed_right_after_the_acknowledgement(grid4):
    g = grid4
    async with Client.connect(g.address(2), user_dir=g.user_dir) as c:
        ids = await c.submit([spec("sh", "-c", "echo {index}", index=i) for i in range(6)])
    g.kill(2)  # the node we submitted through
    async with Client.connect(g.address(0), user_dir=g.user_dir) as c:
        done = await wait_all(c, ids, limit=120)
    assert all(finished_once(r) for r in done), g.logs()


async def test_stopped_worker_cannot_commit_after_its_lease(grid4):
    """SIGSTOP a worker past its lease, then SIGCONT: its report is refused."""
    g = grid4
    async with Client.connect(g.address(0), user_dir=g.user_dir) as c:
        [j] = await c.submit([spec("sh", "-c", "sleep 1; echo once")])
        with trio.fail_after(30):
            while (rec := await c.job(j)).state != "running":  # noqa: ASYNC110 - remote
                await trio.sleep(0.05)
    victim = g.ids.index(rec.lease.worker)
    alive = next(i for i in range(4) if i != victim)
    async with Client.connect(g.address(alive), user_dir=g.user_dir) as c:
        os.kill(g.procs[victim].pid, signal.SIGSTOP)
        try:
            with trio.fail_after(60):
                while (rec := await c.job(j)).attempt < 2:  # noqa: ASYNC110 - remote
                    await trio.sleep(0.2)
        finally:
            os.kill(g.procs[victim].pid, signal.SIGCONT)
        [rec] = await wait_all(c, [j])
    assert finished_once(rec) and rec.attempt >= 2
    # The result recorded is the last lease's: the late worker's attempt 1 did not count
    # (it may have been leased attempt 2 itself after it woke up).
    last_run = [e for e in rec.history if e.state == "running"][-1]
    assert rec.history[-1].node == last_run.node
