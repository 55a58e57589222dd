#!/usr/bin/env python3
"""Benchmark the secure channel and RPC (``overlay.channel``, ``overlay.rpc``) against plain TCP.

    python scripts/bench_transport.py                       # human table, 1 GiB, 20000 calls
    python scripts/bench_transport.py --json                # one JSON object on stdout
    python scripts/bench_transport.py --bulk-mb 64 --calls 2000 --profile

Sender and receiver run in separate processes: this script starts two
server subprocesses of itself (``--serve plain`` and ``--serve channel``),
each of which prints the ports it listens on (127.0.0.1, port 0) as one
JSON line, answers ``cpu`` on its stdin with its CPU seconds so far, and
prints its own peak RSS when its stdin closes.  The client side of every
measurement runs in this process, one after the other: first everything
plain, then everything over the channel.

BULK (``--bulk-mb``, default 1024 MiB, in ``--chunk-kb`` chunks, 256 KiB)
    plain    the client sends a 12-byte request on a trio TCP stream; the
             server answers with the bytes (``send_all`` per chunk), the
             client counts them with ``receive_some``.
    rpc      the headline: a server-streaming RPC call (``Method(...,
             streaming=True)`` yielding ``bytes`` chunks) read by
             ``async with client.stream(...) as items`` with the default
             credit window (``--window``, 16 items): what dataset transfers
             use.
    channel  the same chunks sent with ``SecureChannel.send`` and read with
             ``receive`` on a channel without RPC, to split the cost of the
             channel from that of the RPC layer.
    Each path first moves min(bulk, 32 MiB) untimed on the same connection
    (TCP windows and allocators warm up); the timed part runs from the
    request to the last byte received.  MB here is 2**20 bytes.

SMALL CALLS (``--calls``, default 20000, at ``--concurrency``, default 1)
    plain    length-prefixed msgpack frames ``[id, payload]`` echoed by the
             server (decoded and re-encoded) on one TCP connection.  At
             concurrency 1 a call is send, then read the reply; at higher
             concurrency the callers share the connection like RPC callers
             do: one writer task sends all pending requests in one
             ``send_all``, one reader task hands replies back by id.
    rpc      ``RpcClient.call("echo", payload)`` on one connection.
    The payload is ``[i, 32 bytes]``.  Both first make 200 untimed calls.
    The headline (``calls_per_s``, ``small_call_ratio``) is at
    ``--concurrency``; the same is also measured at ``--also-concurrency``
    (32; 0 skips it) and reported with the suffix ``_concurrent``.

CPU: around every timed part the client reads its own CPU time and asks
the server for its; ``cpu`` in the report gives CPU per MB and per call on
each side, and ``*_cpu_ratio`` is plain CPU / channel CPU (both sides):
they tell an expensive path from a busy machine, on which wall-clock
ratios swing from run to run (``load_average`` is in the report).
``--repeat N`` times every part N times and keeps the fastest.  Plain and
channel both read with 256 KiB buffers (the channel's read size).

Memory: ``peak_rss_mb_client`` is this process's ``ru_maxrss`` at the end
(it ran both the plain and the channel clients; ``rss_mb_client_after_plain``
is its peak before the channel part started); ``peak_rss_mb_server`` is the
channel server subprocess's, ``plain_peak_rss_mb_server`` the plain one's.

CRYPTO CEILING (``crypto_push_mb_s``, ``crypto_pull_mb_s``, ``bulk_ceiling_mb_s``,
``bulk_ceiling_ratio``)
    Before and after the rest, this process encrypts the bulk size (``--bulk-mb``) in
    frames of the default cap (1 MiB) with
    ``crypto_secretstream_xchacha20poly1305_push``, and decrypts each frame
    with ``..._pull``, timing each alone in CPU time of this thread (push
    and pull are the C calls the channel makes, through PyNaCl's bindings);
    the faster of the two measurements counts.
    The mandated crypto bounds the bulk rate three ways:

        ceiling = min(push, pull, 2 / (1/push + 1/pull + k))

    A secretstream is sequential (each message's nonce and MAC state follow
    from the one before), so one direction is encrypted by one core at most
    at ``push`` MB/s and decrypted by one at most at ``pull`` MB/s.  And
    sender and receiver share the machine's two cores: per MB, encrypting
    (1/push s), decrypting (1/pull s) and moving the bytes through the
    kernel (``k``: the CPU seconds per MB of the plain transfer, both
    processes: syscalls, copies, loopback TCP) must fit in two core-seconds
    per second.  Everything else the channel does (framing, msgpack, RPC,
    Python) only lowers the rate below that.  ``bulk_ceiling_ratio`` is the
    ceiling / plain MB/s: the best ``bulk_ratio`` two cores allow;
    ``bulk_of_ceiling`` is the RPC stream's MB/s / the ceiling.

    Two cores of a virtual machine are not always two cores: the host may
    run something else on them.  ``parallel_cores`` measures what two busy
    threads get at once (two threads pushing 256 MB each at the same time,
    against one alone, in wall-clock time; at most 2), and
    ``bulk_ceiling_mb_s_parallel_cores`` / ``bulk_ceiling_ratio_parallel_cores``
    are the same ceiling with that many cores in place of 2.

Targets (printed as PASS/FAIL; the exit code is 0 either way): channel
MB/s / plain MB/s >= 0.5 (the RPC stream) and channel calls/s / plain
calls/s >= 0.5 (at ``--concurrency``).  Progress goes to stderr; with
--json, stdout holds exactly one JSON object (the table goes to stderr).
``--profile`` runs cProfile in the client and in both servers and prints
the top functions of each to stderr (the figures are then not comparable).
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import math
import os
import struct
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import msgpack
import nacl.bindings as sodium
import nacl.signing
import trio

import overlay
from overlay import Certificate, GridInfo, KeyPair
from overlay._handshake import MAX_FRAME
from overlay.channel import ChannelServer, Credentials, SecureChannel, open_channel
from overlay.rpc import CallContext, Method, RpcClient, RpcServer, open_rpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))  # benchlib, when loaded by path
from benchlib import (  # noqa: E402
    ServerProcess,
    cpu_seconds,
    emit,
    log,
    peak_rss_mb,
    print_profile,
)

MB = 1024 * 1024
BULK_REQUEST = struct.Struct(">QI")  # total bytes, chunk size
LENGTH = struct.Struct(">I")
READ_SIZE = 256 * 1024
WARMUP_BYTES = 32 * MB
WARMUP_CALLS = 200
PAYLOAD = b"\xa5" * 32
MAX_CHUNK_KB = 1000  # a chunk and its RPC envelope must fit the 1 MiB frame cap
CEILING_CORES = 2  # sender and receiver, one core each (see the docstring)
PARALLEL_PROBE = 256 * MB  # pushed by each of two threads to see how many cores they get
TARGET_BULK_RATIO = 0.5
TARGET_CALL_RATIO = 0.5
PROFILE_LINES = 25


def sources_sha256() -> dict[str, str]:
    """Short hashes of the channel sources measured (the tree may be edited meanwhile)."""
    here = Path(overlay.__file__).resolve().parent
    return {name: hashlib.sha256((here / name).read_bytes()).hexdigest()[:16]
            for name in ("_handshake.py", "channel.py", "rpc.py", "_wire.py")}


SOURCES_AT_START = sources_sha256()


# -- the servers (run as subprocesses of this script) ----------------------------------


def _chunks(total: int, chunk: bytes) -> list[tuple[bytes, int]]:
    """(the chunk, how many times) that add up to ``total`` bytes."""
    whole, rest = divmod(total, len(chunk))
    out = [(chunk, whole)] if whole else []
    if rest:
        out.append((chunk[:rest], 1))
    return out


def _bulk_args(args: Any) -> tuple[int, int]:
    if not (isinstance(args, list) and len(args) == 2
            and all(type(x) is int and x > 0 for x in args) and args[1] <= MAX_CHUNK_KB * 1024):
        raise ValueError(f"bad bulk request {args!r}")
    return args[0], args[1]


async def rpc_bulk(ctx: CallContext, args: Any) -> AsyncIterator[bytes]:
    total, size = _bulk_args(args)
    for chunk, times in _chunks(total, os.urandom(size)):
        for _ in range(times):
            yield chunk


async def rpc_echo(ctx: CallContext, args: Any) -> Any:
    return args


async def raw_channel_bulk(channel: SecureChannel) -> None:
    """Without RPC: each request ``[total, chunk]`` is answered with the bytes."""
    while True:
        total, size = _bulk_args(await channel.receive())
        for chunk, times in _chunks(total, os.urandom(size)):
            for _ in range(times):
                await channel.send(chunk)


async def _read_exactly(stream: trio.abc.ReceiveStream, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        data = await stream.receive_some(n - len(buf))
        if not data:
            return None
        buf += data
    return bytes(buf)


async def plain_bulk(stream: trio.SocketStream) -> None:
    """Each 12-byte request (total, chunk) is answered with that many bytes."""
    async with stream:
        while (request := await _read_exactly(stream, BULK_REQUEST.size)) is not None:
            total, size = BULK_REQUEST.unpack(request)
            for chunk, times in _chunks(total, os.urandom(size)):
                for _ in range(times):
                    await stream.send_all(chunk)


def _split_frames(buf: bytearray) -> list[Any]:
    """Decode and remove the whole length-prefixed msgpack frames at the front of ``buf``."""
    out = []
    start = 0
    while len(buf) - start >= LENGTH.size:
        (n,) = LENGTH.unpack_from(buf, start)
        end = start + LENGTH.size + n
        if len(buf) < end:
            break
        out.append(msgpack.unpackb(buf[start + LENGTH.size:end], raw=False))
        start = end
    del buf[:start]
    return out


def _plain_frame(obj: Any) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return LENGTH.pack(len(body)) + body


async def plain_echo(stream: trio.SocketStream) -> None:
    """Length-prefixed msgpack frames, each decoded and sent back re-encoded."""
    async with stream:
        buf = bytearray()
        while data := await stream.receive_some(READ_SIZE):
            buf += data
            replies = [_plain_frame(msg) for msg in _split_frames(buf)]
            if replies:
                await stream.send_all(b"".join(replies))


def _server_creds(line: str) -> Credentials:
    fields = json.loads(line)
    key = KeyPair(nacl.signing.SigningKey(bytes.fromhex(fields["key"])))
    return Credentials(key, Certificate.from_bytes_untrusted(bytes.fromhex(fields["cert"])),
                       GridInfo.from_bytes_untrusted(bytes.fromhex(fields["grid"])))


async def _serve(mode: str) -> None:
    async with trio.open_nursery() as nursery:
        if mode == "plain":
            bulk = await nursery.start(partial(trio.serve_tcp, plain_bulk, 0, host="127.0.0.1"))
            echo = await nursery.start(partial(trio.serve_tcp, plain_echo, 0, host="127.0.0.1"))
            ports = {"bulk": bulk[0].socket.getsockname()[1],
                     "echo": echo[0].socket.getsockname()[1]}
        else:
            creds = _server_creds(sys.stdin.readline())
            rpc = RpcServer({"bulk": Method(rpc_bulk, streaming=True),
                             "echo": Method(rpc_echo, inline=True)})
            _, rpc_port = await nursery.start(ChannelServer(creds, rpc.serve_channel).serve,
                                              "127.0.0.1", 0)
            _, raw_port = await nursery.start(ChannelServer(creds, raw_channel_bulk).serve,
                                              "127.0.0.1", 0)
            ports = {"rpc": rpc_port, "channel": raw_port}
        print(json.dumps(ports), flush=True)
        # Serve until the client closes our stdin; answer its questions meanwhile.
        while line := await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True):
            if line.strip() == "cpu":
                print(json.dumps({"cpu_s": cpu_seconds()}), flush=True)
        nursery.cancel_scope.cancel()


def serve_main(mode: str, profile: bool) -> int:
    prof = cProfile.Profile() if profile else None
    if prof is not None:
        prof.enable()
    trio.run(_serve, mode)
    if prof is not None:
        prof.disable()
        print_profile(prof, f"{mode} server", PROFILE_LINES)
    print(json.dumps({"peak_rss_mb": peak_rss_mb()}), flush=True)
    return 0


def server_process(mode: str, profile: bool, stdin_line: str | None = None) -> ServerProcess:
    """This script's ``--serve MODE``: its first line holds its ports."""
    return ServerProcess(f"{mode} server", __file__,
                         ["--serve", mode] + (["--profile"] if profile else []), stdin_line)


# -- the client side ----------------------------------------------------------------------


def make_creds() -> tuple[Credentials, str]:
    """Our credentials, and the server's as the JSON line its stdin expects."""
    authority = KeyPair.generate()
    now = int(time.time())
    grid = GridInfo.create(authority, "bench-grid", now - 60)

    def issue(name: str) -> tuple[KeyPair, Certificate]:
        key = KeyPair.generate()
        return key, Certificate.issue(authority, kind="node", subject_key=key.public_key,
                                      name=name, roles=(), not_before=now - 60,
                                      not_after=now + 86400)

    server_key, server_cert = issue("bench-server")
    client_key, client_cert = issue("bench-client")
    line = json.dumps({"key": bytes(server_key.signing_key).hex(),
                       "cert": server_cert.raw.hex(), "grid": grid.raw.hex()})
    return Credentials(client_key, client_cert, grid), line


def mb_s(nbytes: int, seconds: float) -> float:
    return nbytes / MB / seconds if seconds > 0 else math.inf


class Progress:
    """Rate-limited progress lines for ``total`` units."""

    def __init__(self, label: str, total: int, every: float = 2.0) -> None:
        self.label, self.total, self.every = label, total, every
        self.started = self.last = time.perf_counter()

    def step(self, done: int) -> None:
        now = time.perf_counter()
        if self.label and now - self.last >= self.every:
            self.last = now
            log(f"  {self.label}: {done * 100 // self.total}% ({now - self.started:.1f} s)")


@dataclass
class Timing:
    """One timed part: wall seconds, and CPU seconds of the client and the server."""

    seconds: float = 0.0
    client_cpu: float = 0.0
    server_cpu: float = 0.0


class Meter:
    """Times parts of the work against one server; keeps the fastest of ``repeat`` runs."""

    def __init__(self, server: ServerProcess, repeat: int) -> None:
        self.server = server
        self.repeat = repeat

    async def once(self, work: Callable[[], Awaitable[None]]) -> Timing:
        server0 = await trio.to_thread.run_sync(self.server.cpu_seconds)
        client0, t0 = cpu_seconds(), time.perf_counter()
        await work()
        seconds, client = time.perf_counter() - t0, cpu_seconds() - client0
        server = await trio.to_thread.run_sync(self.server.cpu_seconds) - server0
        return Timing(seconds, client, server)

    async def best(self, work: Callable[[], Awaitable[None]]) -> Timing:
        runs = [await self.once(work) for _ in range(self.repeat)]
        return min(runs, key=lambda t: t.seconds)


async def timed_bulk(meter: Meter, label: str, total: int,
                     receive: Callable[[int, Progress], Awaitable[int]]) -> Timing:
    """A warm-up transfer, then the timed one(s); ``receive`` returns the byte count."""
    await receive(min(total, WARMUP_BYTES), Progress("", 1))

    async def work() -> None:
        got = await receive(total, Progress(label, total))
        if got != total:
            raise RuntimeError(f"{label}: received {got} bytes, expected {total}")

    timing = await meter.best(work)
    log(f"  {label}: {mb_s(total, timing.seconds):.1f} MB/s ({timing.seconds:.2f} s; CPU "
        f"client {timing.client_cpu:.2f} s, server {timing.server_cpu:.2f} s)")
    return timing


async def bulk_plain(meter: Meter, port: int, total: int, chunk: int) -> Timing:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        async def receive(n: int, progress: Progress) -> int:
            await stream.send_all(BULK_REQUEST.pack(n, chunk))
            got = 0
            while got < n:
                data = await stream.receive_some(READ_SIZE)
                if not data:
                    break
                got += len(data)
                progress.step(got)
            return got

        return await timed_bulk(meter, "plain bulk", total, receive)


async def bulk_rpc(meter: Meter, client: RpcClient, total: int, chunk: int,
                   window: int) -> Timing:
    async def receive(n: int, progress: Progress) -> int:
        got = 0
        async with client.stream("bulk", [n, chunk], window=window) as items:
            async for item in items:
                got += len(item)
                progress.step(got)
        return got

    return await timed_bulk(meter, "rpc stream bulk", total, receive)


async def bulk_channel(meter: Meter, port: int, creds: Credentials, total: int,
                       chunk: int) -> Timing:
    async with open_channel("127.0.0.1", port, creds) as channel:
        async def receive(n: int, progress: Progress) -> int:
            await channel.send([n, chunk])
            got = 0
            while got < n:
                got += len(await channel.receive())
                progress.step(got)
            return got

        return await timed_bulk(meter, "channel bulk", total, receive)


class PlainEchoClient:
    """Length-prefixed msgpack calls on one TCP stream.

    ``call_sequential`` is the simplest client: send, then read the reply.
    ``call`` is for concurrent callers and needs ``run``: one writer task
    sends whatever requests are pending in one ``send_all``, one reader task
    hands each reply to its caller by id (the design of the RPC client,
    without the encryption).
    """

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._buf = bytearray()
        self._next = 0
        self._pending: list[bytes] = []
        self._wake = trio.Event()
        self._waiting: dict[int, list[Any]] = {}

    def _request(self, payload: Any) -> tuple[int, bytes]:
        self._next += 1
        return self._next, _plain_frame([self._next, payload])

    async def call_sequential(self, payload: Any) -> Any:
        call_id, data = self._request(payload)
        await self.stream.send_all(data)
        while True:
            replies = _split_frames(self._buf)
            if replies:
                (reply,) = replies
                if reply[0] != call_id:
                    raise RuntimeError("plain echo reply out of order")
                return reply[1]
            data = await self.stream.receive_some(READ_SIZE)
            if not data:
                raise RuntimeError("plain echo server closed the connection")
            self._buf += data

    async def call(self, payload: Any) -> Any:
        call_id, data = self._request(payload)
        slot: list[Any] = [trio.Event(), None]
        self._waiting[call_id] = slot
        self._pending.append(data)
        self._wake.set()
        await slot[0].wait()
        return slot[1]

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._writer)
            while data := await self.stream.receive_some(READ_SIZE):
                self._buf += data
                for call_id, value in _split_frames(self._buf):
                    slot = self._waiting.pop(call_id)
                    slot[1] = value
                    slot[0].set()
            raise RuntimeError("plain echo server closed the connection")

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            data = b"".join(self._pending)
            self._pending.clear()
            await self.stream.send_all(data)


async def run_calls(calls: int, concurrency: int, call: Callable[[Any], Awaitable[Any]],
                    label: str = "") -> None:
    """``calls`` echo calls spread over ``concurrency`` tasks, each checked."""
    progress = Progress(label, calls)
    done = 0

    async def worker(n: int) -> None:
        nonlocal done
        for i in range(n):
            payload = [i, PAYLOAD]
            if await call(payload) != payload:
                raise RuntimeError(f"{label or 'warm-up'}: wrong echo")
            done += 1
            progress.step(done)

    if concurrency == 1:
        await worker(calls)
        return
    async with trio.open_nursery() as nursery:
        for k in range(concurrency):
            nursery.start_soon(worker, calls // concurrency + (k < calls % concurrency))


async def timed_calls(meter: Meter, label: str, calls: int, concurrency: int,
                      call: Callable[[Any], Awaitable[Any]]) -> Timing:
    await run_calls(WARMUP_CALLS, concurrency, call)
    timing = await meter.best(partial(run_calls, calls, concurrency, call, label))
    log(f"  {label}: {calls / timing.seconds:.0f} calls/s ({timing.seconds:.2f} s; CPU "
        f"client {timing.client_cpu:.2f} s, server {timing.server_cpu:.2f} s)")
    return timing


async def calls_plain(meter: Meter, port: int, calls: int, levels: list[int]
                      ) -> dict[int, Timing]:
    out: dict[int, Timing] = {}
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream, trio.open_nursery() as nursery:
        client = PlainEchoClient(stream)
        if 1 in levels:  # before the reader task runs
            out[1] = await timed_calls(meter, "plain calls, concurrency 1", calls, 1,
                                       client.call_sequential)
        if any(level > 1 for level in levels):
            nursery.start_soon(client.run)
            for level in levels:
                if level > 1:
                    out[level] = await timed_calls(meter, f"plain calls, concurrency {level}",
                                                   calls, level, client.call)
        nursery.cancel_scope.cancel()
    return out


async def calls_rpc(meter: Meter, client: RpcClient, calls: int, levels: list[int]
                    ) -> dict[int, Timing]:
    async def call(payload: Any) -> Any:
        return await client.call("echo", payload)

    return {level: await timed_calls(meter, f"rpc calls, concurrency {level}", calls, level,
                                     call)
            for level in levels}


def crypto_rates(total: int) -> tuple[float, float]:
    """MB/s of secretstream push alone and pull alone over ``total`` bytes in frames
    of the default cap, in CPU time of this thread (the crypto ceiling's inputs)."""
    key = sodium.crypto_secretstream_xchacha20poly1305_keygen()
    push = sodium.crypto_secretstream_xchacha20poly1305_state()
    header = sodium.crypto_secretstream_xchacha20poly1305_init_push(push, key)
    pull = sodium.crypto_secretstream_xchacha20poly1305_state()
    sodium.crypto_secretstream_xchacha20poly1305_init_pull(pull, header, key)
    tag = sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE
    push_s = pull_s = 0.0
    for chunk, times in _chunks(total, os.urandom(MAX_FRAME)):
        for _ in range(times):
            t0 = time.thread_time()
            ciphertext = sodium.crypto_secretstream_xchacha20poly1305_push(push, chunk, None, tag)
            t1 = time.thread_time()
            plaintext, _ = sodium.crypto_secretstream_xchacha20poly1305_pull(pull, ciphertext)
            push_s, pull_s = push_s + t1 - t0, pull_s + time.thread_time() - t1
            if len(plaintext) != len(chunk):
                raise RuntimeError("secretstream round trip lost bytes")
    return mb_s(total, push_s), mb_s(total, pull_s)


def parallel_cores(total: int) -> float:
    """How many cores two busy threads get at once: the MB/s of two threads pushing
    ``total`` bytes each at the same time (cffi lets go of the GIL in the C call),
    over that of one thread alone, in wall-clock time."""
    chunk = os.urandom(MAX_FRAME)
    frames = max(1, total // MAX_FRAME)

    def push_all() -> None:
        state = sodium.crypto_secretstream_xchacha20poly1305_state()
        sodium.crypto_secretstream_xchacha20poly1305_init_push(
            state, sodium.crypto_secretstream_xchacha20poly1305_keygen())
        for _ in range(frames):
            sodium.crypto_secretstream_xchacha20poly1305_push(state, chunk)

    t0 = time.perf_counter()
    push_all()
    alone = time.perf_counter() - t0
    threads = [threading.Thread(target=push_all) for _ in range(2)]
    t0 = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return round(2 * alone / (time.perf_counter() - t0), 2)


def measure_crypto(total: int) -> tuple[float, float, float]:
    log(f"crypto: secretstream push and pull of {total // MB} MB in {MAX_FRAME // 1024} KiB "
        f"frames, one thread; then push by two threads at once")
    push, pull = crypto_rates(total)
    cores = parallel_cores(min(total, PARALLEL_PROBE))
    log(f"  push {push:.1f} MB/s, pull {pull:.1f} MB/s (CPU time); two threads get "
        f"{cores:.2f} cores")
    return push, pull, cores


def bulk_ceiling(push: float, pull: float, kernel_s_per_mb: float,
                 cores: float = CEILING_CORES) -> float:
    """The best bulk MB/s the mandated crypto allows on ``cores`` cores (module docstring)."""
    return min(push, pull, cores / (1 / push + 1 / pull + kernel_s_per_mb))


async def run_client(args: argparse.Namespace, servers: dict[str, ServerProcess],
                     creds: Credentials, results: dict[str, Any]) -> None:
    total = args.bulk_mb * MB
    chunk = args.chunk_kb * 1024
    levels = [args.concurrency]
    if args.also_concurrency and args.also_concurrency != args.concurrency:
        levels.append(args.also_concurrency)
    plain, channel = servers["plain"], servers["channel"]
    meter = Meter(plain, args.repeat)

    results["crypto"] = [measure_crypto(total)]
    log(f"plain: bulk {args.bulk_mb} MB in {args.chunk_kb} KiB chunks")
    results["plain_bulk"] = await bulk_plain(meter, plain.hello["bulk"], total, chunk)
    log(f"plain: {args.calls} echo calls at concurrency {', '.join(map(str, levels))}")
    results["plain_calls"] = await calls_plain(meter, plain.hello["echo"], args.calls, levels)
    results["rss_mb_client_after_plain"] = peak_rss_mb()

    meter = Meter(channel, args.repeat)
    log(f"channel: bulk {args.bulk_mb} MB as an RPC stream (window {args.window})")
    async with open_rpc("127.0.0.1", channel.hello["rpc"], creds) as client:
        results["rpc_bulk"] = await bulk_rpc(meter, client, total, chunk, args.window)
        log(f"channel: {args.calls} RPC echo calls at concurrency "
            f"{', '.join(map(str, levels))}")
        results["rpc_calls"] = await calls_rpc(meter, client, args.calls, levels)
    if not args.skip_raw:
        log(f"channel: bulk {args.bulk_mb} MB with SecureChannel.send/receive, no RPC")
        results["channel_bulk"] = await bulk_channel(meter, channel.hello["channel"], creds,
                                                     total, chunk)
    results["crypto"].append(measure_crypto(total))


# -- report ----------------------------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


def _r(x: float | None, digits: int = 1) -> float | None:
    return None if x is None else round(x, digits)


def _per(timing: Timing | None, units: float, scale: float) -> dict[str, float] | None:
    """CPU per unit of work (MB or call) on each side, times ``scale``."""
    if timing is None:
        return None
    return {"client": round(timing.client_cpu / units * scale, 2),
            "server": round(timing.server_cpu / units * scale, 2)}


def _cpu_ratio(plain: Timing, ours: Timing) -> float | None:
    return _ratio(plain.client_cpu + plain.server_cpu, ours.client_cpu + ours.server_cpu)


def build_report(args: argparse.Namespace, results: dict[str, Any],
                 servers: dict[str, float | None], wall: float) -> dict[str, Any]:
    total = args.bulk_mb * MB
    rpc_bulk, plain_bulk = results["rpc_bulk"], results["plain_bulk"]
    raw_bulk: Timing | None = results.get("channel_bulk")
    bulk = mb_s(total, rpc_bulk.seconds)
    plain = mb_s(total, plain_bulk.seconds)
    raw = None if raw_bulk is None else mb_s(total, raw_bulk.seconds)
    rpc_calls, plain_calls = results["rpc_calls"], results["plain_calls"]
    # Measured before and after the transfers; the faster of each (a busy machine
    # only slows it down, and the ceiling is what the crypto allows at best).
    push = max(m[0] for m in results["crypto"])
    pull = max(m[1] for m in results["crypto"])
    cores = min(float(CEILING_CORES), max(m[2] for m in results["crypto"]))
    kernel = (plain_bulk.client_cpu + plain_bulk.server_cpu) / args.bulk_mb
    ceiling = bulk_ceiling(push, pull, kernel)
    ceiling_here = bulk_ceiling(push, pull, kernel, cores)
    head = args.concurrency
    extra = next((k for k in rpc_calls if k != head), None)
    cps = {k: args.calls / t.seconds for k, t in rpc_calls.items()}
    plain_cps = {k: args.calls / t.seconds for k, t in plain_calls.items()}
    report: dict[str, Any] = {
        "bulk_mb": args.bulk_mb,
        "chunk_kb": args.chunk_kb,
        "window": args.window,
        "calls": args.calls,
        "concurrency": head,
        "repeat": args.repeat,
        "bulk_mb_s": _r(bulk),
        "plain_mb_s": _r(plain),
        "bulk_ratio": _ratio(bulk, plain),
        "channel_mb_s": _r(raw),
        "channel_bulk_ratio": _ratio(raw, plain),
        "crypto_push_mb_s": _r(push),
        "crypto_pull_mb_s": _r(pull),
        "plain_cpu_ms_per_mb": _r(kernel * 1e3, 3),
        "bulk_ceiling_mb_s": _r(ceiling),
        "bulk_ceiling_ratio": _ratio(ceiling, plain),
        "bulk_of_ceiling": _ratio(bulk, ceiling),
        "parallel_cores": cores,
        "bulk_ceiling_mb_s_parallel_cores": _r(ceiling_here),
        "bulk_ceiling_ratio_parallel_cores": _ratio(ceiling_here, plain),
        "calls_per_s": _r(cps[head]),
        "plain_calls_per_s": _r(plain_cps[head]),
        "small_call_ratio": _ratio(cps[head], plain_cps[head]),
        "call_latency_us": _r(1e6 / cps[head] * head),
        "plain_call_latency_us": _r(1e6 / plain_cps[head] * head),
        "concurrency_also": extra,
        "calls_per_s_concurrent": None if extra is None else _r(cps[extra]),
        "plain_calls_per_s_concurrent": None if extra is None else _r(plain_cps[extra]),
        "small_call_ratio_concurrent": (None if extra is None
                                        else _ratio(cps[extra], plain_cps[extra])),
        "bulk_cpu_ratio": _cpu_ratio(plain_bulk, rpc_bulk),
        "small_call_cpu_ratio": _cpu_ratio(plain_calls[head], rpc_calls[head]),
        "cpu": {
            "bulk_ms_per_mb": {"rpc": _per(rpc_bulk, args.bulk_mb, 1e3),
                               "channel": _per(raw_bulk, args.bulk_mb, 1e3),
                               "plain": _per(plain_bulk, args.bulk_mb, 1e3)},
            "calls_us_per_call": {"rpc": _per(rpc_calls[head], args.calls, 1e6),
                                  "plain": _per(plain_calls[head], args.calls, 1e6)},
            "calls_us_per_call_concurrent": None if extra is None else {
                "rpc": _per(rpc_calls[extra], args.calls, 1e6),
                "plain": _per(plain_calls[extra], args.calls, 1e6)},
        },
        "peak_rss_mb_client": peak_rss_mb(),
        "rss_mb_client_after_plain": results["rss_mb_client_after_plain"],
        "peak_rss_mb_server": servers.get("channel"),
        "plain_peak_rss_mb_server": servers.get("plain"),
        "wall_seconds": round(wall, 3),
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "notes": ("MB = 2**20 bytes; bulk_mb_s is the RPC stream (what dataset transfers "
                  "use), channel_mb_s the bare SecureChannel; sender and receiver in "
                  "separate processes on loopback; small calls are echoes of [i, 32 bytes]; "
                  "*_cpu_ratio = plain CPU / channel CPU, both processes; "
                  "peak_rss_mb_client covers the plain and the channel clients (one process); "
                  "bulk_ceiling_mb_s = min(push, pull, 2 / (1/push + 1/pull + plain CPU "
                  "s/MB)): the best the mandated secretstream allows on two cores"),
        "sources_sha256": SOURCES_AT_START,
    }
    if sources_sha256() != SOURCES_AT_START:
        report["sources_sha256_at_end"] = sources_sha256()  # edited while we ran
    report["targets"] = {
        f"bulk_ratio_ge_{TARGET_BULK_RATIO}": (report["bulk_ratio"] or 0) >= TARGET_BULK_RATIO,
        f"small_call_ratio_ge_{TARGET_CALL_RATIO}":
            (report["small_call_ratio"] or 0) >= TARGET_CALL_RATIO,
    }
    return report


def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else format(value, spec) + suffix


def _cpu_pair(per: dict[str, float] | None) -> str:
    return "n/a" if per is None else f"{per['client']:g} + {per['server']:g}"


def human(report: dict[str, Any], emit: Callable[[str], None]) -> None:
    c, extra = report["concurrency"], report["concurrency_also"]
    rows: list[tuple[str, Any, Any, Any, str]] = [
        ("bulk, RPC stream", report["bulk_mb_s"], report["plain_mb_s"], report["bulk_ratio"],
         " MB/s"),
        ("bulk, bare channel", report["channel_mb_s"], report["plain_mb_s"],
         report["channel_bulk_ratio"], " MB/s"),
        ("bulk, crypto ceiling", report["bulk_ceiling_mb_s"], report["plain_mb_s"],
         report["bulk_ceiling_ratio"], " MB/s"),
        (f"calls, concurrency {c}", report["calls_per_s"], report["plain_calls_per_s"],
         report["small_call_ratio"], "/s"),
    ]
    if extra is not None:
        rows.append((f"calls, concurrency {extra}", report["calls_per_s_concurrent"],
                     report["plain_calls_per_s_concurrent"],
                     report["small_call_ratio_concurrent"], "/s"))
    emit(f"transport benchmark: {report['bulk_mb']} MB bulk in {report['chunk_kb']} KiB "
         f"chunks (window {report['window']}), {report['calls']} calls, "
         f"{report['cpus']} CPUs, load {report['load_average'][0]}"
         + (f", best of {report['repeat']}" if report["repeat"] > 1 else ""))
    emit(f"{'':26}{'channel':>16}{'plain':>16}{'channel/plain':>15}")
    for label, a, b, ratio, suffix in rows:
        emit(f"{label:26}{_fmt(a, '.1f', suffix):>16}{_fmt(b, '.1f', suffix):>16}"
             f"{_fmt(ratio, '.3f'):>15}")
    emit(f"{'call latency, conc. ' + str(c):26}"
         f"{_fmt(report['call_latency_us'], '.1f', ' us'):>16}"
         f"{_fmt(report['plain_call_latency_us'], '.1f', ' us'):>16}")
    cpu = report["cpu"]
    emit(f"{'CPU ms/MB, client + server':26}{_cpu_pair(cpu['bulk_ms_per_mb']['rpc']):>16}"
         f"{_cpu_pair(cpu['bulk_ms_per_mb']['plain']):>16}"
         f"{_fmt(report['bulk_cpu_ratio'], '.3f'):>15}  (plain CPU / channel CPU)")
    emit(f"{'CPU us/call, conc. ' + str(c):26}"
         f"{_cpu_pair(cpu['calls_us_per_call']['rpc']):>16}"
         f"{_cpu_pair(cpu['calls_us_per_call']['plain']):>16}"
         f"{_fmt(report['small_call_cpu_ratio'], '.3f'):>15}")
    emit(f"crypto ceiling: push {_fmt(report['crypto_push_mb_s'], '.1f')} MB/s, pull "
         f"{_fmt(report['crypto_pull_mb_s'], '.1f')} MB/s (CPU time, one thread), plain "
         f"{_fmt(report['plain_cpu_ms_per_mb'], '.3f')} CPU ms/MB; the RPC stream reaches "
         f"{_fmt(report['bulk_of_ceiling'], '.3f')} of the ceiling")
    emit(f"two busy threads get {report['parallel_cores']:.2f} cores here: ceiling "
         f"{_fmt(report['bulk_ceiling_mb_s_parallel_cores'], '.1f')} MB/s, ratio "
         f"{_fmt(report['bulk_ceiling_ratio_parallel_cores'], '.3f')}")
    emit(f"{'peak RSS, server':26}{_fmt(report['peak_rss_mb_server'], '.1f', ' MB'):>16}"
         f"{_fmt(report['plain_peak_rss_mb_server'], '.1f', ' MB'):>16}")
    emit(f"peak RSS, client process (both clients): {report['peak_rss_mb_client']:.1f} MB "
         f"({report['rss_mb_client_after_plain']:.1f} MB after the plain part)")
    emit(f"note: {report['notes']}")
    emit(f"wall time: {report['wall_seconds']:.1f} s")
    emit("targets:")
    for name, ok in report["targets"].items():
        emit(f"  {'PASS' if ok else 'FAIL'}  {name}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bulk-mb", type=int, default=1024, help="MB to stream (1024)")
    ap.add_argument("--chunk-kb", type=int, default=256, help="bulk chunk size in KiB (256)")
    ap.add_argument("--window", type=int, default=16, help="RPC stream credit window (16)")
    ap.add_argument("--calls", type=int, default=20000, help="echo calls per measurement (20000)")
    ap.add_argument("--concurrency", type=int, default=1,
                    help="calls in flight for the headline figures (1: one after the other)")
    ap.add_argument("--also-concurrency", type=int, default=32,
                    help="a second level also measured (32; 0 skips it)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="time every part this many times, keep the fastest (1)")
    ap.add_argument("--skip-raw", action="store_true",
                    help="skip the bare SecureChannel bulk measurement")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    ap.add_argument("--profile", action="store_true",
                    help="cProfile the client and both servers; top functions to stderr")
    ap.add_argument("--serve", choices=("plain", "channel"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        return serve_main(args.serve, args.profile)
    if args.bulk_mb < 1:
        ap.error("--bulk-mb must be at least 1")
    if not 1 <= args.chunk_kb <= MAX_CHUNK_KB:
        ap.error(f"--chunk-kb must be 1-{MAX_CHUNK_KB}")
    if not 1 <= args.window <= 1024:
        ap.error("--window must be 1-1024")
    if args.calls < 1:
        ap.error("--calls must be at least 1")
    if not 1 <= args.concurrency <= 1024:
        ap.error("--concurrency must be 1-1024")
    if not 0 <= args.also_concurrency <= 1024:
        ap.error("--also-concurrency must be 0-1024")
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")

    started = time.perf_counter()
    creds, server_line = make_creds()
    servers: dict[str, ServerProcess] = {}
    rss: dict[str, float | None] = {}
    results: dict[str, Any] = {}
    prof = cProfile.Profile() if args.profile else None
    try:
        servers["plain"] = server_process("plain", args.profile)
        servers["channel"] = server_process("channel", args.profile, server_line)
        if prof is not None:
            prof.enable()
        trio.run(run_client, args, servers, creds, results)
        if prof is not None:
            prof.disable()
        for name, server in servers.items():
            rss[name] = server.stop().get("peak_rss_mb")
    except (RuntimeError, OSError) as exc:
        log(f"error: {exc}")
        return 1
    finally:
        for server in servers.values():
            server.kill()
    if prof is not None:
        print_profile(prof, "client", PROFILE_LINES)

    report = build_report(args, results, rss, time.perf_counter() - started)
    emit(report, args.json, human)
    return 0


if __name__ == "__main__":
    sys.exit(main())
