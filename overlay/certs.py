"""Grid info, certificates, join requests and revocation lists.

All four are signed envelopes (see ``_wire``) with their own domain tag:

==================  ==========================  =====================
thing               signed by                   fields after the tag
==================  ==========================  =====================
grid info           the authority (self)        version, name, authority key, created, bootstrap
certificate         the authority               version, kind, grid id, subject key, name,
                                                roles, not_before, not_after, issuer key
join request        the requesting key (self)   version, grid id, subject key, name, roles,
                                                created, kind
revocation list     the authority               version, grid id, serial, issued_at, revoked ids
==================  ==========================  =====================

The grid id is ``node_id_of(authority public key)``: a grid *is* its
authority key.  Decoders are total: they return a checked object or raise
``BadMessage``; :func:`check_certificate` then judges a decoded certificate
against a grid, a clock and a revocation list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from ._errors import BadMessage
from ._wire import expect, open_envelope_untrusted, seal, verify_body
from .identity import KeyPair, node_id_of

GRID_INFO_TAG = b"gridnode/grid-info/v1"
CERT_TAG = b"gridnode/cert/v1"
JOIN_REQUEST_TAG = b"gridnode/join-request/v1"
REVOCATIONS_TAG = b"gridnode/revocations/v1"

VERSION = 1
ROLES = ("queue", "storage", "catalog", "compute")
# A user's roles: what a user may do beyond reading and acting (issue 4).
USER_ROLES = ("admin",)
KINDS = ("node", "user")
KEY_SIZE = 32
MAX_NAME = 128
# Clocks of grid sites disagree a little; certificates tolerate this much.
CLOCK_SKEW = 300
# 22 bytes an id in msgpack: 2048 ids keep a revocation list well under the
# 64 KiB envelope cap (and under what one DHT datagram carries, issue 3).
MAX_REVOKED = 2048


class CertificateRejected(BadMessage):
    """A well-formed certificate that this grid does not accept (now).

    ``code`` names the reason in one word, for counters and logs.
    """

    def __init__(self, message: str, code: str = "rejected") -> None:
        super().__init__(message)
        self.code = code


def _check_name(name: object) -> str:
    if not (isinstance(name, str) and 0 < len(name) <= MAX_NAME and name.isprintable()):
        raise BadMessage("name must be 1-128 printable characters")
    return name


def roles_for(kind: str) -> tuple[str, ...]:
    """The roles a certificate of ``kind`` may carry."""
    return USER_ROLES if kind == "user" else ROLES


def _check_roles(roles: object, kind: str = "node") -> tuple[str, ...]:
    if not isinstance(roles, list):
        raise BadMessage("roles must be a list")
    known = roles_for(kind)
    for r in roles:
        expect(r in known, f"unknown {kind} role {r!r} (known: {', '.join(known)})")
    expect(len(set(roles)) == len(roles), "roles repeat")
    return tuple(roles)


def _check_key(key: object, what: str) -> bytes:
    if not (isinstance(key, bytes) and len(key) == KEY_SIZE):
        raise BadMessage(f"{what} must be {KEY_SIZE} bytes")
    return key


def _check_int(x: object, what: str) -> int:
    if not (isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**63):
        raise BadMessage(f"bad {what}")
    return x


def _fields(domain: bytes, data: bytes, n: int) -> tuple[list, bytes, bytes]:
    fields, body, sig = open_envelope_untrusted(domain, data)
    expect(len(fields) == n, f"expected {n} fields, got {len(fields)}")
    expect(fields[0] == VERSION, f"unsupported version {fields[0]!r}")
    return fields, body, sig


# -- grid info ---------------------------------------------------------------


@dataclass(frozen=True)
class GridInfo:
    """What a joining node needs to know about a grid: its trust anchor."""

    name: str
    authority_key: bytes
    created: int
    bootstrap: tuple[str, ...] = ()
    raw: bytes = field(default=b"", compare=False, repr=False)

    @cached_property
    def grid_id(self) -> bytes:
        # Compared with every certificate a datagram carries: hashed once.
        return node_id_of(self.authority_key)

    @classmethod
    def create(cls, authority: KeyPair, name: str, created: int,
               bootstrap: tuple[str, ...] = ()) -> GridInfo:
        raw = seal(GRID_INFO_TAG, [VERSION, name, authority.public_key, created,
                                   list(bootstrap)], authority.signing_key)
        return cls.from_bytes_untrusted(raw)

    @classmethod
    def from_bytes_untrusted(cls, data: bytes) -> GridInfo:
        (_, name, key, created, bootstrap), body, sig = _fields(GRID_INFO_TAG, data, 5)
        key = _check_key(key, "authority key")
        verify_body(key, body, sig)
        expect(isinstance(bootstrap, list) and len(bootstrap) <= 64, "bad bootstrap list")
        expect(all(isinstance(b, str) and len(b) < 256 for b in bootstrap), "bad bootstrap entry")
        return cls(_check_name(name), key, _check_int(created, "created"), tuple(bootstrap), data)


# -- certificates ----------------------------------------------------------------


@dataclass(frozen=True)
class Certificate:
    kind: str
    grid_id: bytes
    subject_key: bytes
    name: str
    roles: tuple[str, ...]
    not_before: int
    not_after: int
    issuer_key: bytes
    raw: bytes = field(default=b"", compare=False, repr=False)
    body: bytes = field(default=b"", compare=False, repr=False)
    sig: bytes = field(default=b"", compare=False, repr=False)

    @cached_property
    def subject_id(self) -> bytes:
        # Asked for every datagram a node receives: hashed once per certificate.
        return node_id_of(self.subject_key)

    @classmethod
    def issue(cls, authority: KeyPair, *, kind: str, subject_key: bytes, name: str,
              roles: tuple[str, ...], not_before: int, not_after: int) -> Certificate:
        """Sign a certificate (the authority's side).

        A bad kind or lifetime raises ValueError; a bad name or role raises
        BadMessage, from the same checks that every reader applies.
        """
        if kind not in KINDS:
            raise ValueError(f"unknown certificate kind {kind!r}")
        if not_after <= not_before:
            raise ValueError("certificate would expire before it starts")
        raw = seal(CERT_TAG, [VERSION, kind, node_id_of(authority.public_key), subject_key,
                              name, list(roles), not_before, not_after, authority.public_key],
                   authority.signing_key)
        return cls.from_bytes_untrusted(raw)

    @classmethod
    def from_bytes_untrusted(cls, data: bytes) -> Certificate:
        """Decode and check the shape; the signature is checked by check_certificate."""
        fields, body, sig = _fields(CERT_TAG, data, 9)
        _, kind, grid_id, subject, name, roles, nb, na, issuer = fields
        expect(kind in KINDS, f"unknown certificate kind {kind!r}")
        expect(isinstance(grid_id, bytes) and len(grid_id) == 20, "bad grid id")
        issuer = _check_key(issuer, "issuer key")
        # A certificate that does not verify against its own issuer is garbage
        # whatever grid we judge it for: refuse it at the door.
        verify_body(issuer, body, sig)
        return cls(kind, grid_id, _check_key(subject, "subject key"), _check_name(name),
                   _check_roles(roles, kind), _check_int(nb, "not_before"),
                   _check_int(na, "not_after"), issuer, data, body, sig)


def check_certificate(cert: Certificate, grid: GridInfo, now: float, *,
                      revoked: frozenset[bytes] = frozenset(),
                      kind: str | None = None, subject_key: bytes | None = None) -> None:
    """Raise CertificateRejected unless ``cert`` is valid in ``grid`` at ``now``.

    A Certificate exists only once ``from_bytes_untrusted`` has checked its
    signature against its issuer key, so matching the issuer key to the
    grid's authority key is what proves the grid signed it: no second
    signature check (the DHT calls this for every datagram).
    """
    if cert.issuer_key != grid.authority_key or cert.grid_id != grid.grid_id:
        raise CertificateRejected(
            f"certificate was issued by grid {cert.grid_id.hex()[:16]}, "
            f"not by this grid {grid.grid_id.hex()[:16]}", "wrong_grid")
    if kind is not None and cert.kind != kind:
        raise CertificateRejected(f"certificate is for a {cert.kind}, expected a {kind}",
                                  "wrong_kind")
    if subject_key is not None and cert.subject_key != subject_key:
        raise CertificateRejected(
            f"certificate is for key {node_id_of(cert.subject_key).hex()[:16]}, "
            f"not for this key {node_id_of(subject_key).hex()[:16]}", "wrong_key")
    if now + CLOCK_SKEW < cert.not_before:
        raise CertificateRejected("certificate is not valid yet (check the clock)",
                                  "not_yet_valid")
    if now - CLOCK_SKEW > cert.not_after:
        raise CertificateRejected("certificate has expired; ask the grid admin for a new one",
                                  "expired")
    if cert.subject_id in revoked:
        raise CertificateRejected(
            f"certificate of {cert.subject_id.hex()} was revoked by the grid authority",
            "revoked")


# -- join requests --------------------------------------------------------------------


@dataclass(frozen=True)
class JoinRequest:
    grid_id: bytes
    subject_key: bytes
    name: str
    roles: tuple[str, ...]
    created: int
    kind: str = "node"
    raw: bytes = field(default=b"", compare=False, repr=False)

    @property
    def subject_id(self) -> bytes:
        return node_id_of(self.subject_key)

    @classmethod
    def create(cls, key: KeyPair, grid: GridInfo, name: str, roles: tuple[str, ...],
               created: int, kind: str = "node") -> JoinRequest:
        raw = seal(JOIN_REQUEST_TAG, [VERSION, grid.grid_id, key.public_key, name,
                                      list(roles), created, kind], key.signing_key)
        return cls.from_bytes_untrusted(raw)

    @classmethod
    def from_bytes_untrusted(cls, data: bytes) -> JoinRequest:
        (_, grid_id, subject, name, roles, created, kind), body, sig = _fields(
            JOIN_REQUEST_TAG, data, 7)
        subject = _check_key(subject, "subject key")
        # Proof of possession: the request is signed by the key it asks for.
        verify_body(subject, body, sig)
        expect(isinstance(grid_id, bytes) and len(grid_id) == 20, "bad grid id")
        expect(kind in KINDS, f"unknown request kind {kind!r}")
        return cls(grid_id, subject, _check_name(name), _check_roles(roles, kind),
                   _check_int(created, "created"), kind, data)


# -- revocation lists ---------------------------------------------------------------


@dataclass(frozen=True)
class RevocationList:
    """The authority's list of revoked subject ids; a higher serial replaces a lower."""

    grid_id: bytes
    serial: int
    issued_at: int
    revoked: frozenset[bytes]
    raw: bytes = field(default=b"", compare=False, repr=False)

    @classmethod
    def issue(cls, authority: KeyPair, serial: int, issued_at: int,
              revoked: frozenset[bytes]) -> RevocationList:
        if len(revoked) > MAX_REVOKED:
            raise ValueError(f"a revocation list holds at most {MAX_REVOKED} ids")
        raw = seal(REVOCATIONS_TAG, [VERSION, node_id_of(authority.public_key), serial,
                                     issued_at, sorted(revoked)], authority.signing_key)
        return cls(node_id_of(authority.public_key), serial, issued_at, revoked, raw)

    @classmethod
    def empty(cls, grid: GridInfo) -> RevocationList:
        return cls(grid.grid_id, 0, 0, frozenset())

    @classmethod
    def from_bytes_untrusted(cls, data: bytes, grid: GridInfo) -> RevocationList:
        (_, grid_id, serial, issued_at, revoked), body, sig = _fields(REVOCATIONS_TAG, data, 5)
        expect(grid_id == grid.grid_id, "revocation list is for another grid")
        verify_body(grid.authority_key, body, sig)
        expect(isinstance(revoked, list) and len(revoked) <= MAX_REVOKED, "bad revoked list")
        expect(all(isinstance(r, bytes) and len(r) == 20 for r in revoked), "bad revoked id")
        return cls(grid_id, _check_int(serial, "serial"), _check_int(issued_at, "issued_at"),
                   frozenset(revoked), data)
