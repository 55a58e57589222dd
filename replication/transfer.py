"""Chunk transfers: serve chunks over RPC, fetch them from several holders at once.

Serving (:func:`chunk_methods`): two member calls.

``chunk.read {hash}``
    A server stream of the chunk's bytes in pieces of at most ``PIECE_SIZE``
    (512 KiB): a 4 MiB chunk does not fit the channel's 1 MiB frame, so it
    crosses as 8 items under the stream's credit window.  The node reads the
    chunk with ``ChunkStore.get``, which re-hashes it: a chunk that no longer
    matches its name is quarantined there and answered ``corrupt``; one the
    node does not hold is ``not_found``.  At most ``max_reads`` chunks are held
    in memory for readers at once; a read that waits longer than ``read_wait``
    for its turn is answered ``overloaded``.
``chunk.have {hashes}``
    Up to ``MAX_HAVE`` (4096) hashes in, one bool per hash out.

Fetching (:class:`Fetcher`): the chunks a store lacks go to one shared work
list.  Each holder runs ``per_holder`` workers, each taking the next chunk,
so a fast holder takes more of them.  A chunk that fails on a holder goes
back to the front of the list for another worker.  Bytes are checked
against the chunk's name (``ChunkStore.put_verified``) before anything is
written: a holder that sends one wrong chunk is avoided for the rest of the
fetch, as is one with ``max_failures`` failures (connection lost or refused,
timeout, error answers).  A chunk that every holder still in use has
answered ``not_found``/``corrupt`` for (or sent wrong), or that is left when
every holder is avoided, cannot be had: the fetch gets the others and then
raises :class:`FetchError` naming it.  Chunks already in the store are not
fetched again, so running an interrupted fetch again fetches what is missing.

Memory: each worker holds at most one chunk (while it arrives and while it
is written), so a fetch holds at most ``holders x per_holder`` chunks.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from overlay import (
    BadMessage,
    CallContext,
    ChannelClosed,
    Method,
    RpcClient,
    RpcError,
    bad_request,
)

from .chunks import (
    CHUNK_SIZE,
    HASH_SIZE,
    ChunkCorrupt,
    ChunkMismatch,
    ChunkMissing,
    ChunkStore,
    chunk_hash,
)

CHUNK_READ = "chunk.read"
CHUNK_HAVE = "chunk.have"
PIECE_SIZE = 512 * 1024      # an item of a chunk.read stream; with its envelope < 1 MiB frame
MAX_HAVE = 4096              # hashes per chunk.have call
MAX_READS = 16               # chunks held in memory for readers at once, per node
READ_WAIT = 10.0             # seconds a read waits for its turn before "overloaded"
STREAM_WINDOW = 8            # pieces in flight per chunk.read stream (a 4 MiB chunk)
PER_HOLDER = 2               # chunks in flight per holder
MAX_FAILURES = 3             # failures after which a holder is avoided
CHUNK_TIMEOUT = 30.0         # seconds for one chunk (connecting included)

SERVE_COUNTERS = (
    "chunk_reads",             # chunks sent whole
    "chunk_read_bytes",        # bytes of pieces sent
    "chunk_reads_not_found",
    "chunk_reads_corrupt",     # the chunk failed its hash here (and was quarantined)
    "chunk_reads_busy",        # refused "overloaded": no read slot within read_wait
    "chunk_have_calls",
    "chunk_have_hashes",
    "chunk_bad_requests",
)

# Answers that say something about one chunk on one holder, not the holder itself.
_CHUNK_CODES = ("not_found", "corrupt")


class TransferError(Exception):
    """A transfer went wrong; the message says which chunk and why."""


class BadChunk(TransferError):
    """A holder sent bytes that are not the chunk asked for (their fault)."""


class FetchError(TransferError):
    """Some chunks could not be had from any holder; the others were fetched.

    ``failed`` maps each such chunk to why; ``stats`` is what the fetch did.
    """

    def __init__(self, message: str, failed: dict[bytes, str], stats: FetchStats) -> None:
        super().__init__(message)
        self.failed = failed
        self.stats = stats


# -- serving --------------------------------------------------------------------------------


def _short(x: object) -> str:
    return repr(x)[:60]


def parse_read_args_untrusted(args: Any) -> bytes:
    """The hash a chunk.read asks for, or RpcError ``bad_request`` saying what is wrong."""
    if not isinstance(args, dict):
        raise bad_request(f"chunk.read takes {{hash: {HASH_SIZE} bytes}}, got {_short(args)}")
    if set(args) != {"hash"}:
        raise bad_request(f"chunk.read takes exactly the key 'hash', got "
                          f"{_short(sorted(map(str, args)))}")
    h = args["hash"]
    if not (isinstance(h, bytes) and len(h) == HASH_SIZE):
        raise bad_request(f"chunk.read: hash must be {HASH_SIZE} bytes, got {_short(h)}")
    return h


def parse_have_args_untrusted(args: Any) -> list[bytes]:
    """The hashes a chunk.have asks about, or RpcError ``bad_request``."""
    if not isinstance(args, dict):
        raise bad_request(f"chunk.have takes {{hashes: [hash, ...]}}, got {_short(args)}")
    if set(args) != {"hashes"}:
        raise bad_request(f"chunk.have takes exactly the key 'hashes', got "
                          f"{_short(sorted(map(str, args)))}")
    hashes = args["hashes"]
    if not isinstance(hashes, list):
        raise bad_request(f"chunk.have: hashes must be a list, got {_short(hashes)}")
    if len(hashes) > MAX_HAVE:
        raise bad_request(f"chunk.have: at most {MAX_HAVE} hashes per call, got {len(hashes)}")
    for i, h in enumerate(hashes):
        if not (isinstance(h, bytes) and len(h) == HASH_SIZE):
            raise bad_request(f"chunk.have: hashes[{i}] must be {HASH_SIZE} bytes, "
                              f"got {_short(h)}")
    return hashes


def chunk_methods(store: ChunkStore, counters: dict[str, int], *,
                  piece_size: int = PIECE_SIZE, max_reads: int = MAX_READS,
                  read_wait: float = READ_WAIT) -> dict[str, Method]:
    """``chunk.read`` and ``chunk.have`` over ``store``, for a node's RPC table.

    ``counters`` gets the ``SERVE_COUNTERS`` (the node's statistics dict).
    """
    if not 1 <= piece_size <= PIECE_SIZE:
        raise ValueError(f"piece_size must be 1-{PIECE_SIZE}, got {piece_size}")
    if max_reads < 1:
        raise ValueError(f"max_reads must be at least 1, got {max_reads}")
    for name in SERVE_COUNTERS:
        counters.setdefault(name, 0)
    slots = trio.Semaphore(max_reads)

    def count(name: str, n: int = 1) -> None:
        counters[name] = counters.get(name, 0) + n

    def checked(parse: Callable[[Any], Any], args: Any) -> Any:
        try:
            return parse(args)
        except RpcError:
            count("chunk_bad_requests")
            raise

    async def read(ctx: CallContext, args: Any) -> AsyncIterator[memoryview]:
        h: bytes = checked(parse_read_args_untrusted, args)
        with trio.move_on_after(read_wait) as waiting:
            await slots.acquire()
        if waiting.cancelled_caught:
            count("chunk_reads_busy")
            raise RpcError("overloaded", f"{max_reads} chunk reads are under way on this "
                           f"node; ask another holder or later")
        try:
            try:
                data = await trio.to_thread.run_sync(store.get, h)
            except ChunkMissing:
                count("chunk_reads_not_found")
                raise RpcError("not_found", f"this node does not hold chunk {h.hex()}"
                               ) from None
            except ChunkCorrupt:
                count("chunk_reads_corrupt")
                raise RpcError("corrupt", f"this node's copy of chunk {h.hex()} failed its "
                               f"hash and was quarantined; ask another holder") from None
            view = memoryview(data)
            for start in range(0, len(view), piece_size):
                piece = view[start:start + piece_size]
                yield piece
                count("chunk_read_bytes", len(piece))
            count("chunk_reads")
        finally:
            slots.release()

    async def have(ctx: CallContext, args: Any) -> list[bool]:
        hashes: list[bytes] = checked(parse_have_args_untrusted, args)
        count("chunk_have_calls")
        count("chunk_have_hashes", len(hashes))
        if not hashes:
            return []
        return await trio.to_thread.run_sync(lambda: [store.has(h) for h in hashes])

    return {
        CHUNK_READ: Method(read, access="member", streaming=True),
        CHUNK_HAVE: Method(have, access="member"),
    }


# -- fetching one chunk -------------------------------------------------------------------------


def _check_hash(h: bytes) -> bytes:
    if not (isinstance(h, bytes) and len(h) == HASH_SIZE):
        raise ValueError(f"a chunk hash is {HASH_SIZE} bytes, got {h!r}"[:120])
    return h


async def receive_chunk(client: RpcClient, h: bytes, *, max_size: int = CHUNK_SIZE) -> bytes:
    """The bytes a holder sends for chunk ``h``, assembled but not hashed.

    BadChunk if they are not byte pieces or more than ``max_size`` in all;
    RpcError (``not_found``, ``corrupt``, ``Unavailable``...) from the call.
    """
    _check_hash(h)
    pieces: list[bytes] = []
    size = 0
    async with client.stream(CHUNK_READ, {"hash": h}, window=STREAM_WINDOW) as items:
        async for piece in items:
            if not (isinstance(piece, bytes) and piece):
                raise BadChunk(f"chunk {h.hex()}: the holder sent a piece that is not "
                               f"a non-empty byte string")
            size += len(piece)
            if size > max_size:
                raise BadChunk(f"chunk {h.hex()}: the holder sent more than {max_size} bytes")
            pieces.append(piece)
    if not pieces:
        raise BadChunk(f"chunk {h.hex()}: the holder sent no bytes")
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


async def read_chunk(client: RpcClient, h: bytes, *, max_size: int = CHUNK_SIZE) -> bytes:
    """Chunk ``h`` from the holder behind ``client``, verified.

    BadChunk (with the reason) when the bytes are not chunk ``h``; RpcError
    from the call (``not_found``, ``corrupt``, ``Unavailable``, ...).
    """
    data = await receive_chunk(client, h, max_size=max_size)
    if await trio.to_thread.run_sync(chunk_hash, data) != h:
        raise BadChunk(f"chunk {h.hex()}: the {len(data)} bytes the holder sent hash "
                       f"to something else")
    return data


# -- fetching many chunks from many holders ----------------------------------------------------


@dataclass
class FetchStats:
    """What one fetch did.  Per-holder dicts are keyed by holder id."""

    chunks_fetched: int = 0
    bytes_fetched: int = 0
    chunks_present: int = 0       # already in the store: not fetched
    seconds: float = 0.0
    chunks_by_holder: dict[bytes, int] = field(default_factory=dict)
    bytes_by_holder: dict[bytes, int] = field(default_factory=dict)
    failures: dict[bytes, int] = field(default_factory=dict)    # all failed attempts
    bad_chunks: dict[bytes, int] = field(default_factory=dict)  # wrong bytes sent
    avoided: dict[bytes, str] = field(default_factory=dict)     # holder -> why

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able figures (holder ids in hex), for status and logs."""
        def hexed(d: dict[bytes, Any]) -> dict[str, Any]:
            return {k.hex(): v for k, v in d.items()}

        return {"chunks_fetched": self.chunks_fetched, "bytes_fetched": self.bytes_fetched,
                "chunks_present": self.chunks_present, "seconds": round(self.seconds, 3),
                "chunks_by_holder": hexed(self.chunks_by_holder),
                "bytes_by_holder": hexed(self.bytes_by_holder),
                "failures": hexed(self.failures), "bad_chunks": hexed(self.bad_chunks),
                "avoided": hexed(self.avoided)}


def _label(holder: bytes) -> str:
    return holder.hex()[:12]


class Fetcher:
    """Fetches chunks into ``store`` from several holders at once (see the module doc).

    ``open_client(holder_id)`` returns a connected RpcClient for that holder
    (the node's uses its RpcPool); the fetcher does not close it, and asks
    again when it has closed.  ``timeout`` bounds each chunk, connecting
    included.
    """

    def __init__(self, store: ChunkStore, open_client: Callable[[bytes], Awaitable[RpcClient]],
                 *, per_holder: int = PER_HOLDER, max_failures: int = MAX_FAILURES,
                 chunk_size: int | None = None, timeout: float = CHUNK_TIMEOUT) -> None:
        if per_holder < 1:
            raise ValueError(f"per_holder must be at least 1, got {per_holder}")
        if max_failures < 1:
            raise ValueError(f"max_failures must be at least 1, got {max_failures}")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        chunk_size = store.chunk_size if chunk_size is None else chunk_size
        if not 1 <= chunk_size <= store.chunk_size:
            raise ValueError(f"chunk_size must be 1-{store.chunk_size} (the store's), "
                             f"got {chunk_size}")
        self.store = store
        self.open_client = open_client
        self.per_holder = per_holder
        self.max_failures = max_failures
        self.chunk_size = chunk_size
        self.timeout = timeout

    async def fetch(self, hashes: Sequence[bytes], holders: Sequence[bytes], *,
                    progress: Callable[[int, int], None] | None = None,
                    sizes: Mapping[bytes, int] | None = None) -> FetchStats:
        """Get every chunk of ``hashes`` the store lacks from ``holders``.

        ``progress(done_bytes, total_bytes)`` is called as chunks land: bytes
        fetched so far, and what the missing chunks add up to (``sizes`` gives
        the expected size of a chunk, e.g. from its manifest; a chunk without
        one counts as ``chunk_size`` until it lands).  FetchError when some
        chunks could not be had (the others are stored); QuotaExceeded and
        disk errors of the store propagate.
        """
        run = _FetchRun(self, holders, progress, sizes or {})
        return await run.run(hashes)


class _FetchRun:
    """The state of one fetch: the work list, what failed where, the figures."""

    def __init__(self, fetcher: Fetcher, holders: Sequence[bytes],
                 progress: Callable[[int, int], None] | None,
                 sizes: Mapping[bytes, int]) -> None:
        self.f = fetcher
        self.holders = list(dict.fromkeys(holders))
        self.progress = progress
        self.sizes = sizes
        self.pending: collections.deque[bytes] = collections.deque()
        self.in_flight = 0
        self.tried: dict[bytes, set[bytes]] = {}   # chunk -> holders not to ask again
        self.why: dict[bytes, list[str]] = {}      # chunk -> what went wrong, holder by holder
        self.failed: dict[bytes, str] = {}         # chunks that cannot be had
        self.clients: dict[bytes, RpcClient] = {}
        self.locks = {h: trio.Lock() for h in self.holders}
        self.changed = trio.Event()
        self.scope = trio.CancelScope()  # the workers' nursery's, once they run
        self.error: BaseException | None = None
        self.done_bytes = 0
        self.total_bytes = 0
        self.stats = FetchStats()
        for name in ("chunks_by_holder", "bytes_by_holder", "failures", "bad_chunks"):
            getattr(self.stats, name).update(dict.fromkeys(self.holders, 0))

    async def run(self, hashes: Sequence[bytes]) -> FetchStats:
        started = trio.current_time()
        wanted = list(dict.fromkeys(_check_hash(h) for h in hashes))
        store = self.f.store
        missing = await trio.to_thread.run_sync(lambda: [h for h in wanted if not store.has(h)])
        self.stats.chunks_present = len(wanted) - len(missing)
        self.pending.extend(missing)
        self.total_bytes = sum(self._expected(h) for h in missing)
        if missing and not self.holders:
            for h in missing:
                self.failed[h] = "no holders were given"
            self.pending.clear()
        if self.pending:
            async with trio.open_nursery() as nursery:
                self.scope = nursery.cancel_scope
                for holder in self.holders:
                    for _ in range(self.f.per_holder):
                        nursery.start_soon(self._worker, holder)
        self.stats.seconds = trio.current_time() - started
        if self.error is not None:
            raise self.error
        if self.failed:
            first, why = next(iter(self.failed.items()))
            more = len(self.failed) - 1
            raise FetchError(f"chunk {first.hex()} could not be fetched: {why}"
                             + (f" (and {more} more chunks)" if more else ""),
                             dict(self.failed), self.stats)
        return self.stats

    def _expected(self, h: bytes) -> int:
        size = self.sizes.get(h)
        return size if size is not None and 0 < size <= self.f.chunk_size else self.f.chunk_size

    # -- the work list ------------------------------------------------------------------------

    def _notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()
        if not self.pending and not self.in_flight:
            # All landed or set aside: stop the workers still connecting (a holder
            # that hangs must not hold up a fetch that no longer needs it).
            self.scope.cancel()

    async def _take(self, holder: bytes) -> bytes | None:
        """The next chunk for this holder to fetch; None when nothing is left for it."""
        while holder not in self.stats.avoided:
            for i, h in enumerate(self.pending):
                tried = self.tried.get(h)
                if tried is None or holder not in tried:
                    del self.pending[i]
                    self.in_flight += 1
                    return h
            if not self.pending and not self.in_flight:
                return None
            await self.changed.wait()  # a chunk may come back, or all end
        return None

    def _settle(self) -> None:
        """Set aside the pending chunks no holder still in use may be asked for."""
        usable = [h for h in self.holders if h not in self.stats.avoided]
        keep: collections.deque[bytes] = collections.deque()
        for h in self.pending:
            tried = self.tried.get(h, set())
            if any(u not in tried for u in usable):
                keep.append(h)
            elif usable:
                self.failed[h] = "; ".join(self.why.get(h, [])) or "no holder has it"
            else:
                reasons = ", ".join(f"{_label(k)}: {v}" for k, v in self.stats.avoided.items())
                tail = "; ".join(self.why.get(h, []))
                self.failed[h] = (f"every holder was avoided ({reasons})"
                                  + (f"; before that: {tail}" if tail else ""))
        self.pending = keep

    def _fault(self, holder: bytes, h: bytes | None, why: str, *, chunk_only: bool = False,
               bad: bool = False) -> None:
        """One failed attempt of ``holder`` (on chunk ``h``, which goes back)."""
        self.stats.failures[holder] += 1
        if h is not None:
            self.in_flight -= 1
            self.why.setdefault(h, []).append(f"{_label(holder)}: {why}")
            if chunk_only or bad:
                self.tried.setdefault(h, set()).add(holder)
            self.pending.appendleft(h)
        if holder not in self.stats.avoided:
            if bad:
                self.stats.bad_chunks[holder] += 1
                self.stats.avoided[holder] = f"sent a wrong chunk: {why}"
            elif self.stats.failures[holder] >= self.f.max_failures:
                self.stats.avoided[holder] = (f"{self.stats.failures[holder]} failures, "
                                              f"the last: {why}")
        elif bad:
            self.stats.bad_chunks[holder] += 1
        self._settle()
        self._notify()

    def _landed(self, holder: bytes, h: bytes, n: int) -> None:
        self.in_flight -= 1
        self.stats.chunks_fetched += 1
        self.stats.bytes_fetched += n
        self.stats.chunks_by_holder[holder] += 1
        self.stats.bytes_by_holder[holder] += n
        self.done_bytes += n
        self.total_bytes += n - self._expected(h)
        self._notify()
        if self.progress is not None:
            self.progress(self.done_bytes, self.total_bytes)

    # -- one worker --------------------------------------------------------------------------

    async def _client(self, holder: bytes) -> RpcClient:
        client = self.clients.get(holder)
        if client is not None and client.closed is None:
            return client
        async with self.locks[holder]:
            client = self.clients.get(holder)
            if client is None or client.closed is not None:
                client = self.clients[holder] = await self.f.open_client(holder)
            return client

    async def _worker(self, holder: bytes) -> None:
        try:
            await self._work(holder)
        except Exception as exc:  # our side (quota, disk, a bug): stop the fetch, raise it
            if self.error is None:
                self.error = exc
            self.scope.cancel()

    async def _work(self, holder: bytes) -> None:
        f = self.f
        while holder not in self.stats.avoided:
            try:
                with trio.fail_after(f.timeout):
                    client = await self._client(holder)
            except trio.TooSlowError:
                self._fault(holder, None, f"no connection within {f.timeout:g} s")
                continue
            except (RpcError, ChannelClosed, BadMessage, OSError) as exc:
                self._fault(holder, None, f"cannot connect: {exc}")
                continue
            h = await self._take(holder)
            if h is None:
                return
            await self._fetch_one(holder, client, h)

    async def _fetch_one(self, holder: bytes, client: RpcClient, h: bytes) -> None:
        """Fetch and store one chunk; its bytes are dropped on return (the memory bound)."""
        f = self.f
        size = 0
        try:
            with trio.fail_after(f.timeout):
                data = await receive_chunk(client, h, max_size=f.chunk_size)
            size = len(data)
            # Hashed (and written) in a thread: the bytes are checked once, there.
            await trio.to_thread.run_sync(f.store.put_verified, h, data)
        except BadChunk as exc:
            self._fault(holder, h, str(exc), bad=True)
        except ChunkMismatch:
            self._fault(holder, h, f"chunk {h.hex()}: the {size} bytes it sent hash to "
                        f"something else", bad=True)
        except trio.TooSlowError:
            self._fault(holder, h, f"chunk {h.hex()}: no whole answer within {f.timeout:g} s")
        except RpcError as exc:
            self._fault(holder, h, f"chunk {h.hex()}: {exc}", chunk_only=exc.code in _CHUNK_CODES)
        else:
            self._landed(holder, h, size)
