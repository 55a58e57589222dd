"""The chunk store: names match bytes, writes are atomic, quota and corruption are handled."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from replication import (
    CHUNK_SIZE,
    ChunkCorrupt,
    ChunkMismatch,
    ChunkMissing,
    ChunkStore,
    QuotaExceeded,
    chunk_hash,
    split_file,
)

from .common import SMALL, pattern, write


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(".tmp-*")]


def test_put_get_has_path_delete(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path, chunk_size=SMALL)
    data = pattern(100)
    h = store.put(data)
    assert h == chunk_hash(data) and len(h) == 32
    assert store.has(h) and store.get(h) == data
    assert store.path(h) == tmp_path / h.hex()[:2] / h.hex()
    assert store.path(h).read_bytes() == data
    assert store.used_bytes == 100 and store.chunk_count == 1
    assert list(store.hashes()) == [h]
    stats = store.statistics()
    assert stats["chunks_written"] == 1 and stats["bytes_written"] == 100
    assert stats["chunks_read"] == 1 and stats["used_bytes"] == 100
    assert store.delete(h) is True and store.delete(h) is False
    assert not store.has(h) and store.used_bytes == 0 and store.chunk_count == 0
    with pytest.raises(ChunkMissing, match=h.hex()):
        store.get(h)


def test_chunk_files_are_read_only(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    mode = stat.S_IMODE(os.stat(store.path(store.put(b"x"))).st_mode)
    assert mode == 0o444


def test_same_bytes_are_stored_once(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    assert store.put(b"abc") == store.put(b"abc")
    assert store.used_bytes == 3 and store.chunk_count == 1
    assert store.counters["chunks_deduplicated"] == 1
    assert len(files_under(tmp_path)) == 1


def test_put_verified_refuses_other_bytes_and_writes_nothing(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    want = chunk_hash(b"good")
    with pytest.raises(ChunkMismatch, match=want.hex()):
        store.put_verified(want, b"evil")
    assert files_under(tmp_path) == [] and store.used_bytes == 0
    assert store.counters["chunks_mismatch"] == 1
    store.put_verified(want, b"good")
    assert store.get(want) == b"good"


def test_bad_chunks_and_names_are_our_bugs(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path, chunk_size=4)
    with pytest.raises(ValueError, match="1 to 4 bytes"):
        store.put(b"")
    with pytest.raises(ValueError, match="1 to 4 bytes"):
        store.put(b"12345")
    with pytest.raises(ValueError, match="32 bytes"):
        store.get(b"short")
    assert files_under(tmp_path) == []


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "grow"])
def test_a_chunk_damaged_on_disk_is_quarantined_on_read(tmp_path: Path, damage: str) -> None:
    store = ChunkStore(tmp_path, chunk_size=SMALL)
    data = pattern(SMALL)
    h = store.put(data)
    other = store.put(b"other")
    path = store.path(h)
    path.chmod(0o644)
    bad = {"flip": bytes([data[0] ^ 1]) + data[1:], "truncate": data[:-1], "empty": b"",
           "grow": data + b"x"}[damage]
    path.write_bytes(bad)
    with pytest.raises(ChunkCorrupt, match="quarantine"):
        store.get(h)
    assert not store.has(h)
    assert (tmp_path / "quarantine" / f"{h.hex()}.0").read_bytes() == bad
    assert store.counters["chunks_corrupt"] == 1
    assert store.used_bytes == 5 and store.chunk_count == 1
    assert store.get(other) == b"other"
    # A good copy fetched from elsewhere takes its place.
    store.put_verified(h, data)
    assert store.get(h) == data and store.used_bytes == 5 + SMALL


def test_a_second_corruption_keeps_the_first_in_quarantine(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    h = store.put(b"data")
    for _ in range(2):
        store.path(h).chmod(0o644)
        store.path(h).write_bytes(b"junk")
        with pytest.raises(ChunkCorrupt):
            store.get(h)
        store.put(b"data")
    assert sorted(p.name for p in (tmp_path / "quarantine").iterdir()) == [
        f"{h.hex()}.0", f"{h.hex()}.1"]


def test_quota_refusal_leaves_nothing_written(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path, quota_bytes=100)
    kept = store.put(pattern(60))
    before = files_under(tmp_path)
    with pytest.raises(QuotaExceeded, match="60 of 100"):
        store.put(pattern(41, seed=1))
    assert files_under(tmp_path) == before and store.used_bytes == 60
    assert store.counters["quota_refusals"] == 1
    # What the store holds already costs nothing; what fits still goes in.
    assert store.put(pattern(60)) == kept
    store.put(pattern(40, seed=1))
    assert store.used_bytes == 100 and store.free_bytes == 0


def test_a_failed_write_leaves_no_file_and_releases_its_quota(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ChunkStore(tmp_path, quota_bytes=10)

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="Input/output"):
        store.put(b"0123456789")
    monkeypatch.undo()
    assert files_under(tmp_path) == [] and store.used_bytes == 0
    store.put(b"0123456789")
    assert store.used_bytes == 10


def test_open_scans_used_bytes_and_removes_crash_leftovers(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    hashes = [store.put(pattern(n, seed=n)) for n in (10, 20, 30)]
    fan = tmp_path / hashes[0].hex()[:2]
    (fan / ".tmp-crashed").write_bytes(b"half a chunk")
    (tmp_path / "ab").mkdir(exist_ok=True)
    (tmp_path / "ab" / ".tmp-other").write_bytes(b"")
    (tmp_path / "README").write_text("not a chunk")
    (fan / ("0" * 64)).write_bytes(b"a chunk in the wrong directory is not counted")
    again = ChunkStore(tmp_path)
    assert again.used_bytes == 60 and again.chunk_count == 3
    assert again.counters["temp_files_removed"] == 2
    assert temp_files(tmp_path) == []
    assert sorted(again.hashes()) == sorted(hashes)
    assert all(again.get(h) for h in hashes)


def test_concurrent_puts_of_one_chunk_count_once(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path, quota_bytes=10 * SMALL)
    data = pattern(SMALL)
    barrier = threading.Barrier(8)

    def put() -> None:
        barrier.wait()
        store.put(data)

    threads = [threading.Thread(target=put) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.used_bytes == SMALL and store.chunk_count == 1
    assert store.counters["chunks_written"] == 1
    assert store.counters["chunks_deduplicated"] == 7
    assert temp_files(tmp_path) == [] and len(files_under(tmp_path)) == 1
    assert ChunkStore(tmp_path).used_bytes == SMALL


@pytest.mark.parametrize("size", [0, 1, SMALL, SMALL + 1, 3 * SMALL + 7])
def test_split_file_streams_chunks(tmp_path: Path, size: int) -> None:
    data = pattern(size)
    parts = list(split_file(write(tmp_path / "f", data), SMALL))
    assert len(parts) == -(-size // SMALL)
    assert b"".join(d for _, d in parts) == data
    assert all(h == chunk_hash(d) and 0 < len(d) <= SMALL for h, d in parts)


def test_the_grid_chunk_size_is_4_mib() -> None:
    assert CHUNK_SIZE == 4 * 1024 * 1024
