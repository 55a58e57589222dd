"""The chunk store: content-addressed chunks on a node's local disk.

A file is cut into chunks of ``CHUNK_SIZE`` bytes (the last one shorter).
A chunk is named by the BLAKE2b-256 hash of its bytes and kept once per
node, however many files and datasets hold it, as ``root/ab/<hex>``, where
``ab`` are the first two hex digits of the name (256 fan-out directories
keep each directory small).

Why a chunk file always matches its name: the bytes are hashed in memory
before any of them touch the disk, written to a temporary file in the
chunk's own directory, fsynced, renamed onto the final name (``os.replace``
is atomic within one file system) and the directory is fsynced so that the
rename itself survives a power cut.  A crash leaves at most a temporary
file (``.tmp-*``), which the next open removes.  What the disk does to the
bytes later is caught on read: ``get`` re-hashes, and a chunk that no longer
matches is moved to ``root/quarantine/`` and reported as ``ChunkCorrupt``, so
that the caller fetches a good copy from another holder.

Chunk files are made read-only (0444): a job that gets one hard-linked into
its sandbox cannot change the store's copy by accident.

These are plain blocking functions: the daemon calls them through
``trio.to_thread``.  A lock keeps the byte accounting right when several
threads use one store; one process opens a given root at a time.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

CHUNK_SIZE = 4 * 1024 * 1024
HASH_SIZE = 32
QUARANTINE = "quarantine"

_TMP_PREFIX = ".tmp-"
_FAN_DIR = re.compile(r"[0-9a-f]{2}\Z")
_CHUNK_NAME = re.compile(r"[0-9a-f]{64}\Z")

COUNTERS = (
    "chunks_written",        # new chunk files made
    "bytes_written",
    "chunks_deduplicated",   # puts of a chunk the store already held
    "chunks_read",
    "bytes_read",
    "chunks_corrupt",        # reads whose bytes no longer matched the name
    "chunks_mismatch",       # put_verified refusals: bytes not those asked for
    "chunks_deleted",
    "quota_refusals",
    "temp_files_removed",    # crash leftovers removed at open
)


class ChunkError(Exception):
    """A chunk could not be stored or read; the message says which and why."""


class ChunkMismatch(ChunkError):
    """Bytes offered as a chunk do not hash to the name they were offered for.

    Their fault (the peer that sent them); nothing was written.
    """


class ChunkCorrupt(ChunkError):
    """The stored copy of a chunk no longer matches its name; it was quarantined."""


class ChunkMissing(ChunkError):
    """The store does not hold this chunk."""


class QuotaExceeded(ChunkError):
    """Storing the chunk would take the store over its quota; nothing was written."""


def chunk_hash(data: bytes) -> bytes:
    """The name of a chunk: BLAKE2b-256 of its bytes."""
    return hashlib.blake2b(data, digest_size=HASH_SIZE).digest()


def check_hash(h: bytes) -> bytes:
    """A chunk name given to the store must be 32 bytes: anything else is our bug."""
    if not (isinstance(h, bytes) and len(h) == HASH_SIZE):
        raise ValueError(f"a chunk hash is {HASH_SIZE} bytes, got {h!r}"[:120])
    return h


def read_chunks(path: str | os.PathLike[str], chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """The chunks of a file, read one at a time: memory holds one chunk, not the file."""
    with open(path, "rb") as f:
        while data := f.read(chunk_size):
            yield data


def split_file(path: str | os.PathLike[str],
               chunk_size: int = CHUNK_SIZE) -> Iterator[tuple[bytes, bytes]]:
    """``(hash, bytes)`` of each chunk of a file, streaming."""
    for data in read_chunks(path, chunk_size):
        yield chunk_hash(data), data


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make the names in a directory (a rename, a new file) survive a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ChunkStore:
    """Chunks under ``root``, at most ``quota_bytes`` of them (None: no quota).

    Used bytes are the sum of chunk file sizes (not disk blocks), found by a
    scan at open and kept up to date (re-summed after a quarantine, as a
    damaged file may have changed size); quarantined files do not count.
    """

    def __init__(self, root: str | os.PathLike[str], *, quota_bytes: int | None = None,
                 chunk_size: int = CHUNK_SIZE) -> None:
        if quota_bytes is not None and quota_bytes < 0:
            raise ValueError(f"quota_bytes must be 0 or more, got {quota_bytes}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        self.root = Path(root)
        self.quota_bytes = quota_bytes
        self.chunk_size = chunk_size
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._lock = threading.Lock()
        self._reserved = 0  # bytes of puts under way, held against the quota
        self.root.mkdir(parents=True, exist_ok=True)
        self._used, self._count = self._scan(remove_temps=True)

    # -- reading -------------------------------------------------------------

    def path(self, h: bytes) -> Path:
        """Where chunk ``h`` lives (it may not be there): for hard links into sandboxes."""
        name = check_hash(h).hex()
        return self.root / name[:2] / name

    def has(self, h: bytes) -> bool:
        return self.path(h).is_file()

    def get(self, h: bytes) -> bytes:
        """The bytes of chunk ``h``, re-hashed; ChunkMissing or ChunkCorrupt otherwise."""
        path = self.path(h)
        try:
            with open(path, "rb") as f:
                # One byte more than a chunk may hold: an overgrown file is corrupt,
                # and is never read whole into memory.
                data = f.read(self.chunk_size + 1)
                inode = os.fstat(f.fileno()).st_ino
        except FileNotFoundError:
            raise ChunkMissing(f"chunk {h.hex()} is not in the store") from None
        if not data or len(data) > self.chunk_size or chunk_hash(data) != h:
            where = self._quarantine(path, inode)
            raise ChunkCorrupt(f"chunk {h.hex()} no longer matches its name on disk; "
                               f"moved to {where}")
        with self._lock:
            self.counters["chunks_read"] += 1
            self.counters["bytes_read"] += len(data)
        return data

    def hashes(self) -> Iterator[bytes]:
        """The names of all chunks held (a snapshot directory by directory)."""
        for fan in sorted(os.listdir(self.root)):
            if _FAN_DIR.match(fan):
                for name in sorted(os.listdir(self.root / fan)):
                    if _CHUNK_NAME.match(name) and name.startswith(fan):
                        yield bytes.fromhex(name)

    # -- writing -------------------------------------------------------------

    def put(self, data: bytes) -> bytes:
        """Store ``data`` as a chunk (once) and return its name."""
        h = chunk_hash(data)
        self._store(h, data)
        return h

    def put_verified(self, expected: bytes, data: bytes) -> None:
        """Store ``data`` if it is chunk ``expected``; ChunkMismatch (nothing written) if not."""
        check_hash(expected)
        if chunk_hash(data) != expected:
            with self._lock:
                self.counters["chunks_mismatch"] += 1
            raise ChunkMismatch(f"{len(data)} bytes offered as chunk {expected.hex()} "
                                f"hash to something else")
        self._store(expected, data)

    def delete(self, h: bytes) -> bool:
        """Remove chunk ``h``; False when it was not there."""
        path = self.path(h)
        with self._lock:
            try:
                size = os.stat(path).st_size
                os.unlink(path)
            except FileNotFoundError:
                return False
            self._used -= size
            self._count -= 1
            self.counters["chunks_deleted"] += 1
        return True

    # -- accounting ------------------------------------------------------------

    @property
    def used_bytes(self) -> int:
        return self._used

    @property
    def chunk_count(self) -> int:
        return self._count

    @property
    def free_bytes(self) -> int | None:
        """Bytes left under the quota (None without one)."""
        if self.quota_bytes is None:
            return None
        return max(0, self.quota_bytes - self._used)

    def statistics(self) -> dict[str, int | None]:
        with self._lock:
            stats: dict[str, int | None] = dict(self.counters)
            stats.update(used_bytes=self._used, chunks=self._count,
                         quota_bytes=self.quota_bytes)
        return stats

    # -- inside ----------------------------------------------------------------

    def _store(self, h: bytes, data: bytes) -> None:
        n = len(data)
        if not 0 < n <= self.chunk_size:
            raise ValueError(f"a chunk holds 1 to {self.chunk_size} bytes, got {n}")
        path = self.path(h)
        with self._lock:
            if path.is_file():
                self.counters["chunks_deduplicated"] += 1
                return
            if (self.quota_bytes is not None
                    and self._used + self._reserved + n > self.quota_bytes):
                self.counters["quota_refusals"] += 1
                raise QuotaExceeded(
                    f"storing {n} bytes would exceed the quota: {self._used} of "
                    f"{self.quota_bytes} bytes used, {self._reserved} being written")
            self._reserved += n
        try:
            self._write(h, path, data)
        finally:
            with self._lock:
                self._reserved -= n

    def _write(self, h: bytes, path: Path, data: bytes) -> None:
        fan = path.parent
        if not fan.is_dir():
            fan.mkdir(exist_ok=True)
            fsync_dir(self.root)
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=fan)
        placed = False
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fchmod(f.fileno(), 0o444)
                os.fsync(f.fileno())
            with self._lock:
                if path.is_file():  # another thread stored it meanwhile
                    self.counters["chunks_deduplicated"] += 1
                else:
                    os.replace(tmp, path)
                    placed = True
                    self._used += len(data)
                    self._count += 1
                    self.counters["chunks_written"] += 1
                    self.counters["bytes_written"] += len(data)
        finally:
            if not placed:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        fsync_dir(fan)

    def _quarantine(self, path: Path, inode: int) -> Path:
        """Move a chunk file that failed its hash out of the way; where it went."""
        qdir = self.root / QUARANTINE
        with self._lock:
            self.counters["chunks_corrupt"] += 1
            try:
                st = os.stat(path)
            except FileNotFoundError:
                return qdir
            if st.st_ino != inode:  # replaced by a fresh copy since we read it
                return qdir
            qdir.mkdir(exist_ok=True)
            n = 0
            while (dest := qdir / f"{path.name}.{n}").exists():
                n += 1
            os.replace(path, dest)
            # The file may have changed size behind our back, so what it counted
            # for is unknown: re-sum from disk (rare, and right by construction).
            self._used, self._count = self._scan(remove_temps=False)
        return dest

    def _scan(self, *, remove_temps: bool) -> tuple[int, int]:
        """Sum the chunk files; at open, also remove temporary files a crash left behind.

        Later scans leave temporary files alone: they are writes under way.
        """
        used = count = 0
        for fan in os.scandir(self.root):
            if not (_FAN_DIR.match(fan.name) and fan.is_dir(follow_symlinks=False)):
                continue
            for entry in os.scandir(fan.path):
                if entry.name.startswith(_TMP_PREFIX):
                    if not remove_temps:
                        continue
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                        self.counters["temp_files_removed"] += 1
                elif (_CHUNK_NAME.match(entry.name) and entry.name.startswith(fan.name)
                      and entry.is_file(follow_symlinks=False)):
                    used += entry.stat(follow_symlinks=False).st_size
                    count += 1
        return used, count

