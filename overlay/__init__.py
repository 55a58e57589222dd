"""Peers: identity and certificates, signed records, the DHT.

The layers above use only the names exported here.
"""

from ._errors import BadMessage, IdentityError
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
from .dht import Contact, GridDht
from .identity import KeyPair, node_id_of, read_key, write_key
from .records import NodeRecord, node_record_key

__all__ = [
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
    "NodeRecord",
    "RevocationList",
    "check_certificate",
    "node_id_of",
    "node_record_key",
    "packb",
    "read_key",
    "unpackb_untrusted",
    "write_key",
]
