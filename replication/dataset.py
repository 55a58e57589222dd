"""Dataset names and signed dataset records.

Names, as in Rucio: ``scope:name``.  The scope is 1-64 characters, the name
1-255, both of ``[A-Za-z0-9_.-]`` and starting with a letter, digit or
``_`` (so that no name looks like a command-line option, ``.`` or ``..``).
Neither holds ``/`` or ``:``.  A user who types just ``name`` means
``<their user name>:name``.

Addressing a file for ``get``: ``DATASET/FILE`` splits at the *first*
``/``.  Dataset names hold no ``/``, so everything before it is the dataset
(``scope:name`` or ``name``) and everything after it is the file's path
inside the dataset, which may hold more ``/``.  ``DATASET`` alone names the
whole dataset; ``DATASET/`` (nothing after the ``/``) is refused.

Who may write a scope: the user whose certificate name is the scope, or a
grid admin (a user certificate with the ``admin`` role), who makes shared
scopes such as ``mc23``.  A user whose name is not a valid scope writes
only where an admin lets them (nowhere, today).

A :class:`DatasetRecord` is the dataset's catalog entry: name, owner
(the user certificate), creation time, replication policy, files, whether
it is closed, and a version.  It is signed by the owner's user key under
the domain tag ``gridnode/dataset/v1`` together with the owner's
certificate, as a job is (``steering/job.py``).
``DatasetRecord.from_bytes_untrusted`` is the one door for records from
the wire: it returns a checked record or raises ``BadMessage``.  A record
is at most ``MAX_RECORD`` (768 KiB: it crosses the secure channel in one
frame of at most 1 MiB, with room for the call around it) signed bytes and lists at most
``MAX_FILES`` (16384) files.

Versions: each change by the owner signs a new record with the next
version.  Files are only ever added, in order, so a replica of an older
version is part of a replica of a newer one; a closed dataset gets no more
files (its policy may still change) and stays closed.
:func:`replace_refusal` holds that rule; the catalog keeps, of two records
of one dataset, the one that may replace the other.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from overlay import (
    BadMessage,
    Certificate,
    GridInfo,
    KeyPair,
    check_certificate,
    expect,
    open_envelope_untrusted,
    seal,
    verify_body,
)

from .chunks import CHUNK_SIZE
from .manifest import FileManifest, ManifestError, check_file_name

DATASET_TAG = b"gridnode/dataset/v1"
VERSION = 1
MAX_RECORD = 768 * 1024
MAX_FILES = 16384
MAX_SCOPE = 64
MAX_NAME = 255
MAX_REPLICAS = 64
ADMIN_ROLE = "admin"

_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")


class DatasetNameError(ValueError):
    """A dataset name or file address that cannot be; one line says why."""


class DatasetError(ValueError):
    """A dataset record or change that cannot be made; one line says why."""


# -- names ---------------------------------------------------------------------


def _check_part(text: str, what: str, limit: int) -> None:
    if not text:
        raise DatasetNameError(f"the {what} is empty")
    if len(text) > limit:
        raise DatasetNameError(f"the {what} {text[:40]!r}... is longer than {limit} characters")
    if not _PART.match(text):
        raise DatasetNameError(f"the {what} {text[:80]!r} may hold only letters, digits, "
                               f"'_', '.' and '-', and starts with a letter, digit or '_'")


@dataclass(frozen=True, order=True)
class DatasetName:
    """``scope:name``; every instance is checked (DatasetNameError)."""

    scope: str
    name: str

    def __post_init__(self) -> None:
        if not (isinstance(self.scope, str) and isinstance(self.name, str)):
            raise DatasetNameError("scope and name are strings")
        _check_part(self.scope, "scope", MAX_SCOPE)
        _check_part(self.name, "dataset name", MAX_NAME)

    def __str__(self) -> str:
        return f"{self.scope}:{self.name}"


def parse_dataset_name(text: str, default_scope: str) -> DatasetName:
    """``scope:name`` or ``name`` (in ``default_scope``, the user's name) as typed."""
    text = text.strip()
    if ":" in text:
        scope, _, name = text.partition(":")
        return DatasetName(scope, name)
    try:
        _check_part(default_scope, "scope", MAX_SCOPE)
    except DatasetNameError:
        raise DatasetNameError(f"your user name {default_scope!r} cannot be a scope; "
                               f"type SCOPE:NAME") from None
    return DatasetName(default_scope, text)


def parse_file_address(text: str, default_scope: str) -> tuple[DatasetName, str | None]:
    """``DATASET`` or ``DATASET/FILE``: split at the first ``/`` (see the module doc)."""
    text = text.strip()
    dataset, slash, file = text.partition("/")
    name = parse_dataset_name(dataset, default_scope)
    if not slash:
        return name, None
    if not file:
        raise DatasetNameError(f"nothing after the '/' in {text!r}: name a file or drop the '/'")
    try:
        return name, check_file_name(file)
    except ManifestError as exc:
        raise DatasetNameError(str(exc)) from None


def may_write_scope(cert: Certificate, scope: str) -> bool:
    """A user writes their own scope; a grid admin writes any."""
    return scope == cert.name or ADMIN_ROLE in cert.roles


# -- policy ----------------------------------------------------------------------


@dataclass(frozen=True)
class ReplicationPolicy:
    """How many replicas the grid keeps: never fewer than min, never more than max."""

    min_replicas: int = 2
    max_replicas: int = 5

    def __post_init__(self) -> None:
        lo, hi = self.min_replicas, self.max_replicas
        if not (type(lo) is int and type(hi) is int and 1 <= lo <= hi <= MAX_REPLICAS):
            raise DatasetError(f"replicas must satisfy 1 <= min <= max <= {MAX_REPLICAS}, "
                               f"got min={lo!r} max={hi!r}"[:200])

    def to_wire(self) -> list[int]:
        return [self.min_replicas, self.max_replicas]

    @classmethod
    def from_wire_untrusted(cls, obj: Any) -> ReplicationPolicy:
        expect(isinstance(obj, list) and len(obj) == 2, "a policy is [min, max]")
        try:
            return cls(obj[0], obj[1])
        except DatasetError as exc:
            raise BadMessage(f"bad replication policy: {exc}") from None


DEFAULT_POLICY = ReplicationPolicy()


# -- records -----------------------------------------------------------------------


def _check_files(files: tuple[FileManifest, ...]) -> None:
    if len(files) > MAX_FILES:
        raise DatasetError(f"a dataset holds at most {MAX_FILES} files, got {len(files)}")
    seen: set[str] = set()
    for f in files:
        if f.name in seen:
            raise DatasetError(f"file {f.name!r} is listed twice")
        seen.add(f.name)


@dataclass(frozen=True)
class DatasetRecord:
    """A dataset as its owner signed it.  Field order is the wire order."""

    name: DatasetName
    owner: Certificate
    created: float
    policy: ReplicationPolicy
    files: tuple[FileManifest, ...]
    closed: bool
    version: int
    raw: bytes = field(repr=False, compare=False)

    @property
    def owner_id(self) -> bytes:
        return self.owner.subject_id

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def file(self, name: str) -> FileManifest | None:
        return next((f for f in self.files if f.name == name), None)

    @classmethod
    def create(cls, key: KeyPair, cert: Certificate, name: DatasetName, *, created: float,
               policy: ReplicationPolicy = DEFAULT_POLICY,
               files: tuple[FileManifest, ...] = (), closed: bool = False,
               version: int = 1) -> DatasetRecord:
        """Sign a record (the owner's side); DatasetError says why it cannot be."""
        if key.public_key != cert.subject_key:
            raise DatasetError("the key is not the one the certificate is for")
        if cert.kind != "user":
            raise DatasetError("datasets are signed with a user certificate, not a node's")
        if not may_write_scope(cert, name.scope):
            raise DatasetError(f"user {cert.name} may not write scope {name.scope!r}")
        if not (math.isfinite(created) and 0 <= created < 2**63):
            raise DatasetError(f"bad creation time {created!r}")
        if not (type(version) is int and 1 <= version < 2**63):
            raise DatasetError(f"version must be a positive integer, got {version!r}")
        files = tuple(files)
        _check_files(files)
        raw = seal(DATASET_TAG, [VERSION, cert.raw, name.scope, name.name, float(created),
                                 policy.to_wire(), [f.to_wire() for f in files], bool(closed),
                                 version], key.signing_key)
        if len(raw) > MAX_RECORD:
            raise DatasetError(f"the record would be {len(raw)} bytes, over the cap of "
                               f"{MAX_RECORD}: split the dataset")
        return cls(name, cert, float(created), policy, files, bool(closed), version, raw)

    @classmethod
    def from_bytes_untrusted(cls, raw: bytes, grid: GridInfo, *, now: float | None = None,
                             revoked: frozenset[bytes] = frozenset(), verify: bool = True,
                             chunk_size: int = CHUNK_SIZE) -> DatasetRecord:
        """Check the signature, the owner's certificate and every field; or BadMessage.

        ``now``, ``revoked`` and ``verify`` mean what they mean for
        ``SignedJob.from_bytes_untrusted``: with ``now`` the certificate must
        be valid now (a record being published), without it only signed by
        this grid (a stored record stays readable after the owner's
        certificate expires); ``verify=False`` only for records read back
        from our own state, checked on their way in.
        """
        fields_, body, sig = open_envelope_untrusted(DATASET_TAG, raw, max_size=MAX_RECORD,
                                                     max_items=MAX_FILES)
        expect(len(fields_) == 9 and type(fields_[0]) is int and fields_[0] == VERSION,
               "bad dataset envelope")
        _, cert_raw, scope, name, created, policy, files, closed, version = fields_
        expect(isinstance(cert_raw, bytes), "bad dataset owner certificate")
        cert = Certificate.from_bytes_untrusted(cert_raw)
        check_certificate(cert, grid, now if now is not None else cert.not_before,
                          revoked=revoked, kind="user")
        if verify:
            verify_body(cert.subject_key, body, sig)
        try:
            dname = DatasetName(scope, name)
        except DatasetNameError as exc:
            raise BadMessage(f"bad dataset name: {exc}") from None
        expect(may_write_scope(cert, dname.scope),
               f"user {cert.name} may not write scope {dname.scope!r}")
        expect(isinstance(created, float) and math.isfinite(created)
               and 0 <= created < 2**63, "bad dataset creation time")
        expect(isinstance(closed, bool), "bad dataset closed flag")
        expect(type(version) is int and 1 <= version < 2**63, "bad dataset version")
        expect(isinstance(files, list), "dataset files must be a list")
        manifests = tuple(FileManifest.from_wire_untrusted(f, chunk_size=chunk_size)
                          for f in files)
        try:
            _check_files(manifests)
        except DatasetError as exc:
            raise BadMessage(f"bad dataset files: {exc}") from None
        return cls(dname, cert, created, ReplicationPolicy.from_wire_untrusted(policy),
                   manifests, closed, version, raw)


# -- the rules of change ---------------------------------------------------------------


def replace_refusal(old: DatasetRecord, new: DatasetRecord) -> str | None:
    """Why ``new`` may not replace ``old`` in the catalog, or None when it may."""
    if new.name != old.name:
        return f"record of {new.name} does not replace one of {old.name}"
    if new.owner_id != old.owner_id:
        return f"{new.name} belongs to {old.owner.name}; {new.owner.name} signed the new record"
    if new.version <= old.version:
        return f"version {new.version} does not replace version {old.version}"
    if old.closed and not new.closed:
        return f"{old.name} is closed and stays closed"
    if new.files[:len(old.files)] != old.files:
        return "a new version may only add files, not change or remove them"
    if old.closed and len(new.files) != len(old.files):
        return f"{old.name} is closed: no files may be added"
    return None


def can_replace(old: DatasetRecord, new: DatasetRecord) -> bool:
    return replace_refusal(old, new) is None


def _next_version(record: DatasetRecord, key: KeyPair, cert: Certificate, *,
                  files: tuple[FileManifest, ...] | None = None,
                  policy: ReplicationPolicy | None = None,
                  closed: bool | None = None) -> DatasetRecord:
    if cert.subject_id != record.owner_id:
        raise DatasetError(f"dataset {record.name} belongs to {record.owner.name}, "
                           f"not to {cert.name}")
    return DatasetRecord.create(
        key, cert, record.name, created=record.created,
        policy=record.policy if policy is None else policy,
        files=record.files if files is None else files,
        closed=record.closed if closed is None else closed,
        version=record.version + 1)


def add_files(record: DatasetRecord, manifests: tuple[FileManifest, ...] | list[FileManifest],
              key: KeyPair, cert: Certificate) -> DatasetRecord:
    """The next version of ``record`` with ``manifests`` added; DatasetError says why not."""
    if record.closed:
        raise DatasetError(f"dataset {record.name} is closed (version {record.version}): "
                           f"no files can be added")
    if not manifests:
        raise DatasetError("no files to add")
    have = {f.name for f in record.files}
    for m in manifests:
        if m.name in have:
            raise DatasetError(f"file {m.name!r} is already in dataset {record.name}")
        have.add(m.name)
    return _next_version(record, key, cert, files=record.files + tuple(manifests))


def close_dataset(record: DatasetRecord, key: KeyPair, cert: Certificate) -> DatasetRecord:
    """The next version of ``record``, closed: no more files, ever."""
    if record.closed:
        raise DatasetError(f"dataset {record.name} is already closed")
    return _next_version(record, key, cert, closed=True)


def change_policy(record: DatasetRecord, policy: ReplicationPolicy, key: KeyPair,
                  cert: Certificate) -> DatasetRecord:
    """The next version of ``record`` with another replication policy (closed or not)."""
    if policy == record.policy:
        raise DatasetError(f"dataset {record.name} already has that policy")
    return _next_version(record, key, cert, policy=policy)
