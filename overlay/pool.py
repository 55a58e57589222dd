"""One pooled RPC connection per peer: reused, reopened when it died.

The pool lives in a nursery its owner runs (``await nursery.start(pool.run)``);
each connection is a task there that holds the channel open until it breaks
or stays idle for ``idle_timeout``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import trio

from ._errors import BadMessage
from .channel import ChannelClosed, Credentials
from .rpc import RpcClient, Unavailable, open_rpc

logger = logging.getLogger("gridnode.pool")

IDLE_TIMEOUT = 120.0


class RpcPool:
    def __init__(self, creds: Credentials, *, idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.creds = creds
        self.idle_timeout = idle_timeout
        self._clients: dict[Any, RpcClient] = {}
        self._locks: dict[Any, trio.Lock] = {}
        self._nursery: trio.Nursery | None = None
        self.counters = {"connections_opened": 0, "connections_failed": 0}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def statistics(self) -> dict[str, int]:
        return {**self.counters, "connections_pooled": len(self._clients)}

    def rtt(self, node_id: bytes) -> float | None:
        """The least round trip (seconds) of the last calls to this peer over its
        pooled connection; None without one or before a call was answered."""
        client = self._clients.get(node_id)
        return client.rtt if client is not None else None

    async def client(self, host: str, port: int, *,
                     expect_id: bytes | None = None) -> RpcClient:
        """The live connection to this peer, opened if there is none."""
        key = expect_id or (host, port)
        client = self._clients.get(key)
        if client is not None and client.closed is None:
            return client
        lock = self._locks.setdefault(key, trio.Lock())
        async with lock:
            client = self._clients.get(key)
            if client is not None and client.closed is None:
                return client
            if self._nursery is None:
                raise RuntimeError("RpcPool.run is not running")  # our bug
            try:
                client = await self._nursery.start(self._hold, key, host, port, expect_id)
            except (OSError, trio.TooSlowError, ChannelClosed, BadMessage) as exc:
                self.counters["connections_failed"] += 1
                raise Unavailable(f"cannot reach {host}:{port}: {exc or type(exc).__name__}"
                                  ) from None
            self.counters["connections_opened"] += 1
            return client

    async def call(self, host: str, port: int, method: str, args: Any = None, *,
                   expect_id: bytes | None = None,
                   timeout: float | None = None) -> Any:  # noqa: ASYNC109 (per-call timeout)
        """One call; ``timeout`` also bounds opening the connection (a stopped peer
        accepts TCP connections but never finishes a handshake)."""
        deadline = trio.current_time() + timeout if timeout is not None else math.inf
        with trio.move_on_at(deadline):
            client = await self.client(host, port, expect_id=expect_id)
            return await client.call(method, args,
                                     timeout=max(0.0, deadline - trio.current_time())
                                     if timeout is not None else None)
        self.counters["connections_failed"] += 1
        raise Unavailable(f"cannot reach {host}:{port} within {timeout} s")

    async def _hold(self, key: Any, host: str, port: int, expect_id: bytes | None, *,
                    task_status: trio.TaskStatus[RpcClient] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        async with open_rpc(host, port, self.creds, expect_id=expect_id) as client:
            self._clients[key] = client
            task_status.started(client)
            try:
                while client.closed is None:
                    idle_until = client.last_used + self.idle_timeout
                    with trio.move_on_at(idle_until):
                        await client.closed_event.wait()
                    idle = trio.current_time() >= client.last_used + self.idle_timeout
                    if idle and not client.busy:
                        break
            finally:
                if self._clients.get(key) is client:
                    del self._clients[key]
                logger.debug("pool.closed peer=%s:%d reason=%s", host, port,
                             client.closed or "idle")

    def close_peer(self, node_id: bytes) -> None:
        """Forget a peer's connection (revoked or gone); its task ends on its own."""
        client = self._clients.pop(node_id, None)
        if client is not None:
            client._close("the peer was dropped from the pool")
