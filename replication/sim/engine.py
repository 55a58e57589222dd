"""The event loop of the simulator: a clock and a heap of timed callbacks.

An event is a list ``[time, seq, fn, args]``: the heap orders by time, then by
``seq`` (the order of scheduling), so two events at the same time run in the
order they were scheduled and a run is deterministic.  Cancelling sets ``fn`` to
None; the entry stays in the heap and is skipped when it comes up (cheaper than
removing it).  Time never goes back: scheduling in the past is a bug
(``SimError``).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from typing import Any

Event = list[Any]  # [time, seq, fn | None, args]


class SimError(RuntimeError):
    """A bug in the simulation (an event in the past, a broken invariant)."""


class Engine:
    """The clock (``now``, seconds of simulated time) and the pending events."""

    __slots__ = ("now", "_heap", "_seq", "events_run", "_stopped")

    def __init__(self) -> None:
        self.now = 0.0
        self._stopped = False
        self._heap: list[Event] = []
        self._seq = 0
        self.events_run = 0

    def at(self, t: float, fn: Callable[..., Any], *args: Any) -> Event:
        """Run ``fn(*args)`` at time ``t``; the event, to cancel it."""
        if not t >= self.now:  # also refuses NaN
            raise SimError(f"event at {t} scheduled at {self.now}: time goes forward only")
        self._seq += 1
        event: Event = [t, self._seq, fn, args]
        heapq.heappush(self._heap, event)
        return event

    def after(self, delay: float, fn: Callable[..., Any], *args: Any) -> Event:
        return self.at(self.now + delay, fn, *args)

    @staticmethod
    def cancel(event: Event | None) -> None:
        if event is not None:
            event[2] = None

    def pending(self) -> int:
        """Events in the heap, cancelled ones included."""
        return len(self._heap)

    def stop(self) -> None:
        """Make ``run`` return after the event running now."""
        self._stopped = True

    def run(self, until: float = math.inf) -> None:
        """Run events in time order until none is left, the next is after ``until``
        or an event called ``stop``."""
        heap = self._heap
        pop = heapq.heappop
        self._stopped = False
        while heap and heap[0][0] <= until and not self._stopped:
            t, _, fn, args = pop(heap)
            if fn is None:
                continue
            self.now = t
            self.events_run += 1
            fn(*args)
