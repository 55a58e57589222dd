"""Canonical msgpack and signed envelopes: the one door for untrusted bytes.

Every signed thing in gridnode is an *envelope*: ``msgpack([body, sig])``
where ``body = msgpack([DOMAIN_TAG, *fields])`` and ``sig`` is an Ed25519
signature over ``body``.  The signature covers the exact bytes, so the
encoding does not need to be canonical on read; on write we always pack the
same way (``use_bin_type=True``).  The domain tag makes a signature for one
kind of record useless for another.
"""

from __future__ import annotations

from typing import Any

import msgpack
import nacl.exceptions
import nacl.signing

from ._errors import BadMessage

# Caps on what we are willing to decode at all.  Certificates and records
# are small; a larger blob is refused before it costs memory.
MAX_ENVELOPE = 64 * 1024
SIGNATURE_SIZE = 64


def packb(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpackb_untrusted(data: bytes, *, max_size: int = MAX_ENVELOPE,
                      max_items: int = 4096) -> Any:
    """Decode msgpack from a peer, a file or the DHT, or raise BadMessage."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise BadMessage(f"expected bytes, got {type(data).__name__}")
    if len(data) > max_size:
        raise BadMessage(f"message of {len(data)} bytes exceeds the cap of {max_size}")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=max_size,
            max_bin_len=max_size,
            max_array_len=max_items,
            max_map_len=max_items,
        )
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError, RecursionError) as exc:
        raise BadMessage(f"undecodable msgpack: {exc}") from None


def seal(domain: bytes, fields: list[Any], key: nacl.signing.SigningKey) -> bytes:
    """Sign ``[domain, *fields]`` with ``key`` and return the envelope bytes."""
    return seal_body(packb([domain, *fields]), key)


def seal_body(body: bytes, key: nacl.signing.SigningKey) -> bytes:
    """The envelope of an already packed body: ``[body, sig]``."""
    return packb([body, key.sign(body).signature])


def sealed_size(body_size: int) -> int:
    """How many bytes :func:`seal_body` makes of a body that size (no signing needed)."""
    # fixarray(2), bin header + body, bin8 header + signature
    header = 2 if body_size < 1 << 8 else 3 if body_size < 1 << 16 else 5
    return 1 + header + body_size + 2 + SIGNATURE_SIZE


def open_envelope_untrusted(domain: bytes, data: bytes, *, outer: Any = None,
                            max_size: int = MAX_ENVELOPE,
                            max_items: int = 4096) -> tuple[list[Any], bytes, bytes]:
    """Split an envelope without checking the signature yet.

    Returns ``(fields, body, sig)``; the caller picks the verifying key from
    the fields (a self-signed request) or from its trust anchor (a
    certificate) and calls :func:`verify_body`.  ``outer`` is ``data``
    already decoded, for a caller that had to look at it first.
    ``max_size`` and ``max_items`` cap both the envelope and its body: a
    kind of record that may be larger than ``MAX_ENVELOPE`` (a dataset's
    file list) names its own caps.
    """
    if outer is None:
        outer = unpackb_untrusted(data, max_size=max_size, max_items=max_items)
    if not (isinstance(outer, list) and len(outer) == 2):
        raise BadMessage("envelope is not a [body, signature] pair")
    body, sig = outer
    if not isinstance(body, bytes) or not isinstance(sig, bytes):
        raise BadMessage("envelope body and signature must be bytes")
    if len(sig) != SIGNATURE_SIZE:
        raise BadMessage(f"signature has {len(sig)} bytes, expected {SIGNATURE_SIZE}")
    inner = unpackb_untrusted(body, max_size=max_size, max_items=max_items)
    if not (isinstance(inner, list) and inner):
        raise BadMessage("envelope body is not a list")
    if inner[0] != domain:
        raise BadMessage(f"wrong domain tag {inner[0]!r}, expected {domain!r}")
    return inner[1:], body, sig


def verify_body(public_key: bytes, body: bytes, sig: bytes) -> None:
    """Check an Ed25519 signature or raise BadMessage."""
    try:
        nacl.signing.VerifyKey(public_key).verify(body, sig)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError,
            nacl.exceptions.TypeError) as exc:
        raise BadMessage(f"bad signature: {exc}") from None


def expect(cond: bool, what: str) -> None:
    """Raise BadMessage unless ``cond``: a check on untrusted data, never an assert."""
    if not cond:
        raise BadMessage(what)
