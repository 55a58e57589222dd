"""Job specs and signed jobs.

A job is what a user asks the grid to run: a :class:`JobSpec`, signed by
the user's key under the domain tag ``gridnode/job/v1`` together with the
user's certificate, the submit time and a nonce.  The job id is the
BLAKE2b-160 hash of those signed bytes, so an id names exactly one signed
job and nobody but its user can make another job with that id.

``JobSpec.from_mapping`` is the one door for specs typed by people (the
CLI, task files): it names the field and the reason for every refusal.
``SignedJob.from_bytes_untrusted`` is the one door for jobs from the wire:
it returns a checked job or raises ``BadMessage``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, fields
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

JOB_TAG = b"gridnode/job/v1"
VERSION = 1
ID_SIZE = 20

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_HEX_ID = re.compile(r"[0-9a-f]{40}\Z")


class SpecError(ValueError):
    """A spec field that is missing, unknown or out of range; says which and why."""

    def __init__(self, field_name: str, why: str) -> None:
        super().__init__(f"field {field_name!r}: {why}")
        self.field = field_name


def _int(name: str, lo: int, hi: int) -> Any:
    def check(v: Any) -> int:
        if type(v) is not int or not lo <= v <= hi:
            raise SpecError(name, f"must be an integer from {lo} to {hi}, got {v!r}")
        return v
    return check


def _strings(name: str, max_items: int, max_len: int, *, pattern: re.Pattern[str] | None = None,
             nonempty: bool = False) -> Any:
    def check(v: Any) -> tuple[str, ...]:
        if not isinstance(v, list | tuple):
            raise SpecError(name, f"must be a list of strings, got {v!r}")
        if len(v) > max_items or (nonempty and not v):
            raise SpecError(name, f"must hold {'1' if nonempty else '0'} to {max_items} items, "
                            f"got {len(v)}")
        for s in v:
            if not isinstance(s, str) or not 0 < len(s) <= max_len or "\x00" in s:
                raise SpecError(name, f"each item must be a string of 1-{max_len} characters "
                                f"without NUL, got {s!r}"[:300])
            if pattern is not None and not pattern.match(s):
                raise SpecError(name, f"{s!r} is not a valid entry")
        return tuple(v)
    return check


def _env(v: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(v, dict | list | tuple):
        raise SpecError("env", f"must be a table of NAME = value, got {v!r}")
    items = list(v.items()) if isinstance(v, dict) else list(v)
    if len(items) > 256:
        raise SpecError("env", f"at most 256 variables, got {len(items)}")
    out = []
    for item in items:
        if not (isinstance(item, list | tuple) and len(item) == 2):
            raise SpecError("env", f"bad entry {item!r}")
        k, val = item
        if not (isinstance(k, str) and _ENV_NAME.match(k) and len(k) <= 256):
            raise SpecError("env", f"{k!r} is not a variable name")
        if k.startswith("GRIDNODE_"):
            raise SpecError("env", f"{k} is set by the grid, not by the job")
        if not (isinstance(val, str) and len(val) <= 4096 and "\x00" not in val):
            raise SpecError("env", f"value of {k} must be a string of at most 4096 characters")
        out.append((k, val))
    if len({k for k, _ in out}) != len(out):
        raise SpecError("env", "a variable is set twice")
    return tuple(sorted(out))


def _name(v: Any) -> str:
    if not (isinstance(v, str) and len(v) <= 128 and (v == "" or v.isprintable())):
        raise SpecError("name", f"must be at most 128 printable characters, got {v!r}"[:200])
    return v


def _task_id(v: Any) -> str:
    if not (isinstance(v, str) and (v == "" or _HEX_ID.match(v))):
        raise SpecError("task_id", f"must be empty or 40 hex digits, got {v!r}"[:200])
    return v


@dataclass(frozen=True)
class JobSpec:
    """What to run and what it needs.  Field order is the wire order."""

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    cores: int = 1
    memory_mb: int = 512
    disk_mb: int = 1024
    walltime_s: int = 3600
    priority: int = 0
    max_attempts: int = 3
    sites: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    name: str = ""
    task_id: str = ""
    index: int = 0

    @classmethod
    def from_mapping(cls, data: Any) -> JobSpec:
        """Check a spec typed by a person (or decoded from the wire); SpecError says why."""
        if not isinstance(data, dict):
            raise SpecError("job", f"must be a table, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                raise SpecError(str(key), f"unknown field (known: {', '.join(sorted(known))})")
        if "argv" not in data:
            raise SpecError("argv", "is required: the command and its arguments")
        values = {k: _CHECKS[k](v) for k, v in data.items()}
        argv = values["argv"]
        if sum(len(a) for a in argv) > 65536:
            raise SpecError("argv", "is longer than 64 KiB in total")
        return cls(**values)

    def to_mapping(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    def to_wire(self) -> list[Any]:
        return [_plain(getattr(self, f.name)) for f in fields(self)]

    @classmethod
    def from_wire_untrusted(cls, data: Any) -> JobSpec:
        names = [f.name for f in fields(cls)]
        expect(isinstance(data, list) and len(data) == len(names), "bad job spec shape")
        try:
            return cls.from_mapping(dict(zip(names, data, strict=True)))
        except SpecError as exc:
            raise BadMessage(f"bad job spec: {exc}") from None


def _plain(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    return v


_CHECKS: dict[str, Any] = {
    "argv": _strings("argv", 1024, 4096, nonempty=True),
    "env": _env,
    "inputs": _strings("inputs", 64, 256),
    "outputs": _strings("outputs", 64, 256),
    "cores": _int("cores", 1, 1024),
    "memory_mb": _int("memory_mb", 1, 4 * 1024 * 1024),
    "disk_mb": _int("disk_mb", 0, 16 * 1024 * 1024),
    "walltime_s": _int("walltime_s", 1, 30 * 86400),
    "priority": _int("priority", -1000, 1000),
    "max_attempts": _int("max_attempts", 1, 100),
    "sites": _strings("sites", 32, 128),
    "labels": _strings("labels", 32, 128),
    "name": _name,
    "task_id": _task_id,
    "index": _int("index", 0, 10_000_000),
}


@dataclass(frozen=True)
class SignedJob:
    """A spec signed by its user: the unit the queue stores and workers run."""

    job_id: bytes
    spec: JobSpec
    user: Certificate
    submitted: int
    raw: bytes = field(repr=False, compare=False)

    @property
    def user_id(self) -> bytes:
        return self.user.subject_id

    @property
    def hex_id(self) -> str:
        return self.job_id.hex()

    @classmethod
    def create(cls, key: KeyPair, cert: Certificate, spec: JobSpec, submitted: int,
               nonce: bytes) -> SignedJob:
        raw = seal(JOB_TAG, [VERSION, cert.raw, spec.to_wire(), submitted, nonce],
                   key.signing_key)
        return cls(job_id_of(raw), spec, cert, submitted, raw)

    @classmethod
    def from_bytes_untrusted(cls, raw: bytes, grid: GridInfo, *, now: float | None = None,
                             revoked: frozenset[bytes] = frozenset(),
                             verify: bool = True) -> SignedJob:
        """Check the signature, the user's certificate and the spec; or BadMessage.

        With ``now`` the certificate must be valid now (at submission);
        without, only that the grid signed it (a stored job stays readable
        after its user's certificate expires).  ``verify=False`` skips the
        job's own signature: only for jobs read back from our own state file,
        which were checked on their way in.
        """
        fields_, body, sig = open_envelope_untrusted(JOB_TAG, raw)
        expect(len(fields_) == 5 and fields_[0] == VERSION, "bad job envelope")
        _, cert_raw, spec_wire, submitted, nonce = fields_
        expect(isinstance(cert_raw, bytes), "bad job certificate")
        cert = _cert_of(cert_raw)
        check_certificate(cert, grid, now if now is not None else cert.not_before,
                          revoked=revoked, kind="user")
        if verify:
            verify_body(cert.subject_key, body, sig)
        expect(type(submitted) is int and 0 <= submitted < 2**63, "bad submit time")
        expect(isinstance(nonce, bytes) and len(nonce) <= 32, "bad nonce")
        return cls(job_id_of(raw), JobSpec.from_wire_untrusted(spec_wire), cert, submitted, raw)


_CERTS: dict[bytes, Certificate] = {}


def _cert_of(raw: bytes) -> Certificate:
    """Decode a certificate once: a queue holds many jobs of few users."""
    cert = _CERTS.get(raw)
    if cert is None:
        if len(_CERTS) >= 4096:
            _CERTS.clear()
        cert = _CERTS[raw] = Certificate.from_bytes_untrusted(raw)
    return cert


def job_id_of(raw: bytes) -> bytes:
    return hashlib.blake2b(raw, digest_size=ID_SIZE).digest()


def parse_job_id(text: str) -> bytes:
    """A job or task id as typed: 40 hex digits; ValueError otherwise."""
    t = text.strip().lower()
    if not _HEX_ID.match(t):
        raise ValueError(f"{text!r} is not a job id (40 hex digits)")
    return bytes.fromhex(t)
