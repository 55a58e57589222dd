"""Group sending: entries for one peer that wait while a message to it is on its way
go together in the next message.

The queue writes records to home members and workers report results to
primaries; under load many tasks want to tell the same peer something at
the same moment.  One message per entry costs a frame, a send and a state
transaction on each side; an :class:`Outbox` sends one message per round
trip instead, as the state file commits one transaction for every write
that arrived meanwhile (group commit).  No timer: an entry alone goes at
once, and a batch is whatever queued up during the previous round trip.

The first task with an entry for an idle peer becomes the sender: it sends
batches until its own entry is answered, then hands the sending over to the
next waiting task (or the peer goes idle).  A sender that is cancelled hands
over too; what it was sending is sent again by the next sender, so the
messages an outbox carries must be idempotent (accepts, reports are).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

# Send ``entries`` to ``peer``; one answer per entry, or None when the peer could
# not be asked (every entry of the batch then gets None).
Send = Callable[[bytes, list[Any]], Awaitable[list[Any] | None]]


@dataclass
class _Entry:
    entry: Any
    answered: bool = False
    answer: Any = None
    wake: trio.Event = field(default_factory=trio.Event)


class Outbox:
    def __init__(self, send: Send, max_batch: int,
                 size: Callable[[Any], int] = lambda entry: 1) -> None:
        """``max_batch``: how much one message carries, counted by ``size`` (an entry
        larger than that goes alone)."""
        self._send = send
        self._max_batch = max_batch
        self._size = size
        self._waiting: dict[bytes, list[_Entry]] = {}
        self._sending: set[bytes] = set()
        self.messages = 0
        self.entries = 0

    async def send(self, peer: bytes, entry: Any) -> Any:
        """The peer's answer to ``entry`` (None when it could not be asked)."""
        me = _Entry(entry)
        waiting = self._waiting.setdefault(peer, [])
        waiting.append(me)
        try:
            while not me.answered:
                if peer not in self._sending:
                    await self._lead(peer, waiting, me)
                else:
                    await me.wake.wait()  # answered, or asked to take over the sending
                    me.wake = trio.Event()
            return me.answer
        finally:
            if not me.answered:  # cancelled: our entry need not go any more
                waiting.remove(me)
            if peer not in self._sending and waiting:
                waiting[0].wake.set()  # the next one sends the rest
            if not waiting and self._waiting.get(peer) is waiting:
                del self._waiting[peer]

    async def _lead(self, peer: bytes, waiting: list[_Entry], me: _Entry) -> None:
        self._sending.add(peer)
        try:
            while not me.answered:
                batch = self._batch(waiting)
                answers = await self._send(peer, [e.entry for e in batch])
                if answers is None or len(answers) != len(batch):
                    answers = [None] * len(batch)
                self.messages += 1
                self.entries += len(batch)
                for e, a in zip(batch, answers, strict=True):
                    e.answered, e.answer = True, a
                    e.wake.set()
                # (not del [:n]: a waiter cancelled meanwhile has removed itself)
                waiting[:] = [e for e in waiting if not e.answered]
        finally:
            self._sending.discard(peer)

    def _batch(self, waiting: list[_Entry]) -> list[_Entry]:
        total, n = 0, 0
        for e in waiting:
            total += self._size(e.entry)
            if n and total > self._max_batch:
                break
            n += 1
        return waiting[:n]
