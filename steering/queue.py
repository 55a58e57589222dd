"""The replicated job queue on one queue node: member of home sets, and primary.

As a *member* it answers ``queue.prepare`` and ``queue.accept`` from the
home sets it belongs to (``homeset.on_prepare``/``on_accept``), storing each
change in its state file before it answers.  As a *primary* it creates the
records of submitted jobs, hands activated jobs to workers that claim them
(leases), renews leases on heartbeats, records results, requeues jobs whose
lease expired, and takes over the jobs of a home set whose primary is gone.
Every change reaches a majority of the job's home set before it is
acknowledged.  docs/queue.md describes the protocol and why it holds.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import trio

from overlay import BadMessage, GridInfo, RpcError, RpcPool, log_event

from .homeset import (
    DEFAULT_R,
    Promise,
    Slot,
    adopt,
    first_ballot,
    home_set,
    majority,
    next_ballot,
    on_accept,
    on_prepare,
)
from .job import SignedJob, job_id_of
from .matching import (
    Capacity,
    Entry,
    MatchQueue,
    Offer,
    dataset_names,
    fits_offer,
    schedulable,
)
from .outbox import Outbox
from .placement import MAX_NEXT, MAX_NODES, MAX_WHY, NodeSeen, Passed, Placement, placed, rule_text
from .record import (
    Event,
    Failure,
    IllegalTransition,
    JobRecord,
    Report,
    StaleReport,
    apply,
    check_lease,
    grant,
    new_record,
    rebase_lease,
    released_by,
    report,
    requeue,
)
from .tasks import TaskBook, held_for

logger = logging.getLogger("gridnode.queue")

CALL_TIMEOUT = 5.0
MAX_BATCH = 1000
# Records in one accept message that carries the writes of several callers.
ACCEPTS_PER_MESSAGE = 256


class SlotStore(Protocol):
    """Where a member keeps its slots (the node's SQLite file)."""

    async def save_slots(self, slots: Iterable[tuple[bytes, Slot]]) -> None: ...


class Membership(Protocol):
    """What the queue needs to know about the grid (the node provides it)."""

    @property
    def me(self) -> bytes: ...

    def queue_nodes(self) -> dict[bytes, tuple[str, int]]: ...
    def is_suspect(self, node_id: bytes) -> bool: ...
    def note(self, node_id: bytes, ok: bool) -> None: ...
    def capacities(self) -> list[Capacity]: ...


async def call_member(membership: Membership, pool: RpcPool, member: bytes, method: str,
                      args: Any) -> Any:
    """Call a queue node, bounded by CALL_TIMEOUT; note whether it answered."""
    address = membership.queue_nodes().get(member)
    if address is None:
        raise RpcError("unavailable", f"queue node {member.hex()} is not known")
    try:
        answer = await pool.call(address[0], address[1], method, args, expect_id=member,
                                 timeout=CALL_TIMEOUT)
    except RpcError:
        membership.note(member, False)
        raise
    membership.note(member, True)
    return answer


InputCheck = Callable[[tuple[str, ...], str], Awaitable[tuple[str, str]]]


@dataclass
class QueueConfig:
    r: int = DEFAULT_R
    lease_duration: float = 60.0
    takeover_interval: float = 2.0
    # A job no node of the grid can run fails after this long.
    unschedulable_after: float = 300.0
    # A home member unreachable this long is replaced by the next closest queue node.
    repair_after: float = 120.0


def log(event: str, level: int = logging.INFO, **fields: Any) -> None:
    log_event(logger, event, level, **fields)


@dataclass
class QueueNode:
    grid: GridInfo
    membership: Membership
    pool: RpcPool
    store: SlotStore
    config: QueueConfig = field(default_factory=QueueConfig)
    slots: dict[bytes, Slot] = field(default_factory=dict)
    leading: dict[bytes, int] = field(default_factory=dict)  # job -> our ballot
    expiry: dict[bytes, float] = field(default_factory=dict)  # job -> trio clock
    match: MatchQueue = field(default_factory=lambda: MatchQueue(TaskBook()))
    running: Counter[bytes] = field(default_factory=Counter)  # user -> jobs running
    counters: Counter[str] = field(default_factory=Counter)
    changed: trio.Event = field(default_factory=trio.Event)
    _unfit_since: dict[bytes, float] = field(default_factory=dict)
    # Jobs we lead that wait for their inputs (state defined), since when.
    _defined: dict[bytes, float] = field(default_factory=dict)
    # How the node judges a job's inputs: (spec.inputs, user name) -> ("ready" |
    # "waiting" | "missing", why). None: a node without datasets activates nothing.
    inputs: InputCheck | None = None
    # The other compute nodes as their records say (for placement notes); None: unknown.
    nodes_seen: Callable[[], list[NodeSeen]] | None = None

    def __post_init__(self) -> None:
        # Writes to one home member that wait while a write to it is on its way
        # go together (steering.outbox): a busy primary sends one accept message
        # per member and round trip, whatever number of claims and reports asked.
        self._accepts = Outbox(self._send_accepts, ACCEPTS_PER_MESSAGE, size=len)
    _suspect_since: dict[bytes, float] = field(default_factory=dict)

    @property
    def me(self) -> bytes:
        return self.membership.me

    def known_job(self, raw: bytes) -> SignedJob | None:
        """The checked job we hold with exactly these signed bytes (its id is their
        hash), so that a record written again need not be verified again."""
        slot = self.slots.get(job_id_of(raw))
        job = slot.record.job if slot is not None and slot.record is not None else None
        return job if job is not None and job.raw == raw else None

    # -- members: prepare and accept ---------------------------------------

    async def _persist(self, job_ids: Iterable[bytes]) -> None:
        await self.store.save_slots([(j, self.slots[j]) for j in job_ids])

    async def local_prepare(self, entries: list[tuple[bytes, int]]) -> list[Promise]:
        out = []
        for job_id, ballot in entries:
            slot, promise = on_prepare(self.slots.get(job_id, Slot()), ballot)
            self.slots[job_id] = slot
            if promise.ok and job_id in self.leading and self.leading[job_id] < ballot:
                self._step_down(job_id, "another home member prepared a higher ballot")
            out.append(promise)
        await self._persist(j for j, _ in entries)
        return out

    async def local_accept(self, entries: list[tuple[int, JobRecord]]) -> list[bool]:
        out = []
        for ballot, rec in entries:
            slot, ok = on_accept(self.slots.get(rec.job_id, Slot()), ballot, rec)
            self.slots[rec.job_id] = slot
            if ok and rec.job_id in self.leading and self.leading[rec.job_id] < ballot:
                self._step_down(rec.job_id, "a higher ballot wrote to it")
            out.append(ok)
        await self._persist(rec.job_id for _, rec in entries)
        self.changed.set()
        self.changed = trio.Event()
        return out

    def _step_down(self, job_id: bytes, reason: str) -> None:
        self.leading.pop(job_id, None)
        if self.expiry.pop(job_id, None) is not None:
            rec = self.slots[job_id].record
            if rec is not None:
                self.running[rec.job.user_id] -= 1
                if self.match.book is not None:
                    self.match.book.released(rec.job.spec.task_id, job_id)
        self.match.remove(job_id)
        self.counters["steps_down"] += 1
        log("queue.step_down", job=job_id, reason=reason)

    # -- talking to the home set ---------------------------------------------

    async def _call(self, member: bytes, method: str, args: Any) -> Any:
        return await call_member(self.membership, self.pool, member, method, args)

    async def _fan_out(self, per_member: dict[bytes, list[Any]],
                       local: Callable[[list[Any]], Awaitable[list[Any]]],
                       remote: Callable[[bytes, list[Any]], Awaitable[list[Any] | None]],
                       ) -> dict[bytes, list[Any] | None]:
        """Send each member its entries (ourselves: directly); None for who failed."""
        answers: dict[bytes, list[Any] | None] = {}

        async def one(member: bytes, entries: list[Any]) -> None:
            answers[member] = await (local(entries) if member == self.me
                                     else remote(member, entries))

        async with trio.open_nursery() as nursery:
            for member, entries in per_member.items():
                if member != self.me and self.membership.is_suspect(member):
                    answers[member] = None  # probed each round; no write waits on it
                    continue
                nursery.start_soon(one, member, entries)
        return answers

    async def _ask(self, member: bytes, method: str, args: Any,
                   decode: Callable[[Any], list[Any]]) -> list[Any] | None:
        """A member's decoded answer, or None (logged) when it failed."""
        try:
            return decode(await self._call(member, method, args))
        except (RpcError, BadMessage) as exc:
            log("queue.member_failed", logging.DEBUG, member=member, method=method,
                reason=str(exc))
            return None

    async def _remote_accept(self, member: bytes, entries: list[tuple[int, JobRecord]]
                             ) -> list[Any] | None:
        return await self._accepts.send(member, [[b, r.to_wire()] for b, r in entries])

    async def _send_accepts(self, member: bytes, batches: list[list[Any]]
                            ) -> list[Any] | None:
        """One accept message for the batches of several writers; their answers."""
        entries = [e for batch in batches for e in batch]

        def decode(raw: Any) -> list[Any]:
            if not (isinstance(raw, list) and len(raw) == len(entries)
                    and all(isinstance(x, bool) for x in raw)):
                raise BadMessage("bad accept answer")
            return raw

        raw = await self._ask(member, "queue.accept", {"entries": entries}, decode)
        if raw is None:
            return None
        out, i = [], 0
        for batch in batches:
            out.append(raw[i:i + len(batch)])
            i += len(batch)
        return out

    async def replicate(self, writes: list[tuple[int, JobRecord]]) -> list[bool]:
        """Write each record to its home set; True where a majority stored it."""
        per_member: dict[bytes, list[tuple[int, JobRecord]]] = {}
        for ballot, rec in writes:
            for m in rec.home:
                per_member.setdefault(m, []).append((ballot, rec))

        answers = await self._fan_out(per_member, self.local_accept, self._remote_accept)
        oks: Counter[bytes] = Counter()
        refused: set[bytes] = set()
        for member, entries in per_member.items():
            got = answers.get(member)
            if got is None:
                continue
            for (_, rec), ok in zip(entries, got, strict=True):
                if ok:
                    oks[rec.job_id] += 1
                else:
                    refused.add(rec.job_id)
        result = []
        for ballot, rec in writes:
            won = oks[rec.job_id] >= majority(len(rec.home))
            if rec.job_id in refused and self.leading.get(rec.job_id) == ballot:
                self._step_down(rec.job_id, "a home member promised a higher ballot")
            result.append(won)
        return result

    async def _prepare(self, job_ids: list[bytes]) -> None:
        """Try to become primary of these jobs (we are the first live home member)."""
        per_member: dict[bytes, list[tuple[bytes, int]]] = {}
        ballots = {}
        for j in job_ids:
            slot = self.slots[j]
            assert slot.record is not None
            home = slot.record.home
            ballots[j] = next_ballot(max(slot.promised, slot.ballot), self.me)
            for m in home:
                per_member.setdefault(m, []).append((j, ballots[j]))

        def decode(raw: Any, entries: list[Any]) -> list[Promise]:
            if not (isinstance(raw, list) and len(raw) == len(entries)):
                raise BadMessage("bad prepare answer")
            out = []
            for p in raw:
                if not (isinstance(p, list) and len(p) == 4 and isinstance(p[0], bool)
                        and type(p[1]) is int and type(p[2]) is int):
                    raise BadMessage("bad promise")
                rec = None if p[3] is None else JobRecord.from_wire_untrusted(p[3], self.grid)
                out.append(Promise(p[0], p[1], p[2], rec))
            return out

        async def remote(member: bytes, entries: list[tuple[bytes, int]]) -> Any:
            return await self._ask(member, "queue.prepare",
                                   {"entries": [[j, b] for j, b in entries]},
                                   lambda raw: decode(raw, entries))

        answers = await self._fan_out(per_member, self.local_prepare, remote)
        promises: dict[bytes, list[Promise]] = {j: [] for j in job_ids}
        for member, entries in per_member.items():
            got = answers.get(member)
            if got is not None:
                for (j, _), p in zip(entries, got, strict=True):
                    promises[j].append(p)
        writes = []
        for j in job_ids:
            home = self.slots[j].record.home  # type: ignore[union-attr]
            won, newest, _ = adopt(promises[j], len(home))
            if not won or newest is None:
                continue
            if newest.home != home:
                # The home set was repaired meanwhile: learn the record, lead only if
                # still a member (the next round prepares with the new set).
                best = max((p for p in promises[j] if p.ok and p.record is not None),
                           key=lambda p: (p.ballot, p.record.version))  # type: ignore[union-attr]
                self.slots[j] = Slot(self.slots[j].promised, best.ballot, newest)
                await self._persist([j])
                continue
            writes.append((ballots[j], rebase_lease(newest, ballots[j])))
        for (ballot, rec), ok in zip(writes, await self.replicate(writes), strict=True):
            if ok:
                self._lead(rec, ballot, "took over: the home members before us are gone")

    def _lead(self, rec: JobRecord, ballot: int, reason: str) -> None:
        self.leading[rec.job_id] = ballot
        self._track(rec)
        self.counters["takeovers"] += 1
        log("queue.primary", job=rec.job_id, ballot=ballot, state=rec.state, reason=reason)

    def _track(self, rec: JobRecord) -> None:
        """Keep the matcher and the lease timers in step with a record we lead."""
        j = rec.job_id
        if rec.state == "defined":
            self._defined.setdefault(j, trio.current_time())
        else:
            self._defined.pop(j, None)
        if rec.state == "activated":
            left = released_by(rec)  # not for the worker that released it, if another exists
            if left and len(self.membership.capacities()) < 2:
                left = b""
            self.match.add(Entry(rec.job.submitted, j, rec.job.user_id, rec.job.spec.priority,
                                 rec.job.spec, left,
                                 dataset_names(rec.job.spec.inputs, rec.job.user.name),
                                 rec.job.spec.task_id))
        else:
            self.match.remove(j)
        book = self.match.book
        if rec.state in ("running", "transferring") and rec.lease is not None:
            if j not in self.expiry:
                self.running[rec.job.user_id] += 1
            self.expiry.setdefault(j, trio.current_time() + rec.lease.duration)
            if book is not None:
                book.holding(rec.job.spec.task_id, j, rec.lease.granted)
        elif j in self.expiry:
            del self.expiry[j]
            self.running[rec.job.user_id] -= 1
            if book is not None:
                book.released(rec.job.spec.task_id, j)

    async def _commit(self, changes: list[JobRecord], why: str) -> list[bool]:
        """Replicate records we lead; keep what a majority stored.

        Shielded: a caller that gives up (a worker's claim timing out) must not
        leave a write half-tracked, with a job out of the matcher or a lease
        without a timer.  Each member's call is bounded by CALL_TIMEOUT."""
        writes = [(self.leading[r.job_id], r) for r in changes if r.job_id in self.leading]
        with trio.CancelScope(shield=True):
            oks = await self.replicate(writes)
        for (ballot, rec), ok in zip(writes, oks, strict=True):  # (no checkpoint in here)
            if ok and self.leading.get(rec.job_id) == ballot:  # (we may have stepped down)
                self._track(rec)
            else:
                self.counters["writes_failed"] += 1
                log("queue.write_failed", logging.WARNING, job=rec.job_id, reason=why)
        return oks

    # -- primary: create, claim, heartbeat, report, cancel -------------------

    async def create(self, jobs: list[SignedJob], home_of: dict[bytes, tuple[bytes, ...]]
                     ) -> dict[bytes, str]:
        """Store new jobs on their home sets; job id -> "ok" or why not."""
        out: dict[bytes, str] = {}
        fresh = []
        now = time.time()
        for job in jobs:
            j = job.job_id
            if j in self.slots and self.slots[j].record is not None:
                out[j] = "ok"  # a retried submission: already stored
                continue
            home = home_of[j]
            if self.me not in home:
                out[j] = "not a home member"
                continue
            rec = new_record(job, home, now=now, node=self.me)
            self.leading[j] = first_ballot(self.me)
            fresh.append(rec)
        oks = await self._commit(fresh, "new job")
        for rec, ok in zip(fresh, oks, strict=True):
            out[rec.job_id] = "ok" if ok else "no majority of the home set answered"
            if ok:
                self.counters["jobs_created"] += 1
            else:
                self.leading.pop(rec.job_id, None)
        return out

    async def claim(self, offer: Offer) -> list[JobRecord]:
        """Lease jobs that fit ``offer`` to its worker, each with a placement note."""
        return (await self.report_and_claim(offer.worker, [], offer))[1]

    def _grants(self, offer: Offer) -> list[JobRecord]:
        """The leases a claim hands out (taken out of the matcher: not handed out twice
        while their write is on its way); written by the caller."""
        now = time.time()
        picked = self.match.pick(offer, dict(self.running), now)
        # record, priority, its user's running jobs, inputs on the worker
        chosen: list[tuple[JobRecord, int, int, bool]] = []
        counts = dict(self.running)  # fair share as the matcher counted it, pick by pick
        for e in picked:
            rec = self.slots[e.job_id].record
            user_running = counts.get(e.user, 0)
            counts[e.user] = user_running + 1
            self.match.remove(e.job_id)
            if rec is not None and rec.state == "activated" and e.job_id in self.leading:
                chosen.append((rec, e.priority, user_running, e.local_to(offer.held)))
        grants = []
        if chosen:
            context = self._context(offer, now, counts)
            book = self.match.book
            for rec, priority, user_running, local in chosen:
                task = rec.job.spec.task_id
                note = self._note(offer, rec, priority, user_running, local, now, context,
                                  book is not None
                                  and book.scouts_left(task, self.match.scouts) > 0,
                                  book.expected(task) if book is not None else None)
                grants.append(grant(rec, offer.worker, epoch=self.leading[rec.job_id], now=now,
                                    duration=self.config.lease_duration,
                                    placements=placed(rec.placements, note)))
        return grants

    def _granted(self, grants: list[JobRecord], oks: list[bool]) -> list[JobRecord]:
        """The leases a majority stored; the others go back where they were."""
        leased = [r for r, ok in zip(grants, oks, strict=True) if ok]
        for r, ok in zip(grants, oks, strict=True):
            current = self.slots[r.job_id].record
            if not ok and r.job_id in self.leading and current is not None:
                self._track(current)  # back in the matcher, or on a lease timer
        self.counters["jobs_leased"] += len(leased)
        if self.match.book is not None:
            for r in leased:
                self.match.book.started(r.job.spec.task_id)
        return leased

    def _context(self, offer: Offer, now: float, running: dict[bytes, int]
                 ) -> tuple[int, tuple[Passed, ...], tuple[NodeSeen, ...]]:
        """What the placement notes of one claim share: the jobs still queued, the
        ones next in line that each fit the offer (at most MAX_NEXT), the other nodes."""
        queued = len(self.match)
        passed: tuple[Passed, ...] = ()
        if queued:
            room = replace(offer, max_jobs=MAX_NEXT, cores=offer.cores * MAX_NEXT,
                           memory_mb=offer.memory_mb * MAX_NEXT, disk_mb=offer.disk_mb * MAX_NEXT)
            nxt, counts = [], dict(running)
            for e in self.match.pick(room, running, now):
                if fits_offer(e.spec, offer):
                    nxt.append(Passed(e.job_id, e.priority, counts.get(e.user, 0),
                                      max(0.0, now - e.submitted)))
                counts[e.user] = counts.get(e.user, 0) + 1
            passed = tuple(nxt)
        nodes: tuple[NodeSeen, ...] = ()
        if self.nodes_seen is not None:
            nodes = tuple(n for n in self.nodes_seen() if n.node_id != offer.worker
                          )[:MAX_NODES]
        return queued, passed, nodes

    @staticmethod
    def _note(offer: Offer, rec: JobRecord, priority: int, user_running: int, local: bool,
              now: float, context: tuple[int, tuple[Passed, ...], tuple[NodeSeen, ...]],
              scout: bool = False, expected: float | None = None) -> Placement:
        """Why ``rec``'s next attempt goes to ``offer``'s worker (steering.placement)."""
        queued, passed, nodes = context
        return Placement(
            rec.attempt + 1, now, offer.worker, offer.state, offer.cores, offer.max_jobs,
            offer.max_jobs if offer.max_stage_ins is None else offer.max_stage_ins,
            offer.why[:MAX_WHY],
            rule_text(priority=priority, user=rec.job.user.name, user_running=user_running,
                      age_s=max(0.0, now - rec.job.submitted), queued=queued, local=local,
                      scout=scout, expected_s=expected),
            queued, passed, nodes)

    def heartbeat(self, worker: bytes, leases: list[tuple[bytes, int]]) -> dict[bytes, Any]:
        """Renew leases; per job: its current epoch, or why it is no longer held."""
        out: dict[bytes, Any] = {}
        now = trio.current_time()
        for j, attempt in leases:
            slot = self.slots.get(j)
            if j not in self.leading or slot is None or slot.record is None:
                out[j] = "not_primary"
                continue
            rec = slot.record
            if rec.state == "cancelled":
                out[j] = "cancelled"
                continue
            try:
                lease = check_lease(rec, worker, attempt)
            except StaleReport:
                out[j] = "stale"
                continue
            self.expiry[j] = now + lease.duration
            out[j] = lease.epoch
        return out

    async def report(self, worker: bytes, reports: list[Report]) -> list[str]:
        """Record the outcomes a worker reports, all in one write to the home sets.

        Per report: "ok" (recorded, or recorded before), "stale" (the lease is
        not the worker's any more), "not_primary", or "retry" (no majority yet)."""
        return (await self.report_and_claim(worker, reports, None))[0]

    async def report_and_claim(self, worker: bytes, reports: list[Report], offer: Offer | None
                               ) -> tuple[list[str], list[JobRecord]]:
        """``report`` and then ``claim`` for the slots the reported jobs freed, with the
        results and the leases in one write to the home sets (one accept message and
        one commit per member instead of two).  Each record still counts only once a
        majority of its own home set stored it: a report is "ok" and a lease handed
        out exactly as when they are written on their own."""
        out, news = self._report_changes(worker, reports)
        # A job reported here is not activated (its state changes only once written),
        # so no record is both a result and a lease of this write.
        grants = self._grants(offer) if offer is not None else []
        changes = [new for _, new in news] + grants
        oks = await self._commit(changes, "report" if not grants else
                                 "lease" if not news else "report or lease") if changes else []
        self._reported(worker, out, news, oks[:len(news)])
        return out, self._granted(grants, oks[len(news):])

    def _report_changes(self, worker: bytes, reports: list[Report]
                        ) -> tuple[list[str], list[tuple[int, JobRecord]]]:
        """The verdicts so far and the new records (with their place among the verdicts)."""
        out: list[str] = []
        news: list[tuple[int, JobRecord]] = []
        now = time.time()
        for r in reports:
            slot = self.slots.get(r.job_id)
            if r.job_id not in self.leading or slot is None or slot.record is None:
                out.append("not_primary")
                continue
            rec = slot.record
            if rec.final and rec.lease is None and any(e.node == worker
                                                       for e in rec.history[-1:]):
                out.append("ok")  # a retried report that was already recorded
                continue
            if any(new.job_id == r.job_id for _, new in news):
                out.append("retry")  # the same job twice in one message: the first counts
                continue
            try:
                new = report(rec, worker, r.attempt, r.epoch, now=now, ok=r.ok,
                             failure=r.failure, outputs=r.outputs)
            except (StaleReport, IllegalTransition) as exc:
                self.counters["reports_refused"] += 1
                log("queue.report_refused", logging.WARNING, job=r.job_id, worker=worker,
                    reason=str(exc))
                out.append("stale")
                continue
            news.append((len(out), new))
            out.append("retry")
        return out, news

    def _reported(self, worker: bytes, out: list[str], news: list[tuple[int, JobRecord]],
                  oks: list[bool]) -> None:
        """Verdicts and counters for the new records a majority stored."""
        for (i, new), done in zip(news, oks, strict=True):
            if done and not new.final:
                out[i] = "ok"
                self.counters["jobs_released" if released_by(new) else "jobs_requeued"] += 1
                log("job.requeued", job=new.job_id, attempt=new.attempt, worker=worker,
                    reason=new.history[-1].reason)
            elif done:
                out[i] = "ok"
                self.counters["jobs_finished" if new.state == "finished"
                              else "jobs_failed"] += 1
                took = held_for(new.history)
                if took is not None and self.match.book is not None:
                    self.match.book.finished(new.job.spec.task_id, took)
                log("job.final", job=new.job_id, state=new.state, worker=worker,
                    reason=new.history[-1].reason)

    async def cancel(self, job_id: bytes, who: str) -> str:
        slot = self.slots.get(job_id)
        if job_id not in self.leading or slot is None or slot.record is None:
            return "not_primary"
        rec = slot.record
        if rec.final:
            return rec.state
        new = apply(rec, "cancel", now=time.time(), reason=f"cancelled by {who}")
        [done] = await self._commit([new], "cancel")
        return "cancelled" if done else "retry"

    # -- background: lease expiry and takeover -------------------------------

    async def expire_leases(self) -> int:
        now = trio.current_time()
        due = [j for j, t in self.expiry.items() if t <= now and j in self.leading]
        changes = []
        for j in due[:MAX_BATCH]:
            rec = self.slots[j].record
            assert rec is not None
            changes.append(requeue(rec, now=time.time(), reason="lease expired"))
            log("lease.expired", job=j, attempt=rec.attempt,
                reason="no heartbeat from the worker in time")
        await self._commit(changes, "lease expiry")
        self.counters["leases_expired"] += len(changes)
        return len(changes)

    async def repair_homes(self) -> int:
        """Replace home members that stayed suspect past ``repair_after``.

        The new home set is written to a majority of the old set *and* of the
        new one before it counts, so every later majority of either set meets
        a member that knows it (joint consensus, as in Raft's membership
        changes)."""
        now = trio.current_time()
        for m in list(self._suspect_since):
            if not self.membership.is_suspect(m):
                del self._suspect_since[m]
        gone = {m for m, t in self._suspect_since.items()
                if now - t >= self.config.repair_after}
        if not gone:
            return 0
        live = [q for q in self.membership.queue_nodes() if not self.membership.is_suspect(q)]
        repaired = 0
        for j in list(self.leading):
            rec = self.slots[j].record
            if rec is None or rec.final or not set(rec.home) & gone:
                continue
            if repaired >= MAX_BATCH:
                break
            keep = tuple(m for m in rec.home if m not in gone)
            fresh = [m for m in home_set(j, live, len(live)) if m not in rec.home]
            new_home = keep + tuple(fresh[:len(rec.home) - len(keep)])
            if len(new_home) < majority(len(rec.home)) or new_home == rec.home:
                continue
            dead = ",".join(m.hex()[:12] for m in rec.home if m in gone)
            new = replace(rec, home=new_home, version=rec.version + 1, history=rec.history + (
                Event(time.time(), rec.state, f"home set repaired: {dead} gone", self.me),))
            ballot = self.leading[j]
            acks = await self._write_to(set(rec.home) | set(new_home), ballot, new)
            if (len(acks & set(rec.home)) >= majority(len(rec.home))
                    and len(acks & set(new_home)) >= majority(len(new_home))):
                repaired += 1
                self.counters["homes_repaired"] += 1
                if self.leading.get(j) == ballot:
                    self._track(new)
                log("home.repaired", job=j, gone=dead, home=",".join(
                    m.hex()[:12] for m in new_home), reason="members stayed unreachable")
        return repaired

    async def _write_to(self, members: set[bytes], ballot: int, rec: JobRecord) -> set[bytes]:
        """Write one record to these members; the ones that stored it."""
        answers = await self._fan_out({m: [(ballot, rec)] for m in members},
                                      self.local_accept, self._remote_accept)
        return {m for m, a in answers.items() if a == [True]}

    def _should_lead(self, rec: JobRecord) -> bool:
        """Are we the first home member that is not suspected dead?"""
        for m in rec.home:
            if m == self.me:
                return True
            if not self.membership.is_suspect(m):
                return False
        return False

    async def take_over(self) -> None:
        wanted = [j for j, s in self.slots.items()
                  if s.record is not None and not s.record.final and j not in self.leading
                  and self.me in s.record.home and self._should_lead(s.record)]
        for i in range(0, len(wanted), MAX_BATCH):
            await self._prepare(wanted[i:i + MAX_BATCH])

    async def probe(self) -> None:
        """Ping the home members ahead of us in the jobs we do not lead, so that a
        dead or stopped primary is noticed even when nobody else talks to it."""
        ahead: set[bytes] = set()
        for j, s in self.slots.items():
            rec = s.record
            if rec is None or rec.final or j in self.leading or self.me not in rec.home:
                continue
            ahead.update(rec.home[:rec.home.index(self.me)])

        # And the members of the home sets we lead, for repair.
        for j in self.leading:
            slot = self.slots.get(j)  # a new job's first write may still be on its way
            rec = slot.record if slot is not None else None
            if rec is not None and not rec.final:
                ahead.update(m for m in rec.home if m != self.me)

        async def ping(member: bytes) -> None:
            try:
                await self._call(member, "ping", None)
            except RpcError:
                self._suspect_since.setdefault(member, trio.current_time())
                log("queue.member_suspect", logging.DEBUG, member=member,
                    reason="did not answer a ping")

        async with trio.open_nursery() as nursery:
            for member in ahead:
                nursery.start_soon(ping, member)

    async def activate_ready(self) -> int:
        """Activate the jobs we lead whose input datasets are ready; fail those whose
        inputs stayed unknown to the grid past ``unschedulable_after``."""
        if self.inputs is None or not self._defined:
            return 0
        now = trio.current_time()
        changes: list[JobRecord] = []
        verdicts: dict[tuple[tuple[str, ...], str], tuple[str, str]] = {}
        for j, since in list(self._defined.items()):
            rec = self.slots[j].record
            if rec is None or rec.state != "defined" or j not in self.leading:
                del self._defined[j]
                continue
            key = (rec.job.spec.inputs, rec.job.user.name)
            if key not in verdicts:  # many jobs of a task share their inputs
                verdicts[key] = await self.inputs(*key)
            verdict, why = verdicts[key]
            if verdict == "ready":
                changes.append(apply(rec, "activate", now=time.time(), reason=why))
            elif verdict == "missing" and now - since >= self.config.unschedulable_after:
                changes.append(apply(rec, "inputs_missing", now=time.time(), reason=why,
                                     failure=Failure("input_missing", why)))
            if len(changes) >= MAX_BATCH:
                break
        for rec, ok in zip(changes, await self._commit(changes, "inputs"), strict=True):
            if ok and rec.state == "failed":
                self.counters["jobs_failed"] += 1
                log("job.final", job=rec.job_id, state="failed", reason=rec.history[-1].reason)
            elif ok:
                self.counters["jobs_activated"] += 1
                log("job.activated", job=rec.job_id, reason=rec.history[-1].reason)
        return len(changes)

    async def fail_unschedulable(self) -> int:
        """Fail activated jobs that no node of the grid could run, after a grace period."""
        grid = self.membership.capacities()
        if not grid:
            return 0
        now = trio.current_time()
        doomed: list[JobRecord] = []
        memo: dict[Any, bool] = {}  # many jobs share a shape: judge each shape once
        for j in set(self._unfit_since) | set(self.match.job_ids()):
            slot = self.slots.get(j)
            rec = slot.record if slot else None
            if rec is None or rec.state != "activated" or j not in self.leading:
                self._unfit_since.pop(j, None)
                continue
            spec = rec.job.spec
            shape = (spec.cores, spec.memory_mb, spec.disk_mb, spec.sites, spec.labels)
            if shape not in memo:
                memo[shape] = schedulable(spec, grid)
            if memo[shape]:
                self._unfit_since.pop(j, None)
                continue
            since = self._unfit_since.setdefault(j, now)
            if now - since >= self.config.unschedulable_after and len(doomed) < MAX_BATCH:
                doomed.append(apply(rec, "unschedulable", now=time.time(),
                                    reason="unschedulable: no node of the grid offers "
                                    "what it needs", failure=Failure(
                                        "unschedulable", f"no node offers {_needs(rec)}")))
        for rec, ok in zip(doomed, await self._commit(doomed, "unschedulable"), strict=True):
            if ok:
                self._unfit_since.pop(rec.job_id, None)
                self.counters["jobs_unschedulable"] += 1
                log("job.final", job=rec.job_id, state="failed", reason="unschedulable")
        return len(doomed)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        while True:
            try:
                await self.probe()
                await self.take_over()
                await self.repair_homes()
                await self.expire_leases()
                await self.activate_ready()
                await self.fail_unschedulable()
            except (RpcError, BadMessage) as exc:  # a round failed: the next one retries
                log("queue.round_failed", logging.WARNING, reason=str(exc))
            except Exception:  # a bug: logged with its traceback, the node keeps serving
                self.counters["round_errors"] += 1
                logger.exception("queue.round_failed reason=a bug in the queue's round")
            await trio.sleep(min(self.config.takeover_interval,
                                 self.config.lease_duration / 4))

    def load(self, slots: Iterable[tuple[bytes, Slot]]) -> None:
        """Slots read back from the state file at start; we lead nothing yet."""
        for j, slot in slots:
            self.slots[j] = slot

    def statistics(self) -> dict[str, int]:
        states = Counter(s.record.state for s in self.slots.values() if s.record is not None)
        return {**self.counters, "jobs_held": len(self.slots), "jobs_leading": len(self.leading),
                "jobs_queued": len(self.match), "leases_held": len(self.expiry),
                **{f"state_{k}": v for k, v in states.items()}}

    def list_local(self, *, state: str | None = None, user: Any = None,
                   task: str | None = None, limit: int = 1000) -> list[tuple[int, JobRecord]]:
        """(ballot, record) of the jobs this member holds that match."""
        out = []
        for slot in self.slots.values():
            rec = slot.record
            if rec is None or (state and rec.state != state) or (
                    user and rec.job.user.name != user and rec.job.user_id != user) or (
                    task and rec.job.spec.task_id != task):
                continue
            out.append((slot.ballot, rec))
            if len(out) >= limit:
                break
        return out


def _needs(rec: JobRecord) -> str:
    spec = rec.job.spec
    parts = [f"{spec.cores} cores", f"{spec.memory_mb} MB memory"]
    if spec.sites:
        parts.append(f"site in {','.join(spec.sites)}")
    if spec.labels:
        parts.append(f"labels {','.join(spec.labels)}")
    return ", ".join(parts)
