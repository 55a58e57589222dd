"""gridnode explain's view of a record: each attempt's note and what became of it."""

from __future__ import annotations

from node.explain import explain_text, explain_view
from steering import NodeSeen, Offer
from steering.record import Report
from steering.solo import solo_queue
from tests.steering.common import GRID, job

ME = b"\x07" * 20
WORKER = b"\x01" * 20
OTHER = b"\x02" * 20


def offer(**kw) -> Offer:
    return Offer(WORKER, "site", cores=1, memory_mb=1 << 20, disk_mb=1 << 30, max_jobs=1,
                 state="ok", why="ok: one job per free core, 1 free", **kw)


async def test_each_attempt_says_where_it_went_why_and_how_it_ended():
    q = solo_queue(GRID, ME)
    jobs = [job(i, max_attempts=3) for i in range(3)]
    await q.create(jobs, {j.job_id: (ME,) for j in jobs})
    q.nodes_seen = lambda: [NodeSeen(OTHER, "congested", 0)]
    [rec] = await q.claim(offer())
    assert await q.report(WORKER, [Report(rec.job_id, 1, rec.lease.epoch, True)]) == ["ok"]
    v = explain_view(q.slots[rec.job_id].record)
    assert (v["state"], v["attempt"], v["unexplained_attempts"]) == ("finished", 1, [])
    [a] = v["attempts"]
    assert a["worker"] == WORKER.hex() and a["worker_state"] == "ok"
    assert a["claim"] == {"max_jobs": 1, "max_stage_ins": 1,
                          "why": "ok: one job per free core, 1 free"}
    assert [p["job"] for p in a["passed"]] == [jobs[1].hex_id, jobs[2].hex_id]
    assert a["nodes"] == [{"id": OTHER.hex(), "state": "congested", "slots_free": 0}]
    assert a["outcome"]["state"] == "finished"
    text = explain_text(v)
    assert f"-> worker {WORKER.hex()[:12]} (ok, 1 core free)" in text
    assert "primary: matched: requirements ok, priority 0" in text
    assert f"preferred over: {jobs[1].hex_id[:12]}" in text
    assert f"other nodes: {OTHER.hex()[:12]} congested, 0 free" in text
    assert "outcome: finished: payload finished" in text

    waiting = explain_view(q.slots[jobs[1].job_id].record)
    assert waiting["attempts"] == [] and "not placed yet" in explain_text(waiting)
