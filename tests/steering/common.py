"""Deterministic users and jobs for the steering tests."""

from __future__ import annotations

from overlay import Certificate, GridInfo
from steering.job import JobSpec, SignedJob
from tests.overlay.common import NOW, fixed_key

AUTH = fixed_key(1)
GRID = GridInfo.create(AUTH, "grid", NOW)
ALICE = fixed_key(10)
BOB = fixed_key(11)


def user_cert(key, name: str = "alice", roles: tuple[str, ...] = ()) -> Certificate:
    return Certificate.issue(AUTH, kind="user", subject_key=key.public_key, name=name,
                             roles=roles, not_before=NOW - 3600, not_after=NOW + 86400 * 365)


ALICE_CERT = user_cert(ALICE)
BOB_CERT = user_cert(BOB, "bob")


def job(n: int = 0, *, key=ALICE, cert=ALICE_CERT, **spec) -> SignedJob:
    spec.setdefault("argv", ["true"])
    return SignedJob.create(key, cert, JobSpec.from_mapping(spec), NOW + n,
                            n.to_bytes(8, "big"))
