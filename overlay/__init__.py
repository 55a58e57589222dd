"""Peers: identity and certificates, signed records, the DHT, the secure channel and RPC.

The layers above use only the names exported here.
"""

from ._errors import BadMessage, IdentityError
from ._handshake import HandshakeRefused
from ._storage import RecordStore
from ._wire import expect, open_envelope_untrusted, packb, seal, unpackb_untrusted, verify_body
from .certs import (
    ROLES,
    USER_ROLES,
    Certificate,
    CertificateRejected,
    GridInfo,
    JoinRequest,
    RevocationList,
    check_certificate,
)
from .channel import ChannelClosed, ChannelServer, Credentials, SecureChannel, open_channel
from .dht import Contact, GridDht, LookupResult
from .events import log_event
from .identity import KeyPair, node_id_of, read_key, write_key
from .pool import RpcPool
from .records import (
    MAX_RECORD_TTL,
    REVOCATIONS_KEY,
    NodeRecord,
    SignedRecord,
    dht_key,
    node_record_key,
    provider_key,
)
from .rpc import (
    ACCESS,
    CallContext,
    CallTimeout,
    Method,
    RpcClient,
    RpcError,
    RpcServer,
    Unavailable,
    allowed,
    bad_request,
    open_rpc,
)

__all__ = [
    "ACCESS",
    "MAX_RECORD_TTL",
    "REVOCATIONS_KEY",
    "ROLES",
    "USER_ROLES",
    "BadMessage",
    "CallContext",
    "CallTimeout",
    "Certificate",
    "CertificateRejected",
    "ChannelClosed",
    "ChannelServer",
    "Contact",
    "Credentials",
    "GridDht",
    "GridInfo",
    "HandshakeRefused",
    "IdentityError",
    "JoinRequest",
    "KeyPair",
    "LookupResult",
    "Method",
    "NodeRecord",
    "RecordStore",
    "RevocationList",
    "RpcClient",
    "RpcError",
    "RpcPool",
    "RpcServer",
    "SecureChannel",
    "SignedRecord",
    "Unavailable",
    "allowed",
    "bad_request",
    "check_certificate",
    "dht_key",
    "expect",
    "log_event",
    "node_id_of",
    "node_record_key",
    "open_channel",
    "open_envelope_untrusted",
    "open_rpc",
    "packb",
    "provider_key",
    "read_key",
    "seal",
    "unpackb_untrusted",
    "verify_body",
    "write_key",
]
