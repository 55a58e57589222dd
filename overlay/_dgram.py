"""DHT datagrams: signed, timestamped, checked before the protocol sees them.

A pure core: bytes in, checked objects (or ``BadMessage``) out.

Every request and response is a signed envelope (domain
``gridnode/dht-datagram/v1``) of

    kind (0 request, 1 response), msg_id (16 bytes), ts_ms, certificate,
    then for a request: cookie, method, args; for a response: result

signed by the certificate's subject key, so the sender's node id is the id
of a key this grid certified: a claimed id is never taken on faith.  A
datagram older or newer than ``MAX_SKEW_MS`` is stale; a request seen
before (same sender, same msg_id) is a replay.  Both are refused.

A request from an address that has not proved itself is answered at once
only if the answer (which then carries a cookie) is no larger than the
request; a node with no cookie for an address pads its request (an 8th
field, inside the signature) so that small answers such as ``find_node``
fit.  Larger answers get a retry instead.

A *retry* is the one unsigned datagram: ``[RETRY_TAG, msg_id, cookie]``,
the answer to a request from an address that has not proved itself when
the real answer would be larger than the request (a retry is smaller than
any request: no amplification).  The requester sends
the request again with the cookie, which proves that it receives at that
address, and keeps the cookie for its next requests there.  A forged retry
can only make a node repeat one request to the address it was already
talking to.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import nacl.signing

from ._errors import BadMessage
from ._wire import (
    expect,
    open_envelope_untrusted,
    packb,
    seal_body,
    sealed_size,
    unpackb_untrusted,
    verify_body,
)
from .certs import CLOCK_SKEW, Certificate, GridInfo, check_certificate

DGRAM_TAG = b"gridnode/dht-datagram/v1"
RETRY_TAG = b"gridnode/dht-retry/v1"
REQUEST, RESPONSE = 0, 1
MAX_DATAGRAM = 8192
MSG_ID_SIZE = 16
COOKIE_SIZE = 16
MAX_SKEW_MS = 60_000
MAX_METHOD = 32


@dataclass(frozen=True)
class Request:
    msg_id: bytes
    ts_ms: int
    cert: Certificate
    cookie: bytes
    method: str
    args: list[Any]
    size: int

    @property
    def sender(self) -> bytes:
        return self.cert.subject_id


@dataclass(frozen=True)
class Response:
    msg_id: bytes
    ts_ms: int
    cert: Certificate
    result: Any
    size: int
    cookie: bytes = b""  # given to a requester that has not proved its address yet

    @property
    def sender(self) -> bytes:
        return self.cert.subject_id


@dataclass(frozen=True)
class Retry:
    msg_id: bytes
    cookie: bytes
    size: int


def new_msg_id() -> bytes:
    return os.urandom(MSG_ID_SIZE)


def encode_request(key: nacl.signing.SigningKey, cert: Certificate, msg_id: bytes, ts_ms: int,
                   method: str, args: list[Any], cookie: bytes = b"", pad_to: int = 0) -> bytes:
    """A signed request; ``pad_to`` pads it (inside the signature) to at least that size."""
    fields = [DGRAM_TAG, REQUEST, msg_id, ts_ms, cert.raw, cookie, method, args]
    body = packb(fields)
    size = sealed_size(len(body))
    if size < pad_to:
        # The padding field's own header takes up to 5 bytes.  The size is
        # known before signing: one signature per request, padded or not.
        body = packb([*fields, bytes(max(0, pad_to - size - 5))])
    return seal_body(body, key)


def encode_response(key: nacl.signing.SigningKey, cert: Certificate, msg_id: bytes,
                    ts_ms: int, result: Any, cookie: bytes = b"") -> bytes:
    return seal_body(_response_body(cert, msg_id, ts_ms, result, cookie), key)


def encode_response_within(key: nacl.signing.SigningKey, cert: Certificate, msg_id: bytes,
                           ts_ms: int, result: Any, cookie: bytes, max_size: int
                           ) -> bytes | None:
    """A signed response of at most ``max_size`` bytes, or None (and nothing signed)."""
    body = _response_body(cert, msg_id, ts_ms, result, cookie)
    return seal_body(body, key) if sealed_size(len(body)) <= max_size else None


def _response_body(cert: Certificate, msg_id: bytes, ts_ms: int, result: Any,
                   cookie: bytes) -> bytes:
    fields = [DGRAM_TAG, RESPONSE, msg_id, ts_ms, cert.raw, result]
    return packb([*fields, cookie] if cookie else fields)


def encode_retry(msg_id: bytes, cookie: bytes) -> bytes:
    return packb([RETRY_TAG, msg_id, cookie])


class DatagramChecker:
    """Decodes and authenticates datagrams for one node.

    Holds the verified-certificate cache (so a datagram costs one signature
    check, not two) and the replay cache; both are bounded.
    """

    def __init__(self, grid: GridInfo, *, cert_cache_size: int = 4096,
                 replay_cache_size: int = 65536) -> None:
        self.grid = grid
        self.revoked: frozenset[bytes] = frozenset()
        self._certs: OrderedDict[bytes, Certificate] = OrderedDict()
        self._cert_cache_size = cert_cache_size
        self._seen: OrderedDict[tuple[bytes, bytes], int] = OrderedDict()
        self._replay_cache_size = replay_cache_size

    def set_revoked(self, revoked: frozenset[bytes]) -> None:
        self.revoked = revoked

    def _certificate(self, raw: Any, now_s: float) -> Certificate:
        if not isinstance(raw, bytes):
            raise BadMessage("certificate must be bytes")
        cert = self._certs.get(raw)
        if cert is None:
            cert = Certificate.from_bytes_untrusted(raw)
            check_certificate(cert, self.grid, now_s, kind="node")
            self._certs[raw] = cert
            while len(self._certs) > self._cert_cache_size:
                self._certs.popitem(last=False)
            check_certificate(cert, self.grid, now_s, revoked=self.revoked, kind="node")
            return cert
        self._certs.move_to_end(raw)
        # Cached: a node certificate of this grid.  Expiry and revocation change
        # with time: checked on every datagram (by check_certificate, with its
        # reasons, when they fail).
        if (now_s + CLOCK_SKEW < cert.not_before or now_s - CLOCK_SKEW > cert.not_after
                or cert.subject_id in self.revoked):
            check_certificate(cert, self.grid, now_s, revoked=self.revoked, kind="node")
        return cert

    def decode_untrusted(self, data: bytes, now_ms: int) -> Request | Response | Retry:
        """A checked datagram, or BadMessage (malformed, unauthenticated, stale, replayed)."""
        if len(data) > MAX_DATAGRAM:
            raise BadMessage(f"datagram of {len(data)} bytes exceeds {MAX_DATAGRAM}")
        outer = unpackb_untrusted(data, max_size=MAX_DATAGRAM)
        if isinstance(outer, list) and len(outer) == 3 and outer[0] == RETRY_TAG:
            _, msg_id, cookie = outer
            _check_bytes(msg_id, MSG_ID_SIZE, "msg_id")
            _check_bytes(cookie, COOKIE_SIZE, "cookie")
            return Retry(msg_id, cookie, len(data))
        fields, body, sig = open_envelope_untrusted(DGRAM_TAG, data, outer=outer)
        expect(len(fields) >= 4, "datagram too short")
        kind, msg_id, ts_ms, cert_raw = fields[:4]
        _check_bytes(msg_id, MSG_ID_SIZE, "msg_id")
        if not (isinstance(ts_ms, int) and not isinstance(ts_ms, bool)):
            raise BadMessage("timestamp must be an integer")
        # Cheap checks first: a stale datagram costs no signature check.
        if abs(now_ms - ts_ms) > MAX_SKEW_MS:
            raise BadMessage(f"stale datagram ({(now_ms - ts_ms) / 1000:.0f} s off)")
        cert = self._certificate(cert_raw, now_ms / 1000)
        verify_body(cert.subject_key, body, sig)
        if kind == RESPONSE:
            expect(len(fields) in (5, 6), "response must have 5 or 6 fields")
            cookie = fields[5] if len(fields) == 6 else b""
            if len(fields) == 6:
                _check_bytes(cookie, COOKIE_SIZE, "cookie")
            return Response(msg_id, ts_ms, cert, fields[4], len(data), cookie)
        expect(kind == REQUEST and len(fields) in (7, 8), "unknown datagram kind")
        cookie, method, args = fields[4:7]
        if len(fields) == 8 and not isinstance(fields[7], bytes):
            raise BadMessage("padding must be bytes")
        if not (isinstance(cookie, bytes) and len(cookie) in (0, COOKIE_SIZE)):
            raise BadMessage("bad cookie")
        if not (isinstance(method, str) and 0 < len(method) <= MAX_METHOD):
            raise BadMessage("bad method name")
        if not isinstance(args, list):
            raise BadMessage("arguments must be a list")
        self._note_request(cert.subject_id, msg_id, now_ms)
        return Request(msg_id, ts_ms, cert, cookie, method, args, len(data))

    def _note_request(self, sender: bytes, msg_id: bytes, now_ms: int) -> None:
        key = (sender, msg_id)
        if key in self._seen:
            raise BadMessage("replayed request")
        self._seen[key] = now_ms
        # Entries older than the skew window cannot be replayed anyway.
        while self._seen and (len(self._seen) > self._replay_cache_size
                              or next(iter(self._seen.values())) < now_ms - 2 * MAX_SKEW_MS):
            self._seen.popitem(last=False)


def _check_bytes(x: Any, size: int, what: str) -> None:
    if not (isinstance(x, bytes) and len(x) == size):
        raise BadMessage(f"{what} must be {size} bytes")


# Who is proving: (host, port) or (host, port, node id).  The daemon binds a
# proof to the sender's id too, so that a member cannot replay another
# node's signed request from its own (proved) address.
Peer = tuple[Any, ...]


class AddressBook:
    """Which addresses have proved that they receive what we send them.

    An address is proved when it answered a request of ours, or when it
    sent back a cookie we gave it.  Cookies are keyed hashes of the address
    and a 2-minute time slot: nothing to store per address until it proves
    itself.
    """

    SLOT = 120.0

    def __init__(self, *, lifetime: float = 600.0, max_entries: int = 65536) -> None:
        self._secret = os.urandom(32)
        self._proved: OrderedDict[Peer, float] = OrderedDict()
        self.lifetime = lifetime
        self.max_entries = max_entries

    def cookie(self, addr: Peer, now: float, slot_offset: int = 0) -> bytes:
        slot = int(now // self.SLOT) - slot_offset
        data = "|".join(map(repr, (*addr, slot))).encode()
        return hashlib.blake2b(data, key=self._secret, digest_size=COOKIE_SIZE).digest()

    def cookie_valid(self, addr: Peer, cookie: bytes, now: float) -> bool:
        return bool(cookie) and any(hmac.compare_digest(cookie, self.cookie(addr, now, back))
                                    for back in (0, 1))

    def prove(self, addr: Peer, now: float) -> None:
        self._proved[addr] = now + self.lifetime
        self._proved.move_to_end(addr)
        while len(self._proved) > self.max_entries:
            self._proved.popitem(last=False)

    def is_proved(self, addr: Peer, now: float) -> bool:
        until = self._proved.get(addr)
        return until is not None and until >= now

    def forget(self, addr: Peer) -> None:
        self._proved.pop(addr, None)
