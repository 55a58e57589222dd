"""A queue node alone and in memory: the home set of every job is this one node.

Every write is local (a home set of one member never calls out), nothing is
stored on disk.  For the claim benchmark and the queue's unit tests: they
run the real :class:`~steering.queue.QueueNode` without a network.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .matching import Capacity
from .queue import QueueConfig, QueueNode


class MemoryStore:
    """Slots kept only in memory (the queue node's own dict holds them)."""

    async def save_slots(self, slots: Iterable[Any]) -> None:
        pass


class NoNetwork:
    """The pool of a queue node that is alone: nothing may go over the network."""

    async def call(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a home set of one member never calls out")


@dataclass
class SoloMembership:
    """A grid in which this queue node is the only one, offering ``cores``."""

    me: bytes
    cores: int = 8

    def queue_nodes(self) -> dict[bytes, tuple[str, int]]:
        return {self.me: ("127.0.0.1", 1)}

    def is_suspect(self, node_id: bytes) -> bool:
        return False

    def note(self, node_id: bytes, ok: bool) -> None:
        pass

    def capacities(self) -> list[Capacity]:
        return [Capacity("solo", self.cores, 1 << 20, 1 << 30)]


def solo_queue(grid: Any, me: bytes, *, cores: int = 8, **config: Any) -> QueueNode:
    """A queue node alone, with home sets of one (``config``: more QueueConfig fields)."""
    return QueueNode(grid, SoloMembership(me, cores), NoNetwork(),  # type: ignore[arg-type]
                     MemoryStore(), QueueConfig(r=1, **config))
