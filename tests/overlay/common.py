"""Deterministic keys and settings shared by the overlay tests."""

import nacl.signing
from hypothesis import settings

from overlay import KeyPair

SETTINGS = settings(max_examples=200, deadline=None, database=None)
NOW = 1_700_000_000


def fixed_key(n: int) -> KeyPair:
    """Key number ``n``: the same key in every run, so failures reproduce."""
    return KeyPair(nacl.signing.SigningKey(bytes([n]) * 32))
