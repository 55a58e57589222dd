"""Matching activated jobs to a worker's offer (pure core).

Order, as the issue asks: a job must fit the offer (resources, sites,
labels); among those, higher priority first; within a priority, the user
with the fewest jobs running (counting the ones picked in this round)
first — fair share, so one user's 10,000 jobs do not starve another's 10;
then, among that user's next jobs (the oldest ``PER_TASK`` of each of
their tasks), a task's scouts, then the longest expected (what its task's
finished jobs took: ``steering.tasks``; brokerage rule a), then one whose
inputs the worker holds, then the oldest.  An offer may allow fewer jobs
with input datasets than jobs (``max_stage_ins``: a congested worker,
steering.brokerage rule b).

:class:`MatchQueue` keeps the activated jobs of one queue node indexed by
priority, user and task, each task's jobs in submit order, so a claim looks
at a few jobs per user instead of scanning the whole queue: its cost grows
with the number of users, priorities and tasks (at most ``USER_WINDOW``
jobs per user), not with the number of jobs.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from .job import JobSpec
from .tasks import TaskBook

# How many jobs of one user a claim looks at for one that fits before it
# moves on to the next user: bounds the cost of a claim.  Of the jobs without a
# task id, the oldest SCAN_PER_USER; of each task, the oldest PER_TASK; in all at
# most USER_WINDOW.
SCAN_PER_USER = 32
PER_TASK = 8
USER_WINDOW = 128
# A task's first SCOUTS jobs go before any other while none of its jobs has
# finished (steering.tasks).
SCOUTS = 10
# Dataset names a claim may say its worker holds (Offer.held).
MAX_HELD = 512


@dataclass(frozen=True)
class Offer:
    """What a worker can take now."""

    worker: bytes
    site: str
    cores: int
    memory_mb: int
    disk_mb: int
    labels: frozenset[str] = frozenset()
    max_jobs: int = 8
    # Of those, at most this many jobs with input datasets (None: max_jobs): a
    # congested worker takes few stage-ins (steering.brokerage.claim, rule b).
    max_stage_ins: int | None = None
    # The worker's health state and the reason for its claim size, for the
    # placement note (steering.placement); "" when it did not say.
    state: str = ""
    why: str = ""
    # Datasets (SCOPE:NAME) the worker holds complete: a job reading only those
    # needs no transfer there, is preferred among a user's next jobs, and does
    # not count against max_stage_ins (steering.brokerage rules a, b).
    held: frozenset[str] = frozenset()


def dataset_names(inputs: Iterable[str], user: str) -> tuple[str, ...]:
    """A job's inputs as SCOPE:NAME (a bare NAME is in its user's scope), as the
    node's holdings name them."""
    return tuple(t if ":" in t else f"{user}:{t}" for t in (x.strip() for x in inputs))


def fits(spec: JobSpec, *, site: str, labels: frozenset[str], cores: int, memory_mb: int,
         disk_mb: int) -> bool:
    """Does the job fit these resources and meet its requirements?"""
    return (spec.cores <= cores and spec.memory_mb <= memory_mb and spec.disk_mb <= disk_mb
            and (not spec.sites or site in spec.sites)
            and set(spec.labels) <= labels)


def fits_offer(spec: JobSpec, offer: Offer) -> bool:
    return fits(spec, site=offer.site, labels=offer.labels, cores=offer.cores,
                memory_mb=offer.memory_mb, disk_mb=offer.disk_mb)


@dataclass(frozen=True)
class Capacity:
    """What one node of the grid could ever offer (from its node record)."""

    site: str
    cores: int
    memory_mb: int
    disk_mb: int
    labels: frozenset[str] | None = None  # None: not known, so any label may be there


def schedulable(spec: JobSpec, grid: Iterable[Capacity]) -> bool:
    """Could any node of the grid ever run this job?"""
    return any(fits(spec, site=c.site, labels=frozenset(spec.labels) if c.labels is None
                    else c.labels, cores=c.cores, memory_mb=c.memory_mb, disk_mb=c.disk_mb)
               for c in grid)


@dataclass(order=True, frozen=True)
class Entry:
    submitted: int
    job_id: bytes
    user: bytes = field(compare=False)
    priority: int = field(compare=False)
    spec: JobSpec = field(compare=False)
    # The worker that has just released it: not given it again (brokerage rule c).
    excluded: bytes = field(default=b"", compare=False)
    # Its input datasets as SCOPE:NAME (dataset_names).
    inputs: tuple[str, ...] = field(default=(), compare=False)
    # Its task id ("" for none: then it is its own task).
    task: str = field(default="", compare=False)

    def local_to(self, held: frozenset[str]) -> bool:
        """Does a worker holding ``held`` have every input of this job?"""
        return bool(self.inputs) and all(n in held for n in self.inputs)


class _TaskJobs:
    """One task's jobs (of one user at one priority), oldest first, from ``head`` on.

    Claims take the oldest jobs, so removing the job at ``head`` only moves
    ``head`` (the dead prefix is cut off once it is half the list); keys are
    plain tuples, compared in C by ``bisect``."""

    __slots__ = ("keys", "entries", "head")

    def __init__(self) -> None:
        self.keys: list[tuple[int, bytes]] = []
        self.entries: list[Entry] = []
        self.head = 0

    def __len__(self) -> int:
        return len(self.entries) - self.head

    def add(self, entry: Entry) -> None:
        key = (entry.submitted, entry.job_id)
        i = bisect.bisect_left(self.keys, key, self.head)
        self.keys.insert(i, key)
        self.entries.insert(i, entry)

    def remove(self, entry: Entry) -> None:
        key = (entry.submitted, entry.job_id)
        i = bisect.bisect_left(self.keys, key, self.head)
        if i >= len(self.keys) or self.keys[i] != key:  # pragma: no cover - our bug
            raise KeyError(entry.job_id)
        if i == self.head:
            self.head += 1
            if self.head > 64 and 2 * self.head > len(self.entries):
                del self.keys[:self.head]
                del self.entries[:self.head]
                self.head = 0
        else:
            del self.keys[i]
            del self.entries[i]

    def first(self, n: int, taken: set[bytes]) -> Iterator[Entry]:
        """The ``n`` oldest jobs not in ``taken``."""
        if n <= 0:
            return
        for e in itertools.islice(self.entries, self.head, None):
            if e.job_id not in taken:
                yield e
                n -= 1
                if not n:
                    return


class _UserJobs:
    """One user's jobs at one priority, by task (in the order the tasks came)."""

    __slots__ = ("tasks", "count")

    def __init__(self) -> None:
        self.tasks: dict[str, _TaskJobs] = {}
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def add(self, entry: Entry) -> None:
        jobs = self.tasks.get(entry.task)
        if jobs is None:
            jobs = self.tasks[entry.task] = _TaskJobs()
        jobs.add(entry)
        self.count += 1

    def remove(self, entry: Entry) -> None:
        jobs = self.tasks[entry.task]
        jobs.remove(entry)
        self.count -= 1
        if not len(jobs):
            del self.tasks[entry.task]

    def window(self, per_task: int, taken: set[bytes]) -> list[Entry]:
        """What a claim looks at: the oldest ``per_task`` of each task (``SCAN_PER_USER``
        of the jobs without one), at most ``USER_WINDOW`` jobs."""
        out: list[Entry] = []
        for task, jobs in self.tasks.items():
            out.extend(jobs.first(min(per_task if task else SCAN_PER_USER,
                                      USER_WINDOW - len(out)), taken))
            if len(out) >= USER_WINDOW:
                break
        return out


class MatchQueue:
    """The activated jobs one queue node may hand out."""

    def __init__(self, book: TaskBook | None = None, scouts: int = SCOUTS,
                 per_task: int = PER_TASK) -> None:
        self._by_priority: dict[int, dict[bytes, _UserJobs]] = {}
        self._entries: dict[bytes, Entry] = {}
        # What the tasks' finished jobs taught (None: no longest first, no scouts).
        self.book = book
        self.scouts = scouts
        self.per_task = per_task

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, job_id: bytes) -> bool:
        return job_id in self._entries

    def job_ids(self) -> list[bytes]:
        return list(self._entries)

    def add(self, entry: Entry) -> None:
        if entry.job_id in self._entries:
            return
        self._entries[entry.job_id] = entry
        users = self._by_priority.setdefault(entry.priority, {})
        jobs = users.get(entry.user)
        if jobs is None:
            jobs = users[entry.user] = _UserJobs()
        jobs.add(entry)

    def remove(self, job_id: bytes) -> None:
        entry = self._entries.pop(job_id, None)
        if entry is None:
            return
        users = self._by_priority[entry.priority]
        jobs = users[entry.user]
        jobs.remove(entry)
        if not len(jobs):
            del users[entry.user]
            if not users:
                del self._by_priority[entry.priority]

    def pick(self, offer: Offer, running: dict[bytes, int], now: float | None = None
             ) -> list[Entry]:
        """Jobs for ``offer``, best first; they stay queued until ``remove``.  ``now``
        (the clock of the book's holding times): a task not known yet counts at
        least as long as its job held longest."""
        picked: list[Entry] = []
        cores, memory, disk = offer.cores, offer.memory_mb, offer.disk_mb
        counts = dict(running)
        taken: set[bytes] = set()
        moves = offer.max_jobs if offer.max_stage_ins is None else offer.max_stage_ins
        scouted: dict[str, int] = {}   # jobs of tasks not known yet picked in this round
        unknown: dict[bytes, float] = {}   # per user: what a task not known yet counts as
        for priority in sorted(self._by_priority, reverse=True):
            users = self._by_priority[priority]
            exhausted: set[bytes] = set()
            while len(picked) < offer.max_jobs and len(exhausted) < len(users):
                # The user with the fewest running jobs, then the oldest head job.
                best: Entry | None = None
                best_key: tuple[int, int, bytes] | None = None
                for user, jobs in users.items():
                    if user in exhausted:
                        continue
                    if len(jobs.tasks) == 1 and "" in jobs.tasks:
                        # No task: nothing to learn or scout, all alike: the old order.
                        head = _oldest((e for e in jobs.tasks[""].first(SCAN_PER_USER, taken)
                                        if e.excluded != offer.worker
                                        and fits(e.spec, site=offer.site, labels=offer.labels,
                                                 cores=cores, memory_mb=memory,
                                                 disk_mb=disk)), offer.held, moves)
                    else:
                        ok = [e for e in jobs.window(self.per_task, taken)
                              if e.excluded != offer.worker
                              and fits(e.spec, site=offer.site, labels=offer.labels,
                                       cores=cores, memory_mb=memory, disk_mb=disk)]
                        if user not in unknown:
                            unknown[user] = self._unknown(ok)
                        head = self._first(ok, offer.held, moves, scouted, unknown[user], now)
                    if head is None:
                        exhausted.add(user)
                        continue
                    key = (counts.get(user, 0), head.submitted, head.job_id)
                    if best_key is None or key < best_key:
                        best, best_key = head, key
                if best is None:
                    break
                picked.append(best)
                taken.add(best.job_id)
                if self.book is not None and self.book.expected(best.task) is None:
                    scouted[best.task] = scouted.get(best.task, 0) + 1
                if best.spec.inputs and not best.local_to(offer.held):
                    moves -= 1
                counts[best.user] = counts.get(best.user, 0) + 1
                cores -= best.spec.cores
                memory -= best.spec.memory_mb
                disk -= best.spec.disk_mb
            if len(picked) >= offer.max_jobs:
                break
        return picked

    def _unknown(self, window: list[Entry]) -> float:
        """What a job of a task none of whose jobs finished counts as: the mean of the
        jobs of ``window`` whose task is known (0 if none is)."""
        if self.book is None:
            return 0.0
        known = [x for x in map(self.book.expected, (e.task for e in window)) if x is not None]
        return sum(known) / len(known) if known else 0.0

    def _first(self, fitting: list[Entry], held: frozenset[str], moves: int,
               scouted: dict[str, int], unknown: float, now: float | None) -> Entry | None:
        """A user's next job for a worker, of those that fit and need
        no transfer, or may have one: a scout first; then the longest expected (a
        job of a task none of whose jobs finished counts as ``unknown``, or as long
        as its job held longest, if longer); then one whose inputs the worker holds;
        then the oldest."""
        book = self.book
        best: Entry | None = None
        best_key: tuple[bool, float, bool, int, bytes] | None = None
        for e in fitting:
            x = None if book is None else book.expected(e.task)
            if not (moves > 0 or not e.spec.inputs or (held and e.local_to(held))):
                continue
            scout = (book is not None and x is None
                     and book.scouts_left(e.task, self.scouts) > scouted.get(e.task, 0))
            if x is None:
                x = unknown if now is None or book is None else max(
                    unknown, book.running_for(e.task, now))
            key = (not scout, -x, not (held and e.local_to(held)), e.submitted, e.job_id)
            if best_key is None or key < best_key:
                best, best_key = e, key
        return best


def _oldest(fitting: Iterable[Entry], held: frozenset[str], moves: int) -> Entry | None:
    """A user's job for a worker among those that fit, oldest first: the first whose
    inputs the worker holds, else the oldest that needs no transfer or may have one."""
    if not held:
        return next((e for e in fitting if moves > 0 or not e.spec.inputs), None)
    oldest = None
    for e in fitting:
        if e.local_to(held):
            return e
        if oldest is None and (moves > 0 or not e.spec.inputs):
            oldest = e
    return oldest
