"""Group sending: one message per round trip, answers to the right entries, no hang
when a sender or a waiter is cancelled."""

from __future__ import annotations

import trio
import trio.lowlevel
import trio.testing

from steering.outbox import Outbox

PEER = b"p" * 20


class Peer:
    """Answers each entry with its double after ``delay``; records every message."""

    def __init__(self, delay: float = 0.1, fail: bool = False) -> None:
        self.delay, self.fail = delay, fail
        self.messages: list[list[int]] = []

    async def send(self, peer: bytes, entries: list[int]) -> list[int] | None:
        self.messages.append(list(entries))
        await trio.sleep(self.delay)
        return None if self.fail else [2 * e for e in entries]


async def test_entries_that_wait_go_together_in_the_next_message(autojump_clock):
    peer = Peer()
    box = Outbox(peer.send, max_batch=4)
    answers: dict[int, int] = {}

    async def one(n: int) -> None:
        answers[n] = await box.send(PEER, n)

    async with trio.open_nursery() as nursery:
        for n in range(10):
            nursery.start_soon(one, n)
            await trio.lowlevel.checkpoint()  # in order
    assert answers == {n: 2 * n for n in range(10)}
    assert peer.messages == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9]]
    assert (box.messages, box.entries) == (4, 10)
    assert box._waiting == {} and box._sending == set()


async def test_an_entry_alone_goes_at_once(autojump_clock):
    peer = Peer()
    box = Outbox(peer.send, max_batch=4)
    t0 = trio.current_time()
    assert await box.send(PEER, 21) == 42
    assert trio.current_time() - t0 == peer.delay
    assert await box.send(PEER, 1) == 2
    assert peer.messages == [[21], [1]]


async def test_a_peer_that_cannot_be_asked_gives_none_to_the_whole_batch(autojump_clock):
    peer = Peer(fail=True)
    box = Outbox(peer.send, max_batch=8)
    got: list[object] = []

    async def one(n: int) -> None:
        got.append(await box.send(PEER, n))

    async with trio.open_nursery() as nursery:
        for n in range(3):
            nursery.start_soon(one, n)
    assert got == [None, None, None]


async def test_a_cancelled_sender_hands_over_and_nobody_hangs(autojump_clock):
    peer = Peer(delay=1.0)
    box = Outbox(peer.send, max_batch=8)
    answers: dict[int, object] = {}

    async def one(n: int) -> None:
        answers[n] = await box.send(PEER, n)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            leader = trio.CancelScope()

            async def cancelled_leader() -> None:
                with leader:
                    await box.send(PEER, 100)

            nursery.start_soon(cancelled_leader)
            await trio.sleep(0.1)
            for n in range(3):
                nursery.start_soon(one, n)
            await trio.sleep(0.1)
            leader.cancel()  # mid-send
            await trio.lowlevel.checkpoint()
            nursery.start_soon(one, 3)
    assert answers == {0: 0, 1: 2, 2: 4, 3: 6}
    assert peer.messages[0] == [100]
    assert sorted(e for m in peer.messages[1:] for e in m) == [0, 1, 2, 3]
    assert box._waiting == {} and box._sending == set()


async def test_a_cancelled_waiter_is_not_sent_and_does_not_block_the_rest(autojump_clock):
    peer = Peer(delay=1.0)
    box = Outbox(peer.send, max_batch=8)
    answers: dict[int, object] = {}

    async def one(n: int) -> None:
        answers[n] = await box.send(PEER, n)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, 0)
        await trio.sleep(0.1)
        waiter = trio.CancelScope()

        async def cancelled_waiter() -> None:
            with waiter:
                await box.send(PEER, 50)

        nursery.start_soon(cancelled_waiter)
        nursery.start_soon(one, 1)
        await trio.sleep(0.1)
        waiter.cancel()
    assert answers == {0: 0, 1: 2}
    assert peer.messages == [[0], [1]]


async def test_a_message_carries_at_most_max_batch_by_size(autojump_clock):
    peer = Peer()
    box = Outbox(peer.send, max_batch=5, size=lambda n: n)
    answers: dict[int, int] = {}

    async def one(n: int) -> None:
        answers[n] = await box.send(PEER, n)

    async with trio.open_nursery() as nursery:
        for n in (1, 2, 2, 9, 1):
            nursery.start_soon(one, n)
            await trio.lowlevel.checkpoint()
    assert peer.messages == [[1], [2, 2], [9], [1]]  # 9 alone: larger than a message
