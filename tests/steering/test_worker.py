"""The worker against a queue node in memory: its reports carry the offer for the slots
they free, and no claim ever leases more than its free slots take."""

from __future__ import annotations

import random
from types import SimpleNamespace

import trio

from steering.queue_rpc import queue_methods
from steering.solo import NoNetwork, solo_queue
from steering.worker import Worker

from .common import GRID, job

ME = b"\x07" * 20
CORES = 2


async def test_reports_lease_the_next_jobs_and_slots_are_never_overcommitted(autojump_clock):
    q = solo_queue(GRID, ME, cores=CORES)
    jobs = [job(i) for i in range(40)]
    assert set((await q.create(jobs, {j.job_id: (ME,) for j in jobs})).values()) == {"ok"}
    handlers = queue_methods(q)
    ctx = SimpleNamespace(peer_id=ME)
    rng = random.Random(7)
    calls = {"claim": 0, "report": 0, "report_with_offer": 0}
    done = trio.Event()

    async def local(method, args):
        kind = method.removeprefix("queue.")
        calls[kind] = calls.get(kind, 0) + 1
        if kind == "report" and args.get("offer"):
            calls["report_with_offer"] += 1
        await trio.sleep(rng.choice([0, 0.001, 0.01]))  # claims and reports overlap
        answer = await handlers[method].fn(ctx, args)
        if q.counters["jobs_finished"] == len(jobs):
            done.set()
        return answer

    running, most = 0, 0

    async def run_job(rec):
        nonlocal running, most
        running += 1
        most = max(most, running)
        try:
            await trio.sleep(rng.choice([0.001, 0.005, 0.02]))
        finally:
            running -= 1
        return True, None, []

    worker = Worker(GRID, q.membership, NoNetwork(), "solo", frozenset(),
                    lambda: (CORES, 1 << 20, 1 << 30), run_job, lambda j, why: None,
                    local=local)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        await done.wait()
        nursery.cancel_scope.cancel()
    assert most <= CORES
    assert {q.slots[j.job_id].record.attempt for j in jobs} == {1}
    assert worker.counters["jobs_claimed"] == len(jobs)
    assert calls["report_with_offer"] > 0  # most jobs came with a report's answer
    assert worker._offered == (0, 0, 0)
