"""Rule (c) at the queue: a job its worker released is queued again without spending an
attempt (a few times), and is not given back to that worker at once."""

from __future__ import annotations

from steering import Failure, Offer
from steering.record import MAX_FREE_RELEASES, Report, releases
from steering.solo import solo_queue

from .common import GRID, job

ME = b"\x07" * 20
A = b"\x01" * 20
B = b"\x02" * 20


def offer(worker: bytes) -> Offer:
    return Offer(worker, "site", cores=1, memory_mb=1 << 20, disk_mb=1 << 30, max_jobs=1)


def released(rec) -> Report:
    return Report(rec.job_id, rec.attempt, rec.lease.epoch, False,
                  Failure("released", "stage-in stuck behind this node's congestion", node=A))


async def test_a_release_spends_no_attempt_and_skips_the_worker_that_left():
    q = solo_queue(GRID, ME, cores=8)
    q.membership.capacities = lambda: [object(), object()]  # two compute nodes
    [j] = [job(0, max_attempts=1)]
    await q.create([j], {j.job_id: (ME,)})
    [rec] = await q.claim(offer(A))
    assert await q.report(A, [released(rec)]) == ["ok"]
    now = q.slots[j.job_id].record
    assert now.state == "activated" and releases(now) == 1 and now.history[-1].node == A
    assert q.counters["jobs_released"] == 1 and q.counters.get("jobs_requeued", 0) == 0
    assert await q.claim(offer(A)) == []  # not back to the node it left
    [again] = await q.claim(offer(B))
    assert again.attempt == 2  # its one attempt is still there: it runs


async def test_releases_are_free_only_a_few_times():
    q = solo_queue(GRID, ME, cores=8)
    q.membership.capacities = lambda: [object(), object()]
    j = job(1, max_attempts=1)
    await q.create([j], {j.job_id: (ME,)})
    workers = [A, B]
    for n in range(MAX_FREE_RELEASES + 1):
        [rec] = await q.claim(offer(workers[n % 2]))
        assert await q.report(rec.lease.worker, [released(rec)]) == ["ok"]
    final = q.slots[j.job_id].record
    assert final.state == "failed" and final.failure.code == "attempts_exhausted"
    assert "once too often" in final.history[-1].reason


async def test_with_one_compute_node_the_released_job_may_come_back():
    q = solo_queue(GRID, ME, cores=8)  # a grid of one node: no other to go to
    j = job(2)
    await q.create([j], {j.job_id: (ME,)})
    [rec] = await q.claim(offer(A))
    assert await q.report(A, [released(rec)]) == ["ok"]
    [again] = await q.claim(offer(A))
    assert again.job_id == j.job_id
