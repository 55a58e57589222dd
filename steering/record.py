"""The job record and its state machine (pure: no I/O, no clock of its own).

A :class:`JobRecord` is what the home set replicates: the signed job, its
home set, its state, the current attempt and lease, the history of changes
and the failure, if any.  Every change goes through :func:`apply`, which
looks the (state, event) pair up in ``TRANSITIONS``; an illegal one raises
:class:`IllegalTransition` naming all three.

=============  ==============  =============  ===========================================
state          event           next state     when
=============  ==============  =============  ===========================================
defined        activate        activated      inputs are ready
activated      lease           running        a worker claimed it (attempt + 1)
running        stage_out       transferring   the payload ended well; outputs move
running        finish          finished       the payload ended well (no outputs)
transferring   finish          finished       outputs registered
running        fail            failed         the payload failed (the job's fault: final)
transferring   fail            failed         stage-out failed for good
running        retry           activated      lease expired, worker gave it back, the
                                              node failed it (``NODE_ERRORS``), or released
                                              it (``release``: no attempt spent)
transferring   retry           activated      (idem); ``fail`` instead when no attempt is left
activated      unschedulable   failed         no node of the grid can ever run it
defined        inputs_missing  failed         an input dataset stayed unknown to the grid
any non-final  cancel          cancelled      its user or a grid admin cancelled it
=============  ==============  =============  ===========================================

``finished``, ``failed`` and ``cancelled`` are final: nothing leaves them,
so a job has exactly one final state (G2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from overlay import GridInfo, expect

from .job import SignedJob
from .placement import MAX_PLACEMENTS, Placement

STATES = ("defined", "activated", "running", "transferring", "finished", "failed", "cancelled")
FINAL = frozenset({"finished", "failed", "cancelled"})
TRANSITIONS: dict[tuple[str, str], str] = {
    ("defined", "activate"): "activated",
    ("activated", "lease"): "running",
    ("running", "stage_out"): "transferring",
    ("running", "finish"): "finished",
    ("transferring", "finish"): "finished",
    ("running", "fail"): "failed",
    ("transferring", "fail"): "failed",
    ("running", "retry"): "activated",
    ("transferring", "retry"): "activated",
    ("activated", "unschedulable"): "failed",
    ("defined", "inputs_missing"): "failed",
    **{(s, "cancel"): "cancelled" for s in ("defined", "activated", "running", "transferring")},
}
MAX_HISTORY = 64
# Output files one job may report (their manifests ride in its record).
MAX_OUTPUTS = 256
MAX_TEXT = 1000


class IllegalTransition(Exception):
    """Our bug, or a stale request: (state, event) is not in the table."""

    def __init__(self, state: str, event: str, job: str) -> None:
        super().__init__(f"job {job}: no transition from {state!r} on {event!r}")
        self.state, self.event = state, event


@dataclass(frozen=True)
class Event:
    time: float
    state: str
    reason: str
    node: bytes = b""


@dataclass(frozen=True)
class Lease:
    """Who runs the current attempt, under which primary epoch, for how long."""

    worker: bytes
    attempt: int
    epoch: int
    granted: float  # wall clock, for people; expiry is kept on the primary's monotonic clock
    duration: float


@dataclass(frozen=True)
class Failure:
    code: str
    diagnosis: str
    exit_code: int | None = None
    signal: int | None = None
    stderr_tail: tuple[str, ...] = ()
    node: bytes = b""


@dataclass(frozen=True)
class JobRecord:
    job: SignedJob
    home: tuple[bytes, ...]
    state: str = "activated"
    attempt: int = 0
    lease: Lease | None = None
    history: tuple[Event, ...] = ()
    failure: Failure | None = None
    version: int = 0
    # The output files of the attempt that finished the job, as their worker
    # reported them (file manifests in the wire form of replication.manifest,
    # checked by whoever reads them); held by the node of the final event.
    outputs: tuple[Any, ...] = ()
    # Why each recent attempt went where it went (steering.placement), the last few.
    placements: tuple[Placement, ...] = ()

    @property
    def job_id(self) -> bytes:
        return self.job.job_id

    @property
    def final(self) -> bool:
        return self.state in FINAL

    def to_wire(self) -> list[Any]:
        lease = self.lease
        f = self.failure
        return [self.job.raw, list(self.home), self.state, self.attempt,
                None if lease is None else [lease.worker, lease.attempt, lease.epoch,
                                            lease.granted, lease.duration],
                [[e.time, e.state, e.reason, e.node] for e in self.history],
                None if f is None else [f.code, f.diagnosis, f.exit_code, f.signal,
                                        list(f.stderr_tail), f.node],
                self.version, list(self.outputs)] + (
                    [[p.to_wire() for p in self.placements]] if self.placements else [])

    @classmethod
    def from_wire_untrusted(cls, data: Any, grid: GridInfo, *, stored: bool = False,
                            known: Callable[[bytes], SignedJob | None] | None = None
                            ) -> JobRecord:
        """Decode a record from a peer (or, ``stored``, from our own state file).

        ``known`` returns the checked job for signed bytes we already hold, if any."""
        expect(isinstance(data, list) and len(data) in (8, 9, 10), "bad job record")
        raw, home, state, attempt, lease, history, failure, version = data[:8]
        outputs = data[8] if len(data) >= 9 else []
        notes = data[9] if len(data) == 10 else []
        expect(isinstance(notes, list) and len(notes) <= MAX_PLACEMENTS, "bad placements")
        placements = tuple(Placement.from_wire_untrusted(n) for n in notes)
        expect(isinstance(outputs, list) and len(outputs) <= MAX_OUTPUTS
               and all(isinstance(o, list) for o in outputs), "bad outputs")
        expect(isinstance(raw, bytes), "bad job bytes")
        job = known(raw) if known is not None else None
        if job is None:
            job = SignedJob.from_bytes_untrusted(raw, grid, verify=not stored)
        expect(isinstance(home, list) and 0 < len(home) <= 16 and all(
            isinstance(h, bytes) and len(h) == 20 for h in home), "bad home set")
        expect(state in STATES, f"bad state {state!r}")
        expect(_uint(attempt) and _uint(version), "bad attempt or version")
        lease_v = None
        if lease is not None:
            expect(isinstance(lease, list) and len(lease) == 5, "bad lease")
            w, a, e, g, d = lease
            expect(isinstance(w, bytes) and len(w) == 20 and _uint(a) and _uint(e)
                   and _num(g) and _num(d), "bad lease fields")
            lease_v = Lease(w, a, e, float(g), float(d))
        expect(isinstance(history, list) and len(history) <= MAX_HISTORY, "bad history")
        events = []
        for ev in history:
            expect(isinstance(ev, list) and len(ev) == 4, "bad event")
            t, s, r, n = ev
            expect(_num(t) and s in STATES and isinstance(r, str) and len(r) <= MAX_TEXT
                   and isinstance(n, bytes) and len(n) <= 20, "bad event fields")
            events.append(Event(float(t), s, r, n))
        failure_v = None
        if failure is not None:
            expect(isinstance(failure, list) and len(failure) == 6, "bad failure")
            c, dg, ec, sg, tail, n = failure
            expect(isinstance(c, str) and len(c) <= 64 and isinstance(dg, str)
                   and len(dg) <= MAX_TEXT and (ec is None or type(ec) is int)
                   and (sg is None or type(sg) is int) and isinstance(tail, list)
                   and len(tail) <= 50 and all(isinstance(x, str) and len(x) <= MAX_TEXT
                                               for x in tail)
                   and isinstance(n, bytes) and len(n) <= 20, "bad failure fields")
            failure_v = Failure(c, dg, ec, sg, tuple(tail), n)
        return cls(job, tuple(home), state, attempt, lease_v, tuple(events), failure_v, version,
                   tuple(outputs), placements)


# A listing answers with at most this many bytes of records (a frame is 1 MiB).
LIST_BUDGET = 512 * 1024


def within_budget(records: list[Any], budget: int = LIST_BUDGET) -> list[Any]:
    """The first records whose wire size (estimated) fits ``budget``."""
    used = 0
    for i, rec in enumerate(records):
        r = rec[-1] if isinstance(rec, tuple) else rec
        used += len(r.job.raw) + 120 * (len(r.history) + 2) + 800 * len(r.placements)
        if used > budget:
            return records[:i]
    return records


def _uint(x: Any) -> bool:
    return type(x) is int and 0 <= x < 2**63


def _num(x: Any) -> bool:
    return (type(x) is int or type(x) is float) and x == x and abs(x) < 1e15


def _event(rec: JobRecord, state: str, now: float, reason: str, node: bytes) -> tuple[Event, ...]:
    history = rec.history + (Event(now, state, reason[:MAX_TEXT], node),)
    if len(history) > MAX_HISTORY:  # keep the first events and the latest ones
        history = history[:8] + history[-(MAX_HISTORY - 8):]
    return history


def apply(rec: JobRecord, event: str, *, now: float, reason: str, node: bytes = b"",
          **changes: Any) -> JobRecord:
    """The record after ``event``, or IllegalTransition."""
    nxt = TRANSITIONS.get((rec.state, event))
    if nxt is None:
        raise IllegalTransition(rec.state, event, rec.job.hex_id)
    if nxt not in ("running", "transferring"):
        changes["lease"] = None  # a lease lives only while the job runs
    return replace(rec, state=nxt, history=_event(rec, nxt, now, reason, node),
                   version=rec.version + 1, **changes)


def new_record(job: SignedJob, home: tuple[bytes, ...], *, now: float, node: bytes) -> JobRecord:
    """A submitted job: ``activated`` (or ``defined`` while it waits for inputs)."""
    state = "defined" if job.spec.inputs else "activated"
    reason = "waiting for input datasets" if job.spec.inputs else "submitted"
    return JobRecord(job, home, state, history=(Event(now, state, reason, node),), version=1)


# -- leases --------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    """A worker's result for one attempt of a job, as it reaches the job's primary."""

    job_id: bytes
    attempt: int
    epoch: int
    ok: bool
    failure: Failure | None = None
    outputs: tuple[Any, ...] = ()  # file manifests (wire form) of what the job made


class StaleReport(Exception):
    """A worker's heartbeat or report that no longer matches the job's lease."""


def grant(rec: JobRecord, worker: bytes, *, epoch: int, now: float, duration: float,
          placements: tuple[Placement, ...] | None = None) -> JobRecord:
    """The next attempt leased to ``worker`` (with the record's placement notes, if
    given: steering.placement)."""
    attempt = rec.attempt + 1
    extra = {} if placements is None else {"placements": placements}
    return apply(rec, "lease", now=now, node=worker,
                 reason=f"attempt {attempt} leased to {worker.hex()[:12]}",
                 attempt=attempt, lease=Lease(worker, attempt, epoch, now, duration), **extra)


def check_lease(rec: JobRecord, worker: bytes, attempt: int) -> Lease:
    """The lease ``worker`` holds for ``attempt``, or StaleReport saying why not."""
    lease = rec.lease
    if rec.state not in ("running", "transferring") or lease is None:
        raise StaleReport(f"job {rec.job.hex_id} is {rec.state}, not leased")
    if lease.worker != worker or lease.attempt != attempt:
        raise StaleReport(f"job {rec.job.hex_id} attempt {attempt} is no longer leased to "
                          f"this worker (now attempt {lease.attempt})")
    return lease


# Failures a node causes whatever the job (its sandbox, its storage, its transfers): the
# job goes back to the queue for another attempt, on another node if that one is failing.
NODE_ERRORS = frozenset({"sandbox_failed", "stage_in_failed", "stage_out_failed"})


# A release (steering.brokerage rule c: the worker gave the job back, its stage-in stuck
# behind its own bottleneck) does not spend an attempt, up to this many per job.
MAX_FREE_RELEASES = 3
RELEASED = "released by"


def releases(rec: JobRecord) -> int:
    """The job's releases so far, as its history records them."""
    return sum(1 for e in rec.history if e.state == "activated"
               and e.reason.startswith(RELEASED))


def released_by(rec: JobRecord) -> bytes:
    """The worker that has just released the job (its last event), or b""."""
    last = rec.history[-1] if rec.history else None
    return last.node if last is not None and last.state == "activated" and \
        last.reason.startswith(RELEASED) else b""


def release(rec: JobRecord, worker: bytes, *, now: float, why: str) -> JobRecord:
    """The worker gave the job back (rule c): queued again without spending the attempt
    (up to MAX_FREE_RELEASES), and not for that worker next time (``released_by``)."""
    spent = rec.attempt - min(releases(rec) + 1, MAX_FREE_RELEASES)
    if spent >= rec.job.spec.max_attempts:
        return requeue(rec, now=now, reason=f"{RELEASED} {worker.hex()[:12]} once too often")
    return apply(rec, "retry", now=now, node=worker, lease=None,
                 reason=f"{RELEASED} {worker.hex()[:12]}: {why}")


def requeue(rec: JobRecord, *, now: float, reason: str) -> JobRecord:
    """The lease ended without a result: next attempt, or failed when none is left
    (releases, up to MAX_FREE_RELEASES, spent none)."""
    if rec.attempt - min(releases(rec), MAX_FREE_RELEASES) >= rec.job.spec.max_attempts:
        return apply(rec, "fail", now=now, reason=f"{reason}; no attempt left",
                     lease=None, failure=Failure("attempts_exhausted",
                                                 f"{reason} on all {rec.attempt} attempts"))
    return apply(rec, "retry", now=now, reason=reason, lease=None)


def rebase_lease(rec: JobRecord, epoch: int) -> JobRecord:
    """A new primary takes over a running job: the lease carries its epoch from now."""
    if rec.lease is None or rec.lease.epoch >= epoch:
        return rec
    return replace(rec, lease=replace(rec.lease, epoch=epoch), version=rec.version + 1)


def report(rec: JobRecord, worker: bytes, attempt: int, epoch: int, *, now: float,
           ok: bool, failure: Failure | None = None, outputs: tuple[Any, ...] = ()
           ) -> JobRecord:
    """The worker's result for its attempt; StaleReport when the lease is not its own."""
    lease = check_lease(rec, worker, attempt)
    if epoch != lease.epoch:
        raise StaleReport(f"report for job {rec.job.hex_id} carries epoch {epoch}, "
                          f"the lease is at epoch {lease.epoch}")
    if ok:
        return apply(rec, "finish", now=now, node=worker, lease=None, outputs=tuple(outputs),
                     reason="payload finished" + (f", {len(outputs)} output files"
                                                  if outputs else ""))
    assert failure is not None
    if failure.code == "released":
        return release(rec, worker, now=now, why=failure.diagnosis)
    if failure.code in NODE_ERRORS:  # the node's fault, not the job's: run it elsewhere
        return requeue(rec, now=now, reason=f"{failure.code} on node {worker.hex()[:12]}: "
                                            f"{failure.diagnosis}")
    return apply(rec, "fail", now=now, node=worker, lease=None, failure=failure,
                 reason=f"{failure.code}: {failure.diagnosis}")
