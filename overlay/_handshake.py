"""The secure channel without I/O: frames, the handshake and the session.

Like h11, nothing here touches a socket or a clock; ``channel.py`` moves
the bytes.  docs/protocol.md describes the protocol message by message:

====  ================  ========================================================
msg   direction         payload of the frame
====  ================  ========================================================
M1    client -> server  ``[HELLO_TAG, version, grid id, client ephemeral]``
M2    server -> client  ``[server ephemeral, header s->c, E_sc([cert, sig])]``
M3    client -> server  ``[header c->s, E_cs([cert, sig])]``
M4    server -> client  ``E_sc(["ok"])`` or ``E_sc(["refused", reason])``
====  ================  ========================================================

Ephemeral keys are X25519 (``crypto_kx``), one pair per connection; the
session keys come from ``crypto_kx_{client,server}_session_keys``; each
direction is a ``crypto_secretstream_xchacha20poly1305`` stream whose
header travels in M2 and M3.  ``sig`` is an Ed25519 signature by the
certificate's subject key over ``[SIG_TAG, role, grid id, client ephemeral,
server ephemeral]``: fresh ephemerals make a recorded handshake useless,
and the certificates travel encrypted, so a man in the middle can neither
read them nor swap in his own without the session keys.

Every frame is a 4-byte big-endian length and that many bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import nacl.bindings as sodium
import nacl.exceptions

from ._errors import BadMessage
from ._wire import SIGNATURE_SIZE, expect, packb, unpackb_untrusted, verify_body
from .certs import Certificate, CertificateRejected, GridInfo, check_certificate
from .identity import KeyPair

HELLO_TAG = b"gridnode/channel-hello/v1"
SIG_TAG = b"gridnode/channel-sig/v1"
VERSION = 1
KX_KEY_SIZE = sodium.crypto_kx_PUBLIC_KEY_BYTES
HEADER_SIZE = sodium.crypto_secretstream_xchacha20poly1305_HEADERBYTES
ABYTES = sodium.crypto_secretstream_xchacha20poly1305_ABYTES
TAG_MESSAGE = sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE
TAG_FINAL = sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL

LENGTH = struct.Struct(">I")
# Handshake frames hold a certificate and a signature: small.
MAX_HANDSHAKE_FRAME = 8 * 1024
# Default cap of a session frame's plaintext (config: [channel] max_frame).
MAX_FRAME = 1024 * 1024


class HandshakeRefused(BadMessage):
    """The peer is not one we talk to; ``code`` names why in one word."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def frame(payload: bytes) -> bytes:
    return LENGTH.pack(len(payload)) + payload


class FrameReader:
    """Split a byte stream into frames; a length over the cap is refused unread."""

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()

    def feed(self, data: bytes | bytearray) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def wanted(self) -> int:
        """How many more bytes complete the frame being read (at least 1)."""
        if len(self._buf) < LENGTH.size:
            return LENGTH.size - len(self._buf)
        (n,) = LENGTH.unpack_from(self._buf)
        return max(1, LENGTH.size + n - len(self._buf))

    def frame_ready(self) -> bool:
        """Whether a whole frame is buffered (or a length over the cap, to refuse)."""
        if len(self._buf) < LENGTH.size:
            return False
        (n,) = LENGTH.unpack_from(self._buf)
        return len(self._buf) >= LENGTH.size + n or n > self.max_frame

    def next_frame_untrusted(self) -> bytes | None:
        """The next whole frame, None if more bytes are needed, or BadMessage."""
        if len(self._buf) < LENGTH.size:
            return None
        (n,) = LENGTH.unpack_from(self._buf)
        if n > self.max_frame:
            raise BadMessage(f"frame of {n} bytes exceeds the cap of {self.max_frame}")
        end = LENGTH.size + n
        if len(self._buf) < end:
            return None
        with memoryview(self._buf) as view:  # one copy, not two (slice, then bytes)
            payload = bytes(view[LENGTH.size:end])
        del self._buf[:end]
        return payload


class Session:
    """The two secretstreams of an established channel.

    ``encrypt`` and ``decrypt_untrusted`` must see messages in stream order:
    the secretstream's nonces make a reordered, replayed, dropped or
    tampered message fail to decrypt.
    """

    def __init__(self, peer: Certificate, push: Any, pull: Any, max_frame: int) -> None:
        self.peer = peer
        self._push = push
        self._pull = pull
        self.max_frame = max_frame
        self.finished = False  # the peer sent its final message

    def encrypt(self, plaintext: bytes, *, final: bool = False) -> bytes:
        if len(plaintext) > self.max_frame:
            raise ValueError(f"message of {len(plaintext)} bytes exceeds the frame cap "
                             f"of {self.max_frame}")  # our bug: callers split big data
        return sodium.crypto_secretstream_xchacha20poly1305_push(
            self._push, plaintext, None, TAG_FINAL if final else TAG_MESSAGE)

    def decrypt_untrusted(self, ciphertext: bytes) -> bytes:
        expect(not self.finished, "message after the end of the stream")
        expect(len(ciphertext) <= self.max_frame + ABYTES, "frame exceeds the cap")
        plaintext, tag = _pull(self._pull, ciphertext)
        if tag == TAG_FINAL:
            self.finished = True
        else:
            expect(tag == TAG_MESSAGE, f"unexpected stream tag {tag}")
        return plaintext


def _pull(state: Any, ciphertext: bytes) -> tuple[bytes, int]:
    expect(len(ciphertext) >= ABYTES, "ciphertext shorter than its tag")
    try:
        return sodium.crypto_secretstream_xchacha20poly1305_pull(state, ciphertext, None)
    except (nacl.exceptions.CryptoError, nacl.exceptions.ValueError,
            nacl.exceptions.TypeError) as exc:
        raise BadMessage(f"frame does not decrypt (tampered, reordered or replayed): "
                         f"{exc}") from None


def _transcript(role: bytes, grid_id: bytes, client_eph: bytes, server_eph: bytes) -> bytes:
    return packb([SIG_TAG, role, grid_id, client_eph, server_eph])


def _identity_payload(key: KeyPair, cert: Certificate, transcript: bytes) -> bytes:
    return packb([cert.raw, key.signing_key.sign(transcript).signature])


@dataclass
class _Checks:
    grid: GridInfo
    revoked: frozenset[bytes]
    now: float


def _check_identity_untrusted(payload: bytes, transcript: bytes, checks: _Checks) -> Certificate:
    fields = unpackb_untrusted(payload, max_size=MAX_HANDSHAKE_FRAME)
    expect(isinstance(fields, list) and len(fields) == 2, "identity is not [cert, signature]")
    raw, sig = fields
    expect(isinstance(raw, bytes) and isinstance(sig, bytes) and len(sig) == SIGNATURE_SIZE,
           "bad identity fields")
    try:
        cert = Certificate.from_bytes_untrusted(raw)
        check_certificate(cert, checks.grid, checks.now, revoked=checks.revoked)
    except CertificateRejected as exc:
        raise HandshakeRefused(str(exc), exc.code) from None
    except BadMessage as exc:
        raise HandshakeRefused(f"bad certificate: {exc}", "bad_certificate") from None
    try:
        verify_body(cert.subject_key, transcript, sig)
    except BadMessage:
        raise HandshakeRefused("handshake signature does not match the certificate",
                               "bad_signature") from None
    return cert


def _new_stream(key: bytes) -> tuple[Any, bytes]:
    state = sodium.crypto_secretstream_xchacha20poly1305_state()
    header = sodium.crypto_secretstream_xchacha20poly1305_init_push(state, key)
    return state, header


def _pull_stream(key: bytes, header: object) -> Any:
    if not (isinstance(header, bytes) and len(header) == HEADER_SIZE):
        raise BadMessage("bad stream header")
    state = sodium.crypto_secretstream_xchacha20poly1305_state()
    sodium.crypto_secretstream_xchacha20poly1305_init_pull(state, header, key)
    return state


def _check_eph(eph: object) -> bytes:
    if not (isinstance(eph, bytes) and len(eph) == KX_KEY_SIZE):
        raise BadMessage("bad ephemeral key")
    return eph


class ClientHandshake:
    """The connecting side: ``hello()``, then M2 in, M3 out, then M4 in."""

    def __init__(self, key: KeyPair, cert: Certificate, grid: GridInfo, *,
                 max_frame: int = MAX_FRAME, expect_id: bytes | None = None) -> None:
        self.key, self.cert, self.grid = key, cert, grid
        self.max_frame = max_frame
        self.expect_id = expect_id
        self._eph_pk, self._eph_sk = sodium.crypto_kx_keypair()
        self._session: Session | None = None

    def hello(self) -> bytes:
        return packb([HELLO_TAG, VERSION, self.grid.grid_id, self._eph_pk])

    def receive_server_untrusted(self, m2: bytes, *, now: float,
                                 revoked: frozenset[bytes]) -> bytes:
        """Check the server's identity; return M3. Raises BadMessage/HandshakeRefused."""
        fields = unpackb_untrusted(m2, max_size=MAX_HANDSHAKE_FRAME)
        expect(isinstance(fields, list) and len(fields) == 3, "M2 is not [eph, header, id]")
        if fields[0] == "refused" and all(isinstance(f, str) and len(f) < 512
                                          for f in fields[1:]):
            # Refused at hello, before there were keys: unauthenticated, only informative.
            raise HandshakeRefused(f"the node refused us: {fields[2]} (unauthenticated reply)",
                                   fields[1])
        server_eph = _check_eph(fields[0])
        try:
            rx, tx = sodium.crypto_kx_client_session_keys(self._eph_pk, self._eph_sk,
                                                          server_eph)
        except nacl.exceptions.CryptoError:
            raise BadMessage("server ephemeral key is unusable") from None
        pull = _pull_stream(rx, fields[1])
        expect(isinstance(fields[2], bytes), "bad server identity")
        identity, _ = _pull(pull, fields[2])
        transcript = _transcript(b"server", self.grid.grid_id, self._eph_pk, server_eph)
        peer = _check_identity_untrusted(identity, transcript,
                                         _Checks(self.grid, revoked, now))
        if peer.kind != "node":
            raise HandshakeRefused("the server holds a user certificate, not a node's",
                                   "wrong_kind")
        if self.expect_id is not None and peer.subject_id != self.expect_id:
            raise HandshakeRefused(f"reached node {peer.subject_id.hex()}, not the expected "
                                   f"{self.expect_id.hex()}", "wrong_peer")
        push, header = _new_stream(tx)
        self._session = Session(peer, push, pull, self.max_frame)
        mine = _transcript(b"client", self.grid.grid_id, self._eph_pk, server_eph)
        return packb([header, self._session.encrypt(
            _identity_payload(self.key, self.cert, mine))])

    def receive_verdict_untrusted(self, m4: bytes) -> Session:
        """The server's verdict on our certificate: the session, or HandshakeRefused."""
        assert self._session is not None, "M4 before M2"  # our bug, not the peer's
        verdict = unpackb_untrusted(self._session.decrypt_untrusted(m4),
                                    max_size=MAX_HANDSHAKE_FRAME)
        expect(isinstance(verdict, list) and len(verdict) > 0, "bad verdict")
        if verdict == ["ok"]:
            return self._session
        if len(verdict) == 3 and verdict[0] == "refused" and all(
                isinstance(v, str) and len(v) < 512 for v in verdict[1:]):
            raise HandshakeRefused(f"the node refused us: {verdict[2]}", verdict[1])
        raise BadMessage("bad verdict")


class ServerHandshake:
    """The accepting side: M1 in, M2 out, then M3 in and M4 out."""

    def __init__(self, key: KeyPair, cert: Certificate, grid: GridInfo, *,
                 max_frame: int = MAX_FRAME) -> None:
        self.key, self.cert, self.grid = key, cert, grid
        self.max_frame = max_frame
        self._client_eph = b""
        self._server_eph = b""
        self._keys: tuple[bytes, bytes] = (b"", b"")
        self._push: Any = None

    def receive_hello_untrusted(self, m1: bytes) -> bytes:
        fields = unpackb_untrusted(m1, max_size=MAX_HANDSHAKE_FRAME)
        expect(isinstance(fields, list) and len(fields) == 4 and fields[0] == HELLO_TAG,
               "not a gridnode channel hello")
        if fields[1] != VERSION:
            raise HandshakeRefused(f"unsupported channel version {fields[1]!r}", "version")
        if fields[2] != self.grid.grid_id:
            grid = fields[2].hex()[:16] if isinstance(fields[2], bytes) else "?"
            raise HandshakeRefused(f"client is of grid {grid}, not this one", "wrong_grid")
        self._client_eph = _check_eph(fields[3])
        pk, sk = sodium.crypto_kx_keypair()
        self._server_eph = pk
        try:
            self._keys = sodium.crypto_kx_server_session_keys(pk, sk, self._client_eph)
        except nacl.exceptions.CryptoError:
            raise BadMessage("client ephemeral key is unusable") from None
        self._push, header = _new_stream(self._keys[1])
        transcript = _transcript(b"server", self.grid.grid_id, self._client_eph, pk)
        identity = _identity_payload(self.key, self.cert, transcript)
        ct = sodium.crypto_secretstream_xchacha20poly1305_push(self._push, identity, None,
                                                               TAG_MESSAGE)
        return packb([pk, header, ct])

    def receive_client_untrusted(self, m3: bytes, *, now: float,
                                 revoked: frozenset[bytes]) -> tuple[Session, bytes]:
        """Check the client; return the session and M4 (``ok``).

        A refused client raises HandshakeRefused; :meth:`refusal` then gives
        the M4 that tells it why (encrypted to it, when it got that far).
        """
        fields = unpackb_untrusted(m3, max_size=MAX_HANDSHAKE_FRAME)
        expect(isinstance(fields, list) and len(fields) == 2, "M3 is not [header, identity]")
        pull = _pull_stream(self._keys[0], fields[0])
        expect(isinstance(fields[1], bytes), "bad client identity")
        identity, _ = _pull(pull, fields[1])
        transcript = _transcript(b"client", self.grid.grid_id, self._client_eph,
                                 self._server_eph)
        peer = _check_identity_untrusted(identity, transcript, _Checks(self.grid, revoked, now))
        session = Session(peer, self._push, pull, self.max_frame)
        return session, session.encrypt(packb(["ok"]))

    def refusal(self, exc: HandshakeRefused) -> bytes:
        """The reply that tells a refused client why: M4 in its stream once M2 has
        given it one; before that, in clear instead of M2 (nothing secret in it)."""
        if self._push is None:
            return packb(["refused", exc.code, str(exc)[:400]])
        return sodium.crypto_secretstream_xchacha20poly1305_push(
            self._push, packb(["refused", exc.code, str(exc)[:400]]), None, TAG_FINAL)
