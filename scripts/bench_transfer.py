#!/usr/bin/env python3
"""Benchmark dataset transfers (``replication.transfer``) against the cheapest verified copy.

    python scripts/bench_transfer.py                   # human table, 1024 MiB, 3 holders
    python scripts/bench_transfer.py --json            # one JSON object on stdout
    python scripts/bench_transfer.py --size-mb 64 --holders 3 --profile

One run on loopback.  The script writes an N MiB file of random bytes
(``--size-mb``) to a temporary directory, cuts it into 4 MiB chunks
(``FileManifest.of_file`` into a ChunkStore) and gives each holder its own
store holding every chunk (hard links to one set of files: the bytes are
written once and page-cached once).  Then it measures, one after the other:

plain        the baseline: a sender process (``--serve plain``) sends the file
             from the page cache (``socket.sendfile``) over a plain TCP socket;
             this process receives it into a 4 MiB buffer, hashes each chunk
             with BLAKE2b-256 on arrival, compares it with the manifest, writes
             it to a file and fsyncs the file at the end.
one holder   what ``get`` does: a ``Fetcher`` pulls every chunk over the secure
             channel (``chunk.read``) from one holder process (``--serve
             holder``: a ChannelServer with ``chunk_methods`` over its store)
             into a fresh ChunkStore (``put_verified``: hash, write, fsync,
             rename), then ``write_file(verify=False)`` writes the file out
             of the store (the kernel copies the chunks just checked:
             ``copy_file_range``; fsynced, renamed into place).
N holders    the same from ``--holders`` holder processes (3) at once.

The timed part of a get runs from the fetch to the file in place; the
fetch/write split is reported.  Before the timed parts, each path moves a
few chunks untimed (connections, TCP windows, allocators).  ``--repeat K``
times every part K times and keeps the fastest.  MB is 2**20 bytes.

Memory: ``peak_rss_mb_fetcher`` is this process's ``ru_maxrss`` at the end
(it also ran the plain receiver: ``rss_mb_fetcher_before_gets`` is its peak
before the first get); ``peak_rss_mb_holder`` the largest of the holders'.

Targets (PASS/FAIL; the exit code is 0 either way): one holder MB/s / plain
MB/s >= 0.5, and N holders no slower than one (N/one >= 0.95: 1.0 less the
noise of a shared machine; the figure is printed).  Progress goes to stderr;
with --json, stdout holds exactly one JSON object.  Exit 1 if the benchmark
cannot run, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import math
import os
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import nacl.signing
import trio

from overlay import (
    Certificate,
    ChannelServer,
    Credentials,
    GridInfo,
    KeyPair,
    RpcClient,
    RpcPool,
    RpcServer,
)
from replication import (
    CHUNK_SIZE,
    ChunkError,
    ChunkStore,
    Fetcher,
    FetchStats,
    FileManifest,
    ManifestError,
    TransferError,
    chunk_methods,
    write_file,
)

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
REQUEST = struct.Struct(">QQ")  # offset, length
WARMUP_CHUNKS = 4
TARGET_ONE = 0.5
TARGET_MANY = 0.95


def mb_s(nbytes: int, seconds: float) -> float:
    return nbytes / MB / seconds if seconds > 0 else math.inf


# -- the servers (subprocesses of this script) ------------------------------------------------


def _answer_stdin(stop: Callable[[], None] | None = None) -> None:
    """Answer ``cpu`` lines with our CPU seconds until stdin closes."""
    for line in sys.stdin:
        if line.strip() == "cpu":
            print(json.dumps({"cpu_s": cpu_seconds()}), flush=True)
    if stop is not None:
        stop()


def serve_plain(path: Path) -> int:
    """Send byte ranges of ``path`` with sendfile: one 16-byte request (offset, length) each."""
    server = socket.create_server(("127.0.0.1", 0))

    def handle(conn: socket.socket) -> None:
        with conn, open(path, "rb") as f:
            while True:
                request = conn.recv(REQUEST.size, socket.MSG_WAITALL)
                if len(request) < REQUEST.size:
                    return
                offset, length = REQUEST.unpack(request)
                conn.sendfile(f, offset, length)

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    print(json.dumps({"port": server.getsockname()[1]}), flush=True)
    _answer_stdin()
    server.close()
    print(json.dumps({"peak_rss_mb": peak_rss_mb()}), flush=True)
    return 0


def _creds_from(line: str) -> Credentials:
    fields = json.loads(line)
    key = KeyPair(nacl.signing.SigningKey(bytes.fromhex(fields["key"])))
    return Credentials(key, Certificate.from_bytes_untrusted(bytes.fromhex(fields["cert"])),
                       GridInfo.from_bytes_untrusted(bytes.fromhex(fields["grid"])))


async def _serve_holder(root: Path, creds: Credentials, counters: dict[str, int]) -> None:
    store = ChunkStore(root)
    rpc = RpcServer(chunk_methods(store, counters), counters=counters)
    server = ChannelServer(creds, rpc.serve_channel, counters=counters)
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(server.serve, "127.0.0.1", 0)
        print(json.dumps({"port": port, "id": creds.key.id.hex()}), flush=True)
        await trio.to_thread.run_sync(_answer_stdin, abandon_on_cancel=True)
        nursery.cancel_scope.cancel()


def serve_holder(root: Path, profile: bool) -> int:
    creds = _creds_from(sys.stdin.readline())
    counters: dict[str, int] = {}
    prof = cProfile.Profile() if profile else None
    if prof is not None:
        prof.enable()
    trio.run(_serve_holder, root, creds, counters)
    if prof is not None:
        prof.disable()
        print_profile(prof, f"holder {creds.key.id.hex()[:8]}")
    print(json.dumps({"peak_rss_mb": peak_rss_mb(),
                      "chunk_reads": counters.get("chunk_reads", 0),
                      "chunk_read_bytes": counters.get("chunk_read_bytes", 0)}), flush=True)
    return 0


# -- setting up ---------------------------------------------------------------------------------


def make_creds(holders: int) -> tuple[Credentials, list[str]]:
    """The fetcher's credentials, and each holder's as the JSON line its stdin expects."""
    authority = KeyPair.generate()
    now = int(time.time())
    grid = GridInfo.create(authority, "bench-grid", now - 60)

    def issue(name: str) -> tuple[KeyPair, Certificate]:
        key = KeyPair.generate()
        return key, Certificate.issue(authority, kind="node", subject_key=key.public_key,
                                      name=name, roles=(), not_before=now - 60,
                                      not_after=now + 86400)

    lines = []
    for i in range(holders):
        key, cert = issue(f"bench-holder-{i}")
        lines.append(json.dumps({"key": bytes(key.signing_key).hex(), "cert": cert.raw.hex(),
                                 "grid": grid.raw.hex()}))
    key, cert = issue("bench-fetcher")
    return Credentials(key, cert, grid), lines


def make_dataset(work: Path, size: int, holders: int) -> tuple[Path, FileManifest, list[Path]]:
    """The source file, its manifest, and one store directory per holder."""
    source = work / "source.bin"
    with open(source, "wb") as f:
        left = size
        while left:
            n = min(left, CHUNK_SIZE)
            f.write(os.urandom(n))
            left -= n
    seed = work / "holder-0"
    manifest = FileManifest.of_file(source, "data.bin", store=ChunkStore(seed))
    roots = [seed]
    for i in range(1, holders):
        root = work / f"holder-{i}"
        for path in seed.rglob("*"):
            if path.is_file():
                dest = root / path.relative_to(seed)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.link(path, dest)
        roots.append(root)
    return source, manifest, roots


# -- measuring ----------------------------------------------------------------------------------


class Progress:
    def __init__(self, label: str, total: int, every: float = 2.0) -> None:
        self.label, self.total, self.every = label, max(total, 1), every
        self.started = self.last = time.perf_counter()

    def __call__(self, done: int, total: int | None = None) -> None:
        now = time.perf_counter()
        if self.label and now - self.last >= self.every:
            self.last = now
            log(f"  {self.label}: {done * 100 // (total or self.total)}% "
                f"({now - self.started:.1f} s)")


@dataclass
class Timing:
    seconds: float = 0.0
    fetcher_cpu: float = 0.0
    server_cpu: float = 0.0
    parts: dict[str, float] = field(default_factory=dict)  # fetch / write seconds
    extra: dict[str, Any] = field(default_factory=dict)


class Meter:
    """Times one part; CPU of this process and of the servers taking part."""

    def __init__(self, servers: list[ServerProcess], repeat: int) -> None:
        self.servers = servers
        self.repeat = repeat

    async def _server_cpu(self) -> float:
        total = 0.0
        for s in self.servers:
            total += await trio.to_thread.run_sync(s.cpu_seconds)
        return total

    async def once(self, work: Callable[[Timing], Awaitable[None]],
                   after: Callable[[], None]) -> Timing:
        """Time ``work``; then, untimed, ``after`` (in a thread: removing what it wrote)."""
        timing = Timing()
        server0 = await self._server_cpu()
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        try:
            await work(timing)
            timing.seconds = time.perf_counter() - t0
            timing.fetcher_cpu = cpu_seconds() - cpu0
            timing.server_cpu = await self._server_cpu() - server0
        finally:
            await trio.to_thread.run_sync(after)
        return timing

    async def best(self, work: Callable[[Timing], Awaitable[None]],
                   after: Callable[[], None]) -> Timing:
        runs = [await self.once(work, after) for _ in range(self.repeat)]
        return min(runs, key=lambda t: t.seconds)


def plain_receive(port: int, manifest: FileManifest, dest: Path, offset: int, length: int,
                  progress: Progress) -> int:
    """Receive a byte range, hash each chunk on arrival, write it; the bytes verified."""
    chunk_size = manifest.chunk_size
    first = offset // chunk_size
    buf = bytearray(chunk_size)
    view = memoryview(buf)
    got_total = 0
    with socket.create_connection(("127.0.0.1", port)) as sock, open(dest, "wb") as f:
        sock.sendall(REQUEST.pack(offset, length))
        for i in range(first, first + math.ceil(length / chunk_size)):
            n = min(chunk_size, length - got_total)
            got = 0
            while got < n:
                r = sock.recv_into(view[got:n])
                if not r:
                    raise RuntimeError("the plain sender closed the connection early")
                got += r
            if hashlib.blake2b(view[:n], digest_size=32).digest() != manifest.chunks[i]:
                raise RuntimeError(f"plain: chunk {i} arrived damaged")
            f.write(view[:n])
            got_total += n
            progress(got_total)
        f.flush()
        os.fsync(f.fileno())
    return got_total


async def measure_plain(meter: Meter, port: int, manifest: FileManifest, work: Path) -> Timing:
    dest = work / "plain.out"
    warm = min(manifest.size, WARMUP_CHUNKS * manifest.chunk_size)
    await trio.to_thread.run_sync(plain_receive, port, manifest, dest, 0, warm, Progress("", 1))
    dest.unlink()

    async def run(timing: Timing) -> None:
        got = await trio.to_thread.run_sync(plain_receive, port, manifest, dest, 0,
                                            manifest.size, Progress("plain", manifest.size))
        if got != manifest.size:
            raise RuntimeError(f"plain: {got} bytes arrived of {manifest.size}")
        timing.extra["bytes"] = got

    timing = await meter.best(run, partial(dest.unlink, missing_ok=True))
    timing.extra["verified"] = timing.extra.get("bytes") == manifest.size
    log(f"  plain: {mb_s(manifest.size, timing.seconds):.1f} MB/s ({timing.seconds:.2f} s; "
        f"CPU here {timing.fetcher_cpu:.2f} s, sender {timing.server_cpu:.2f} s)")
    return timing


@dataclass
class Holders:
    pool: RpcPool
    ports: dict[bytes, int]

    async def open_client(self, holder: bytes) -> RpcClient:
        return await self.pool.client("127.0.0.1", self.ports[holder], expect_id=holder)


async def get_dataset(holders: Holders, ids: list[bytes], manifest: FileManifest, root: Path,
                      per_holder: int, label: str, *, chunks: int | None = None
                      ) -> tuple[FetchStats, float, float]:
    """What ``get`` does: fetch into a fresh store, then write the file out of it.

    Returns the fetch's stats and the seconds of the fetch and of the write.
    """
    store = await trio.to_thread.run_sync(ChunkStore, root / "store")
    fetcher = Fetcher(store, holders.open_client, per_holder=per_holder)
    t0 = time.perf_counter()
    wanted = manifest.chunks if chunks is None else manifest.chunks[:chunks]
    stats = await fetcher.fetch(wanted, ids, progress=Progress(label, manifest.size))
    t1 = time.perf_counter()
    if chunks is None:
        dest = root / manifest.name
        await trio.to_thread.run_sync(partial(write_file, manifest, store, dest, verify=False))
        if await trio.to_thread.run_sync(os.path.getsize, dest) != manifest.size:
            raise RuntimeError(f"{label}: the file written has the wrong size")
    return stats, t1 - t0, time.perf_counter() - t1


async def measure_get(meter: Meter, holders: Holders, ids: list[bytes],
                      manifest: FileManifest, work: Path, per_holder: int, label: str
                      ) -> Timing:
    scratch = work / "get"
    await get_dataset(holders, ids, manifest, scratch, per_holder, "", chunks=WARMUP_CHUNKS)
    shutil.rmtree(scratch)

    async def run(timing: Timing) -> None:
        stats, fetch_s, write_s = await get_dataset(holders, ids, manifest, scratch,
                                                    per_holder, label)
        timing.parts = {"fetch_s": round(fetch_s, 3), "write_s": round(write_s, 3)}
        timing.extra = {"bytes": stats.bytes_fetched, "chunks": stats.chunks_fetched,
                        "mb_by_holder": {k.hex()[:8]: round(v / MB, 1)
                                         for k, v in stats.bytes_by_holder.items()},
                        "failures": sum(stats.failures.values()),
                        "bad_chunks": sum(stats.bad_chunks.values())}

    timing = await meter.best(run, partial(shutil.rmtree, scratch, ignore_errors=True))
    # Every chunk passed put_verified on arrival.
    timing.extra["verified"] = (timing.extra["bytes"] == manifest.size
                                and timing.extra["chunks"] == len(manifest.chunks))
    log(f"  {label}: {mb_s(manifest.size, timing.seconds):.1f} MB/s ({timing.seconds:.2f} s: "
        f"fetch {timing.parts['fetch_s']:.2f} s, write {timing.parts['write_s']:.2f} s; "
        f"CPU here {timing.fetcher_cpu:.2f} s, holders {timing.server_cpu:.2f} s)")
    return timing


async def run_measurements(args: argparse.Namespace, manifest: FileManifest, work: Path,
                           plain: ServerProcess, holders: list[ServerProcess],
                           creds: Credentials, results: dict[str, Any]) -> None:
    log(f"plain: {args.size_mb} MB from a page-cached file over TCP, hashed and written")
    results["plain"] = await measure_plain(Meter([plain], args.repeat), plain.hello["port"],
                                           manifest, work)
    results["rss_before_gets"] = peak_rss_mb()
    ids = [bytes.fromhex(h.hello["id"]) for h in holders]
    async with trio.open_nursery() as nursery:
        pool = RpcPool(creds)
        await nursery.start(pool.run)
        reach = Holders(pool, {i: h.hello["port"] for i, h in zip(ids, holders, strict=True)})
        log(f"one holder: get of {args.size_mb} MB (fetch into a store, write the file)")
        results["one"] = await measure_get(Meter(holders[:1], args.repeat), reach, ids[:1],
                                           manifest, work, args.per_holder, "one holder")
        log(f"{len(ids)} holders: the same get")
        results["many"] = await measure_get(Meter(holders, args.repeat), reach, ids, manifest,
                                            work, args.per_holder, f"{len(ids)} holders")
        nursery.cancel_scope.cancel()


# -- report ---------------------------------------------------------------------------------------


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def build_report(args: argparse.Namespace, manifest: FileManifest, results: dict[str, Any],
                 holder_ends: list[dict[str, Any]], plain_end: dict[str, Any],
                 wall: float) -> dict[str, Any]:
    size = manifest.size
    plain, one, many = results["plain"], results["one"], results["many"]
    plain_mb_s, one_mb_s, many_mb_s = (mb_s(size, t.seconds) for t in (plain, one, many))
    holder_rss = [e.get("peak_rss_mb") for e in holder_ends]
    report: dict[str, Any] = {
        "size_mb": args.size_mb,
        "bytes": size,
        "chunks": len(manifest.chunks),
        "chunk_mb": manifest.chunk_size / MB,
        "holders": args.holders,
        "per_holder": args.per_holder,
        "repeat": args.repeat,
        "plain_mb_s": round(plain_mb_s, 1),
        "one_holder_mb_s": round(one_mb_s, 1),
        "three_holders_mb_s": round(many_mb_s, 1),
        "one_holder_ratio": _ratio(one_mb_s, plain_mb_s),
        "three_vs_one_ratio": _ratio(many_mb_s, one_mb_s),
        "seconds": {"plain": round(plain.seconds, 3), "one_holder": round(one.seconds, 3),
                    "three_holders": round(many.seconds, 3)},
        "one_holder_parts_s": one.parts,
        "three_holders_parts_s": many.parts,
        "three_holders_mb_by_holder": many.extra["mb_by_holder"],
        "cpu_s": {
            "plain": {"receiver": round(plain.fetcher_cpu, 2),
                      "sender": round(plain.server_cpu, 2)},
            "one_holder": {"fetcher": round(one.fetcher_cpu, 2),
                           "holders": round(one.server_cpu, 2)},
            "three_holders": {"fetcher": round(many.fetcher_cpu, 2),
                              "holders": round(many.server_cpu, 2)},
        },
        "verified": {"plain": plain.extra["verified"], "one_holder": one.extra["verified"],
                     "three_holders": many.extra["verified"]},
        "bytes_received": {"plain": plain.extra["bytes"], "one_holder": one.extra["bytes"],
                           "three_holders": many.extra["bytes"]},
        "failures": one.extra["failures"] + many.extra["failures"],
        "bad_chunks": one.extra["bad_chunks"] + many.extra["bad_chunks"],
        "peak_rss_mb_fetcher": peak_rss_mb(),
        "rss_mb_fetcher_before_gets": results["rss_before_gets"],
        "peak_rss_mb_holder": max((r for r in holder_rss if r is not None), default=None),
        "peak_rss_mb_holders": holder_rss,
        "peak_rss_mb_plain_sender": plain_end.get("peak_rss_mb"),
        "holder_chunk_reads": [e.get("chunk_reads") for e in holder_ends],
        "wall_seconds": round(wall, 1),
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "notes": ("MB = 2**20 bytes; a get = fetch into a fresh ChunkStore (put_verified, "
                  "fsync per chunk) + write_file(verify=False) (kernel copy of the chunks "
                  "just checked, fsync); plain = page-cached file via sendfile over TCP, "
                  "BLAKE2b per chunk on arrival, written, fsync at the "
                  "end; holders and sender are separate processes on loopback; "
                  "three_holders_* is --holders holders"),
    }
    report["all_verified"] = all(report["verified"].values()) and all(
        v == size for v in report["bytes_received"].values())
    report["targets"] = {
        "one_holder_ratio": {"limit": TARGET_ONE, "value": report["one_holder_ratio"],
                             "pass": (report["one_holder_ratio"] or 0) >= TARGET_ONE},
        "three_vs_one_ratio": {"limit": TARGET_MANY, "value": report["three_vs_one_ratio"],
                               "pass": (report["three_vs_one_ratio"] or 0) >= TARGET_MANY},
    }
    return report


def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else format(value, spec) + suffix


def human(report: dict[str, Any], emit: Callable[[str], None]) -> None:
    n = report["holders"]
    emit(f"transfer benchmark: {report['size_mb']} MB in {report['chunks']} chunks of "
         f"{report['chunk_mb']:g} MB, {n} holders x {report['per_holder']} in flight, "
         f"{report['cpus']} CPUs, load {report['load_average'][0]}"
         + (f", best of {report['repeat']}" if report["repeat"] > 1 else ""))
    cpu = report["cpu_s"]
    emit(f"{'':22}{'MB/s':>10}{'seconds':>10}{'/ plain':>10}   CPU s (here + servers)")
    rows = [("plain TCP, verified", report["plain_mb_s"], report["seconds"]["plain"],
             1.0, cpu["plain"]["receiver"], cpu["plain"]["sender"]),
            ("get, one holder", report["one_holder_mb_s"], report["seconds"]["one_holder"],
             report["one_holder_ratio"], cpu["one_holder"]["fetcher"],
             cpu["one_holder"]["holders"]),
            (f"get, {n} holders", report["three_holders_mb_s"],
             report["seconds"]["three_holders"],
             _ratio(report["three_holders_mb_s"], report["plain_mb_s"]),
             cpu["three_holders"]["fetcher"], cpu["three_holders"]["holders"])]
    for label, rate, secs, ratio, here, there in rows:
        emit(f"{label:22}{_fmt(rate, '.1f'):>10}{_fmt(secs, '.2f'):>10}"
             f"{_fmt(ratio, '.3f'):>10}   {here:.2f} + {there:.2f}")
    emit(f"{n} holders / one holder: {_fmt(report['three_vs_one_ratio'], '.3f')}")
    one, many = report["one_holder_parts_s"], report["three_holders_parts_s"]
    emit(f"fetch + write seconds: one holder {one['fetch_s']:.2f} + {one['write_s']:.2f}, "
         f"{n} holders {many['fetch_s']:.2f} + {many['write_s']:.2f}")
    emit(f"MB from each of the {n} holders: {report['three_holders_mb_by_holder']}")
    emit(f"peak RSS: fetcher {_fmt(report['peak_rss_mb_fetcher'], '.1f', ' MB')} "
         f"({_fmt(report['rss_mb_fetcher_before_gets'], '.1f', ' MB')} before the gets), "
         f"holder {_fmt(report['peak_rss_mb_holder'], '.1f', ' MB')}, "
         f"plain sender {_fmt(report['peak_rss_mb_plain_sender'], '.1f', ' MB')}")
    emit(f"every byte verified: {report['all_verified']}; failures {report['failures']}, "
         f"bad chunks {report['bad_chunks']}")
    emit(f"note: {report['notes']}")
    emit(f"wall time: {report['wall_seconds']:.1f} s")
    emit("targets:")
    for name, t in report["targets"].items():
        emit(f"  {'PASS' if t['pass'] else 'FAIL'}  {name} = {_fmt(t['value'], '.3f')} "
             f"(>= {t['limit']})")


# -- main -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=1024, help="dataset size in MiB (1024)")
    ap.add_argument("--holders", type=int, default=3, help="holders for the many-holder get (3)")
    ap.add_argument("--per-holder", type=int, default=2, help="chunks in flight per holder (2)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="time every part this many times, keep the fastest (1)")
    ap.add_argument("--tmp-dir", default=None,
                    help="where the temporary files go (the system's temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    ap.add_argument("--profile", action="store_true",
                    help="cProfile the fetcher and the holders; top functions to stderr")
    ap.add_argument("--serve", choices=("plain", "holder"), help=argparse.SUPPRESS)
    ap.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve == "plain":
        return serve_plain(args.path)
    if args.serve == "holder":
        return serve_holder(args.path, args.profile)
    if args.size_mb < 1:
        ap.error("--size-mb must be at least 1")
    if not 2 <= args.holders <= 16:
        ap.error("--holders must be 2-16")
    if not 1 <= args.per_holder <= 16:
        ap.error("--per-holder must be 1-16")
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")

    started = time.perf_counter()
    size = args.size_mb * MB
    servers: list[ServerProcess] = []
    results: dict[str, Any] = {}
    work: Path | None = None
    prof = cProfile.Profile() if args.profile else None
    try:
        work = Path(tempfile.mkdtemp(prefix="bench-transfer-", dir=args.tmp_dir))
        log(f"preparing {args.size_mb} MB of random bytes in {len(range(0, size, CHUNK_SIZE))} "
            f"chunks, {args.holders} holder stores")
        _, manifest, roots = make_dataset(work, size, args.holders)
        creds, lines = make_creds(args.holders)
        plain = ServerProcess("plain sender", __file__, ["--serve", "plain", "--path",
                                               str(work / "source.bin")])
        servers.append(plain)
        holders = []
        for i, (root, line) in enumerate(zip(roots, lines, strict=True)):
            argv = ["--serve", "holder", "--path", str(root)]
            if args.profile:
                argv.append("--profile")
            holders.append(ServerProcess(f"holder {i}", __file__, argv, line))
            servers.append(holders[-1])
        if prof is not None:
            prof.enable()
        trio.run(run_measurements, args, manifest, work, plain, holders, creds, results)
        if prof is not None:
            prof.disable()
        holder_ends = [h.stop() for h in holders]
        plain_end = plain.stop()
    except (RuntimeError, OSError, TransferError, ChunkError, ManifestError) as exc:
        log(f"error: {exc}")
        return 1
    finally:
        for server in servers:
            server.kill()
        if work is not None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if prof is not None:
        print_profile(prof, "fetcher")

    report = build_report(args, manifest, results, holder_ends, plain_end,
                          time.perf_counter() - started)
    emit(report, args.json, human)
    return 0


if __name__ == "__main__":
    sys.exit(main())
