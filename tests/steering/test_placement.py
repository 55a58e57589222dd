"""Placement notes: what the queue primary records when it leases a job, kept bounded,
and the stage-in cap a congested worker's claim puts on the matcher."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from overlay import BadMessage
from steering import JobRecord, NodeSeen, Offer
from steering.placement import MAX_NEXT, MAX_PLACEMENTS, Placement
from steering.record import requeue
from steering.solo import solo_queue

from .common import BOB, BOB_CERT, GRID, job

ME = b"\x07" * 20
WORKER = b"\x01" * 20
OTHER = b"\x02" * 20


def offer(n: int, **kw) -> Offer:
    return Offer(WORKER, "site", cores=n, memory_mb=1 << 20, disk_mb=1 << 30, max_jobs=n, **kw)


async def queue_of(jobs):
    q = solo_queue(GRID, ME)
    answer = await q.create(jobs, {j.job_id: (ME,) for j in jobs})
    assert set(answer.values()) == {"ok"}
    return q


async def test_a_lease_carries_the_workers_claim_and_the_rule_that_picked_it():
    jobs = [job(0, priority=5), job(1, key=BOB, cert=BOB_CERT), job(2), job(3), job(4)]
    q = await queue_of(jobs)
    q.nodes_seen = lambda: [NodeSeen(WORKER, "ok", 1), NodeSeen(OTHER, "congested", 0)]
    [rec] = await q.claim(offer(1, state="congested", why="congested: 1 stage-in"))
    assert rec.job_id == jobs[0].job_id  # the higher priority first
    [p] = rec.placements
    assert (p.attempt, p.worker, p.state, p.cores_free, p.max_jobs) == (1, WORKER, "congested",
                                                                        1, 1)
    assert p.worker_why == "congested: 1 stage-in"
    assert "priority 5" in p.rule and "user alice had 0 running" in p.rule
    assert p.queued == 4
    # The next in line: bob first (fair share: alice has one running now), then alice's.
    assert [x.job_id for x in p.passed] == [jobs[1].job_id, jobs[2].job_id, jobs[3].job_id]
    assert [x.user_running for x in p.passed] == [0, 1, 2]  # as the matcher counts
    assert [n.node_id for n in p.nodes] == [OTHER]  # the claiming worker is not "another"
    # Any home member hands it out as it was written: the note survives the wire.
    again = JobRecord.from_wire_untrusted(rec.to_wire(), GRID)
    assert again.placements == rec.placements
    assert q.slots[rec.job_id].record.placements == rec.placements


async def test_a_record_keeps_the_notes_of_its_last_attempts_only():
    q = await queue_of([job(0, max_attempts=20)])
    for attempt in range(1, MAX_PLACEMENTS + 4):
        [rec] = await q.claim(offer(1, state="ok", why=f"try {attempt}"))
        [done] = await q._commit([requeue(rec, now=0.0, reason="lease expired")], "test")
        assert done
    notes = q.slots[rec.job_id].record.placements
    assert len(notes) == MAX_PLACEMENTS
    assert [p.attempt for p in notes] == list(range(4, MAX_PLACEMENTS + 4))
    assert notes[-1].worker_why == f"try {MAX_PLACEMENTS + 3}"


async def test_a_claim_takes_no_more_stage_ins_than_the_worker_asked_for():
    with_inputs = [job(i, inputs=["alice/data"]) for i in range(4)]
    plain = [job(10 + i) for i in range(2)]
    q = await queue_of(with_inputs + plain)
    for j in with_inputs:  # their inputs are ready
        rec = q.slots[j.job_id].record
        [ok] = await q._commit([replace(rec, state="activated", version=rec.version + 1)], "t")
        assert ok
    got = await q.claim(offer(5, max_stage_ins=1))
    staged = [r for r in got if r.job.spec.inputs]
    assert len(staged) == 1 and len(got) == 3  # one stage-in, and the jobs that need none
    assert all(p.max_stage_ins == 1 for r in got for p in r.placements)


placement_lists = st.lists(st.one_of(st.none(), st.booleans(), st.integers(-5, 2**64),
                                     st.floats(), st.text(max_size=5), st.binary(max_size=21),
                                     st.lists(st.integers(0, 3), max_size=4)),
                           min_size=10, max_size=13)


@given(data=st.one_of(placement_lists, st.integers(), st.text(), st.none()))
def test_any_wire_note_is_returned_checked_or_refused(data) -> None:
    try:
        p = Placement.from_wire_untrusted(data)
    except BadMessage:
        return
    assert Placement.from_wire_untrusted(p.to_wire()) == p


def test_a_wellformed_note_round_trips_and_oversized_lists_are_refused() -> None:
    p = Placement(2, 1.5, WORKER, "ok", 4, 4, 1, "ok", "matched", 3)
    assert Placement.from_wire_untrusted(p.to_wire()) == p
    wire = p.to_wire()
    wire[10] = [[WORKER, 0, 0, 1.0]] * (MAX_NEXT + 1)
    try:
        Placement.from_wire_untrusted(wire)
    except BadMessage:
        pass
    else:
        raise AssertionError("a note with too many passed jobs was accepted")


def test_an_offer_says_its_state_and_why_or_is_refused() -> None:
    from overlay import RpcError
    from steering.queue_rpc import _offer

    base = {"site": "s", "cores": 4, "memory_mb": 10, "disk_mb": 10, "labels": [],
            "max_jobs": 4}
    o = _offer(WORKER, {**base, "max_stage_ins": 1, "state": "congested", "why": "x" * 999})
    assert (o.max_stage_ins, o.state, len(o.why)) == (1, "congested", 200)
    assert _offer(WORKER, base).max_stage_ins is None  # an older worker: no cap
    for bad in ({"state": "sick"}, {"max_stage_ins": 5}, {"max_stage_ins": -1},
                {"why": 7}, {"state": None}):
        try:
            _offer(WORKER, {**base, **bad})
        except RpcError as exc:
            assert exc.code == "bad_request", bad
        else:
            raise AssertionError(f"{bad} was accepted")


async def test_a_worker_holding_the_input_gets_that_job_and_it_costs_no_stage_in():
    """Locality (brokerage rules a, b): among a user's next jobs the one whose input
    the worker holds comes first, and needs none of its stage-in allowance."""
    older = [job(i, inputs=["alice/other"]) for i in range(2)]
    here = job(5, inputs=["alice:data"])
    q = await queue_of(older + [here])
    for j in older + [here]:
        rec = q.slots[j.job_id].record
        [ok] = await q._commit([replace(rec, state="activated", version=rec.version + 1)], "t")
        assert ok
    [got] = await q.claim(offer(1, max_stage_ins=0, held=frozenset({"alice:data"})))
    assert got.job_id == here.job_id
    assert "its inputs are on the worker" in got.placements[-1].rule
    # Without the dataset and without stage-ins allowed, nothing with inputs is taken.
    assert await q.claim(offer(1, max_stage_ins=0)) == []
    [oldest] = await q.claim(offer(1))
    assert oldest.job_id == older[0].job_id and "on the worker" not in oldest.placements[-1].rule


def test_an_offer_names_at_most_max_held_datasets() -> None:
    from overlay import RpcError
    from steering.matching import MAX_HELD
    from steering.queue_rpc import _offer

    base = {"site": "s", "cores": 4, "memory_mb": 10, "disk_mb": 10, "labels": [],
            "max_jobs": 4}
    assert _offer(WORKER, {**base, "held": ["a:b", "c:d"]}).held == {"a:b", "c:d"}
    for bad in ("a:b", [1], ["x" * 301], ["a:b"] * (MAX_HELD + 1)):
        try:
            _offer(WORKER, {**base, "held": bad})
        except RpcError as exc:
            assert exc.code == "bad_request"
        else:
            raise AssertionError(f"held={bad!r} was accepted")
