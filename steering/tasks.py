"""What a queue primary learns of its tasks (pure core): how long a task's jobs take,
from those that finished, and how many of its jobs it has started.

Brokerage rule (a) on a node: among the jobs a claim may take, the longest
expected first, and a task's first ``scouts`` jobs before any other while none
of its jobs has finished, so that every task's length is soon known (PanDA's
scouts).  A job's time is read from its record's history: from its last lease
(``running``) to ``finished`` — stage-in, compute and stage-out, what the
worker's slot was held for.  A job without a task id is its own task and
teaches nothing.

While none of a task's jobs has finished, the one of its jobs that has been
held longest tells that the task's jobs take at least about that long
(``running_for``): a long task's scouts, still running, put the task ahead
of the tasks known to be shorter before any of them finishes.

Each primary learns from the jobs it leads, so a task spread over k primaries
is scouted by each: up to k x ``scouts`` scouts in all.  The book keeps the
``max_tasks`` tasks used last.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

MAX_TASKS = 4096


class _Event(Protocol):
    @property
    def time(self) -> float: ...

    @property
    def state(self) -> str: ...


def held_for(history: Sequence[_Event]) -> float | None:
    """Seconds from the last lease to ``finished`` in a finished job's history; None
    if it did not finish or the history lacks the lease."""
    if not history or history[-1].state != "finished":
        return None
    for ev in reversed(history):
        if ev.state == "running":
            return max(0.0, history[-1].time - ev.time)
    return None


class TaskBook:
    """Per task id: finished jobs' seconds and count, jobs started."""

    def __init__(self, max_tasks: int = MAX_TASKS) -> None:
        self.max_tasks = max_tasks
        self._tasks: OrderedDict[str, list[float]] = OrderedDict()
        # Per task, its jobs held now: job id -> since when (oldest first).
        self._held: dict[str, dict[bytes, float]] = {}

    def __len__(self) -> int:
        return len(self._tasks)

    def _get(self, task: str) -> list[float]:
        t = self._tasks.get(task)
        if t is None:
            t = self._tasks[task] = [0.0, 0, 0]
            if len(self._tasks) > self.max_tasks:
                self._tasks.popitem(last=False)
        else:
            self._tasks.move_to_end(task)
        return t

    def started(self, task: str) -> None:
        if task:
            self._get(task)[2] += 1

    def finished(self, task: str, seconds: float) -> None:
        if task:
            t = self._get(task)
            t[0] += seconds
            t[1] += 1

    def holding(self, task: str, job_id: bytes, since: float) -> None:
        """A job of ``task`` is held by a worker since ``since`` (its lease)."""
        if task:
            held = self._held.setdefault(task, {})
            if job_id not in held:
                if held and since < next(iter(held.values())):
                    # Held longer than the first one (a record loaded late): first now,
                    # so running_for reads the first entry only.
                    self._held[task] = held = {job_id: since, **held}
                else:
                    held[job_id] = since
                if len(self._held) > self.max_tasks:
                    del self._held[next(iter(self._held))]

    def released(self, task: str, job_id: bytes) -> None:
        """That job is not held any more (finished, failed, requeued, lease expired)."""
        held = self._held.get(task)
        if held is not None:
            held.pop(job_id, None)
            if not held:
                del self._held[task]

    def running_for(self, task: str, now: float) -> float:
        """How long the job of ``task`` held longest has been held (0: none held): the
        first of its held jobs, as leases come in time order (one that came out of
        order and is older than the first is put first; one released leaves the next
        first, which may be a little younger than the oldest left)."""
        held = self._held.get(task)
        return max(0.0, now - next(iter(held.values()))) if held else 0.0

    def expected(self, task: str) -> float | None:
        """The mean seconds of the task's finished jobs; None if none finished."""
        t = self._tasks.get(task) if task else None
        return t[0] / t[1] if t and t[1] else None

    def scouts_left(self, task: str, scouts: int) -> int:
        """How many more of ``task``'s jobs are its scouts (0 once one finished)."""
        if not task:
            return 0
        t = self._tasks.get(task)
        return scouts if t is None else 0 if t[1] else max(0, scouts - int(t[2]))
