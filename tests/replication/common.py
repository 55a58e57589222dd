"""Deterministic grid, users and files for the replication tests."""

from __future__ import annotations

import random
from pathlib import Path

from overlay import Certificate, GridInfo, KeyPair
from tests.overlay.common import NOW, fixed_key

AUTH = fixed_key(1)
GRID = GridInfo.create(AUTH, "grid", NOW)
OTHER_GRID = GridInfo.create(fixed_key(2), "other", NOW)
ALICE = fixed_key(20)
BOB = fixed_key(21)
ROOT = fixed_key(22)
# Small chunks keep the multi-chunk cases fast; one test uses the real size.
SMALL = 1024


def user_cert(key: KeyPair, name: str, roles: tuple[str, ...] = (),
              authority: KeyPair = AUTH) -> Certificate:
    return Certificate.issue(authority, kind="user", subject_key=key.public_key, name=name,
                             roles=roles, not_before=NOW - 3600, not_after=NOW + 86400 * 365)


ALICE_CERT = user_cert(ALICE, "alice")
BOB_CERT = user_cert(BOB, "bob")
ADMIN_CERT = user_cert(ROOT, "root", ("admin",))


def pattern(n: int, seed: int = 0) -> bytes:
    """``n`` reproducible bytes with no two chunks alike."""
    return random.Random(seed).randbytes(n)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
