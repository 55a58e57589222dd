"""The job state machine, leases, and their replication on a home set."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from steering.homeset import (
    Slot,
    adopt,
    first_ballot,
    home_set,
    majority,
    next_ballot,
    on_accept,
    on_prepare,
)
from steering.record import (
    FINAL,
    STATES,
    TRANSITIONS,
    Failure,
    IllegalTransition,
    JobRecord,
    StaleReport,
    apply,
    grant,
    new_record,
    rebase_lease,
    report,
    requeue,
)
from tests.overlay.common import NOW, SETTINGS

from .common import job

W1, W2, W3 = b"\x01" * 20, b"\x02" * 20, b"\x03" * 20
HOME = (b"a" * 20, b"b" * 20, b"c" * 20)


def fresh(max_attempts: int = 3) -> JobRecord:
    return new_record(job(1, max_attempts=max_attempts), HOME, now=NOW, node=b"")


def test_table_is_closed_and_final_states_are_absorbing() -> None:
    assert {s for s, _ in TRANSITIONS} | set(TRANSITIONS.values()) <= set(STATES)
    assert not [k for k in TRANSITIONS if k[0] in FINAL]
    rec = apply(fresh(), "cancel", now=NOW, reason="user asked")
    with pytest.raises(IllegalTransition, match="'cancelled'.*'lease'"):
        grant(rec, W1, epoch=16, now=NOW, duration=30)


def test_lease_report_and_history() -> None:
    rec = grant(fresh(), W1, epoch=16, now=NOW, duration=30)
    assert (rec.state, rec.attempt, rec.lease.worker) == ("running", 1, W1)
    with pytest.raises(StaleReport):
        report(rec, W2, 1, 16, now=NOW, ok=True)  # not the holder
    with pytest.raises(StaleReport):
        report(rec, W1, 1, 15, now=NOW, ok=True)  # older epoch
    done = report(rec, W1, 1, 16, now=NOW + 1, ok=True)
    assert done.state == "finished" and done.lease is None
    assert [e.state for e in done.history] == ["activated", "running", "finished"]
    with pytest.raises(StaleReport):
        report(done, W1, 1, 16, now=NOW, ok=True)  # once only


def test_expired_lease_requeues_then_fails_when_attempts_run_out() -> None:
    rec = fresh(max_attempts=2)
    rec = requeue(grant(rec, W1, epoch=16, now=NOW, duration=1), now=NOW, reason="lease expired")
    assert (rec.state, rec.attempt) == ("activated", 1)
    rec = grant(rec, W2, epoch=16, now=NOW, duration=1)
    # The paused first worker wakes up: its attempt is stale.
    with pytest.raises(StaleReport, match="no longer leased"):
        report(rec, W1, 1, 16, now=NOW, ok=True)
    rec = requeue(rec, now=NOW, reason="lease expired")
    assert rec.state == "failed" and rec.failure.code == "attempts_exhausted"


def test_failure_is_final_and_kept() -> None:
    rec = grant(fresh(), W1, epoch=16, now=NOW, duration=30)
    f = Failure("exit_nonzero", "exit code 3", 3, None, ("boom",), W1)
    rec = report(rec, W1, 1, 16, now=NOW, ok=False, failure=f)
    assert rec.state == "failed" and rec.failure == f


def test_takeover_rebases_the_lease_epoch() -> None:
    rec = grant(fresh(), W1, epoch=16, now=NOW, duration=30)
    moved = rebase_lease(rec, 33)
    assert moved.lease.epoch == 33 and moved.version == rec.version + 1
    with pytest.raises(StaleReport):
        report(moved, W1, 1, 16, now=NOW, ok=True)
    assert report(moved, W1, 1, 33, now=NOW, ok=True).state == "finished"


@SETTINGS
@given(ops=st.lists(st.tuples(st.sampled_from(["grant", "expire", "report", "fail", "cancel",
                                                "rebase"]),
                              st.sampled_from([W1, W2, W3]), st.integers(0, 4),
                              st.integers(16, 20)), max_size=40),
       max_attempts=st.integers(1, 4))
def test_any_sequence_keeps_one_lease_and_one_final_state(ops, max_attempts) -> None:
    rec = fresh(max_attempts)
    finals = 0
    for op, worker, attempt, epoch in ops:
        before = rec
        try:
            if op == "grant":
                rec = grant(rec, worker, epoch=epoch, now=NOW, duration=1)
            elif op == "expire" and rec.state in ("running", "transferring"):
                rec = requeue(rec, now=NOW, reason="lease expired")
            elif op == "report":
                rec = report(rec, worker, attempt, epoch, now=NOW, ok=True)
            elif op == "fail":
                rec = report(rec, worker, attempt, epoch, now=NOW, ok=False,
                             failure=Failure("exit_nonzero", "x"))
            elif op == "cancel":
                rec = apply(rec, "cancel", now=NOW, reason="x")
            elif op == "rebase":
                rec = rebase_lease(rec, epoch)
        except (IllegalTransition, StaleReport):
            assert rec == before  # a refused change changes nothing
            continue
        if op in ("report", "fail"):
            assert before.lease is not None and before.lease.worker == worker
        if rec.final and not before.final:
            finals += 1
        assert before.final <= rec.final  # nothing leaves a final state
        assert (rec.lease is not None) == (rec.state in ("running", "transferring"))
        assert rec.attempt <= max_attempts
    assert finals <= 1
    # Progress: whatever happened, expiring leases ends the job.
    for _ in range(max_attempts + 1):
        if rec.final:
            break
        if rec.state == "activated":
            rec = grant(rec, W1, epoch=99, now=NOW, duration=1)
        rec = requeue(rec, now=NOW, reason="lease expired")
    assert rec.final


# -- home sets and replication ------------------------------------------------------


def test_home_set_is_the_closest_r_nodes() -> None:
    nodes = [bytes([i]) * 20 for i in range(10)]
    target = bytes([3]) * 20
    assert home_set(target, nodes, 3)[0] == target
    assert len(home_set(target, nodes, 3)) == 3
    assert home_set(target, nodes[:2], 3) == home_set(target, nodes[:2], 5)
    assert majority(3) == 2 and majority(4) == 3 and majority(1) == 1


def test_ballots_are_distinct_per_member_and_grow() -> None:
    a, b = b"\x01" * 20, b"\x02" * 20
    assert first_ballot(a) != first_ballot(b)
    assert next_ballot(first_ballot(b), a) > first_ballot(b)
    assert next_ballot(first_ballot(a), a) != next_ballot(first_ballot(a), b)


@dataclass
class Proposer:
    rank: int
    worker: bytes
    ballot: int = 0
    leading: bool = False
    record: JobRecord | None = None
    seen: int = 0


@dataclass
class Sim:
    slots: list[Slot]
    acked: list[JobRecord] = field(default_factory=list)


@SETTINGS
@given(steps=st.lists(st.tuples(st.integers(0, 2), st.sampled_from(["prepare", "grant",
                                                                     "expire"]),
                                st.sets(st.integers(0, 2), min_size=1)), max_size=60))
def test_no_two_workers_are_acknowledged_for_one_attempt(steps) -> None:
    """Three members, three would-be primaries, messages reaching any subset.

    Whatever the interleaving: an acknowledged (majority-accepted) grant for
    an attempt names one worker, attempts only grow along acknowledged
    records, and nothing acknowledged is lost (G1, G2)."""
    start = fresh(max_attempts=100)
    sim = Sim([Slot(0, first_ballot(HOME[0]), start)] * 2 + [Slot()])  # submitted to a majority
    props = [Proposer(i, [W1, W2, W3][i]) for i in range(3)]
    holders: dict[int, bytes] = {}
    last_acked_version = start.version
    for who, action, reach in steps:
        p = props[who]
        if action == "prepare":
            p.ballot = next_ballot(max(p.seen, p.ballot), HOME[p.rank])
            promises = []
            for i in reach:
                sim.slots[i], promise = on_prepare(sim.slots[i], p.ballot)
                promises.append(promise)
            won, newest, seen = adopt(promises, 3)
            p.seen = max(p.seen, seen)
            p.leading = won and newest is not None
            if p.leading:
                assert newest is not None
                p.record = rebase_lease(newest, p.ballot)
            continue
        if not p.leading or p.record is None:
            continue
        rec = p.record
        if action == "grant" and rec.state == "activated":
            rec = grant(rec, p.worker, epoch=p.ballot, now=NOW, duration=1)
        elif action == "expire" and rec.state == "running":
            rec = requeue(rec, now=NOW, reason="lease expired")
        else:
            continue
        accepted = 0
        for i in reach:
            sim.slots[i], ok = on_accept(sim.slots[i], p.ballot, rec)
            accepted += ok
            if not ok:
                p.leading = False
        p.record = rec
        if accepted >= majority(3):
            # Acknowledged: it must extend everything acknowledged before.
            assert rec.version > last_acked_version
            last_acked_version = rec.version
            if rec.lease is not None:
                assert holders.setdefault(rec.attempt, rec.lease.worker) == rec.lease.worker
            sim.acked.append(rec)
    # Every acknowledged record survives on a majority, or a newer one does.
    if sim.acked:
        newest = max(s.record.version for s in sim.slots if s.record is not None)
        on_majority = sorted((s.record.version for s in sim.slots if s.record is not None),
                             reverse=True)
        assert newest >= sim.acked[-1].version
        assert len(on_majority) >= 2 and on_majority[1] >= sim.acked[-1].version
