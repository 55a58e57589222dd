"""Signed DHT records.

Everything stored in the DHT is a :class:`SignedRecord`: a signed envelope
(domain ``gridnode/dht-record/v1``) of

    version, key, kind, certificate, seq, expires, value

signed by the key the certificate names.  Any grid member can check a
record with nothing but the grid info (and the revocation list).  The DHT
keeps at most one record per (key, signer): a higher ``seq`` replaces a
lower one, a lower one is refused (no rollback).  Many signers under one
key make a *provider set*.

Kinds and their extra rules:

============  ==========================  ===================================
kind          key                         value
============  ==========================  ===================================
node          ``node_record_key(signer)``  msgpack [addresses, roles, capacity]
provider      ``provider_key(...)``        up to 512 opaque bytes
revocations   ``REVOCATIONS_KEY``          the authority's revocation list
============  ==========================  ===================================

:class:`NodeRecord` is the typed view of a ``node`` record.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from ._errors import BadMessage
from ._wire import expect, open_envelope_untrusted, packb, seal, unpackb_untrusted, verify_body
from .certs import (
    VERSION,
    Certificate,
    CertificateRejected,
    GridInfo,
    RevocationList,
    _check_int,
    _check_roles,
    check_certificate,
)
from .identity import ID_SIZE, KeyPair

RECORD_TAG = b"gridnode/dht-record/v1"
KINDS = ("node", "provider", "revocations")
MAX_RECORD = 2048
MAX_PROVIDER_VALUE = 512
# A record may not claim to live longer than this: a leaked or stale record
# dies on its own, whatever its signer wanted.
MAX_RECORD_TTL = 24 * 3600
MAX_ADDRESSES = 16
CAPACITY_KEYS = ("cores", "memory_mb", "disk_gb")
# The monitor's summary a node may put in its record: name -> type.
HEALTH_KEYS = {"state": str, "pressure": float, "failure_rate": float, "load": float,
               "slots_free": int, "disk_free_gb": int, "since": int}
HEALTH_STATES = ("ok", "congested", "failing")


def dht_key(name: bytes) -> bytes:
    """The 160-bit DHT key for a name."""
    return hashlib.blake2b(name, digest_size=ID_SIZE).digest()


def node_record_key(node_id: bytes) -> bytes:
    """The DHT key under which a node publishes its record."""
    return dht_key(b"gridnode/node/" + node_id)


def provider_key(kind: str, name: str) -> bytes:
    """The DHT key of a provider set: ``("role", "queue")``, ``("dataset", NAME)``."""
    # The first "/" ends the kind, so ("a/b", "c") and ("a", "b/c") never share a key.
    if "/" in kind:
        raise ValueError(f"provider kind {kind!r} may not contain '/'")
    return dht_key(b"gridnode/providers/" + kind.encode() + b"/" + name.encode())


REVOCATIONS_KEY = dht_key(b"gridnode/revocations")


@dataclass(frozen=True)
class SignedRecord:
    key: bytes
    kind: str
    cert: Certificate
    seq: int
    expires: int
    value: bytes
    raw: bytes = field(default=b"", compare=False, repr=False)

    @property
    def signer(self) -> bytes:
        return self.cert.subject_id

    @classmethod
    def create(cls, key_pair: KeyPair, cert: Certificate, *, key: bytes, kind: str,
               seq: int, expires: int, value: bytes) -> SignedRecord:
        """Sign a record (our side: a record we could not store is our bug)."""
        if kind not in KINDS:
            raise ValueError(f"unknown record kind {kind!r}")
        raw = seal(RECORD_TAG, [VERSION, key, kind, cert.raw, seq, expires, value],
                   key_pair.signing_key)
        if len(raw) > MAX_RECORD:
            raise ValueError(f"record of {len(raw)} bytes exceeds the cap of {MAX_RECORD}")
        return cls(key, kind, cert, seq, expires, value, raw)

    @classmethod
    def from_bytes_untrusted(cls, data: bytes, grid: GridInfo, now: float, *,
                             revoked: frozenset[bytes] = frozenset()) -> SignedRecord:
        """Decode and judge a record; raise BadMessage unless it may be stored and returned."""
        if not isinstance(data, bytes):
            raise BadMessage(f"record is a {type(data).__name__}, not bytes")
        if len(data) > MAX_RECORD:
            raise BadMessage(f"record of {len(data)} bytes exceeds the cap of {MAX_RECORD}")
        fields, body, sig = open_envelope_untrusted(RECORD_TAG, data)
        expect(len(fields) == 7, f"expected 7 fields, got {len(fields)}")
        version, key, kind, cert_raw, seq, expires, value = fields
        expect(version == VERSION and not isinstance(version, bool),
               f"unsupported version {version!r}")
        if not (isinstance(key, bytes) and len(key) == ID_SIZE):
            raise BadMessage("record key must be 20 bytes")
        expect(kind in KINDS, f"unknown record kind {kind!r}")
        if not isinstance(cert_raw, bytes):
            raise BadMessage("certificate must be bytes")
        if not isinstance(value, bytes):
            raise BadMessage("record value must be bytes")
        cert = Certificate.from_bytes_untrusted(cert_raw)
        check_certificate(cert, grid, now, revoked=revoked, kind="node")
        verify_body(cert.subject_key, body, sig)
        seq = _check_int(seq, "seq")
        expires = _check_int(expires, "expires")
        if expires < now:
            raise CertificateRejected("record has expired")
        expect(expires <= now + MAX_RECORD_TTL + 300, "record claims to live too long")
        rec = cls(key, kind, cert, seq, expires, value, data)
        _KIND_RULES[kind](rec, grid)
        return rec


def _node_rule(rec: SignedRecord, grid: GridInfo) -> None:
    expect(rec.key == node_record_key(rec.signer), "node record under another node's key")
    _decode_node_value(rec.value, rec.cert)


def _provider_rule(rec: SignedRecord, grid: GridInfo) -> None:
    expect(len(rec.value) <= MAX_PROVIDER_VALUE, "provider value too large")


def _revocations_rule(rec: SignedRecord, grid: GridInfo) -> None:
    expect(rec.key == REVOCATIONS_KEY, "revocation list under the wrong key")
    RevocationList.from_bytes_untrusted(rec.value, grid)


_KIND_RULES = {"node": _node_rule, "provider": _provider_rule, "revocations": _revocations_rule}


def _decode_node_value(value: bytes, cert: Certificate) -> tuple[Any, ...]:
    fields = unpackb_untrusted(value)
    if not (isinstance(fields, list) and len(fields) in (3, 4)):
        raise BadMessage("node record value must be [addresses, roles, capacity, health?]")
    addresses, roles, capacity = fields[:3]
    health = _check_health(fields[3] if len(fields) == 4 else {})
    if not (isinstance(addresses, list) and len(addresses) <= MAX_ADDRESSES):
        raise BadMessage("bad address list")
    expect(all(isinstance(a, str) and 0 < len(a) < 128 for a in addresses), "bad address")
    roles_t = _check_roles(roles)
    expect(set(roles_t) <= set(cert.roles), "record claims roles its certificate lacks")
    if not (isinstance(capacity, dict) and set(capacity) <= set(CAPACITY_KEYS)):
        raise BadMessage("bad capacity")
    cap = {k: _check_int(v, f"capacity {k}") for k, v in capacity.items()}
    return tuple(addresses), roles_t, cap, health


def _check_health(health: Any) -> dict[str, Any]:
    if not (isinstance(health, dict) and set(health) <= set(HEALTH_KEYS)):
        raise BadMessage(f"health must be a map with keys among {', '.join(HEALTH_KEYS)}")
    for k, v in health.items():
        kind = HEALTH_KEYS[k]
        ok = (type(v) is int and v >= 0 if kind is int
              else isinstance(v, float) and 0 <= v <= 1e6 if kind is float
              else v in HEALTH_STATES)
        expect(ok, f"bad health value for {k}")
    return dict(health)


@dataclass(frozen=True)
class NodeRecord:
    """Who a node is and where to reach it: the typed view of a ``node`` record."""

    node_id: bytes
    public_key: bytes
    cert: Certificate
    addresses: tuple[str, ...]
    roles: tuple[str, ...]
    capacity: dict[str, int]
    seq: int
    expires: int
    health: dict[str, Any] = field(default_factory=dict)
    raw: bytes = field(default=b"", compare=False, repr=False)
    signed: SignedRecord | None = field(default=None, compare=False, repr=False)

    @property
    def site(self) -> str:
        return self.cert.name

    @classmethod
    def create(cls, key: KeyPair, cert: Certificate, *, addresses: tuple[str, ...],
               roles: tuple[str, ...], capacity: dict[str, int], seq: int,
               expires: int, health: dict[str, Any] | None = None) -> NodeRecord:
        fields: list[Any] = [list(addresses), list(roles), dict(capacity)]
        if health:
            fields.append(_check_health(dict(health)))
        value = packb(fields)
        rec = SignedRecord.create(key, cert, key=node_record_key(key.id), kind="node", seq=seq,
                                  expires=expires, value=value)
        return cls.from_signed(rec)

    @classmethod
    def from_signed(cls, rec: SignedRecord) -> NodeRecord:
        """The view of a record that SignedRecord.from_bytes_untrusted accepted."""
        if rec.kind != "node":
            raise BadMessage(f"a {rec.kind} record is not a node record")
        addresses, roles, capacity, health = _decode_node_value(rec.value, rec.cert)
        return cls(rec.signer, rec.cert.subject_key, rec.cert, addresses, roles, capacity,
                   rec.seq, rec.expires, health, rec.raw, rec)

    @classmethod
    def from_bytes_untrusted(cls, data: bytes, grid: GridInfo, now: float, *,
                             revoked: frozenset[bytes] = frozenset()) -> NodeRecord:
        return cls.from_signed(SignedRecord.from_bytes_untrusted(data, grid, now,
                                                                 revoked=revoked))
