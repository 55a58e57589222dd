"""Requests in flight: matched to replies by msg_id, timed out without a task each.

A ``Call`` is either awaited (``GridDht.call``: a task waits on ``done``
under its own timeout) or *task-less* (a lookup's queries): the receive
loop finishes it when its reply comes, and ``PendingCalls.expire`` when its
time is up, one timer task for all of them.  A task-less request costs no
task, cancel scope or event of its own.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from ._dgram import Response, Retry

Address = tuple[str, int]
Outcome = tuple[bytes, Any] | None  # (responder id, result), or None: the call failed


@dataclass(eq=False)
class Call:
    addr: Address
    done: trio.Event = field(default_factory=trio.Event)
    reply: Response | Retry | None = None
    # Task-less calls only: what to ask, and who gets the outcome.
    then: Callable[[Outcome], None] | None = None
    method: str = ""
    args: list[Any] = field(default_factory=list)
    expect_id: bytes | None = None
    started: float = 0.0
    attempts: int = 0


class PendingCalls:
    """The calls in flight by msg_id, and the deadlines of the task-less ones."""

    def __init__(self) -> None:
        self.by_id: dict[bytes, Call] = {}
        self._deadlines: list[tuple[float, bytes]] = []  # (trio time, msg_id), a heap
        self._timer: trio.CancelScope | None = None

    def add(self, msg_id: bytes, call: Call, deadline: float | None = None) -> None:
        """Register ``call``; a task-less one fails at ``deadline`` unless answered."""
        self.by_id[msg_id] = call
        if deadline is not None:
            heapq.heappush(self._deadlines, (deadline, msg_id))
            if self._timer is not None and deadline < self._timer.deadline:
                self._timer.deadline = deadline

    async def expire(self, fail: Callable[[Call], None]) -> None:
        """Hand each task-less call whose time is up to ``fail``; runs until cancelled."""
        deadlines = self._deadlines
        try:
            while True:
                now = trio.current_time()
                # Due, or already answered (then left here until it surfaces).
                while deadlines and (deadlines[0][0] <= now or deadlines[0][1] not in self.by_id):
                    _, msg_id = heapq.heappop(deadlines)
                    call = self.by_id.pop(msg_id, None)
                    if call is not None:
                        fail(call)
                with trio.CancelScope(deadline=deadlines[0][0] if deadlines else math.inf
                                      ) as self._timer:
                    await trio.sleep_forever()
        finally:
            self._timer = None

    def close(self, fail: Callable[[Call], None]) -> None:
        """The socket is gone: awaited calls wake up empty, task-less ones fail."""
        self._deadlines.clear()
        for msg_id, call in list(self.by_id.items()):
            if call.then is None:
                call.done.set()
            else:
                del self.by_id[msg_id]
                fail(call)
