"""Grids of real DHT nodes on loopback, in one trio run, for the overlay tests."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import trio

from overlay import Certificate, GridDht, GridInfo, KeyPair


@dataclass
class Grid:
    authority: KeyPair
    info: GridInfo
    nursery: trio.Nursery
    nodes: list[GridDht] = field(default_factory=list)
    scopes: dict[bytes, trio.CancelScope] = field(default_factory=dict)
    stopped: dict[bytes, trio.Event] = field(default_factory=dict)

    def member(self, name: str = "site") -> tuple[KeyPair, Certificate]:
        key = KeyPair.generate()
        now = int(time.time())
        cert = Certificate.issue(self.authority, kind="node", subject_key=key.public_key,
                                 name=name, roles=("queue", "storage"),
                                 not_before=now - 60, not_after=now + 3600)
        return key, cert

    async def start(self, node: GridDht | None = None, *, port: int = 0,
                    bootstrap: GridDht | None = None) -> GridDht:
        if node is None:
            node = GridDht(*self.member(f"site-{len(self.nodes)}"), self.info)
        await node.bind("127.0.0.1", port)
        scope = trio.CancelScope()
        done = trio.Event()

        async def serve(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                with scope:
                    await node.serve(task_status=task_status)
            finally:
                done.set()

        await self.nursery.start(serve)
        self.scopes[node.node_id] = scope
        self.stopped[node.node_id] = done
        self.nodes.append(node)
        if bootstrap is not None:
            assert node.address is not None and bootstrap.address is not None
            assert await node.bootstrap([bootstrap.address]) == 1
        return node

    def stop(self, node: GridDht) -> trio.Event:
        """Stop a node without warning: its socket closes, nobody is told.

        Returns an event that is set once the socket is closed.
        """
        self.scopes.pop(node.node_id).cancel()
        self.nodes.remove(node)
        return self.stopped.pop(node.node_id)

    async def grow(self, n: int, rng: random.Random) -> list[GridDht]:
        added = []
        for _ in range(n):
            boot = rng.choice(self.nodes) if self.nodes else None
            added.append(await self.start(bootstrap=boot))
        return added

    async def refresh_all(self) -> None:
        async with trio.open_nursery() as nursery:
            for node in list(self.nodes):
                nursery.start_soon(node.refresh)


def new_grid(nursery: trio.Nursery, name: str = "test-grid") -> Grid:
    authority = KeyPair.generate()
    return Grid(authority, GridInfo.create(authority, name, int(time.time()) - 60), nursery)
