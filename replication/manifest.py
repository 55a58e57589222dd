"""File manifests: what a file of a dataset is made of.

A :class:`FileManifest` names a file inside its dataset (a relative path),
gives its size, the BLAKE2b-256 hash of its whole content and the hashes of
its chunks in order.  The chunk count follows from the size: ``ceil(size /
chunk_size)``, so a 0-byte file has no chunks.  The chunk size is one per
grid (``CHUNK_SIZE``) and is not on the wire; tests pass a smaller one.

On the wire a manifest is ``[name, size, hash, chunk hashes]`` where the
chunk hashes are one byte string of ``32 * n`` bytes (half the size of a
list of 32-byte strings, and no list-length cap on how big a file may be).

File names: 1-1024 bytes of UTF-8, ``/``-separated components of 1-255
bytes, no empty, ``.`` or ``..`` component, no leading ``/``, no NUL or
other unprintable character.  Such a name can be joined under any directory
and stays inside it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overlay import BadMessage, expect

from .chunks import CHUNK_SIZE, HASH_SIZE, ChunkMissing, ChunkStore, chunk_hash, read_chunks

MAX_NAME_BYTES = 1024
MAX_PART_BYTES = 255
MAX_SIZE = 2**63 - 1


class ManifestError(ValueError):
    """A manifest (or a file name) that cannot be; the message says why in one line."""


def check_file_name(name: object) -> str:
    """A file name inside a dataset, checked; ManifestError says what is wrong."""
    if not isinstance(name, str):
        raise ManifestError(f"a file name is a string, got {type(name).__name__}")
    if not name:
        raise ManifestError("a file name must not be empty")
    if not name.isprintable():
        raise ManifestError(f"file name {name[:80]!r} holds NUL or other unprintable characters")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise ManifestError(f"file name {name[:40]!r}... is longer than {MAX_NAME_BYTES} bytes")
    if name.startswith("/"):
        raise ManifestError(f"file name {name[:80]!r} is absolute; names are relative "
                            "to the dataset")
    for part in name.split("/"):
        if part in ("", ".", ".."):
            raise ManifestError(f"file name {name[:80]!r} has an empty, '.' or '..' component")
        if len(part.encode()) > MAX_PART_BYTES:
            raise ManifestError(f"file name {name[:80]!r} has a component longer than "
                                f"{MAX_PART_BYTES} bytes")
    return name


def chunk_count(size: int, chunk_size: int = CHUNK_SIZE) -> int:
    """How many chunks a file of ``size`` bytes has."""
    return -(-size // chunk_size)


@dataclass(frozen=True)
class FileManifest:
    """One file of a dataset.  Every instance is checked (ManifestError if not sound)."""

    name: str
    size: int
    hash: bytes
    chunks: tuple[bytes, ...]
    chunk_size: int = CHUNK_SIZE  # the grid's, not on the wire

    def __post_init__(self) -> None:
        check_file_name(self.name)
        if type(self.size) is not int or not 0 <= self.size <= MAX_SIZE:
            raise ManifestError(f"file {self.name!r}: size must be an integer from 0 "
                                f"to 2**63-1, got {self.size!r}"[:200])
        if not (isinstance(self.hash, bytes) and len(self.hash) == HASH_SIZE):
            raise ManifestError(f"file {self.name!r}: the file hash must be {HASH_SIZE} bytes")
        if not all(isinstance(c, bytes) and len(c) == HASH_SIZE for c in self.chunks):
            raise ManifestError(f"file {self.name!r}: each chunk hash must be "
                                f"{HASH_SIZE} bytes")
        want = chunk_count(self.size, self.chunk_size)
        if len(self.chunks) != want:
            raise ManifestError(f"file {self.name!r}: {self.size} bytes make {want} chunks "
                                f"of {self.chunk_size}, the manifest lists {len(self.chunks)}")

    def to_wire(self) -> list[Any]:
        return [self.name, self.size, self.hash, b"".join(self.chunks)]

    @classmethod
    def from_wire_untrusted(cls, obj: Any, *, chunk_size: int = CHUNK_SIZE) -> FileManifest:
        """A checked manifest from decoded msgpack, or BadMessage saying what is wrong."""
        expect(isinstance(obj, list) and len(obj) == 4,
               "a file manifest is a list [name, size, hash, chunks]")
        name, size, digest, blob = obj
        expect(isinstance(blob, bytes) and len(blob) % HASH_SIZE == 0,
               f"file manifest chunks must be bytes, a multiple of {HASH_SIZE} long")
        chunks = tuple(blob[i:i + HASH_SIZE] for i in range(0, len(blob), HASH_SIZE))
        try:
            return cls(name, size, digest, chunks, chunk_size)
        except ManifestError as exc:
            raise BadMessage(f"bad file manifest: {exc}") from None

    @classmethod
    def of_file(cls, path: str | os.PathLike[str], name: str, *,
                store: ChunkStore | None = None, chunk_size: int = CHUNK_SIZE) -> FileManifest:
        """The manifest of a local file, read once as a stream.

        With ``store``, each chunk is stored as it is read (QuotaExceeded
        may stop it half way; the chunks stored so far stay, as any chunk may).
        """
        check_file_name(name)
        whole = hashlib.blake2b(digest_size=HASH_SIZE)
        chunks = []
        size = 0
        for data in read_chunks(path, chunk_size):
            whole.update(data)
            size += len(data)
            chunks.append(store.put(data) if store is not None else chunk_hash(data))
        return cls(name, size, whole.digest(), tuple(chunks), chunk_size)


def write_file(manifest: FileManifest, store: ChunkStore,
               dest: str | os.PathLike[str], *, verify: bool = True) -> None:
    """Rebuild a file from the store at ``dest``, atomically, checking the whole hash.

    ChunkMissing or ChunkCorrupt come from the store; ManifestError if the
    chunks do not make the file the manifest says (its signer's fault).
    Nothing is left at ``dest`` unless the file checked out.

    ``verify=False`` is for chunks that were checked a moment ago (a fetch's
    ``put_verified``): the kernel copies them from the chunk files
    (``copy_file_range``), with no re-hash of each chunk nor of the file.
    """
    dest = Path(dest)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=dest.parent)
    try:
        whole = hashlib.blake2b(digest_size=HASH_SIZE)
        with os.fdopen(fd, "wb") as f:
            for h in manifest.chunks:
                if verify:
                    data = store.get(h)
                    whole.update(data)
                    f.write(data)
                else:
                    _copy_in(store.path(h), f)
            size = f.tell()
            os.fchmod(f.fileno(), 0o644)
            f.flush()
            os.fsync(f.fileno())
        if size != manifest.size or (verify and whole.digest() != manifest.hash):
            raise ManifestError(f"file {manifest.name!r}: its chunks do not make the "
                                f"file the manifest describes")
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _copy_in(src: Path, f: Any) -> None:
    """Append the file ``src`` to the open file ``f`` inside the kernel."""
    f.flush()
    try:
        with open(src, "rb") as s:
            left = os.fstat(s.fileno()).st_size
            while left:
                n = os.copy_file_range(s.fileno(), f.fileno(), left)
                if n == 0:
                    break
                left -= n
    except FileNotFoundError:
        raise ChunkMissing(f"chunk {src.name[:16]} is not in the store") from None
    f.seek(0, os.SEEK_END)
