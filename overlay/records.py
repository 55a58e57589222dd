"""Signed DHT records: the node record.

A node record says who a node is and where to reach it: id, public key,
certificate, addresses, roles and capacity.  It is signed by the node's own
key and carries the authority's certificate for that key, so any grid
member can check it with nothing but the grid info.  ``seq`` grows with
every publication (a newer record replaces an older one) and ``expires``
bounds how long a dead node's record is believed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ._errors import BadMessage
from ._wire import expect, open_envelope_untrusted, seal, verify_body
from .certs import (
    VERSION,
    Certificate,
    CertificateRejected,
    GridInfo,
    _check_int,
    _check_key,
    _check_roles,
    check_certificate,
)
from .identity import KeyPair, node_id_of

NODE_RECORD_TAG = b"gridnode/node-record/v1"
MAX_ADDRESSES = 16
CAPACITY_KEYS = ("cores", "memory_mb", "disk_gb")


def node_record_key(node_id: bytes) -> bytes:
    """The DHT key under which a node publishes its record."""
    return b"gridnode/node/" + node_id


@dataclass(frozen=True)
class NodeRecord:
    node_id: bytes
    public_key: bytes
    cert: Certificate
    addresses: tuple[str, ...]
    roles: tuple[str, ...]
    capacity: dict[str, int]
    seq: int
    expires: int
    raw: bytes = field(default=b"", compare=False, repr=False)

    @property
    def site(self) -> str:
        return self.cert.name

    @classmethod
    def create(cls, key: KeyPair, cert: Certificate, *, addresses: tuple[str, ...],
               roles: tuple[str, ...], capacity: dict[str, int], seq: int,
               expires: int) -> NodeRecord:
        raw = seal(NODE_RECORD_TAG, [VERSION, key.id, key.public_key, cert.raw,
                                     list(addresses), list(roles), dict(capacity), seq,
                                     expires], key.signing_key)
        return cls(key.id, key.public_key, cert, addresses, roles, dict(capacity), seq,
                   expires, raw)

    @classmethod
    def from_bytes_untrusted(cls, data: bytes, grid: GridInfo, now: float, *,
                             revoked: frozenset[bytes] = frozenset()) -> NodeRecord:
        """Decode and judge a node record; raise BadMessage if it is not believable."""
        fields, body, sig = open_envelope_untrusted(NODE_RECORD_TAG, data)
        expect(len(fields) == 9, f"expected 9 fields, got {len(fields)}")
        version, node_id, pub, cert_raw, addresses, roles, capacity, seq, expires = fields
        expect(version == VERSION, f"unsupported version {version!r}")
        pub = _check_key(pub, "public key")
        verify_body(pub, body, sig)
        expect(node_id == node_id_of(pub), "node id does not match its key")
        if not isinstance(cert_raw, bytes):
            raise BadMessage("certificate must be bytes")
        cert = Certificate.from_bytes_untrusted(cert_raw)
        check_certificate(cert, grid, now, revoked=revoked, kind="node", subject_key=pub)
        if not (isinstance(addresses, list) and len(addresses) <= MAX_ADDRESSES):
            raise BadMessage("bad address list")
        expect(all(isinstance(a, str) and 0 < len(a) < 128 for a in addresses), "bad address")
        roles_t = _check_roles(roles)
        expect(set(roles_t) <= set(cert.roles), "record claims roles its certificate lacks")
        if not (isinstance(capacity, dict) and set(capacity) <= set(CAPACITY_KEYS)):
            raise BadMessage("bad capacity")
        cap = {k: _check_int(v, f"capacity {k}") for k, v in capacity.items()}
        expires = _check_int(expires, "expires")
        if expires < now:
            raise CertificateRejected("node record has expired")
        return cls(node_id, pub, cert, tuple(addresses), roles_t, cap,
                   _check_int(seq, "seq"), expires, data)

