"""Chunk transfers between real in-process nodes: secure channels and RPC on loopback,
real certificates, real chunk stores (with small chunks, so that a fetch has many
and each crosses as several pieces)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from overlay import (
    CallContext,
    Certificate,
    ChannelServer,
    Credentials,
    Method,
    RpcClient,
    RpcError,
    RpcPool,
    RpcServer,
)
from replication import (
    CHUNK_HAVE,
    CHUNK_READ,
    MAX_HAVE,
    BadChunk,
    ChunkCorrupt,
    ChunkStore,
    Fetcher,
    FetchError,
    QuotaExceeded,
    chunk_hash,
    chunk_methods,
    read_chunk,
)
from replication.transfer import parse_have_args_untrusted, parse_read_args_untrusted
from tests.overlay.common import SETTINGS, fixed_key

from .common import AUTH, GRID, pattern

CHUNK = 64 * 1024
PIECE = 16 * 1024  # four pieces per chunk
REAL_NOW = int(time.time())


def node_creds(n: int) -> Credentials:
    key = fixed_key(n)
    cert = Certificate.issue(AUTH, kind="node", subject_key=key.public_key, name=f"n{n}",
                             roles=(), not_before=REAL_NOW - 3600, not_after=REAL_NOW + 86400)
    return Credentials(key, cert, GRID)


def chunks_of(n: int, seed: int = 0) -> list[bytes]:
    """``n`` distinct chunks, the last one shorter."""
    data = pattern(n * CHUNK - 1000, seed)
    return [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)]


def seed_store(root: Path, chunks: list[bytes]) -> Path:
    store = ChunkStore(root, chunk_size=CHUNK)
    for c in chunks:
        store.put(c)
    return root


def clone_store(seed: Path, root: Path) -> Path:
    """Another holder's store with the same chunks (hard links: no fsync per chunk)."""
    for path in seed.rglob("*"):
        if path.is_file():
            dest = root / path.relative_to(seed)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, dest)
    return root


class TamperedStore(ChunkStore):
    """A holder whose disk (or whose owner) returns wrong bytes without noticing."""

    def get(self, h: bytes) -> bytes:
        data = super().get(h)
        return bytes([data[0] ^ 1]) + data[1:]


class StoppingStore(ChunkStore):
    """Calls ``stop`` (from the read's thread) on its ``stop_at``-th read."""

    stop_at = 3
    stop: Callable[[], None] | None = None
    reads = 0

    def get(self, h: bytes) -> bytes:
        self.reads += 1
        if self.reads == self.stop_at and self.stop is not None:
            trio.from_thread.run_sync(self.stop)
        return super().get(h)


class SignallingStore(ChunkStore):
    """Sets ``corrupt_seen`` once a read found a chunk corrupt."""

    corrupt_seen: trio.Event | None = None

    def get(self, h: bytes) -> bytes:
        try:
            return super().get(h)
        except ChunkCorrupt:
            if self.corrupt_seen is not None:
                trio.from_thread.run_sync(self.corrupt_seen.set)
            raise


@dataclass
class Holder:
    id: bytes
    port: int
    store: ChunkStore
    counters: dict[str, int]
    scope: trio.CancelScope

    def stop(self) -> None:
        self.scope.cancel()


@dataclass
class Grid:
    nursery: trio.Nursery
    pool: RpcPool
    holders: dict[bytes, Holder] = field(default_factory=dict)
    gates: dict[bytes, trio.Event] = field(default_factory=dict)

    async def holder(self, n: int, store: ChunkStore, *,
                     methods: dict[str, Method] | None = None, **kw: Any) -> Holder:
        creds = node_creds(n)
        counters: dict[str, int] = {}
        rpc = RpcServer(methods or chunk_methods(store, counters, piece_size=PIECE, **kw),
                        counters=counters)
        server = ChannelServer(creds, rpc.serve_channel, counters=counters)

        async def run(task_status: trio.TaskStatus[tuple[trio.CancelScope, int]]
                      = trio.TASK_STATUS_IGNORED) -> None:
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as inner:
                    _, port = await inner.start(server.serve, "127.0.0.1", 0)
                    task_status.started((scope, port))

        scope, port = await self.nursery.start(run)
        holder = Holder(creds.key.id, port, store, counters, scope)
        self.holders[holder.id] = holder
        return holder

    async def open_client(self, holder_id: bytes) -> RpcClient:
        gate = self.gates.get(holder_id)
        if gate is not None:
            await gate.wait()
        holder = self.holders[holder_id]
        return await self.pool.client("127.0.0.1", holder.port, expect_id=holder_id)

    def fetcher(self, store: ChunkStore, **kw: Any) -> Fetcher:
        return Fetcher(store, self.open_client, chunk_size=CHUNK, **kw)


@asynccontextmanager
async def grid() -> AsyncIterator[Grid]:
    async with trio.open_nursery() as nursery:
        pool = RpcPool(node_creds(50))
        await nursery.start(pool.run)
        yield Grid(nursery, pool)
        nursery.cancel_scope.cancel()


def dest_store(tmp_path: Path, **kw: Any) -> ChunkStore:
    return ChunkStore(tmp_path / "dest", chunk_size=CHUNK, **kw)


def assert_holds(store: ChunkStore, chunks: list[bytes]) -> None:
    for c in chunks:
        assert store.get(chunk_hash(c)) == c


# -- reading one chunk ----------------------------------------------------------------------


async def test_read_chunk_crosses_in_pieces_and_is_verified(tmp_path: Path) -> None:
    chunks = chunks_of(3)
    store = ChunkStore(seed_store(tmp_path / "a", chunks), chunk_size=CHUNK)
    async with grid() as g:
        a = await g.holder(2, store)
        client = await g.open_client(a.id)
        for c in chunks:
            assert await read_chunk(client, chunk_hash(c), max_size=CHUNK) == c
        assert a.counters["chunk_reads"] == 3
        assert a.counters["chunk_read_bytes"] == sum(map(len, chunks))
        # A 64 KiB chunk crosses as four items of one stream.
        async with client.stream(CHUNK_READ, {"hash": chunk_hash(chunks[0])}) as items:
            assert [len(piece) async for piece in items] == [PIECE] * 4
        with pytest.raises(BadChunk, match="more than 1000 bytes"):
            await read_chunk(client, chunk_hash(chunks[0]), max_size=1000)
        with pytest.raises(RpcError) as err:
            await read_chunk(client, b"\x07" * 32)
        assert err.value.code == "not_found" and a.counters["chunk_reads_not_found"] == 1


async def test_read_chunk_refuses_what_a_bad_holder_sends(tmp_path: Path) -> None:
    chunk = pattern(1000)

    def serving(items: list[Any]) -> Method:
        async def read(ctx: CallContext, args: Any) -> AsyncIterator[Any]:
            for item in items:
                yield item

        return Method(read, streaming=True)

    cases = [
        ([chunk[:500], 7], "not a non-empty byte string"),
        ([chunk[:500], b"", chunk[500:]], "not a non-empty byte string"),
        ([], "sent no bytes"),
        ([chunk, b"x"], "more than 1000 bytes"),
        ([chunk[:999] + b"?"], "hash to something else"),
    ]
    async with grid() as g:
        for n, (items, why) in enumerate(cases, start=2):
            h = await g.holder(n, ChunkStore(tmp_path / str(n)),
                               methods={CHUNK_READ: serving(items)})
            client = await g.open_client(h.id)
            with pytest.raises(BadChunk, match=why):
                await read_chunk(client, chunk_hash(chunk), max_size=1000)
        good = await g.holder(9, ChunkStore(tmp_path / "9"), methods={CHUNK_READ: serving(
            [chunk[:300], chunk[300:]])})
        assert await read_chunk(await g.open_client(good.id), chunk_hash(chunk),
                                max_size=1000) == chunk


# -- the argument checks ----------------------------------------------------------------------


H = b"\x01" * 32
BAD_READ_ARGS = [None, 1, "x", [H], {}, {"hash": None}, {"hash": H[:31]}, {"hash": H + b"!"},
                 {"hash": H.hex()}, {"hash": H, "offset": 0}, {"h": H}]
BAD_HAVE_ARGS = [None, [H], {}, {"hashes": H}, {"hashes": [H, H[:5]]}, {"hashes": [1]},
                 {"hashes": [H] * (MAX_HAVE + 1)}, {"hashes": [H], "more": 1},
                 {"hashes": (H,)}]


@pytest.mark.parametrize("args", BAD_READ_ARGS, ids=repr)
def test_bad_read_args_are_bad_requests(args: Any) -> None:
    with pytest.raises(RpcError) as err:
        parse_read_args_untrusted(args)
    assert err.value.code == "bad_request" and "\n" not in err.value.args[0]


@pytest.mark.parametrize("args", BAD_HAVE_ARGS, ids=lambda a: repr(a)[:40])
def test_bad_have_args_are_bad_requests(args: Any) -> None:
    with pytest.raises(RpcError) as err:
        parse_have_args_untrusted(args)
    assert err.value.code == "bad_request" and "\n" not in err.value.args[0]
    assert len(err.value.args[0]) < 200


_values = st.recursive(st.none() | st.booleans() | st.integers() | st.binary(max_size=40)
                       | st.text(max_size=10),
                       lambda kids: st.lists(kids, max_size=5)
                       | st.dictionaries(st.text(max_size=8), kids, max_size=3), max_leaves=12)
_args = _values | st.fixed_dictionaries({"hash": _values}) | st.fixed_dictionaries(
    {"hashes": st.lists(st.binary(min_size=31, max_size=33), max_size=6)})


@SETTINGS
@given(_args)
def test_parsers_return_checked_values_or_raise_bad_request(args: Any) -> None:
    for parse in (parse_read_args_untrusted, parse_have_args_untrusted):
        try:
            out = parse(args)
        except RpcError as exc:
            assert exc.code == "bad_request" and "\n" not in exc.args[0]
            continue
        if parse is parse_read_args_untrusted:
            assert isinstance(out, bytes) and len(out) == 32
        else:
            assert isinstance(out, list) and all(isinstance(h, bytes) and len(h) == 32
                                                 for h in out)


async def test_calls_with_bad_args_are_answered_bad_request_and_counted(tmp_path: Path
                                                                        ) -> None:
    chunks = chunks_of(2)
    store = ChunkStore(seed_store(tmp_path / "a", chunks[:1]), chunk_size=CHUNK)
    async with grid() as g:
        a = await g.holder(2, store)
        client = await g.open_client(a.id)
        for args in BAD_READ_ARGS[:4]:
            with pytest.raises(RpcError) as err:
                async with client.stream(CHUNK_READ, args) as items:
                    async for _ in items:
                        pass
            assert err.value.code == "bad_request"
        for args in BAD_HAVE_ARGS[:4]:
            with pytest.raises(RpcError) as err:
                await client.call(CHUNK_HAVE, args)
            assert err.value.code == "bad_request"
        assert a.counters["chunk_bad_requests"] == 8
        hs = [chunk_hash(c) for c in chunks]
        assert await client.call(CHUNK_HAVE, {"hashes": hs}) == [True, False]
        assert await client.call(CHUNK_HAVE, {"hashes": []}) == []
        assert await client.call(CHUNK_HAVE, {"hashes": [hs[0]] * MAX_HAVE}) == [True] * 4096


async def test_reads_beyond_max_reads_wait_then_are_refused_overloaded(tmp_path: Path
                                                                       ) -> None:
    chunks = chunks_of(2)
    store = ChunkStore(seed_store(tmp_path / "a", chunks), chunk_size=CHUNK)
    h0, h1 = (chunk_hash(c) for c in chunks)
    async with grid() as g:
        a = await g.holder(2, store, max_reads=1, read_wait=0.2)
        client = await g.open_client(a.id)
        # A reader that takes one piece and stops reading holds the only slot.
        async with client.stream(CHUNK_READ, {"hash": h0}, window=1) as items:
            assert len(await items.__anext__()) == PIECE
            with pytest.raises(RpcError) as err:
                await read_chunk(client, h1, max_size=CHUNK)
            assert err.value.code == "overloaded"
        assert a.counters["chunk_reads_busy"] == 1
        with trio.fail_after(5):  # the slot came back when the stream was given up
            assert await read_chunk(client, h1, max_size=CHUNK) == chunks[1]


# -- fetching ------------------------------------------------------------------------------


async def test_one_holder_round_trip_with_progress(tmp_path: Path) -> None:
    chunks = chunks_of(12)
    store = ChunkStore(seed_store(tmp_path / "a", chunks), chunk_size=CHUNK)
    total = sum(map(len, chunks))
    seen: list[tuple[int, int]] = []
    async with grid() as g:
        a = await g.holder(2, store)
        dest = dest_store(tmp_path)
        sizes = {chunk_hash(c): len(c) for c in chunks}
        stats = await g.fetcher(dest).fetch([chunk_hash(c) for c in chunks], [a.id],
                                            progress=lambda d, t: seen.append((d, t)),
                                            sizes=sizes)
    assert_holds(dest, chunks)
    assert (stats.chunks_fetched, stats.bytes_fetched, stats.chunks_present) == (12, total, 0)
    assert stats.bytes_by_holder == {a.id: total} and stats.chunks_by_holder == {a.id: 12}
    assert stats.failures == {a.id: 0} and stats.bad_chunks == {a.id: 0} and not stats.avoided
    assert len(seen) == 12 and seen[-1] == (total, total)
    assert all(t == total for _, t in seen)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    json.dumps(stats.to_dict())
    assert a.counters["chunk_reads"] == 12


async def test_progress_total_without_sizes_is_an_estimate_that_ends_exact(tmp_path: Path
                                                                           ) -> None:
    chunks = chunks_of(3)
    store = ChunkStore(seed_store(tmp_path / "a", chunks), chunk_size=CHUNK)
    seen: list[tuple[int, int]] = []
    async with grid() as g:
        a = await g.holder(2, store)
        await g.fetcher(dest_store(tmp_path), per_holder=1).fetch(
            [chunk_hash(c) for c in chunks], [a.id], progress=lambda d, t: seen.append((d, t)))
    total = sum(map(len, chunks))
    assert seen[-1] == (total, total)
    assert all(t >= total for _, t in seen)


async def test_three_holders_share_the_work(tmp_path: Path) -> None:
    chunks = chunks_of(48)
    seed = seed_store(tmp_path / "seed", chunks)
    async with grid() as g:
        holders = [await g.holder(n, ChunkStore(clone_store(seed, tmp_path / f"h{n}"),
                                                chunk_size=CHUNK)) for n in (2, 3, 4)]
        dest = dest_store(tmp_path)
        stats = await g.fetcher(dest, per_holder=2).fetch(
            [chunk_hash(c) for c in chunks], [h.id for h in holders])
    assert_holds(dest, chunks)
    assert stats.chunks_fetched == 48
    assert all(stats.chunks_by_holder[h.id] > 0 for h in holders), stats.chunks_by_holder
    assert sum(stats.bytes_by_holder.values()) == sum(map(len, chunks))
    assert sum(h.counters["chunk_reads"] for h in holders) == 48  # none fetched twice


async def test_a_holder_sending_wrong_bytes_is_avoided_and_the_fetch_completes(
        tmp_path: Path) -> None:
    chunks = chunks_of(24)
    seed = seed_store(tmp_path / "seed", chunks)
    async with grid() as g:
        bad = await g.holder(2, TamperedStore(clone_store(seed, tmp_path / "bad"),
                                              chunk_size=CHUNK))
        good = [await g.holder(n, ChunkStore(clone_store(seed, tmp_path / f"h{n}"),
                                             chunk_size=CHUNK)) for n in (3, 4)]
        dest = dest_store(tmp_path)
        with pytest.raises(BadChunk, match="hash to something else"):
            await read_chunk(await g.open_client(bad.id), chunk_hash(chunks[0]),
                             max_size=CHUNK)
        stats = await g.fetcher(dest).fetch([chunk_hash(c) for c in chunks],
                                            [bad.id] + [h.id for h in good])
    assert_holds(dest, chunks)
    assert stats.bad_chunks[bad.id] >= 1
    assert "sent a wrong chunk" in stats.avoided[bad.id]
    assert stats.chunks_by_holder[bad.id] == 0
    assert dest.statistics()["chunks_mismatch"] == stats.bad_chunks[bad.id]
    assert stats.chunks_fetched == 24


async def test_a_holder_stopped_mid_fetch_leaves_the_rest_to_the_others(tmp_path: Path
                                                                        ) -> None:
    chunks = chunks_of(30)
    seed = seed_store(tmp_path / "seed", chunks)
    async with grid() as g:
        stopping = StoppingStore(clone_store(seed, tmp_path / "stop"), chunk_size=CHUNK)
        doomed = await g.holder(2, stopping)
        stopping.stop = doomed.stop
        others = [await g.holder(n, ChunkStore(clone_store(seed, tmp_path / f"h{n}"),
                                               chunk_size=CHUNK)) for n in (3, 4)]
        dest = dest_store(tmp_path)
        with trio.fail_after(20):
            stats = await g.fetcher(dest).fetch([chunk_hash(c) for c in chunks],
                                                [doomed.id] + [h.id for h in others])
    assert_holds(dest, chunks)
    assert stopping.reads >= 3
    assert stats.failures[doomed.id] >= 1
    assert stats.chunks_by_holder[doomed.id] < 30
    assert stats.chunks_fetched == 30


async def test_all_holders_dead_is_a_fetch_error_not_a_hang(tmp_path: Path) -> None:
    chunks = chunks_of(5)
    seed = seed_store(tmp_path / "seed", chunks)
    async with grid() as g:
        holders = [await g.holder(n, ChunkStore(clone_store(seed, tmp_path / f"h{n}"),
                                                chunk_size=CHUNK)) for n in (2, 3)]
        for h in holders:
            h.stop()
        await trio.testing.wait_all_tasks_blocked()  # the listeners are closed
        dest = dest_store(tmp_path)
        with trio.fail_after(10), pytest.raises(FetchError) as err:
            await g.fetcher(dest).fetch([chunk_hash(c) for c in chunks],
                                        [h.id for h in holders])
    hashes = {chunk_hash(c) for c in chunks}
    assert set(err.value.failed) == hashes
    assert "every holder was avoided" in str(err.value) and "(and 4 more chunks)" in str(
        err.value)
    assert any(h.hex() in str(err.value) for h in hashes)
    stats = err.value.stats
    assert set(stats.avoided) == {h.id for h in holders}
    assert all(stats.failures[h.id] >= 3 for h in holders)
    assert dest.chunk_count == 0


async def test_no_holders_and_nothing_missing(tmp_path: Path) -> None:
    chunks = chunks_of(2)
    dest = dest_store(tmp_path)
    async with grid() as g:
        with pytest.raises(FetchError, match="no holders were given"):
            await g.fetcher(dest).fetch([chunk_hash(c) for c in chunks], [])
        for c in chunks:
            dest.put(c)
        stats = await g.fetcher(dest).fetch([chunk_hash(c) for c in chunks], [])
        assert (stats.chunks_present, stats.chunks_fetched) == (2, 0)
        stats = await g.fetcher(dest).fetch([], [b"x" * 32])
        assert stats.chunks_present == 0


async def test_a_holder_that_never_answers_is_timed_out_and_does_not_hold_up_the_end(
        tmp_path: Path) -> None:
    chunks = chunks_of(6)
    seed = seed_store(tmp_path / "seed", chunks)

    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()  # accepts TCP, never handshakes

    async with grid() as g:
        good = await g.holder(3, ChunkStore(clone_store(seed, tmp_path / "h3"),
                                            chunk_size=CHUNK))
        listeners = await g.nursery.start(trio.serve_tcp, silent, 0)
        stuck_id = fixed_key(2).id
        g.holders[stuck_id] = Holder(stuck_id, listeners[0].socket.getsockname()[1],
                                     good.store, {}, trio.CancelScope())
        dest = dest_store(tmp_path)
        started = trio.current_time()
        with trio.fail_after(10):
            stats = await g.fetcher(dest, timeout=5).fetch(
                [chunk_hash(c) for c in chunks], [stuck_id, good.id])
        assert trio.current_time() - started < 4  # done when the good holder was
    assert_holds(dest, chunks)
    assert stats.chunks_by_holder == {stuck_id: 0, good.id: 6}


async def test_a_holder_that_stalls_mid_chunk_is_timed_out(tmp_path: Path) -> None:
    chunks = chunks_of(4)
    seed = seed_store(tmp_path / "seed", chunks)

    async def stalling(ctx: CallContext, args: Any) -> AsyncIterator[bytes]:
        yield b"x"
        await trio.sleep_forever()

    async with grid() as g:
        staller = await g.holder(2, ChunkStore(tmp_path / "s", chunk_size=CHUNK),
                                 methods={CHUNK_READ: Method(stalling, streaming=True)})
        good = await g.holder(3, ChunkStore(clone_store(seed, tmp_path / "h3"),
                                            chunk_size=CHUNK))
        dest = dest_store(tmp_path)
        g.gates[good.id] = gate = trio.Event()  # the staller has first pick

        async def open_gate() -> None:
            await trio.sleep(0.2)
            gate.set()

        g.nursery.start_soon(open_gate)
        with trio.fail_after(10):
            stats = await g.fetcher(dest, timeout=0.5, max_failures=2).fetch(
                [chunk_hash(c) for c in chunks], [staller.id, good.id])
    assert_holds(dest, chunks)
    assert "no whole answer within 0.5 s" in stats.avoided[staller.id]
    assert stats.chunks_by_holder[good.id] == 4


async def test_resume_fetches_only_what_is_missing(tmp_path: Path) -> None:
    chunks = chunks_of(20)
    hashes = [chunk_hash(c) for c in chunks]
    store = ChunkStore(seed_store(tmp_path / "a", chunks), chunk_size=CHUNK)
    async with grid() as g:
        a = await g.holder(2, store)
        dest = dest_store(tmp_path)
        for c in chunks[::3]:  # some were there before
            dest.put(c)
        landed = 0

        with trio.CancelScope() as interrupted:
            def stop_after_five(done: int, total: int) -> None:
                nonlocal landed
                landed += 1
                if landed == 5:
                    interrupted.cancel()

            await g.fetcher(dest).fetch(hashes, [a.id], progress=stop_after_five)
        assert interrupted.cancelled_caught
        have = dest.chunk_count
        assert have >= 7 + 5
        reads_before = a.counters["chunk_reads"]
        # Run again, with duplicates in the list: only the missing chunks, each once.
        stats = await g.fetcher(dest).fetch(hashes + hashes[:4], [a.id])
    assert_holds(dest, chunks)
    assert stats.chunks_present == have
    assert stats.chunks_fetched == 20 - have
    assert a.counters["chunk_reads"] - reads_before == 20 - have


async def test_a_chunk_corrupt_on_a_holders_disk_is_quarantined_there_and_fetched_elsewhere(
        tmp_path: Path) -> None:
    chunks = chunks_of(6)
    seed = seed_store(tmp_path / "seed", chunks)
    victim = chunk_hash(chunks[0])
    async with grid() as g:
        a_store = SignallingStore(clone_store(seed, tmp_path / "a"), chunk_size=CHUNK)
        a_store.corrupt_seen = trio.Event()
        path = a_store.path(victim)
        data = path.read_bytes()
        path.unlink()  # a fresh inode: the seed's link keeps its good bytes
        path.write_bytes(data[:100] + b"rot" + data[103:])
        a = await g.holder(2, a_store)
        b = await g.holder(3, ChunkStore(clone_store(seed, tmp_path / "b"), chunk_size=CHUNK))
        # b is reached only after a has found the damage: a is asked for the chunk first.
        g.gates[b.id] = a_store.corrupt_seen
        dest = dest_store(tmp_path)
        with trio.fail_after(10):
            stats = await g.fetcher(dest).fetch([chunk_hash(c) for c in chunks], [a.id, b.id])
    assert_holds(dest, chunks)
    assert a.counters["chunk_reads_corrupt"] == 1
    assert a_store.statistics()["chunks_corrupt"] == 1
    assert not a_store.has(victim)
    assert [p.name for p in (tmp_path / "a" / "quarantine").iterdir()] == [f"{victim.hex()}.0"]
    assert stats.failures[a.id] == 1 and a.id not in stats.avoided
    assert stats.chunks_by_holder[b.id] >= 1


async def test_a_chunk_no_holder_has_fails_the_fetch_after_the_rest_landed(tmp_path: Path
                                                                           ) -> None:
    chunks = chunks_of(6)
    seed = seed_store(tmp_path / "seed", chunks[1:])
    async with grid() as g:
        holders = [await g.holder(n, ChunkStore(clone_store(seed, tmp_path / f"h{n}"),
                                                chunk_size=CHUNK)) for n in (2, 3)]
        dest = dest_store(tmp_path)
        with trio.fail_after(10), pytest.raises(FetchError) as err:
            await g.fetcher(dest).fetch([chunk_hash(c) for c in chunks],
                                        [h.id for h in holders])
    lost = chunk_hash(chunks[0])
    assert list(err.value.failed) == [lost]
    assert str(err.value).startswith(f"chunk {lost.hex()} could not be fetched")
    assert "not_found" in str(err.value) and "(and" not in str(err.value)
    assert_holds(dest, chunks[1:])
    assert err.value.stats.chunks_fetched == 5 and not err.value.stats.avoided


async def test_quota_exceeded_propagates_as_is(tmp_path: Path) -> None:
    chunks = chunks_of(8)
    store = ChunkStore(seed_store(tmp_path / "a", chunks), chunk_size=CHUNK)
    async with grid() as g:
        a = await g.holder(2, store)
        dest = dest_store(tmp_path, quota_bytes=3 * CHUNK)
        with trio.fail_after(10), pytest.raises(QuotaExceeded):
            await g.fetcher(dest).fetch([chunk_hash(c) for c in chunks], [a.id])
    assert dest.chunk_count <= 3


def test_fetcher_refuses_bad_settings(tmp_path: Path) -> None:
    store = dest_store(tmp_path)

    async def never(holder: bytes) -> RpcClient:
        raise AssertionError

    for kw, why in [({"per_holder": 0}, "per_holder"), ({"max_failures": 0}, "max_failures"),
                    ({"timeout": 0}, "timeout"), ({"chunk_size": CHUNK + 1}, "chunk_size")]:
        with pytest.raises(ValueError, match=why):
            Fetcher(store, never, **kw)
    with pytest.raises(ValueError, match="piece_size"):
        chunk_methods(store, {}, piece_size=2 * 1024 * 1024)


async def test_fetch_refuses_a_hash_that_is_not_32_bytes(tmp_path: Path) -> None:
    async def never(holder: bytes) -> RpcClient:
        raise AssertionError

    with pytest.raises(ValueError, match="32 bytes"):
        await Fetcher(dest_store(tmp_path), never).fetch([b"short"], [b"h" * 32])
