"""The queue node's primary side, alone and in memory: claims and batched reports."""

from __future__ import annotations

import trio

from steering import Failure, Offer
from steering.record import Report
from steering.solo import solo_queue

from .common import GRID, job

ME = b"\x07" * 20
WORKER = b"\x01" * 20
OTHER = b"\x02" * 20


async def leased(n: int, worker: bytes = WORKER):
    q = solo_queue(GRID, ME)
    jobs = [job(i) for i in range(n)]
    answer = await q.create(jobs, {j.job_id: (ME,) for j in jobs})
    assert set(answer.values()) == {"ok"}
    recs = await q.claim(Offer(worker, "site", cores=n, memory_mb=1 << 20, disk_mb=1 << 30,
                               max_jobs=n))
    assert len(recs) == n and all(r.lease.worker == worker for r in recs)
    return q, recs


def report_of(rec, ok=True, **kw):
    failure = None if ok else Failure("exit_nonzero", "exited with code 3", 3, None, (), WORKER)
    return Report(rec.job_id, kw.get("attempt", rec.attempt), kw.get("epoch", rec.lease.epoch),
                  ok, failure)


async def test_one_message_reports_many_jobs_in_one_write():
    q, recs = await leased(3)
    writes = q.counters.get("writes_failed", 0)
    verdicts = await q.report(WORKER, [report_of(recs[0]), report_of(recs[1], ok=False),
                                       report_of(recs[2])])
    assert verdicts == ["ok", "ok", "ok"]
    states = [q.slots[r.job_id].record.state for r in recs]
    assert states == ["finished", "failed", "finished"]
    assert q.slots[recs[1].job_id].record.failure.code == "exit_nonzero"
    assert (q.counters["jobs_finished"], q.counters["jobs_failed"]) == (2, 1)
    assert q.counters.get("writes_failed", 0) == writes
    # The worker retries (it lost the answer): recorded once, still "ok".
    again = await q.report(WORKER, [report_of(r) for r in recs])
    assert again == ["ok", "ok", "ok"]
    assert (q.counters["jobs_finished"], q.counters["jobs_failed"]) == (2, 1)


async def test_each_report_of_a_batch_gets_its_own_verdict():
    q, recs = await leased(3)
    unknown = job(99)
    verdicts = await q.report(WORKER, [
        report_of(recs[0], epoch=recs[0].lease.epoch + 1),  # not the lease's epoch
        Report(unknown.job_id, 1, 0, True),                 # no such job here
        report_of(recs[1]),
        report_of(recs[1]),                                 # the same job twice
    ])
    assert verdicts == ["stale", "not_primary", "ok", "retry"]
    assert q.slots[recs[0].job_id].record.state == "running"
    assert q.slots[recs[1].job_id].record.state == "finished"
    # Another worker's report of a job leased to us is refused.
    assert await q.report(OTHER, [report_of(recs[2])]) == ["stale"]
    assert q.slots[recs[2].job_id].record.state == "running"
    assert q.counters["reports_refused"] == 2


async def test_jobs_wait_for_their_inputs_then_activate_or_fail(autojump_clock):
    q = solo_queue(GRID, ME, unschedulable_after=60.0)
    ready = {"alice:raw": ("waiting", "no live node holds input dataset alice:raw")}

    async def check(inputs, user):
        assert user == "alice"
        return ready.get(inputs[0], ("missing", f"input dataset {inputs[0]} is not in the "
                                                "catalog"))

    q.inputs = check
    waits, never = job(1, inputs=["alice:raw"]), job(2, inputs=["alice:nothing"])
    await q.create([waits, never], {waits.job_id: (ME,), never.job_id: (ME,)})
    assert {q.slots[j.job_id].record.state for j in (waits, never)} == {"defined"}
    await q.activate_ready()
    assert q.slots[waits.job_id].record.state == "defined"  # no holder yet
    assert await q.claim(Offer(WORKER, "site", 8, 1 << 20, 1 << 30)) == []
    ready["alice:raw"] = ("ready", "its input datasets are in the grid")
    await trio.sleep(61)
    await q.activate_ready()
    assert q.slots[waits.job_id].record.state == "activated"
    gone = q.slots[never.job_id].record
    assert (gone.state, gone.failure.code) == ("failed", "input_missing")
    assert "alice:nothing is not in the catalog" in gone.failure.diagnosis
    [leased] = await q.claim(Offer(WORKER, "site", 8, 1 << 20, 1 << 30))
    assert leased.job_id == waits.job_id


async def test_a_primary_scouts_each_task_then_hands_out_its_longest_task_first():
    short, long_ = "a" * 40, "b" * 40
    q = solo_queue(GRID, ME)
    q.match.scouts = 1
    jobs = [job(i, task_id=short) for i in range(3)] + [job(10 + i, task_id=long_)
                                                        for i in range(3)]
    await q.create(jobs, {j.job_id: (ME,) for j in jobs})

    def offer(n):
        return Offer(WORKER, "site", cores=n, memory_mb=1 << 20, disk_mb=1 << 30, max_jobs=n)

    scouts = await q.claim(offer(2))              # one scout of each task, not two of S
    assert [r.job.spec.task_id for r in scouts] == [short, long_]
    assert all("a scout of its task" in r.placements[-1].rule for r in scouts)
    assert await q.report(WORKER, [report_of(scouts[0])]) == ["ok"]
    await trio.sleep(0.3)                         # L's scout is held longer than S's
    assert await q.report(WORKER, [report_of(scouts[1])]) == ["ok"]
    assert q.match.book.expected(long_) > q.match.book.expected(short)
    nxt = await q.claim(offer(1))                 # L's next job before S's older ones
    assert nxt[0].job.spec.task_id == long_
    assert "(longest first)" in nxt[0].placements[-1].rule


async def test_a_report_with_an_offer_writes_the_result_and_the_next_lease_together():
    q = solo_queue(GRID, ME)
    jobs = [job(i) for i in range(3)]
    assert set((await q.create(jobs, {j.job_id: (ME,) for j in jobs})).values()) == {"ok"}
    [first] = await q.claim(Offer(WORKER, "site", cores=1, memory_mb=1 << 20,
                                  disk_mb=1 << 30, max_jobs=1))
    commits = []
    save = q.store.save_slots

    async def counting(slots):
        slots = list(slots)
        commits.append(sorted(j for j, _ in slots))
        await save(slots)

    q.store.save_slots = counting
    offer = Offer(WORKER, "site", cores=1, memory_mb=1 << 20, disk_mb=1 << 30, max_jobs=1)
    verdicts, leased = await q.report_and_claim(WORKER, [report_of(first)], offer)
    assert verdicts == ["ok"] and len(leased) == 1
    [nxt] = leased
    assert nxt.job_id != first.job_id and nxt.lease.worker == WORKER
    assert q.slots[first.job_id].record.state == "finished"
    assert q.slots[nxt.job_id].record.state == "running"
    assert commits == [sorted([first.job_id, nxt.job_id])]  # one write for both
    assert (q.counters["jobs_finished"], q.counters["jobs_leased"]) == (1, 2)
    # A stale report still gets its verdict; the offer is served all the same.
    verdicts, leased = await q.report_and_claim(WORKER, [report_of(first, epoch=99)], offer)
    assert verdicts == ["ok"]  # already recorded: a retry
    assert len(leased) == 1 and leased[0].job_id not in (first.job_id, nxt.job_id)
    verdicts, leased = await q.report_and_claim(OTHER, [report_of(nxt)], offer)
    assert verdicts == ["stale"] and leased == []  # nothing left to lease
