"""File manifests: built by streaming, rebuilt from the store, one door from the wire."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overlay import BadMessage
from replication import (
    CHUNK_SIZE,
    ChunkMissing,
    ChunkStore,
    FileManifest,
    ManifestError,
    check_file_name,
    chunk_hash,
    write_file,
)
from tests.overlay.common import SETTINGS

from .common import SMALL, pattern, write


def blake(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=32).digest()


@pytest.mark.parametrize("size", [0, 1, SMALL - 1, SMALL, SMALL + 1, 5 * SMALL + 3])
def test_file_round_trip_through_the_store(tmp_path: Path, size: int) -> None:
    data = pattern(size, seed=size)
    store = ChunkStore(tmp_path / "store", chunk_size=SMALL)
    m = FileManifest.of_file(write(tmp_path / "in", data), "run1/events.root", store=store,
                             chunk_size=SMALL)
    assert m.size == size and m.hash == blake(data)
    assert len(m.chunks) == -(-size // SMALL)
    assert m.chunks == tuple(chunk_hash(data[i:i + SMALL]) for i in range(0, size, SMALL))
    assert store.used_bytes == size and all(store.has(h) for h in m.chunks)
    assert FileManifest.from_wire_untrusted(m.to_wire(), chunk_size=SMALL) == m
    write_file(m, store, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == data
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


def test_an_empty_file_has_no_chunks(tmp_path: Path) -> None:
    m = FileManifest.of_file(write(tmp_path / "e", b""), "empty")
    assert m.chunks == () and m.size == 0 and m.hash == blake(b"")
    assert m.to_wire() == ["empty", 0, blake(b""), b""]


def test_the_grid_chunk_size_at_its_boundary(tmp_path: Path) -> None:
    data = pattern(CHUNK_SIZE + 1)
    m = FileManifest.of_file(write(tmp_path / "f", data), "f")
    assert m.chunks == (chunk_hash(data[:CHUNK_SIZE]), chunk_hash(data[CHUNK_SIZE:]))
    exact = FileManifest.of_file(write(tmp_path / "g", data[:CHUNK_SIZE]), "g")
    assert exact.chunks == (exact.hash,)
    # A manifest cut with other chunks does not pass as one of this grid.
    with pytest.raises(BadMessage, match="make 1 chunks of 8388608, the manifest lists 2"):
        FileManifest.from_wire_untrusted(m.to_wire(), chunk_size=2 * CHUNK_SIZE)
    assert FileManifest.from_wire_untrusted(m.to_wire()) == m


def test_without_a_store_nothing_is_stored(tmp_path: Path) -> None:
    path = write(tmp_path / "f", pattern(3 * SMALL))
    store = ChunkStore(tmp_path / "store", chunk_size=SMALL)
    bare = FileManifest.of_file(path, "f", chunk_size=SMALL)
    assert store.used_bytes == 0
    assert FileManifest.of_file(path, "f", store=store, chunk_size=SMALL) == bare


def test_write_file_refuses_a_manifest_its_chunks_do_not_make(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path / "store", chunk_size=SMALL)
    m = FileManifest.of_file(write(tmp_path / "f", pattern(2 * SMALL)), "f", store=store,
                             chunk_size=SMALL)
    lying = FileManifest(m.name, m.size, blake(b"something else"), m.chunks, SMALL)
    with pytest.raises(ManifestError, match="do not make"):
        write_file(lying, store, tmp_path / "out")
    store.delete(m.chunks[1])
    with pytest.raises(ChunkMissing):
        write_file(m, store, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "store"]


@pytest.mark.parametrize("name", [
    "a", "run1/events.root", "with space.txt", "ünïcode/файл", "a/b/c/d", "..hidden", "x" * 255,
    "/".join(["y" * 200] * 5), "back\\slash",
])
def test_good_file_names(name: str) -> None:
    assert check_file_name(name) == name


@pytest.mark.parametrize("name, why", [
    ("", "empty"),
    ("/etc/passwd", "absolute"),
    ("../x", r"'\.\.'"),
    ("a/../../x", r"'\.\.'"),
    ("a/./b", "component"),
    ("a//b", "empty"),
    ("a/", "empty"),
    ("a\x00b", "NUL"),
    ("tab\there", "unprintable"),
    ("x" * 256, "longer than 255"),
    ("/".join(["y" * 250] * 5), "longer than 1024"),
    (7, "string"),
])
def test_bad_file_names_say_why(name: Any, why: str) -> None:
    with pytest.raises(ManifestError, match=why):
        check_file_name(name)


@pytest.mark.parametrize("wire, why", [
    (["f", 1, b"h" * 32, b"c" * 32], None),
    (["f", 1, b"h" * 32], "list"),
    ({"name": "f"}, "list"),
    (["f", 2, b"h" * 32, b"c" * 64], "make 1 chunks"),
    (["f", 0, b"h" * 32, b"c" * 32], "make 0 chunks"),
    (["f", -1, b"h" * 32, b""], "size"),
    (["f", True, b"h" * 32, b"c" * 32], "size"),
    (["f", 1.0, b"h" * 32, b"c" * 32], "size"),
    (["f", 1, b"h" * 31, b"c" * 32], "file hash"),
    (["f", 1, b"h" * 32, b"c" * 31], "multiple of 32"),
    (["f", 1, b"h" * 32, [b"c" * 32]], "must be bytes"),
    (["../f", 1, b"h" * 32, b"c" * 32], "component"),
])
def test_wire_manifests_are_checked(wire: list[Any], why: str | None) -> None:
    if why is None:
        assert FileManifest.from_wire_untrusted(wire, chunk_size=SMALL).to_wire() == wire
    else:
        with pytest.raises(BadMessage, match=why):
            FileManifest.from_wire_untrusted(wire, chunk_size=SMALL)


_leaf = st.one_of(st.none(), st.booleans(), st.integers(-3, 2**64 - 1),
                  st.binary(max_size=70), st.text(max_size=8), st.floats(allow_nan=True))
junk = st.recursive(_leaf, lambda x: st.lists(x, max_size=5), max_leaves=12)


def _returns_or_bad_message(wire: Any) -> None:
    try:
        m = FileManifest.from_wire_untrusted(wire, chunk_size=SMALL)
    except BadMessage:
        return
    assert m.to_wire() == wire


@SETTINGS
@given(wire=junk)
def test_from_wire_on_any_value(wire: Any) -> None:
    _returns_or_bad_message(wire)


@SETTINGS
@given(i=st.integers(0, 3), value=junk)
def test_from_wire_with_one_field_replaced(i: int, value: Any) -> None:
    wire: list[Any] = ["dir/f", SMALL + 1, b"h" * 32, b"a" * 32 + b"b" * 32]
    _returns_or_bad_message(wire)
    wire[i] = value
    _returns_or_bad_message(wire)


def test_write_file_unverified_copies_in_the_kernel_the_same_bytes(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path / "store", chunk_size=SMALL)
    data = pattern(3 * SMALL + 7)
    m = FileManifest.of_file(write(tmp_path / "f", data), "f", store=store, chunk_size=SMALL)
    write_file(m, store, tmp_path / "out", verify=False)
    assert (tmp_path / "out").read_bytes() == data
    store.delete(m.chunks[2])
    with pytest.raises(ChunkMissing):
        write_file(m, store, tmp_path / "again", verify=False)
    assert not (tmp_path / "again").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
