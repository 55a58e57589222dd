"""Home sets and the replication of job records on them (pure core).

Each job lives on its *home set*: the R queue nodes whose ids are closest
(by XOR) to the job id when it was submitted; the set is kept in the
record.  Changes are replicated the way Paxos does it, one register per job:

- every member keeps, per job, the highest ballot it has *promised* and
  the record it *accepted* last, with the ballot it came under;
- a primary holds a ballot for a job after a majority of the home set
  promised it (``prepare``); it then adopts the newest record among those
  answers and writes every change to a majority (``accept``) before it
  acknowledges anything;
- a member accepts a write only under a ballot at least as high as its
  promise, so a deposed primary, whose ballot is lower, can no longer get
  a majority: its writes, grants and acknowledgements fail.

Ballots are ``counter << 32 | tag`` where the tag is the first 32 bits of
the member's node id, so two members never use the same ballot (ids are
hashes: two nodes of one grid sharing 32 bits is a 1 in 4 billion chance
per pair), whatever home sets they share, even after a home set changed.  docs/queue.md explains
why this gives G1 and G2.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .record import JobRecord

DEFAULT_R = 3
MAX_R = 15


def home_set(job_id: bytes, queue_nodes: Iterable[bytes], r: int = DEFAULT_R) -> tuple[bytes, ...]:
    """The ``r`` queue nodes closest to ``job_id``, closest first."""
    target = int.from_bytes(job_id, "big")
    ranked = sorted(set(queue_nodes), key=lambda n: int.from_bytes(n, "big") ^ target)
    return tuple(ranked[:r])


def majority(n: int) -> int:
    return n // 2 + 1


def _tag(node: bytes) -> int:
    return int.from_bytes(node[:4], "big")


def first_ballot(node: bytes) -> int:
    return (1 << 32) | _tag(node)


def next_ballot(seen: int, node: bytes) -> int:
    """A ballot of ``node``'s above every ballot seen so far."""
    return (((seen >> 32) + 1) << 32) | _tag(node)


@dataclass(frozen=True)
class Slot:
    """What one member holds for one job."""

    promised: int = 0
    ballot: int = 0  # the ballot under which ``record`` was accepted
    record: JobRecord | None = None


@dataclass(frozen=True)
class Promise:
    ok: bool
    promised: int
    ballot: int
    record: JobRecord | None


def on_prepare(slot: Slot, ballot: int) -> tuple[Slot, Promise]:
    """A member's answer to ``prepare(ballot)`` and its slot afterwards."""
    if ballot <= slot.promised:
        return slot, Promise(False, slot.promised, slot.ballot, slot.record)
    new = Slot(ballot, slot.ballot, slot.record)
    return new, Promise(True, ballot, slot.ballot, slot.record)


def on_accept(slot: Slot, ballot: int, record: JobRecord) -> tuple[Slot, bool]:
    """A member's answer to ``accept(ballot, record)``: True if it stored it."""
    if ballot < slot.promised:
        return slot, False
    old = slot.record
    if old is not None and (slot.ballot, old.version) > (ballot, record.version):
        # A newer write under this very ballot got here first (reordering):
        # keep it, but the promise holds and the write is not refused.
        return Slot(ballot, slot.ballot, old), True
    return Slot(ballot, ballot, record), True


def adopt(promises: list[Promise], home_size: int) -> tuple[bool, JobRecord | None, int]:
    """After a prepare round: (won, newest record among the answers, highest ballot seen)."""
    seen = max((p.promised for p in promises), default=0)
    oks = [p for p in promises if p.ok]
    if len(oks) < majority(home_size):
        return False, None, seen
    best: JobRecord | None = None
    best_key = (-1, -1)
    for p in oks:
        if p.record is not None and (p.ballot, p.record.version) > best_key:
            best, best_key = p.record, (p.ballot, p.record.version)
    return True, best, seen
