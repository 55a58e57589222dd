"""Signed node records (overlay.records)."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from overlay import (
    ROLES,
    BadMessage,
    Certificate,
    CertificateRejected,
    GridInfo,
    KeyPair,
    NodeRecord,
    RevocationList,
    node_record_key,
    packb,
)
from overlay._wire import seal
from overlay.certs import CLOCK_SKEW, VERSION
from overlay.records import CAPACITY_KEYS, MAX_ADDRESSES, NODE_RECORD_TAG
from tests.overlay.common import NOW, SETTINGS, fixed_key

AUTH = fixed_key(11)
OTHER_AUTH = fixed_key(12)
NODE = fixed_key(13)
NODE2 = fixed_key(14)
USER = fixed_key(15)

GRID = GridInfo.create(AUTH, "records-grid", NOW - 10_000)
OTHER_GRID = GridInfo.create(OTHER_AUTH, "other-grid", NOW - 10_000)


def _cert(key: KeyPair = NODE, *, authority: KeyPair = AUTH, kind: str = "node",
          roles: tuple[str, ...] = ("queue", "storage"), not_before: int = NOW - 100,
          not_after: int = NOW + 86_400) -> Certificate:
    return Certificate.issue(authority, kind=kind, subject_key=key.public_key, name="site-a",
                             roles=roles, not_before=not_before, not_after=not_after)


CERT = _cert()


def _record(key: KeyPair = NODE, cert: Certificate = CERT, *,
            roles: tuple[str, ...] = ("queue",), expires: int = NOW + 3600,
            **overrides: Any) -> NodeRecord:
    kwargs: dict[str, Any] = {
        "addresses": ("tcp://10.0.0.3:7000", "udp://[::1]:7001"),
        "roles": roles,
        "capacity": {"cores": 8, "memory_mb": 16_000, "disk_gb": 500},
        "seq": 7,
        "expires": expires,
    }
    kwargs.update(overrides)
    return NodeRecord.create(key, cert, **kwargs)


def _decode(raw: bytes, now: float = NOW, **kw: Any) -> NodeRecord:
    return NodeRecord.from_bytes_untrusted(raw, GRID, now, **kw)


# -- round trip --------------------------------------------------------------------------


def test_node_record_round_trip() -> None:
    rec = _record()
    back = _decode(rec.raw)
    assert back == rec
    assert back.raw == rec.raw
    assert back.node_id == NODE.id
    assert back.public_key == NODE.public_key
    assert back.cert == CERT
    assert back.cert.raw == CERT.raw
    assert back.addresses == ("tcp://10.0.0.3:7000", "udp://[::1]:7001")
    assert back.roles == ("queue",)
    assert back.capacity == {"cores": 8, "memory_mb": 16_000, "disk_gb": 500}
    assert back.seq == 7
    assert back.expires == NOW + 3600
    assert back.site == "site-a"


def test_node_record_with_every_field_minimal() -> None:
    rec = _record(roles=(), addresses=(), capacity={}, seq=0)
    back = _decode(rec.raw)
    assert back == rec
    assert (back.roles, back.addresses, back.capacity, back.seq) == ((), (), {}, 0)


@SETTINGS
@given(
    roles=st.lists(st.sampled_from(("queue", "storage")), unique=True).map(tuple),
    addresses=st.lists(st.text(min_size=1, max_size=127), max_size=MAX_ADDRESSES).map(tuple),
    capacity=st.dictionaries(st.sampled_from(CAPACITY_KEYS), st.integers(0, 2**63 - 1)),
    seq=st.integers(0, 2**63 - 1),
    expires=st.integers(NOW, 2**63 - 1),
)
def test_node_record_round_trip_any(roles: tuple[str, ...], addresses: tuple[str, ...],
                                    capacity: dict[str, int], seq: int, expires: int) -> None:
    rec = NodeRecord.create(NODE, CERT, addresses=addresses, roles=roles, capacity=capacity,
                            seq=seq, expires=expires)
    back = _decode(rec.raw)
    assert back == rec
    assert (back.roles, back.addresses, back.capacity, back.seq, back.expires) == (
        roles, addresses, capacity, seq, expires)


# -- who signed, for whom -------------------------------------------------------------------


def test_record_signed_by_a_key_that_is_not_the_cert_subject_is_refused() -> None:
    # NODE2 publishes a record carrying NODE's certificate.
    rec = _record(key=NODE2, cert=CERT)
    with pytest.raises(CertificateRejected, match="not for this key"):
        _decode(rec.raw)


def test_record_claiming_anothers_key_but_signed_by_ours_is_refused() -> None:
    # Claims NODE's id and key (matching the certificate) but NODE2 signed it.
    raw = seal(NODE_RECORD_TAG, [VERSION, NODE.id, NODE.public_key, CERT.raw, [],
                                 ["queue"], {}, 1, NOW + 10], NODE2.signing_key)
    with pytest.raises(BadMessage, match="bad signature"):
        _decode(raw)


def test_record_whose_node_id_does_not_match_its_key_is_refused() -> None:
    raw = seal(NODE_RECORD_TAG, [VERSION, NODE2.id, NODE.public_key, CERT.raw, [],
                                 ["queue"], {}, 1, NOW + 10], NODE.signing_key)
    with pytest.raises(BadMessage, match="node id"):
        _decode(raw)


def test_record_with_a_cert_from_another_grid_is_refused() -> None:
    rec = _record(cert=_cert(authority=OTHER_AUTH))
    with pytest.raises(CertificateRejected, match="not by this grid"):
        _decode(rec.raw)
    # ... though it is fine in the grid that issued it.
    NodeRecord.from_bytes_untrusted(rec.raw, OTHER_GRID, NOW)


def test_record_with_a_user_cert_is_refused() -> None:
    rec = _record(key=USER, cert=_cert(USER, kind="user", roles=()), roles=())
    with pytest.raises(CertificateRejected, match="expected a node"):
        _decode(rec.raw)


def test_record_with_a_garbage_cert_is_refused() -> None:
    for cert_raw in (b"", b"\x90", CERT.raw[:-1], GRID.raw):
        raw = seal(NODE_RECORD_TAG, [VERSION, NODE.id, NODE.public_key, cert_raw, [],
                                     ["queue"], {}, 1, NOW + 10], NODE.signing_key)
        with pytest.raises(BadMessage):
            _decode(raw)


# -- roles -----------------------------------------------------------------------------------


@pytest.mark.parametrize("roles", [("catalog",), ("queue", "compute"), ROLES])
def test_record_roles_exceeding_the_certificate_are_refused(roles: tuple[str, ...]) -> None:
    assert not set(roles) <= set(CERT.roles)
    rec = _record(roles=roles)
    with pytest.raises(BadMessage, match="roles its certificate lacks"):
        _decode(rec.raw)


@pytest.mark.parametrize("roles", [(), ("queue",), ("storage",), ("storage", "queue")])
def test_record_roles_within_the_certificate_are_accepted(roles: tuple[str, ...]) -> None:
    assert _decode(_record(roles=roles).raw).roles == roles


def test_record_with_unknown_or_repeated_roles_is_refused() -> None:
    cert = _cert(roles=ROLES)
    for roles in (("admin",), ("queue", "queue")):
        with pytest.raises(BadMessage, match="role"):
            _decode(_record(cert=cert, roles=roles).raw)


# -- time -------------------------------------------------------------------------------------


def test_expired_record_is_refused() -> None:
    rec = _record(expires=NOW + 10)
    assert _decode(rec.raw, now=NOW + 10).expires == NOW + 10
    with pytest.raises(CertificateRejected, match="node record has expired"):
        _decode(rec.raw, now=NOW + 11)
    with pytest.raises(CertificateRejected, match="node record has expired"):
        _decode(rec.raw, now=NOW + 10.5)


def test_record_with_an_expired_certificate_is_refused() -> None:
    cert = _cert(not_before=NOW - 1000, not_after=NOW - CLOCK_SKEW - 1)
    rec = _record(cert=cert, expires=NOW + 3600)
    with pytest.raises(CertificateRejected, match="certificate has expired"):
        _decode(rec.raw)


def test_record_with_a_not_yet_valid_certificate_is_refused() -> None:
    cert = _cert(not_before=NOW + CLOCK_SKEW + 1, not_after=NOW + 10_000)
    with pytest.raises(CertificateRejected, match="not valid yet"):
        _decode(_record(cert=cert).raw)


# -- revocation --------------------------------------------------------------------------------


def test_record_of_a_revoked_node_is_refused() -> None:
    rec = _record()
    revs = RevocationList.from_bytes_untrusted(
        RevocationList.issue(AUTH, 1, NOW, frozenset({NODE.id})).raw, GRID)
    with pytest.raises(CertificateRejected, match="revoked"):
        _decode(rec.raw, revoked=revs.revoked)


def test_revoking_another_node_leaves_the_record_alone() -> None:
    rec = _record()
    assert _decode(rec.raw, revoked=frozenset({NODE2.id})) == rec


# -- shape checks behind a valid signature -------------------------------------------------------


def _signed_record(**changes: Any) -> bytes:
    fields: dict[str, Any] = {
        "version": VERSION, "node_id": NODE.id, "pub": NODE.public_key, "cert": CERT.raw,
        "addresses": ["tcp://h:1"], "roles": ["queue"], "capacity": {"cores": 1},
        "seq": 1, "expires": NOW + 100,
    }
    fields.update(changes)
    return seal(NODE_RECORD_TAG, list(fields.values()), NODE.signing_key)


def test_signed_record_control_decodes() -> None:
    assert _decode(_signed_record()).capacity == {"cores": 1}


@pytest.mark.parametrize(
    "changes",
    [
        {"version": 2},
        {"cert": "not bytes"},
        {"addresses": "tcp://h:1"},
        {"addresses": ["x"] * (MAX_ADDRESSES + 1)},
        {"addresses": [""]},
        {"addresses": ["x" * 128]},
        {"addresses": [1]},
        {"roles": "queue"},
        {"capacity": [1]},
        {"capacity": {"gpus": 1}},
        {"capacity": {"cores": -1}},
        {"capacity": {"cores": 1.5}},
        {"capacity": {"cores": True}},
        {"capacity": {"cores": 2**63}},
        {"seq": -1},
        {"seq": "1"},
        {"expires": None},
        {"expires": 2**63},
    ],
    ids=repr,
)
def test_signed_record_with_bad_fields_is_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(BadMessage):
        _decode(_signed_record(**changes))


def test_record_with_wrong_field_count_is_refused() -> None:
    body_fields = [VERSION, NODE.id, NODE.public_key, CERT.raw, [], [], {}, 1, NOW + 100]
    for fields in (body_fields[:-1], [*body_fields, None]):
        with pytest.raises(BadMessage, match="fields"):
            _decode(seal(NODE_RECORD_TAG, fields, NODE.signing_key))


def test_record_with_tampered_fields_is_refused() -> None:
    rec = _record()
    body, sig = msgpack.unpackb(rec.raw)
    inner = msgpack.unpackb(body)
    # inner is [tag, version, id, key, cert, addresses, roles, capacity, seq, expires]
    for i, value in [(5, ["tcp://evil:1"]), (6, ["queue", "storage"]), (7, {"cores": 999}),
                     (8, 8), (9, NOW + 10**6)]:
        tampered = list(inner)
        tampered[i] = value
        with pytest.raises(BadMessage, match="bad signature"):
            _decode(packb([packb(tampered), sig]))


# -- DHT keys ----------------------------------------------------------------------------------


def test_node_record_key_is_distinct_per_node() -> None:
    keys = [fixed_key(n) for n in range(20, 60)]
    dht_keys = {node_record_key(k.id) for k in keys}
    assert len(dht_keys) == len(keys)
    assert node_record_key(NODE.id) != node_record_key(NODE2.id)


def test_node_record_key_is_stable_and_bytes() -> None:
    k = node_record_key(NODE.id)
    assert isinstance(k, bytes)
    assert k == node_record_key(NODE.id)
    assert NODE.id in k


@SETTINGS
@given(a=st.binary(min_size=20, max_size=20), b=st.binary(min_size=20, max_size=20))
def test_node_record_key_is_injective(a: bytes, b: bytes) -> None:
    assert (node_record_key(a) == node_record_key(b)) == (a == b)
