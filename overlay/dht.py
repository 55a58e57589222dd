"""The trio-facing adapter around the ``kademlia`` package.

``kademlia`` is asyncio; the daemon is trio.  Everything here must be called
from inside ``trio_asyncio.open_loop()``; callers see plain trio awaits.
The adapter drives the routing-table refresh from a trio task (the stock
``Server`` would schedule its own stray asyncio timers) and remembers when
each contact was last heard from, which kademlia itself does not keep.

Issue 3 hardens what travels here (signed datagrams, validated storage);
until then values are checked by the reader (see ``records``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import trio_asyncio
from kademlia.crawling import NodeSpiderCrawl
from kademlia.network import Server
from kademlia.node import Node
from kademlia.protocol import KademliaProtocol

logger = logging.getLogger("gridnode.dht")


@dataclass(frozen=True)
class Contact:
    node_id: bytes
    host: str
    port: int
    last_seen: float  # wall-clock seconds, 0.0 if never heard from directly


class _Protocol(KademliaProtocol):
    """KademliaProtocol that remembers when each contact was last heard from
    and never lets a bad datagram or a late reply raise out of its tasks
    (under trio-asyncio an unretrieved task exception would stop the node).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.last_seen: dict[bytes, float] = {}
        self.counters = {"datagrams_refused": 0, "late_replies": 0}

    def datagram_received(self, data: bytes, addr: Any) -> None:
        asyncio.ensure_future(self._solve_datagram_safely(data, addr))

    async def _solve_datagram_safely(self, data: bytes, addr: Any) -> None:
        # rpcudp drops these two kinds silently; we count them as refused.
        if len(data) < 22 or data[:1] not in (b"\x00", b"\x01"):
            self._refuse(addr, ValueError("too short or of unknown type"))
            return
        try:
            await self._solve_datagram(data, addr)
        except Exception as exc:  # a peer's garbage: count it, keep serving
            self._refuse(addr, exc)

    async def _accept_request(self, msg_id: bytes, data: Any, address: Any) -> None:
        try:
            await super()._accept_request(msg_id, data, address)
        except Exception as exc:
            self._refuse(address, exc)

    def _refuse(self, addr: Any, exc: Exception) -> None:
        self.counters["datagrams_refused"] += 1
        logger.debug("refused datagram from %s: %r", addr, exc)

    def _accept_response(self, msg_id: bytes, data: Any, address: Any) -> None:
        entry = self._outstanding.pop(msg_id, None)
        if entry is None:
            self.counters["late_replies"] += 1
            return
        future, timeout = entry
        timeout.cancel()
        if not future.done():  # the caller may have been cancelled meanwhile
            future.set_result((True, data))

    def _timeout(self, msg_id: bytes) -> None:
        entry = self._outstanding.pop(msg_id, None)
        if entry is not None and not entry[0].done():
            entry[0].set_result((False, None))

    def welcome_if_new(self, node: Node) -> None:
        self.last_seen[node.id] = time.time()
        super().welcome_if_new(node)

    def handle_call_response(self, result: Any, node: Node) -> Any:
        if not result[0]:
            self.last_seen.pop(node.id, None)
        return super().handle_call_response(result, node)


class _Server(Server):
    protocol_class = _Protocol

    def refresh_table(self, interval: int = 3600) -> None:
        # Refresh is driven by GridDht.refresh() from a trio task instead.
        return None


class GridDht:
    """One node's membership in the DHT."""

    def __init__(self, node_id: bytes, *, ksize: int = 20, alpha: int = 3) -> None:
        self.node_id = node_id
        self._server = _Server(ksize=ksize, alpha=alpha, node_id=node_id)
        self.address: tuple[str, int] | None = None

    async def listen(self, host: str, port: int) -> tuple[str, int]:
        """Bind the UDP socket; returns the bound (host, port). Raises OSError."""
        await trio_asyncio.aio_as_trio(self._server.listen)(port, host)
        sockname = self._server.transport.get_extra_info("sockname")
        self.address = (sockname[0], sockname[1])
        return self.address

    def close(self) -> None:
        self._server.stop()

    async def bootstrap(self, addrs: list[tuple[str, int]]) -> int:
        """Ping ``addrs`` and look up our own id; returns how many nodes answered."""
        addrs = [a for a in addrs if a != self.address]
        if not addrs:
            return 0
        found = await trio_asyncio.aio_as_trio(self._server.bootstrap)(addrs)
        return len(found)

    async def refresh(self) -> None:
        """Refresh lonely buckets and look up our own id and one random id.

        The random lookup widens what a node knows beyond its own
        neighbourhood, so a small grid converges on full membership.
        """
        server = self._server
        if server.protocol is None:
            return
        await trio_asyncio.aio_as_trio(server._refresh_table)()
        for target in (self.node_id, os.urandom(20)):
            await self._lookup(target)

    async def _lookup(self, target: bytes) -> None:
        server = self._server
        node = Node(target)
        nearest = server.protocol.router.find_neighbors(node, server.alpha)
        if not nearest:
            return
        spider = NodeSpiderCrawl(server.protocol, node, nearest, server.ksize, server.alpha)
        await trio_asyncio.aio_as_trio(spider.find)()

    async def get(self, key: bytes) -> Any:
        return await trio_asyncio.aio_as_trio(self._server.get)(key)

    async def set(self, key: bytes, value: bytes) -> bool:
        return bool(await trio_asyncio.aio_as_trio(self._server.set)(key, value))

    def contacts(self) -> list[Contact]:
        """Every contact in the routing table."""
        protocol = self._server.protocol
        if protocol is None:
            return []
        seen = protocol.last_seen
        return [
            Contact(n.id, n.ip, n.port, seen.get(n.id, 0.0))
            for bucket in protocol.router.buckets
            for n in bucket.get_nodes()
        ]

    def statistics(self) -> dict[str, int]:
        protocol = self._server.protocol
        return {
            **(protocol.counters if protocol else {}),
            "contacts": len(self.contacts()),
            "records_held": len(list(self._server.storage)),
            "buckets": len(protocol.router.buckets) if protocol else 0,
        }
