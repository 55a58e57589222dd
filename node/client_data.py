"""Datasets in the Python client: put, get, list, ls, replicas.

``put`` cuts the files into chunks here, asks the node which chunks it
lacks, uploads those in pieces (an interrupted upload resumes where the
node's copy stopped), then signs the dataset record with the user's key and
sends it: the call returns once the record is on a majority of the
dataset's catalog nodes and the node holds the replica.  ``get`` streams
each file from the node (which fetches what it lacks from the holders),
writes it next to its destination, checks its hash and renames it into
place; a file already there with the right hash is not fetched again.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from overlay import BadMessage, RpcError
from replication import (
    CHUNK_SIZE,
    DatasetName,
    DatasetRecord,
    FileManifest,
    ReplicationPolicy,
    add_files,
    check_file_name,
    close_dataset,
    parse_dataset_name,
)

from .errors import UserError
from .outputs import OutputView, task_of

if TYPE_CHECKING:
    from overlay import RpcClient

    from .client import Identity

PIECE = 512 * 1024
# (what, done bytes, total bytes): for a progress bar.
Progress = Callable[[str, int, int], None]


def files_to_put(paths: Iterable[Path]) -> list[tuple[Path, str]]:
    """(path, name in the dataset) of each file: a FILE by its own name, the files of
    a DIR by their path inside it. Raises UserError for a missing path or a clash."""
    out: dict[str, Path] = {}
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file())
            pairs = [(p, p.relative_to(path).as_posix()) for p in found]
        elif path.is_file():
            pairs = [(path, path.name)]
        else:
            raise UserError(f"{path}: no such file or directory")
        for p, name in pairs:
            try:
                check_file_name(name)
            except ValueError as exc:
                raise UserError(f"{p}: {exc}") from None
            if name in out:
                raise UserError(f"{p} and {out[name]} would both be file {name!r}")
            out[name] = p
    if not out:
        raise UserError("nothing to put: no files")
    return [(p, n) for n, p in out.items()]


class DataClient:
    """The dataset calls of :class:`node.client.Client` (mixed into it)."""

    if TYPE_CHECKING:
        identity: Identity
        rpc: RpcClient

        async def call(self, method: str, args: Any = None, *,
                       timeout: float | None = None) -> Any: ...  # noqa: ASYNC109

    def _user(self) -> tuple[Any, Any]:
        creds = self.identity.creds
        if creds.cert.kind != "user":
            raise UserError("putting data needs a user certificate; this client speaks as a "
                            "node (run 'gridnode user init' and have it admitted)")
        return creds.key, creds.cert

    def dataset_name(self, text: str) -> DatasetName:
        try:
            return parse_dataset_name(text, self.identity.creds.cert.name)
        except ValueError as exc:
            raise UserError(str(exc)) from None

    def _dataset(self, raw: Any) -> DatasetRecord:
        try:
            return DatasetRecord.from_bytes_untrusted(raw, self.identity.creds.grid)
        except BadMessage as exc:
            raise RpcError("bad_reply", f"the node sent a bad dataset record: {exc}") from None

    async def dataset(self, name: str | DatasetName) -> DatasetRecord | OutputView:
        """A dataset's signed record, or the view of a task's outputs (USER:TASK.out)."""
        n = name if isinstance(name, DatasetName) else self.dataset_name(name)
        answer = await self.call("dataset.get", {"name": str(n)}, timeout=60)
        if isinstance(answer, dict):
            try:
                return OutputView.from_wire_untrusted(answer, n)
            except BadMessage as exc:
                raise RpcError("bad_reply", f"the node sent a bad output view: {exc}") from None
        return self._dataset(answer)

    async def datasets(self, *, scope: str | None = None,
                       limit: int = 1000) -> list[DatasetRecord]:
        query: dict[str, Any] = {"limit": limit}
        if scope is not None:
            query["scope"] = scope
        answer = await self.call("dataset.list", query, timeout=60)
        return [self._dataset(r) for r in answer["records"]]

    async def replicas(self, name: str) -> dict[str, Any]:
        n = self.dataset_name(name)
        return dict(await self.call("dataset.replicas", {"name": str(n)}, timeout=60))

    async def explain_replicas(self, name: str) -> dict[str, Any]:
        """The custodian's view of a dataset: trend, target, holders, last decisions."""
        n = self.dataset_name(name)
        return dict(await self.call("replica.explain", {"name": str(n)}, timeout=60))

    async def put(self, name: str, paths: Iterable[Path], *, close: bool = False,
                  policy: ReplicationPolicy | None = None,
                  progress: Progress | None = None) -> DatasetRecord:
        """Upload files into a dataset (new, or a new version of an open one)."""
        key, cert = self._user()
        n = self.dataset_name(name)
        pairs = files_to_put(paths)
        if task_of(n) is not None:
            raise UserError(f"{n} is the outputs of a task: its jobs' results fill it")
        try:
            found = await self.dataset(n)
        except RpcError as exc:
            if exc.code != "not_found":
                raise
            found = None
        old = found if isinstance(found, DatasetRecord) else None
        if old is not None and old.closed:
            raise UserError(f"dataset {n} is closed: no files can be added")
        known = {f.name for f in old.files} if old is not None else set()
        clash = [name for _, name in pairs if name in known]
        if clash:
            raise UserError(f"dataset {n} already has a file {clash[0]!r} (a dataset's files "
                            f"never change; put into a new dataset)")
        manifests = []
        for path, file_name in pairs:
            manifests.append(await trio.to_thread.run_sync(_manifest, path, file_name))
        total = sum(m.size for m in manifests)
        done = 0
        for (path, _), m in zip(pairs, manifests, strict=True):
            done = await self._upload_file(path, m, done, total, progress)
        if old is None:
            rec = DatasetRecord.create(key, cert, n, created=time.time(),
                                       policy=policy or ReplicationPolicy(),
                                       files=tuple(manifests), closed=close)
        else:
            rec = add_files(old, manifests, key, cert) if manifests else old
            if close:
                rec = close_dataset(rec, key, cert)
        await self.call("dataset.put", {"record": rec.raw}, timeout=600)
        return rec

    async def _upload_file(self, path: Path, m: FileManifest, done: int, total: int,
                           progress: Progress | None) -> int:
        have: list[bool] = []
        for i in range(0, len(m.chunks), 4096):
            have += await self.call("chunk.have", {"hashes": list(m.chunks[i:i + 4096])},
                                    timeout=60)
        for i, (h, there) in enumerate(zip(m.chunks, have, strict=True)):
            offset = i * CHUNK_SIZE
            size = min(CHUNK_SIZE, m.size - offset)
            if not there:
                data = await trio.to_thread.run_sync(_read_at, path, offset, size)
                at = 0
                while at < size:
                    answer = await self.call("data.upload", {
                        "hash": h, "size": size, "offset": at, "data": data[at:at + PIECE]},
                        timeout=120)
                    if answer.get("stored"):
                        break
                    at = int(answer["offset"])
            done += size
            if progress is not None:
                progress(m.name, done, total)
        return done

    async def get(self, address: str, out: Path, *,
                  progress: Progress | None = None) -> list[Path]:
        """Fetch ``DATASET`` (every file) or ``DATASET/FILE`` into the directory ``out``."""
        name_text, _, file_name = address.partition("/")
        rec = await self.dataset(name_text)
        if file_name:
            m = rec.file(file_name)
            if m is None:
                raise UserError(f"dataset {rec.name} has no file {file_name!r}")
            wanted = [m]
        else:
            wanted = list(rec.files)
        total, done, written = sum(m.size for m in wanted), 0, []
        for m in wanted:
            dest = out / m.name
            if not await trio.to_thread.run_sync(_has_file, dest, m):
                await self._get_file(rec, m, dest, done, total, progress)
            done += m.size
            if progress is not None:
                progress(m.name, done, total)
            written.append(dest)
        return written

    async def _get_file(self, rec: DatasetRecord | OutputView, m: FileManifest, dest: Path,
                        done: int, total: int, progress: Progress | None) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.part")
        digest = hashlib.blake2b(digest_size=32)
        size = 0
        with open(tmp, "wb") as f:  # noqa: ASYNC230 - each write goes to a thread
            async with self.rpc.stream("dataset.read", {"name": str(rec.name),
                                                        "file": m.name}) as items:
                async for piece in items:
                    if not isinstance(piece, bytes) or size + len(piece) > m.size:
                        raise RpcError("bad_reply", f"file {m.name}: the node sent more or "
                                       f"other than its {m.size} bytes")
                    digest.update(piece)
                    await trio.to_thread.run_sync(f.write, piece)
                    size += len(piece)
                    if progress is not None:
                        progress(m.name, done + size, total)
            f.flush()
            os.fsync(f.fileno())
        if size != m.size or digest.digest() != m.hash:
            tmp.unlink(missing_ok=True)
            raise RpcError("bad_reply", f"file {m.name}: what arrived does not match its hash")
        os.replace(tmp, dest)


def _manifest(path: Path, name: str) -> FileManifest:
    try:
        return FileManifest.of_file(path, name)
    except OSError as exc:
        raise UserError(f"{path}: {exc.strerror or exc}") from None


def _read_at(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise UserError(f"{path} changed while it was put")
    return data


def _has_file(dest: Path, m: FileManifest) -> bool:
    """Is ``dest`` already this file (same size and hash)?"""
    try:
        if dest.stat().st_size != m.size:
            return False
        digest = hashlib.blake2b(digest_size=32)
        with open(dest, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        return digest.digest() == m.hash
    except OSError:
        return False
