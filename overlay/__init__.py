"""Peers: identity and certificates, signed records, the DHT.

The layers above use only the names exported here.
"""

from ._errors import BadMessage, IdentityError
from ._storage import RecordStore
from ._wire import packb, unpackb_untrusted
from .certs import (
    ROLES,
    Certificate,
    CertificateRejected,
    GridInfo,
    JoinRequest,
    RevocationList,
    check_certificate,
)
from .dht import Contact, GridDht, LookupResult
from .identity import KeyPair, node_id_of, read_key, write_key
from .records import (
    MAX_RECORD_TTL,
    REVOCATIONS_KEY,
    NodeRecord,
    SignedRecord,
    dht_key,
    node_record_key,
    provider_key,
)

__all__ = [
    "MAX_RECORD_TTL",
    "REVOCATIONS_KEY",
    "ROLES",
    "BadMessage",
    "Certificate",
    "CertificateRejected",
    "Contact",
    "GridDht",
    "GridInfo",
    "IdentityError",
    "JoinRequest",
    "KeyPair",
    "LookupResult",
    "NodeRecord",
    "RecordStore",
    "RevocationList",
    "SignedRecord",
    "check_certificate",
    "dht_key",
    "node_id_of",
    "node_record_key",
    "packb",
    "provider_key",
    "read_key",
    "unpackb_untrusted",
    "write_key",
]
