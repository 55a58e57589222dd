"""Task-less calls (a lookup's queries): retries, timeouts, replies, the end of serving."""

from __future__ import annotations

import random
import time
from typing import Any

import trio
from kademlia.node import Node

from overlay import GridDht
from overlay._calls import Call, PendingCalls
from overlay._dgram import (
    DatagramChecker,
    Request,
    encode_response,
    encode_retry,
)
from tests.overlay.dhtgrid import new_grid


def _now_ms() -> int:
    return int(time.time() * 1000)


async def test_pending_calls_expire_only_unanswered_task_less_calls():
    calls = PendingCalls()
    failed: list[Call] = []
    outcomes: list[Any] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(calls.expire, failed.append)
        await trio.lowlevel.checkpoint()
        now = trio.current_time()
        late, answered, awaited = (Call(("127.0.0.1", 1), then=outcomes.append),
                                   Call(("127.0.0.1", 2), then=outcomes.append),
                                   Call(("127.0.0.1", 3)))
        calls.add(b"late", late, now + 0.3)
        calls.add(b"answered", answered, now + 0.2)
        calls.add(b"awaited", awaited)
        del calls.by_id[b"answered"]  # its reply came
        # An earlier deadline added later still wakes the timer in time.
        early = Call(("127.0.0.1", 4), then=outcomes.append)
        calls.add(b"early", early, now + 0.05)
        await trio.sleep(0.15)
        assert failed == [early]
        await trio.sleep(0.3)
        assert failed == [early, late]
        assert set(calls.by_id) == {b"awaited"}
        calls.close(failed.append)
        # An awaited call wakes up; its task takes it out.
        assert awaited.done.is_set() and set(calls.by_id) == {b"awaited"}
        nursery.cancel_scope.cancel()


async def test_a_lookup_query_to_a_silent_contact_fails_at_its_real_timeout():
    rng = random.Random(21)
    async with trio.open_nursery() as nursery:
        grid = new_grid(nursery)
        await grid.grow(4, rng)
        source = grid.nodes[0]
        silent = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        with silent:
            await silent.bind(("127.0.0.1", 0))
            ghost = Node(b"\x00" * 20, *silent.getsockname())
            source.router.add_contact(ghost)
            before = source.counters["calls_failed"]
            with trio.fail_after(10):
                result = await source.lookup(ghost.id)
            assert ghost.id not in {n.id for n in result.nodes}
            assert result.failed >= 1
            # The lookup stopped waiting; the call itself fails later, in the background.
            assert source.counters["calls_failed"] == before
            await trio.sleep(source.rtt.ceiling + 0.2)  # no timeout is longer
            assert source.counters["calls_failed"] > before
            assert not source._calls.by_id or all(c.then is None
                                                   for c in source._calls.by_id.values())
        nursery.cancel_scope.cancel()


async def test_a_task_less_call_follows_a_retry_with_the_cookie():
    rng = random.Random(22)
    async with trio.open_nursery() as nursery:
        grid = new_grid(nursery)
        (asker,) = await grid.grow(1, rng)
        key, cert = grid.member("peer")
        checker = DatagramChecker(grid.info)
        peer = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        with peer:
            await peer.bind(("127.0.0.1", 0))
            addr = peer.getsockname()
            outcomes: list[Any] = []
            got = trio.Event()

            def then(outcome: Any) -> None:
                outcomes.append(outcome)
                got.set()

            asker._start_call(addr, "ping", [], key.id, then)
            assert asker.address is not None
            with trio.fail_after(5):
                first, _ = await peer.recvfrom(65536)
            req = checker.decode_untrusted(first, _now_ms())
            assert isinstance(req, Request) and req.cookie == b""
            cookie = b"k" * 16
            await peer.sendto(encode_retry(req.msg_id, cookie), asker.address)
            with trio.fail_after(5):
                second, _ = await peer.recvfrom(65536)
            again = checker.decode_untrusted(second, _now_ms())
            assert isinstance(again, Request) and again.cookie == cookie
            assert again.msg_id != req.msg_id
            # A reply to the first msg_id is late now; the second is the answer.
            await peer.sendto(encode_response(key.signing_key, cert, req.msg_id, _now_ms(),
                                              ["stale"]), asker.address)
            await peer.sendto(encode_response(key.signing_key, cert, again.msg_id, _now_ms(),
                                              []), asker.address)
            with trio.fail_after(5):
                await got.wait()
        assert outcomes == [(key.id, [])]
        assert asker.counters["late_replies"] == 1
        assert asker.router.get(key.id) is not None
        nursery.cancel_scope.cancel()


async def test_task_less_calls_fail_when_the_node_stops_serving():
    rng = random.Random(23)
    async with trio.open_nursery() as nursery:
        grid = new_grid(nursery)
        (asker,) = await grid.grow(1, rng)
        silent = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        with silent:
            await silent.bind(("127.0.0.1", 0))
            outcomes: list[Any] = []
            asker._start_call(silent.getsockname(), "ping", [], None, outcomes.append)
            assert len(asker._calls.by_id) == 1
            with trio.fail_after(5):
                await grid.stop(asker).wait()
        assert outcomes == [None]
        assert not asker._calls.by_id
        # Not serving: asking fails at once instead of hanging.
        asker._start_call(("127.0.0.1", 9), "ping", [], None, outcomes.append)
        assert outcomes == [None, None]
        nursery.cancel_scope.cancel()


async def test_a_lookup_of_a_node_that_is_not_serving_still_ends():
    rng = random.Random(24)
    async with trio.open_nursery() as nursery:
        grid = new_grid(nursery)
        await grid.grow(3, rng)
        key, cert = grid.member("idle")
        idle = GridDht(key, cert, grid.info)
        await idle.bind("127.0.0.1", 0)
        for node in grid.nodes:
            assert node.address is not None
            idle.router.add_contact(Node(node.node_id, *node.address))
        try:
            with trio.fail_after(20):
                result = await idle.lookup(grid.nodes[0].node_id)
        finally:
            assert idle._sock is not None
            idle._sock.close()
        assert result.nodes == []  # nobody's answer is read while not serving
        nursery.cancel_scope.cancel()


async def test_a_cookie_is_dropped_before_its_issuer_stops_accepting_it(autojump_clock):
    async with trio.open_nursery() as nursery:
        grid = new_grid(nursery)
        key, cert = grid.member("cookies")
        node = GridDht(key, cert, grid.info)
        addr = ("127.0.0.1", 9)
        node._remember_cookie(addr, b"c" * 16)
        await trio.sleep(60)
        assert node._cookie_for(addr) == b"c" * 16
        await trio.sleep(60)  # 120 s: the issuer may already be two slots on
        assert node._cookie_for(addr) == b""  # so the next request is padded instead
        nursery.cancel_scope.cancel()
