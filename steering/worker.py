"""The worker side of the queue: pull jobs while there are free slots, run them,
keep their leases alive, report their results (late binding, as PanDA's pilots).

The worker knows the queue nodes from the DHT (the node's peers with the
``queue`` role), asks a few of them at a time (its own node's queue first,
without the network) for as many jobs as its free slots take, renews all
the leases it holds from one primary in one heartbeat, and reports each
result to the job's primary — or, when that primary is gone, to the home
member that took over.  Reports bound for one queue node while a message
to it is on its way go together in the next one (group commit, as the
state file does), so a busy worker sends one report message per round
trip, not one per job.  A report message also offers what is free then
(the slots of the jobs it reports, mostly): the primary writes the results
and the leases of the next jobs together and answers both, so a finished
job and its successor cost one message and one write to the home sets.
Every claim's offer, alone or with reports, is held back from other claims
until its answer is in: no two claims offer the same slots.  A heartbeat
answer ``stale`` or ``cancelled`` kills the job's processes.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import trio

from overlay import BadMessage, GridInfo, RpcError, RpcPool

from .job import SignedJob
from .matching import MAX_HELD
from .outbox import Outbox
from .queue import MAX_BATCH, Membership, call_member, log
from .record import Failure, JobRecord

logger = logging.getLogger("gridnode.worker")

QUEUES_PER_ROUND = 3
IDLE_MAX = 2.0


@dataclass
class Held:
    record: JobRecord
    primary: bytes
    epoch: int
    done: bool = False
    ended: bool = False  # its processes are gone and its slots free: only the report is left


@dataclass(frozen=True)
class ClaimPlan:
    """What the node claims now (steering.brokerage.claim) and why, for its offer."""

    jobs: int           # jobs at most
    stage_ins: int      # of which at most this many with input datasets
    state: str = ""     # the node's health state
    why: str = ""       # the reason, kept in each placement note


# Runs a leased job: (ok, failure, output file manifests in wire form).
RunJob = Callable[[JobRecord], Awaitable[tuple[bool, Failure | None, list[Any]]]]


@dataclass
class Worker:
    grid: GridInfo
    membership: Membership
    pool: RpcPool
    site: str
    labels: frozenset[str]
    capacity: Callable[[], tuple[int, int, int]]  # cores, memory MB, disk MB offered
    run_job: RunJob
    kill_job: Callable[[bytes, str], None]
    heartbeat_interval: float = 15.0
    held: dict[bytes, Held] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=lambda: {
        "claims": 0, "jobs_claimed": 0, "jobs_reported": 0, "reports_refused": 0,
        "leases_lost": 0, "heartbeats": 0})
    _wake: trio.Event = field(default_factory=trio.Event)
    # This node's own queue methods, called without the network (None: it has none).
    local: Callable[[str, Any], Awaitable[Any]] | None = None
    # What to claim for so many free cores (the node's steering: fewer stage-ins when
    # congested, nothing when failing); None: one job per free core, at most 64.
    claim_plan: Callable[[int], ClaimPlan] | None = None
    # The datasets (SCOPE:NAME) this node holds complete: jobs reading them are
    # preferred for it and need no transfer (None: it says nothing).
    datasets_held: Callable[[], Iterable[str]] | None = None
    # The checked job this node already holds with exactly these signed bytes (its
    # queue verified them when it stored the record): a leased record's job need not
    # be verified again (None: every lease is verified).
    known_job: Callable[[bytes], SignedJob | None] | None = None
    # What the claims on their way (alone or with reports) offer: cores, memory MB,
    # disk MB not offered again meanwhile.
    _offered: tuple[int, ...] = (0, 0, 0)
    _nursery: trio.Nursery | None = None

    def __post_init__(self) -> None:
        self._reports = Outbox(self._send_reports, MAX_BATCH)

    def free(self) -> tuple[int, int, int]:
        """What is left of the offer after the jobs we hold (running or about to)."""
        cores, memory, disk = self.capacity()
        for h in self.held.values():
            if h.ended:
                continue
            spec = h.record.job.spec
            cores, memory, disk = cores - spec.cores, memory - spec.memory_mb, disk - spec.disk_mb
        c, m, d = self._offered
        return cores - c, memory - m, disk - d

    def _holds_datasets(self) -> bool:
        return self.datasets_held is not None and any(True for _ in self.datasets_held())

    def wake(self) -> None:
        """Slots may have freed up: look for work now."""
        self._wake.set()

    async def _call(self, member: bytes, method: str, args: Any) -> Any:
        if member == self.membership.me and self.local is not None:
            return await self.local(method, args)
        return await call_member(self.membership, self.pool, member, method, args)

    # -- pulling ------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._heartbeats)
            task_status.started()
            idle = 0.05
            while True:
                got = await self.pull(nursery)
                idle = 0.05 if got else min(idle * 2, IDLE_MAX)
                with trio.move_on_after(idle):
                    await self._wake.wait()
                self._wake = trio.Event()

    async def pull(self, nursery: trio.Nursery) -> int:
        """Claim jobs for the free slots from a few queue nodes; start them."""
        queues = [q for q in self.membership.queue_nodes() if not self.membership.is_suspect(q)]
        random.shuffle(queues)
        if self.local is not None and self.membership.me in queues:
            # Our own queue first: its claims, and the reports of the jobs it leads,
            # need no network; the others' jobs are taken when ours run out.
            queues.remove(self.membership.me)
            queues.insert(0, self.membership.me)
        held = list(islice(self.datasets_held(), MAX_HELD)) if self.datasets_held else []
        started = 0
        # With datasets here, a first pass asks only for jobs that need no transfer
        # (those reading what this node holds, or nothing): locality before age.
        for local_only in (True, False) if held else (False,):
            for q in queues[:QUEUES_PER_ROUND]:
                cores, memory, disk = self.free()
                if cores < 1:
                    return started
                offer = self._offer(local_only, held)
                if offer is None:
                    return started
                started += await self._claim(q, offer, nursery)
        return started

    def _offer(self, local_only: bool, held: list[str]) -> dict[str, Any] | None:
        """A claim's offer for what is free now (None: nothing to claim)."""
        cores, memory, disk = self.free()
        if cores < 1:
            return None
        plan = (ClaimPlan(min(cores, 64), min(cores, 64)) if self.claim_plan is None
                else self.claim_plan(cores))
        limit = min(plan.jobs, 64)
        if limit < 1:
            return None
        offer: dict[str, Any] = {
            "site": self.site, "cores": cores, "memory_mb": memory, "disk_mb": disk,
            "labels": sorted(self.labels), "max_jobs": limit,
            "max_stage_ins": 0 if local_only else max(0, min(plan.stage_ins, limit))}
        if plan.state:
            offer.update(state=plan.state, why=plan.why[:200])
        if held:
            offer["held"] = held
        return offer

    async def _claim(self, q: bytes, offer: dict[str, Any], nursery: trio.Nursery) -> int:
        """One claim from queue node ``q``; the jobs leased are started."""
        try:
            with self._reserving(offer):
                answer = await self._call(q, "queue.claim", offer)
        except RpcError as exc:
            log("worker.claim_failed", logging.DEBUG, queue=q, reason=str(exc))
            return 0
        self.counters["claims"] += 1
        return self._take(q, answer, nursery)

    @contextmanager
    def _reserving(self, offer: dict[str, Any] | None) -> Iterator[None]:
        """What ``offer`` offers is not free for another claim while it is on its way
        (claims and reports that carry offers go at the same time); the jobs it
        leases hold it from then on."""
        if offer is None:
            yield
            return
        claim = (offer["cores"], offer["memory_mb"], offer["disk_mb"])
        self._offered = tuple(a + b for a, b in zip(self._offered, claim, strict=True))
        try:
            yield
        finally:
            self._offered = tuple(a - b for a, b in zip(self._offered, claim, strict=True))

    def _take(self, q: bytes, answer: Any, nursery: trio.Nursery) -> int:
        """Start the jobs queue node ``q`` leased to us (records in wire form)."""
        if not isinstance(answer, list):
            return 0
        started = 0
        for wire in answer:
            try:
                rec = JobRecord.from_wire_untrusted(wire, self.grid, known=self.known_job)
            except BadMessage as exc:
                log("worker.bad_lease", logging.WARNING, queue=q, reason=str(exc))
                continue
            if rec.lease is None or rec.lease.worker != self.membership.me:
                continue
            self.held[rec.job_id] = Held(rec, q, rec.lease.epoch)
            self.counters["jobs_claimed"] += 1
            started += 1
            nursery.start_soon(self._execute, rec.job_id)
        return started

    async def _execute(self, job_id: bytes) -> None:
        held = self.held[job_id]
        log("job.running", job=job_id, attempt=held.record.attempt, primary=held.primary,
            reason="leased to this node")
        try:
            try:
                ok, failure, outputs = await self.run_job(held.record)
            except Exception:  # the node could not start it: its lease will expire
                logger.exception("worker.run_failed job=%s reason=the executor refused it; "
                                 "its lease will expire and it is requeued", job_id.hex())
                return
            held.ended = True
            if held.done:  # taken away from us meanwhile: nothing to report
                return
            if self._holds_datasets():
                # Its claims go locality first (pull's two passes), not with the report.
                self.wake()  # its slots are free: claim the next job while this one reports
            await self._report(held, ok, failure, outputs)
        finally:
            self.held.pop(job_id, None)
            self.wake()

    async def _report(self, held: Held, ok: bool, failure: Failure | None,
                      outputs: list[Any]) -> None:
        rec = held.record
        wire = None
        if failure is not None:
            wire = {"code": failure.code, "diagnosis": failure.diagnosis,
                    "exit_code": failure.exit_code, "signal": failure.signal,
                    "stderr_tail": list(failure.stderr_tail)}
        delay = 0.2
        with trio.move_on_after(rec.lease.duration if rec.lease else 60):
            while True:
                targets = [held.primary] + [m for m in rec.home if m != held.primary]
                for target in targets:
                    answer = await self._send_report(
                        target, [rec.job_id, rec.attempt, held.epoch, ok, wire, outputs])
                    if answer == "ok":
                        self.counters["jobs_reported"] += 1
                        return
                    if answer == "stale":
                        self.counters["reports_refused"] += 1
                        log("worker.report_refused", logging.WARNING, job=rec.job_id,
                            reason="the lease is no longer ours (expired or taken over)")
                        return
                    # "not_primary", no answer, or "retry": the primary could not
                    # reach a majority yet
                await self._refresh_epoch(held)
                await trio.sleep(delay)
                delay = min(delay * 2, 5)
        log("worker.report_lost", logging.WARNING, job=rec.job_id,
            reason="no home member took the report before the lease ran out")

    async def _send_report(self, target: bytes, entry: list[Any]) -> str | None:
        """The answer of ``target`` to one report (None when it could not be asked),
        sent with whatever other reports for it are waiting."""
        answer = await self._reports.send(target, entry)
        return answer if isinstance(answer, str) else None

    async def _send_reports(self, target: bytes, entries: list[Any]) -> list[Any] | None:
        """One report message; it offers what is free (the slots of the jobs reported,
        and any others) to ``target`` as a claim, whose leases come with the answer:
        one message and one write to the home sets for a result and the next lease."""
        args: dict[str, Any] = {"entries": entries}
        offer = None
        if self._nursery is not None and not self._holds_datasets():
            offer = self._offer(False, [])
        if offer is not None:
            args["offer"] = offer
        try:
            with self._reserving(offer):
                answer = await self._call(target, "queue.report", args)
        except RpcError as exc:
            log("worker.report_failed", logging.DEBUG, queue=target, reason=str(exc))
            return None
        if offer is not None:
            self.counters["claims"] += 1
        if isinstance(answer, dict) and self._nursery is not None:  # with leases
            self._take(target, answer.get("leased"), self._nursery)
            answer = answer.get("verdicts")
        return answer if isinstance(answer, list) else None

    # -- heartbeats -----------------------------------------------------------

    async def _heartbeats(self) -> None:
        while True:
            await trio.sleep(self.heartbeat_interval)
            by_primary: dict[bytes, list[Held]] = {}
            for h in list(self.held.values()):
                by_primary.setdefault(h.primary, []).append(h)
            async with trio.open_nursery() as nursery:
                for primary, helds in by_primary.items():
                    nursery.start_soon(self._heartbeat, primary, helds)

    async def _heartbeat(self, primary: bytes, helds: list[Held]) -> None:
        """One message renews every lease we hold from ``primary``."""
        self.counters["heartbeats"] += 1
        try:
            answer = await self._call(primary, "queue.heartbeat", {
                "entries": [[h.record.job_id, h.record.attempt] for h in helds]})
        except RpcError:
            answer = {}
        if not isinstance(answer, dict):
            answer = {}
        for h in helds:
            verdict = answer.get(h.record.job_id, "not_primary")
            if isinstance(verdict, int) and not isinstance(verdict, bool):
                h.epoch = verdict
            elif verdict in ("stale", "cancelled"):
                self._lose(h, "the job was cancelled" if verdict == "cancelled"
                           else "the lease is no longer ours")
            else:
                await self._refresh_epoch(h)

    async def _refresh_epoch(self, held: Held) -> None:
        """Find which home member now leads the job, and our lease's epoch there."""
        rec = held.record
        for member in rec.home:
            try:
                answer = await self._call(member, "queue.heartbeat",
                                          {"entries": [[rec.job_id, rec.attempt]]})
            except RpcError:
                continue
            verdict = answer.get(rec.job_id) if isinstance(answer, dict) else None
            if isinstance(verdict, int) and not isinstance(verdict, bool):
                held.primary, held.epoch = member, verdict
                return
            if verdict in ("stale", "cancelled"):
                self._lose(held, "the lease is no longer ours" if verdict == "stale"
                           else "the job was cancelled")
                return

    def _lose(self, held: Held, reason: str) -> None:
        if held.done:
            return
        held.done = True
        self.counters["leases_lost"] += 1
        log("worker.lease_lost", logging.WARNING, job=held.record.job_id, reason=reason)
        self.kill_job(held.record.job_id, reason)

    def statistics(self) -> dict[str, int]:
        return {**self.counters, "jobs_running": len(self.held)}
