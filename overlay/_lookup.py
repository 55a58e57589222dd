"""The iterative lookup: which contacts to ask next, how long to wait for each.

A pure core around two callbacks that the node gives it: ``ask`` sends one
query (and later calls ``then`` with the answer, or None if the call
failed), ``learn`` turns an answer into the contacts it names (and keeps
whatever else the answer carries, such as records).

``alpha`` queries are in flight at a time.  A contact that has not answered
within ``rtt.patience`` is dropped from this lookup and another is asked in
its place; its call goes on until its real timeout (the node's business),
and an answer that comes after all takes the contact back.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from typing import Any

import trio
from kademlia.node import Node

from ._routing import PATIENCE_FACTOR, PATIENCE_FLOOR, RoutingTable, RttEstimator, Shortlist
from .identity import ID_SIZE
from .records import SignedRecord

Then = Callable[[Any], None]  # gets the answer of one query; None: it failed
Ask = Callable[[Node, Then], None]
Learn = Callable[[Any, Container[bytes]], list[Node]]


@dataclass
class LookupResult:
    nodes: list[Node]
    records: list[SignedRecord] = field(default_factory=list)
    hops: int = 0
    queried: int = 0
    failed: int = 0


class Lookup:
    """One lookup of the ``ksize`` contacts closest to ``target`` that answer."""

    def __init__(self, target: bytes, router: RoutingTable, rtt: RttEstimator, *, ksize: int,
                 alpha: int) -> None:
        self.rtt = rtt
        self.alpha = alpha
        goal = Node(target)
        self.heap = Shortlist(goal, ksize)
        start = router.find_neighbors(goal, ksize)
        self.heap.push(start)
        self.depth = {n.id: 1 for n in start}
        self.responded: set[bytes] = set()
        self.result = LookupResult(nodes=[])
        # contact id -> [when we stop waiting for it, when it was asked, patience]
        self.waiting: dict[bytes, list[float]] = {}
        self.latencies: list[float] = []  # of this lookup's answers: the round trip now
        # Answers land here, from whatever runs the queries; the lookup sleeps
        # in ``_arrived`` until one comes or the alarm rings.
        self._inbox: list[tuple[Node, Any]] = []
        self._arrived = trio.lowlevel.ParkingLot()
        self._wake_at = math.inf
        self._alarm = trio.CancelScope()

    async def run(self, ask: Ask, learn: Learn, nursery: trio.Nursery) -> LookupResult:
        """Run the lookup; ``nursery`` holds its alarm task, to be cancelled after."""
        heap, waiting, result = self.heap, self.waiting, self.result
        nursery.start_soon(self._ring)
        while True:
            candidates = heap.uncontacted() if len(waiting) < self.alpha else []
            for contact in candidates[: self.alpha - len(waiting)]:
                heap.mark_contacted(contact)
                now = trio.current_time()
                patience = self.rtt.patience((contact.ip, contact.port))
                if self.latencies:
                    patience = min(patience, PATIENCE_FACTOR * median(self.latencies))
                patience = max(patience, PATIENCE_FLOOR)
                waiting[contact.id] = [now + patience, now, patience]
                result.queried += 1
                ask(contact, self._deliver_to(contact))
            if not waiting:
                break
            if not self._inbox:
                wake_at = min(w[0] for w in waiting.values())
                if wake_at != self._wake_at:
                    self._wake_at = self._alarm.deadline = wake_at
                await self._arrived.park()
            if self._inbox:
                for contact, answer in self._inbox:
                    self._take(contact, answer, learn)
                self._inbox.clear()
                continue
            self._give_up_on_slow(trio.current_time())
        result.nodes = [n for n in heap if n.id in self.responded]
        # Hops: how far down the chain of answers the closest node was found.
        result.hops = self.depth[result.nodes[0].id] if result.nodes else 0
        return result

    async def _ring(self) -> None:
        """The alarm: wakes the lookup when the first patience it waits on runs out.

        One task and cancel scope for the whole lookup, moved as deadlines
        change, instead of a cancel scope for every wait.
        """
        while True:
            with trio.CancelScope(deadline=self._wake_at) as self._alarm:
                await trio.sleep_forever()
            self._wake_at = math.inf  # rung: set again by the lookup
            self._arrived.unpark_all()

    def _deliver_to(self, contact: Node) -> Then:
        def then(answer: Any) -> None:
            self._inbox.append((contact, answer))
            self._arrived.unpark_all()
        return then

    def _take(self, contact: Node, answer: Any, learn: Learn) -> None:
        """One answer (None: the call failed) into the lookup's state."""
        heap, waiting, result = self.heap, self.waiting, self.result
        entry = waiting.pop(contact.id, None)
        was_waiting = entry is not None
        if entry is not None and answer is not None:
            self.latencies.append(trio.current_time() - entry[1])
            # What this lookup now knows about the round trip
            # shortens what it waits for those still out.
            cap = max(PATIENCE_FLOOR, PATIENCE_FACTOR * median(self.latencies))
            for w in waiting.values():
                w[0] = min(w[0], w[1] + cap)
        if answer is None:
            if was_waiting:
                result.failed += 1
                heap.remove([contact.id])
            return
        if not was_waiting:  # it answered after all: take it back
            result.failed -= 1
            heap.push(contact)
        self.responded.add(contact.id)
        found = learn(answer, heap.ids)
        for n in found:
            self.depth.setdefault(n.id, self.depth[contact.id] + 1)
        heap.push(found)

    def _give_up_on_slow(self, now: float) -> None:
        for slow, (deadline, asked, patience) in list(self.waiting.items()):
            if deadline > now:
                continue
            if not self.latencies:
                # Nobody has answered this lookup yet: the network (or
                # this machine) may be slow, not that contact. Wait more.
                self.waiting[slow] = [now + 2 * patience, asked, 2 * patience]
                continue
            del self.waiting[slow]
            self.result.failed += 1
            self.heap.remove([slow])


def parse_contacts(nodes: Any, limit: int, known: Container[bytes], own_id: bytes,
                   revoked: Container[bytes]) -> tuple[list[Node], int]:
    """Contacts from a peer's answer, checked and bounded, and how many were malformed.

    Left out: our own id, revoked ids, and ids in ``known`` (a lookup's
    shortlist: answers about one target repeat each other).
    """
    if not isinstance(nodes, list):
        return [], 0
    out = []
    refused = 0
    for entry in nodes[:limit]:
        if type(entry) is list and len(entry) == 3:  # exact types: msgpack makes no others
            node_id, ip, port = entry
            if (type(node_id) is bytes and len(node_id) == ID_SIZE
                    and type(ip) is str and len(ip) < 64
                    and type(port) is int and 0 < port < 65536):
                if node_id not in known and node_id != own_id and node_id not in revoked:
                    out.append(Node(node_id, ip, port))
                continue
        refused += 1
    return out, refused


def median(values: list[float]) -> float:
    """statistics.median, without its overhead (asked for each answer of a lookup)."""
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
