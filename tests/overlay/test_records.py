"""Signed DHT records (overlay.records): SignedRecord, its kinds, the NodeRecord view, keys.

A record is the envelope ``[RECORD_TAG, version, key, kind, cert, seq, expires,
value]`` signed by the certificate's subject.  Most tests here build records by
hand with :func:`_seal`, so that the decoder is tested on what a peer could
send, not only on what :meth:`SignedRecord.create` produces.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgpack
import nacl.signing
import pytest
from hypothesis import given
from hypothesis import strategies as st

from overlay import (
    ROLES,
    BadMessage,
    Certificate,
    CertificateRejected,
    GridInfo,
    JoinRequest,
    KeyPair,
    NodeRecord,
    RevocationList,
    node_record_key,
    packb,
)
from overlay._wire import seal
from overlay.certs import (
    CERT_TAG,
    CLOCK_SKEW,
    GRID_INFO_TAG,
    JOIN_REQUEST_TAG,
    REVOCATIONS_TAG,
    VERSION,
)
from overlay.identity import ID_SIZE
from overlay.records import (
    CAPACITY_KEYS,
    KINDS,
    MAX_ADDRESSES,
    MAX_PROVIDER_VALUE,
    MAX_RECORD,
    MAX_RECORD_TTL,
    RECORD_TAG,
    REVOCATIONS_KEY,
    SignedRecord,
    dht_key,
    provider_key,
)
from tests.overlay.common import NOW, SETTINGS, fixed_key

AUTH = fixed_key(11)
OTHER_AUTH = fixed_key(12)
NODE = fixed_key(13)
NODE2 = fixed_key(14)
USER = fixed_key(15)

GRID = GridInfo.create(AUTH, "records-grid", NOW - 10_000)
OTHER_GRID = GridInfo.create(OTHER_AUTH, "other-grid", NOW - 10_000)

# The latest ``expires`` a record read at ``now`` may claim: a day, plus a clock skew.
LIFETIME_LIMIT = MAX_RECORD_TTL + 300
OLD_NODE_RECORD_TAG = b"gridnode/node-record/v1"


def _cert(key: KeyPair = NODE, *, authority: KeyPair = AUTH, kind: str = "node",
          roles: tuple[str, ...] = ("queue", "storage"), not_before: int = NOW - 100,
          not_after: int = NOW + 86_400) -> Certificate:
    return Certificate.issue(authority, kind=kind, subject_key=key.public_key, name="site-a",
                             roles=roles, not_before=not_before, not_after=not_after)


CERT = _cert()
CERT2 = _cert(NODE2, roles=("queue",))
USER_CERT = _cert(USER, kind="user", roles=())
OTHER_GRID_CERT = _cert(authority=OTHER_AUTH)
EXPIRED_CERT = _cert(not_before=NOW - 10_000, not_after=NOW - CLOCK_SKEW - 1)
FUTURE_CERT = _cert(not_before=NOW + CLOCK_SKEW + 1, not_after=NOW + 10_000)

REVS = RevocationList.issue(AUTH, 5, NOW - 50, frozenset({USER.id}))
OTHER_REVS = RevocationList.issue(OTHER_AUTH, 5, NOW - 50, frozenset({USER.id}))

ADDRESSES = ("tcp://10.0.0.3:7000", "udp://[::1]:7001")
CAPACITY = {"cores": 8, "memory_mb": 16_000, "disk_gb": 500}
PROVIDER_KEY = provider_key("role", "queue")


def _node_value(addresses: Any = ADDRESSES, roles: Any = ("queue",),
                capacity: Any = None) -> bytes:
    return packb([list(addresses) if isinstance(addresses, tuple) else addresses,
                  list(roles) if isinstance(roles, tuple) else roles,
                  CAPACITY if capacity is None else capacity])


NODE_VALUE = _node_value()

# Fields that make a valid record of each kind, signed by NODE with CERT.
GOOD: dict[str, dict[str, Any]] = {
    "node": {"key": node_record_key(NODE.id), "value": NODE_VALUE},
    "provider": {"key": PROVIDER_KEY, "value": b"tcp://10.0.0.3:7000"},
    "revocations": {"key": REVOCATIONS_KEY, "value": REVS.raw},
}


def _seal(signer: KeyPair = NODE, *, tag: bytes = RECORD_TAG, kind: str | Any = "node",
          **changes: Any) -> bytes:
    """A record envelope built by hand: the good fields of ``kind`` with ``changes``."""
    good = isinstance(kind, str) and kind in GOOD
    fields: dict[str, Any] = {
        "version": VERSION,
        "key": GOOD[kind]["key"] if good else node_record_key(NODE.id),
        "kind": kind,
        "cert": CERT.raw,
        "seq": 7,
        "expires": NOW + 3600,
        "value": GOOD[kind]["value"] if good else NODE_VALUE,
    }
    assert set(changes) <= set(fields), f"unknown fields {set(changes) - set(fields)}"
    fields.update(changes)
    return seal(tag, list(fields.values()), signer.signing_key)


def _create(kind: str = "node", key_pair: KeyPair = NODE, cert: Certificate = CERT,
            **changes: Any) -> SignedRecord:
    kwargs: dict[str, Any] = {"seq": 7, "expires": NOW + 3600, **GOOD[kind]}
    kwargs.update(changes)
    return SignedRecord.create(key_pair, cert, kind=kind, **kwargs)


def _decode(raw: Any, now: float = NOW, grid: GridInfo = GRID, **kw: Any) -> SignedRecord:
    return SignedRecord.from_bytes_untrusted(raw, grid, now, **kw)


def _decode_node(raw: Any, now: float = NOW, **kw: Any) -> NodeRecord:
    return NodeRecord.from_bytes_untrusted(raw, GRID, now, **kw)


def _is_uint63(x: object) -> bool:
    return type(x) is int and 0 <= x < 2**63


def _check_accepted(rec: SignedRecord, data: bytes, now: float = NOW,
                    revoked: frozenset[bytes] = frozenset()) -> None:
    """Whatever the decoder accepts obeys every rule and is exactly what was signed."""
    assert isinstance(rec, SignedRecord)
    assert rec.raw == data and len(data) <= MAX_RECORD
    body, sig = msgpack.unpackb(data)
    tag, version, key, kind, cert_raw, seq, expires, value = msgpack.unpackb(body)
    assert (tag, version) == (RECORD_TAG, VERSION)
    assert (rec.key, rec.kind, rec.cert.raw, rec.seq, rec.expires, rec.value) == (
        key, kind, cert_raw, seq, expires, value)
    # Signed by the key its certificate names, and that certificate is good here and now.
    nacl.signing.VerifyKey(rec.cert.subject_key).verify(body, sig)
    assert rec.signer == rec.cert.subject_id
    assert rec.cert.kind == "node" and rec.cert.issuer_key == GRID.authority_key
    assert rec.cert.grid_id == GRID.grid_id
    assert rec.cert.not_before - CLOCK_SKEW <= now <= rec.cert.not_after + CLOCK_SKEW
    assert rec.signer not in revoked
    assert isinstance(rec.key, bytes) and len(rec.key) == ID_SIZE
    assert rec.kind in KINDS
    assert _is_uint63(rec.seq) and _is_uint63(rec.expires)
    assert now <= rec.expires <= now + LIFETIME_LIMIT
    assert isinstance(rec.value, bytes)
    if rec.kind == "node":
        assert rec.key == node_record_key(rec.signer)
        view = NodeRecord.from_signed(rec)
        assert set(view.roles) <= set(rec.cert.roles)
        assert len(view.addresses) <= MAX_ADDRESSES
        assert all(isinstance(a, str) and 0 < len(a) < 128 for a in view.addresses)
        assert set(view.capacity) <= set(CAPACITY_KEYS)
        assert all(_is_uint63(v) for v in view.capacity.values())
    elif rec.kind == "provider":
        assert len(rec.value) <= MAX_PROVIDER_VALUE
    else:
        assert rec.key == REVOCATIONS_KEY
        assert RevocationList.from_bytes_untrusted(rec.value, GRID).grid_id == GRID.grid_id


def _returns_or_bad_message(data: Any, now: float = NOW,
                            revoked: frozenset[bytes] = frozenset()) -> SignedRecord | None:
    try:
        rec = _decode(data, now, revoked=revoked)
    except BadMessage as exc:
        assert str(exc), "BadMessage should say what is wrong"
        return None
    _check_accepted(rec, data, now, revoked)
    return rec


# -- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_signed_record_round_trip(kind: str) -> None:
    rec = _create(kind)
    back = _decode(rec.raw)
    assert back == rec
    assert back.raw == rec.raw
    assert (back.key, back.kind, back.seq, back.expires, back.value) == (
        GOOD[kind]["key"], kind, 7, NOW + 3600, GOOD[kind]["value"])
    assert back.cert == CERT and back.cert.raw == CERT.raw
    assert back.signer == NODE.id
    _check_accepted(back, rec.raw)


@pytest.mark.parametrize("kind", KINDS)
def test_create_seals_the_documented_field_layout(kind: str) -> None:
    # [tag, version, key, kind, cert, seq, expires, value], signed by the subject:
    # the hand-built envelopes in this file are the real thing.
    assert _create(kind).raw == _seal(kind=kind)


def test_revocations_record_carries_the_list_intact() -> None:
    back = _decode(_create("revocations").raw)
    revs = RevocationList.from_bytes_untrusted(back.value, GRID)
    assert revs == REVS and revs.revoked == frozenset({USER.id})


def test_any_node_may_carry_the_revocation_list() -> None:
    rec = _create("revocations", NODE2, CERT2)
    assert _decode(rec.raw).signer == NODE2.id


@SETTINGS
@given(key=st.binary(min_size=ID_SIZE, max_size=ID_SIZE),
       value=st.binary(max_size=MAX_PROVIDER_VALUE),
       seq=st.integers(0, 2**63 - 1),
       expires=st.integers(NOW, NOW + LIFETIME_LIMIT))
def test_provider_record_round_trip_any(key: bytes, value: bytes, seq: int,
                                        expires: int) -> None:
    rec = SignedRecord.create(NODE, CERT, key=key, kind="provider", seq=seq, expires=expires,
                              value=value)
    back = _decode(rec.raw)
    assert back == rec
    assert (back.key, back.value, back.seq, back.expires) == (key, value, seq, expires)
    _check_accepted(back, rec.raw)


def test_create_refuses_an_unknown_kind() -> None:
    for kind in ("user", "nodes", "", "NODE"):
        with pytest.raises(ValueError, match="kind"):
            SignedRecord.create(NODE, CERT, key=PROVIDER_KEY, kind=kind, seq=1,
                                expires=NOW + 10, value=b"")


# -- size ------------------------------------------------------------------------------------


def _node_value_for_size(size: int) -> bytes:
    """A node value whose record (as _seal builds it) is exactly ``size`` bytes."""
    for count in range(MAX_ADDRESSES):
        for last in range(32, 128):
            value = _node_value(addresses=["a" * 100] * count + ["b" * last])
            if len(_seal(value=value)) == size:
                return value
    raise AssertionError(f"no node value gives a record of {size} bytes")


def test_record_of_exactly_max_size_is_accepted() -> None:
    value = _node_value_for_size(MAX_RECORD)
    raw = _seal(value=value)
    assert len(raw) == MAX_RECORD
    _check_accepted(_decode(raw), raw)
    rec = SignedRecord.create(NODE, CERT, key=node_record_key(NODE.id), kind="node", seq=7,
                              expires=NOW + 3600, value=value)
    assert rec.raw == raw


def test_create_refuses_an_oversized_record() -> None:
    value = _node_value_for_size(MAX_RECORD + 1)
    with pytest.raises(ValueError, match="exceeds the cap"):
        SignedRecord.create(NODE, CERT, key=node_record_key(NODE.id), kind="node", seq=7,
                            expires=NOW + 3600, value=value)
    with pytest.raises(ValueError, match="exceeds the cap"):
        _create("provider", value=b"x" * MAX_RECORD)


def test_hand_sealed_oversized_record_is_refused() -> None:
    # Valid in every other respect: only the size is wrong.
    raw = _seal(value=_node_value_for_size(MAX_RECORD + 1))
    assert len(raw) == MAX_RECORD + 1
    with pytest.raises(BadMessage, match="exceeds the cap"):
        _decode(raw)
    for value in (b"x" * MAX_RECORD, b"x" * 60_000):
        with pytest.raises(BadMessage, match="exceeds the cap"):
            _decode(_seal(kind="provider", value=value))


def test_node_record_with_max_addresses_may_exceed_the_record_cap() -> None:
    # MAX_ADDRESSES long addresses do not fit in MAX_RECORD: create says so (ValueError),
    # never produces a record that peers would refuse.
    with pytest.raises(ValueError, match="exceeds the cap"):
        NodeRecord.create(NODE, CERT, addresses=("x" * 127,) * MAX_ADDRESSES, roles=(),
                          capacity={}, seq=1, expires=NOW + 10)


@pytest.mark.parametrize("data", [bytearray(_seal()), memoryview(_seal()), "x", None, 1, [b""]])
def test_record_that_is_not_bytes_is_refused(data: Any) -> None:
    with pytest.raises(BadMessage, match="not bytes"):
        _decode(data)


# -- time -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_expired_record_is_refused(kind: str) -> None:
    raw = _seal(kind=kind, expires=NOW + 10)
    assert _decode(raw, now=NOW + 10).expires == NOW + 10
    for now in (NOW + 10.5, NOW + 11, NOW + 3600):
        with pytest.raises(CertificateRejected, match="record has expired"):
            _decode(raw, now=now)


@pytest.mark.parametrize("kind", KINDS)
def test_record_claiming_too_long_a_life_is_refused(kind: str) -> None:
    longest = _seal(kind=kind, expires=NOW + LIFETIME_LIMIT)
    _decode(longest)
    for expires in (NOW + LIFETIME_LIMIT + 1, NOW + 10 * MAX_RECORD_TTL, 2**63 - 1):
        raw = _seal(kind=kind, expires=expires)
        with pytest.raises(BadMessage, match="too long"):
            _decode(raw)
    # The limit is relative to the reader's clock: a second later it is fine.
    late = _seal(kind=kind, expires=NOW + LIFETIME_LIMIT + 1)
    assert _decode(late, now=NOW + 1).expires == NOW + LIFETIME_LIMIT + 1


@SETTINGS
@given(expires=st.integers(NOW - 2 * CLOCK_SKEW, NOW + LIFETIME_LIMIT + 2 * CLOCK_SKEW),
       frac=st.sampled_from([0.0, 0.25, 0.999]))
def test_record_lifetime_window(expires: int, frac: float) -> None:
    now = NOW + frac
    raw = _seal(kind="provider", expires=expires)
    try:
        _decode(raw, now=now)
    except BadMessage:
        assert not now <= expires <= now + LIFETIME_LIMIT
    else:
        assert now <= expires <= now + LIFETIME_LIMIT


def test_record_with_an_expired_certificate_is_refused() -> None:
    with pytest.raises(CertificateRejected, match="certificate has expired"):
        _decode(_seal(cert=EXPIRED_CERT.raw))


def test_record_with_a_not_yet_valid_certificate_is_refused() -> None:
    with pytest.raises(CertificateRejected, match="not valid yet"):
        _decode(_seal(cert=FUTURE_CERT.raw))


def test_record_read_after_its_certificate_expired_is_refused() -> None:
    # A record read after its certificate expired is refused, however long it claims to live.
    cert = _cert(not_before=NOW - 100, not_after=NOW + 100)
    raw = _seal(cert=cert.raw, expires=NOW + 3600)
    _decode(raw)
    with pytest.raises(CertificateRejected, match="certificate has expired"):
        _decode(raw, now=NOW + 100 + CLOCK_SKEW + 1)


# -- the signer's certificate -----------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_record_with_a_cert_from_another_grid_is_refused(kind: str) -> None:
    value = OTHER_REVS.raw if kind == "revocations" else GOOD[kind]["value"]
    raw = _seal(kind=kind, cert=OTHER_GRID_CERT.raw, value=value)
    with pytest.raises(CertificateRejected, match="not by this grid"):
        _decode(raw)
    # ... though it is fine in the grid that issued it.
    _decode(raw, grid=OTHER_GRID)


def test_record_with_a_cert_claiming_our_grid_but_issued_by_another_key_is_refused() -> None:
    fake = seal(CERT_TAG, [VERSION, "node", GRID.grid_id, NODE.public_key, "site-a",
                           ["queue"], NOW - 10, NOW + 10_000, OTHER_AUTH.public_key],
                OTHER_AUTH.signing_key)
    with pytest.raises(CertificateRejected, match="not by this grid"):
        _decode(_seal(cert=fake))


@pytest.mark.parametrize("kind", KINDS)
def test_record_of_a_revoked_signer_is_refused(kind: str) -> None:
    raw = _seal(kind=kind)
    with pytest.raises(CertificateRejected, match="revoked"):
        _decode(raw, revoked=frozenset({NODE.id}))
    # Revoking others, or the key bytes rather than the id, leaves it alone.
    _decode(raw, revoked=frozenset({NODE2.id, USER.id, NODE.public_key}))


@pytest.mark.parametrize("kind", KINDS)
def test_record_signed_with_a_user_cert_is_refused(kind: str) -> None:
    raw = _seal(USER, kind=kind, cert=USER_CERT.raw,
                **({"key": node_record_key(USER.id), "value": _node_value(roles=())}
                   if kind == "node" else {}))
    with pytest.raises(CertificateRejected, match="expected a node"):
        _decode(raw)


@pytest.mark.parametrize(
    "cert_raw",
    [b"", b"\x90", b"\xc0", CERT.raw[:-1], CERT.raw + b"\x00", GRID.raw, REVS.raw,
     _seal()],
    ids=["empty", "empty-list", "nil", "truncated", "extended", "grid-info", "revocations",
         "a-record"],
)
def test_record_with_a_garbage_cert_is_refused(cert_raw: bytes) -> None:
    with pytest.raises(BadMessage):
        _decode(_seal(cert=cert_raw))


# -- who signed ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_record_signed_by_a_key_other_than_the_cert_subject_is_refused(kind: str) -> None:
    # NODE2 publishes a record carrying NODE's certificate.
    for forger in (NODE2, USER, AUTH):
        with pytest.raises(BadMessage, match="bad signature"):
            _decode(_create(kind, forger, CERT).raw)
    # Nor can NODE2 publish its own node record with NODE's certificate.
    with pytest.raises(BadMessage, match="bad signature"):
        _decode(_seal(NODE2, key=node_record_key(NODE2.id)))


def test_record_with_a_signature_from_another_record_is_refused() -> None:
    a, b = _seal(seq=1), _seal(seq=2)
    body_a, _ = msgpack.unpackb(a)
    _, sig_b = msgpack.unpackb(b)
    with pytest.raises(BadMessage, match="bad signature"):
        _decode(packb([body_a, sig_b]))


def test_record_with_tampered_fields_is_refused() -> None:
    rec = _create("node")
    body, sig = msgpack.unpackb(rec.raw)
    inner = msgpack.unpackb(body)
    # inner is [tag, version, key, kind, cert, seq, expires, value]; each replacement
    # passes the checks made before the signature, so the signature is what refuses it.
    all_roles_cert = _cert(roles=ROLES)
    for i, value in [(2, node_record_key(NODE2.id)), (3, "provider"), (4, all_roles_cert.raw),
                     (5, 8), (6, NOW + 7200), (7, _node_value(roles=("queue", "storage"))),
                     (7, _node_value(addresses=("tcp://evil:1",)))]:
        tampered = list(inner)
        tampered[i] = value
        with pytest.raises(BadMessage, match="bad signature"):
            _decode(packb([packb(tampered), sig]))


# -- kind rules: keys -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [node_record_key(NODE2.id), REVOCATIONS_KEY, PROVIDER_KEY, NODE.id, dht_key(NODE.id),
     bytes(ID_SIZE)],
    ids=["other-node", "revocations", "provider", "raw-id", "unprefixed-hash", "zeros"],
)
def test_node_record_under_another_key_is_refused(key: bytes) -> None:
    with pytest.raises(BadMessage, match="another node's key"):
        _decode(_seal(key=key))


@pytest.mark.parametrize(
    "key",
    [node_record_key(NODE.id), PROVIDER_KEY, dht_key(b"gridnode/revocations/"),
     dht_key(b"revocations"), bytes(ID_SIZE)],
    ids=["node", "provider", "trailing-slash", "unprefixed", "zeros"],
)
def test_revocations_record_under_another_key_is_refused(key: bytes) -> None:
    with pytest.raises(BadMessage, match="wrong key"):
        _decode(_seal(kind="revocations", key=key))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "key",
    [b"", NODE.id[:19], NODE.id + b"\x00", b"gridnode/node/" + NODE.id, "x" * ID_SIZE, None,
     list(NODE.id)],
    ids=["empty", "19", "21", "old-style", "str", "nil", "list"],
)
def test_record_key_that_is_not_20_bytes_is_refused(kind: str, key: Any) -> None:
    with pytest.raises(BadMessage, match="20 bytes"):
        _decode(_seal(kind=kind, key=key))


# -- kind rules: values -----------------------------------------------------------------------


def test_provider_value_up_to_the_limit_is_accepted() -> None:
    for n in (0, 1, MAX_PROVIDER_VALUE):
        assert _decode(_seal(kind="provider", value=b"v" * n)).value == b"v" * n


@pytest.mark.parametrize("n", [MAX_PROVIDER_VALUE + 1, MAX_PROVIDER_VALUE + 100])
def test_provider_value_too_large_is_refused(n: int) -> None:
    raw = _seal(kind="provider", value=b"v" * n)
    assert len(raw) <= MAX_RECORD  # the kind rule refuses it, not the size cap
    with pytest.raises(BadMessage, match="provider value too large"):
        _decode(raw)
    # create leaves the judging to the readers
    assert _create("provider", value=b"v" * n).raw == raw


def _revocations_signed_by(signer: KeyPair, grid: GridInfo = GRID) -> bytes:
    return seal(REVOCATIONS_TAG, [VERSION, grid.grid_id, 9, NOW, [NODE.id]], signer.signing_key)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (OTHER_REVS.raw, "another grid"),
        (_revocations_signed_by(NODE), "bad signature"),
        (_revocations_signed_by(OTHER_AUTH), "bad signature"),
        (REVS.raw[:-1], None),
        (REVS.raw + b"\x00", None),
        (b"", None),
        (b"\x90", None),
        (b"garbage", None),
        (CERT.raw, "domain tag"),
        (GRID.raw, "domain tag"),
        (NODE_VALUE, None),
        (seal(REVOCATIONS_TAG, [VERSION, GRID.grid_id, -1, NOW, []], AUTH.signing_key),
         "serial"),
        (seal(REVOCATIONS_TAG, [VERSION, GRID.grid_id, 1, NOW, [b"short"]], AUTH.signing_key),
         "revoked id"),
    ],
    ids=["other-grid", "by-node", "by-other-authority", "truncated", "extended", "empty",
         "empty-list", "garbage", "certificate", "grid-info", "node-value", "bad-serial",
         "bad-id"],
)
def test_revocations_record_whose_value_is_not_our_list_is_refused(value: bytes,
                                                                    match: str | None) -> None:
    with pytest.raises(BadMessage, match=match):
        _decode(_seal(kind="revocations", value=value))


def test_revocations_of_another_grid_are_fine_in_that_grid() -> None:
    raw = _seal(kind="revocations", cert=OTHER_GRID_CERT.raw, value=OTHER_REVS.raw)
    assert _decode(raw, grid=OTHER_GRID).value == OTHER_REVS.raw
    raw = _seal(kind="revocations", cert=OTHER_GRID_CERT.raw, value=REVS.raw)
    with pytest.raises(BadMessage, match="another grid"):
        _decode(raw, grid=OTHER_GRID)


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"\xc1",
        packb("x"),
        packb([]),
        packb([[], []]),
        packb([[], [], {}, 0]),
        packb({"addresses": [], "roles": [], "capacity": {}}),
        _node_value(addresses="tcp://h:1"),
        _node_value(addresses=["x"] * (MAX_ADDRESSES + 1)),
        _node_value(addresses=[""]),
        _node_value(addresses=["x" * 128]),
        _node_value(addresses=[1]),
        _node_value(addresses=[b"tcp://h:1"]),
        _node_value(roles="queue"),
        _node_value(roles=["admin"]),
        _node_value(roles=["queue", "queue"]),
        _node_value(roles=[b"queue"]),
        _node_value(capacity=[1]),
        _node_value(capacity={"gpus": 1}),
        _node_value(capacity={b"cores": 1}),
        _node_value(capacity={"cores": -1}),
        _node_value(capacity={"cores": 1.5}),
        _node_value(capacity={"cores": True}),
        _node_value(capacity={"cores": 2**63}),
        _node_value(capacity={"cores": None}),
    ],
    ids=repr,
)
def test_node_record_with_a_bad_value_is_refused(value: bytes) -> None:
    raw = _seal(value=value)
    with pytest.raises(BadMessage):
        _decode(raw)
    with pytest.raises(BadMessage):
        _decode_node(raw)


# -- shape checks behind a valid signature -------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_hand_sealed_control_decodes(kind: str) -> None:
    raw = _seal(kind=kind)
    _check_accepted(_decode(raw), raw)


@pytest.mark.parametrize(
    "changes",
    [
        {"version": 2},
        {"version": 0},
        {"version": True},
        {"version": "1"},
        {"version": None},
        {"kind": "user"},
        {"kind": "Node"},
        {"kind": b"node"},
        {"kind": None},
        {"kind": ["node"]},
        {"cert": "not bytes"},
        {"cert": None},
        {"cert": [CERT.raw]},
        {"seq": -1},
        {"seq": "1"},
        {"seq": 1.0},
        {"seq": True},
        {"seq": 2**63},
        {"seq": None},
        {"expires": None},
        {"expires": 2**63},
        {"expires": -1},
        {"expires": float(NOW + 10)},
        {"expires": str(NOW + 10)},
        {"value": "not bytes"},
        {"value": None},
        {"value": [["tcp://h:1"], ["queue"], {}]},
    ],
    ids=repr,
)
def test_signed_record_with_bad_fields_is_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(BadMessage):
        _decode(_seal(**changes))


def test_record_with_wrong_field_count_is_refused() -> None:
    good = [VERSION, node_record_key(NODE.id), "node", CERT.raw, 1, NOW + 100, NODE_VALUE]
    for fields in ([], good[:1], good[:-1], [*good, None], [*good, NODE_VALUE]):
        with pytest.raises(BadMessage, match="fields"):
            _decode(seal(RECORD_TAG, fields, NODE.signing_key))


# -- domain separation --------------------------------------------------------------------------


JOIN = JoinRequest.create(NODE, GRID, "site-a", ("queue",), NOW)


@pytest.mark.parametrize("other", [CERT.raw, JOIN.raw, GRID.raw, REVS.raw],
                         ids=["cert", "join-request", "grid-info", "revocations"])
def test_other_envelopes_are_not_records(other: bytes) -> None:
    with pytest.raises(BadMessage, match="domain tag"):
        _decode(other)


def _relabel(raw: bytes, new_tag: bytes) -> bytes:
    body, sig = msgpack.unpackb(raw)
    inner = msgpack.unpackb(body)
    return packb([packb([new_tag, *inner[1:]]), sig])


@pytest.mark.parametrize("other", [CERT.raw, JOIN.raw, GRID.raw, REVS.raw],
                         ids=["cert", "join-request", "grid-info", "revocations"])
def test_other_envelopes_relabelled_as_records_are_refused(other: bytes) -> None:
    with pytest.raises(BadMessage):
        _decode(_relabel(other, RECORD_TAG))


@pytest.mark.parametrize(
    "tag", [CERT_TAG, JOIN_REQUEST_TAG, GRID_INFO_TAG, REVOCATIONS_TAG, OLD_NODE_RECORD_TAG],
    ids=lambda t: t.decode().split("/")[1])
@pytest.mark.parametrize("kind", KINDS)
def test_signature_under_another_domain_is_useless_for_a_record(tag: bytes, kind: str) -> None:
    # The subject key signed exactly a record's fields, but as another kind of thing
    # (say a join request): relabelled as a record it must not verify.
    raw = _seal(tag=tag, kind=kind)
    with pytest.raises(BadMessage, match="domain tag"):
        _decode(raw)
    with pytest.raises(BadMessage, match="bad signature"):
        _decode(_relabel(raw, RECORD_TAG))


def test_record_relabelled_as_a_join_request_is_refused() -> None:
    with pytest.raises(BadMessage, match="domain tag"):
        JoinRequest.from_bytes_untrusted(_seal())
    with pytest.raises(BadMessage):
        JoinRequest.from_bytes_untrusted(_relabel(_seal(), JOIN_REQUEST_TAG))


# -- a single flipped byte never verifies ------------------------------------------------------

FLIP_TARGETS = {kind: _create(kind).raw for kind in KINDS}


def _flip(raw: bytes, pos: int, xor: int) -> bytes:
    out = bytearray(raw)
    out[pos] ^= xor
    return bytes(out)


@pytest.mark.parametrize("kind", KINDS)
@SETTINGS
@given(data=st.data())
def test_any_single_byte_flip_is_refused(kind: str, data: st.DataObject) -> None:
    raw = FLIP_TARGETS[kind]
    pos = data.draw(st.integers(0, len(raw) - 1), label="pos")
    xor = data.draw(st.integers(1, 255), label="xor")
    with pytest.raises(BadMessage):
        _decode(_flip(raw, pos, xor))


@pytest.mark.parametrize("kind", KINDS)
def test_every_position_flipped_is_refused(kind: str) -> None:
    raw = FLIP_TARGETS[kind]
    accepted = []
    for pos in range(len(raw)):
        try:
            _decode(_flip(raw, pos, 0x01))
        except BadMessage:
            continue
        accepted.append(pos)
    assert accepted == []


@pytest.mark.parametrize("kind", KINDS)
def test_truncated_or_extended_record_is_refused(kind: str) -> None:
    raw = FLIP_TARGETS[kind]
    for n in range(len(raw)):
        with pytest.raises(BadMessage):
            _decode(raw[:n])
    for extra in (b"\x00", b"\xc0", raw):
        with pytest.raises(BadMessage):
            _decode(raw + extra)


# -- mixing fields of good records: exactly the right ones are accepted --------------------------

# Certificates a signer may carry, and whether this grid takes them from a node at NOW.
SIGNER_CERTS = {
    "node": (CERT, True),
    "node2": (CERT2, True),
    "user": (USER_CERT, False),
    "other-grid": (OTHER_GRID_CERT, False),
    "expired": (EXPIRED_CERT, False),
    "future": (FUTURE_CERT, False),
}
SIGNERS = {"node": NODE, "node2": NODE2, "user": USER}
KEYS = {
    "node": node_record_key(NODE.id), "node2": node_record_key(NODE2.id),
    "user": node_record_key(USER.id), "revocations": REVOCATIONS_KEY, "provider": PROVIDER_KEY,
}
STORAGE_VALUE = _node_value(roles=("storage",))
EMPTY_NODE_VALUE = _node_value(addresses=(), roles=(), capacity={})
VALUES = {
    "node": NODE_VALUE, "node-storage": STORAGE_VALUE, "node-empty": EMPTY_NODE_VALUE,
    "revs": REVS.raw, "other-revs": OTHER_REVS.raw, "max-provider": b"p" * MAX_PROVIDER_VALUE,
    "big-provider": b"p" * (MAX_PROVIDER_VALUE + 1), "empty": b"",
}
EXPIRIES = {
    "past": NOW - 1, "now": NOW, "hour": NOW + 3600, "longest": NOW + LIFETIME_LIMIT,
    "too-long": NOW + LIFETIME_LIMIT + 1,
}
REVOKED = {"none": frozenset(), "node": frozenset({NODE.id}), "node2": frozenset({NODE2.id})}


def _expected_ok(signer: KeyPair, cert_name: str, kind: str, key: bytes, value: bytes,
                 expires: int, revoked: frozenset[bytes]) -> bool:
    """The rules, restated independently of the code under test."""
    cert, cert_ok = SIGNER_CERTS[cert_name]
    if not cert_ok or cert.subject_id in revoked or signer.public_key != cert.subject_key:
        return False
    if not NOW <= expires <= NOW + LIFETIME_LIMIT:
        return False
    if kind == "node":
        allowed = {NODE_VALUE, EMPTY_NODE_VALUE}
        if "storage" in cert.roles:
            allowed.add(STORAGE_VALUE)
        return key == node_record_key(cert.subject_id) and value in allowed
    if kind == "provider":
        return len(value) <= MAX_PROVIDER_VALUE
    return key == REVOCATIONS_KEY and value == REVS.raw


def _judge(signer_name: str, cert_name: str, kind: str, key_name: str, value_name: str,
           expires_name: str, revoked_name: str) -> None:
    signer, cert = SIGNERS[signer_name], SIGNER_CERTS[cert_name][0]
    key, value = KEYS[key_name], VALUES[value_name]
    expires, revoked = EXPIRIES[expires_name], REVOKED[revoked_name]
    raw = _seal(signer, kind=kind, key=key, cert=cert.raw, expires=expires, value=value)
    expected = _expected_ok(signer, cert_name, kind, key, value, expires, revoked)
    got = _returns_or_bad_message(raw, revoked=revoked)
    assert (got is not None) == expected, (
        f"{'refused' if expected else 'accepted'} {signer_name=} {cert_name=} {kind=} "
        f"{key_name=} {value_name=} {expires_name=} {revoked_name=}")


_GOOD_CHOICE = {
    "node": ("node", "node", "node", "node", "node", "hour", "none"),
    "provider": ("node", "node", "provider", "provider", "max-provider", "hour", "none"),
    "revocations": ("node", "node", "revocations", "revocations", "revs", "hour", "none"),
}
_POOLS = (SIGNERS, SIGNER_CERTS, KINDS, KEYS, VALUES, EXPIRIES, REVOKED)


@pytest.mark.parametrize(
    "choice",
    sorted({(*good[:i], alt, *good[i + 1:])
            for good in _GOOD_CHOICE.values()
            for i, pool in enumerate(_POOLS) for alt in pool}),
    ids="-".join,
)
def test_one_field_changed_from_a_good_record(choice: tuple[str, ...]) -> None:
    """Every single-field change of a good record, judged against the restated rules."""
    _judge(*choice)


def _subject_signer(cert_name: str) -> str:
    subject = SIGNER_CERTS[cert_name][0].subject_key
    return next(n for n, k in SIGNERS.items() if k.public_key == subject)


@SETTINGS
@given(
    cert_name=st.sampled_from(["node", "node2"] * 2 + sorted(SIGNER_CERTS)),
    signer_name=st.sampled_from(["subject"] * 3 + sorted(SIGNERS)),
    kind=st.sampled_from(KINDS),
    key_name=st.sampled_from(["for-kind"] * 2 + sorted(KEYS)),
    value_name=st.sampled_from(["for-kind"] * 2 + sorted(VALUES)),
    expires_name=st.sampled_from(["hour"] * 2 + sorted(EXPIRIES)),
    revoked_name=st.sampled_from(["none"] * 2 + sorted(REVOKED)),
)
def test_mixed_fields_are_judged_by_the_rules(cert_name: str, signer_name: str, kind: str,
                                              key_name: str, value_name: str,
                                              expires_name: str, revoked_name: str) -> None:
    if signer_name == "subject":
        signer_name = _subject_signer(cert_name)
    if key_name == "for-kind":
        key_name = {"node": signer_name}.get(kind, kind)
    if value_name == "for-kind":
        value_name = {"provider": "max-provider", "revocations": "revs"}.get(kind, "node")
    _judge(signer_name, cert_name, kind, key_name, value_name, expires_name, revoked_name)


# -- any bytes: returns or raises BadMessage ------------------------------------------------------

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(),
    st.text(max_size=20), st.binary(max_size=40),
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=12)),
)
_junk_values = st.recursive(
    _scalars,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(
        st.one_of(st.text(max_size=8), st.binary(max_size=8)), c, max_size=3),
    max_leaves=8,
)
# Values that sit just beside a valid field, or are valid for another field or kind.
_near_misses = st.sampled_from([
    None, True, False, -1, 0, 1, 2, 2**63 - 1, 2**63, 2**64 - 1, 1.0, 0.5, "", "x",
    *KINDS, "user", "NODE", b"node", b"", b"\x00" * 19, bytes(ID_SIZE), b"\x00" * 21,
    NODE.id, NODE.public_key, *KEYS.values(), b"gridnode/node/" + NODE.id,
    CERT.raw, CERT2.raw, USER_CERT.raw, OTHER_GRID_CERT.raw, EXPIRED_CERT.raw, GRID.raw,
    *VALUES.values(), NOW - 1, NOW, NOW + LIFETIME_LIMIT, NOW + LIFETIME_LIMIT + 1,
    [], {}, ["queue"], ["tcp://h:1"], {"cores": 1},
])
_field_junk = st.one_of(_near_misses, _junk_values)


def mostly(good: Any) -> st.SearchStrategy[Any]:
    """``good`` four times in five, else junk: reaches the checks behind the first."""
    return st.sampled_from([True] * 4 + [False]).flatmap(
        lambda ok: st.just(good) if ok else _field_junk)


def _resized(parts: st.SearchStrategy[tuple[Any, ...]]) -> st.SearchStrategy[list[Any]]:
    """Usually the right number of fields; sometimes one fewer or one more."""
    return st.tuples(parts, st.sampled_from(["keep"] * 18 + ["drop", "add"])).map(
        lambda t: {"keep": list(t[0]), "drop": list(t[0])[:-1],
                   "add": [*t[0], None]}[t[1]])


# A node value whose fields are mostly right, so the checks inside it run too.
_node_values = st.one_of(
    mostly(NODE_VALUE),
    _resized(st.tuples(mostly(list(ADDRESSES)), mostly(["queue"]), mostly(CAPACITY))).map(packb),
)


def _signed_records(kind: str) -> st.SearchStrategy[bytes]:
    value = _node_values if kind == "node" else mostly(GOOD[kind]["value"])
    fields = st.tuples(
        st.sampled_from([True] * 9 + [False]).flatmap(
            lambda ok: st.just(VERSION) if ok else _field_junk),
        mostly(GOOD[kind]["key"]), mostly(kind), mostly(CERT.raw), mostly(7),
        mostly(NOW + 3600), value,
    )
    return _resized(fields).map(lambda f: seal(RECORD_TAG, f, NODE.signing_key))


@pytest.mark.parametrize("kind", KINDS)
@SETTINGS
@given(data=st.data())
def test_signed_records_with_wrong_fields(kind: str, data: st.DataObject) -> None:
    """Properly signed envelopes with junk fields: decoded and fully checked, or refused."""
    _returns_or_bad_message(data.draw(_signed_records(kind)))


@SETTINGS
@given(data=st.binary(max_size=MAX_RECORD + 64))
def test_record_decoder_on_any_bytes(data: bytes) -> None:
    _returns_or_bad_message(data)


@SETTINGS
@given(kind=st.sampled_from(KINDS), start=st.integers(0, 800), length=st.integers(0, 40),
       insert=st.binary(max_size=40))
def test_record_decoder_on_spliced_records(kind: str, start: int, length: int,
                                           insert: bytes) -> None:
    raw = FLIP_TARGETS[kind]
    rec = _returns_or_bad_message(raw[:start] + insert + raw[start + length:])
    # Whatever survives (say the very same bytes) says what the signer signed.
    assert rec is None or rec == _decode(raw)


# -- NodeRecord: the typed view of a node record ---------------------------------------------------


def _node_record(key: KeyPair = NODE, cert: Certificate = CERT, **overrides: Any) -> NodeRecord:
    kwargs: dict[str, Any] = {"addresses": ADDRESSES, "roles": ("queue",), "capacity": CAPACITY,
                              "seq": 7, "expires": NOW + 3600}
    kwargs.update(overrides)
    return NodeRecord.create(key, cert, **kwargs)


def test_node_record_round_trip() -> None:
    rec = _node_record()
    back = _decode_node(rec.raw)
    assert back == rec
    assert back.raw == rec.raw
    assert back.node_id == NODE.id
    assert back.public_key == NODE.public_key
    assert back.cert == CERT and back.cert.raw == CERT.raw
    assert back.addresses == ADDRESSES
    assert back.roles == ("queue",)
    assert back.capacity == CAPACITY
    assert back.seq == 7
    assert back.expires == NOW + 3600
    assert back.site == "site-a"


def test_node_record_is_a_node_kind_signed_record_under_its_key() -> None:
    rec = _node_record()
    signed = _decode(rec.raw)
    assert (signed.kind, signed.key, signed.signer) == ("node", node_record_key(NODE.id), NODE.id)
    assert signed.value == NODE_VALUE
    assert NodeRecord.from_signed(signed) == rec
    assert rec.raw == _seal()


def test_node_record_with_every_field_minimal() -> None:
    rec = _node_record(roles=(), addresses=(), capacity={}, seq=0)
    back = _decode_node(rec.raw)
    assert back == rec
    assert (back.roles, back.addresses, back.capacity, back.seq) == ((), (), {}, 0)


_addresses = st.lists(st.text(min_size=1, max_size=127), max_size=MAX_ADDRESSES).map(tuple)


@SETTINGS
@given(
    roles=st.lists(st.sampled_from(("queue", "storage")), unique=True).map(tuple),
    addresses=_addresses,
    capacity=st.dictionaries(st.sampled_from(CAPACITY_KEYS), st.integers(0, 2**63 - 1)),
    seq=st.integers(0, 2**63 - 1),
    expires=st.integers(NOW, NOW + LIFETIME_LIMIT),
)
def test_node_record_round_trip_any(roles: tuple[str, ...], addresses: tuple[str, ...],
                                    capacity: dict[str, int], seq: int, expires: int) -> None:
    value = packb([list(addresses), list(roles), capacity])
    fits = len(_seal(value=value, seq=seq, expires=expires)) <= MAX_RECORD
    try:
        rec = NodeRecord.create(NODE, CERT, addresses=addresses, roles=roles,
                                capacity=capacity, seq=seq, expires=expires)
    except ValueError:
        assert not fits
        return
    assert fits
    back = _decode_node(rec.raw)
    assert back == rec
    assert (back.roles, back.addresses, back.capacity, back.seq, back.expires) == (
        roles, addresses, capacity, seq, expires)


@pytest.mark.parametrize("roles", [("catalog",), ("queue", "compute"), ROLES])
def test_node_record_roles_exceeding_the_certificate_are_refused(
        roles: tuple[str, ...]) -> None:
    assert not set(roles) <= set(CERT.roles)
    raw = _seal(value=_node_value(roles=roles))
    with pytest.raises(BadMessage, match="roles its certificate lacks"):
        _decode(raw)
    with pytest.raises(BadMessage, match="roles its certificate lacks"):
        _decode_node(raw)
    # create applies the readers' rule: it does not sign what they would refuse.
    with pytest.raises(BadMessage, match="roles its certificate lacks"):
        _node_record(roles=roles)


@pytest.mark.parametrize("roles", [(), ("queue",), ("storage",), ("storage", "queue")])
def test_node_record_roles_within_the_certificate_are_accepted(roles: tuple[str, ...]) -> None:
    assert _decode_node(_node_record(roles=roles).raw).roles == roles


def test_node_record_roles_are_judged_against_the_signers_own_cert() -> None:
    # NODE2's certificate has only "queue": "storage" is refused for it, fine for NODE.
    raw = _seal(NODE2, key=node_record_key(NODE2.id), cert=CERT2.raw, value=STORAGE_VALUE)
    with pytest.raises(BadMessage, match="roles its certificate lacks"):
        _decode(raw)
    assert _decode_node(_seal(value=STORAGE_VALUE)).roles == ("storage",)


def test_node_record_with_unknown_or_repeated_roles_is_refused() -> None:
    cert = _cert(roles=ROLES)
    for roles in (("admin",), ("queue", "queue")):
        with pytest.raises(BadMessage, match="role"):
            _decode_node(_seal(cert=cert.raw, value=_node_value(roles=roles)))


@pytest.mark.parametrize("kind", ["provider", "revocations"])
def test_node_record_view_of_another_kind_is_refused(kind: str) -> None:
    rec = _decode(_create(kind).raw)
    with pytest.raises(BadMessage, match="not a node record"):
        NodeRecord.from_signed(rec)
    with pytest.raises(BadMessage, match="not a node record"):
        _decode_node(rec.raw)


def test_provider_record_squatting_a_node_key_is_not_a_node_record() -> None:
    # A provider record may sit under any key, a node's included; readers of node
    # records must not take it for one.
    raw = _seal(NODE2, kind="provider", key=node_record_key(NODE.id), cert=CERT2.raw,
                value=NODE_VALUE)
    assert _decode(raw).key == node_record_key(NODE.id)
    with pytest.raises(BadMessage, match="not a node record"):
        _decode_node(raw)


def test_node_record_of_a_revoked_node_is_refused() -> None:
    rec = _node_record()
    revs = RevocationList.from_bytes_untrusted(
        RevocationList.issue(AUTH, 1, NOW, frozenset({NODE.id})).raw, GRID)
    with pytest.raises(CertificateRejected, match="revoked"):
        _decode_node(rec.raw, revoked=revs.revoked)
    assert _decode_node(rec.raw, revoked=frozenset({NODE2.id})) == rec


def test_node_record_signed_by_another_key_is_refused() -> None:
    with pytest.raises(BadMessage, match="bad signature"):
        _decode_node(_node_record(key=NODE2, cert=CERT).raw)


def test_node_record_with_a_user_cert_is_refused() -> None:
    rec = _node_record(key=USER, cert=USER_CERT, roles=())
    with pytest.raises(CertificateRejected, match="expected a node"):
        _decode_node(rec.raw)


def test_node_record_expiry() -> None:
    rec = _node_record(expires=NOW + 10)
    assert _decode_node(rec.raw, now=NOW + 10).expires == NOW + 10
    with pytest.raises(CertificateRejected, match="record has expired"):
        _decode_node(rec.raw, now=NOW + 10.5)
    with pytest.raises(BadMessage, match="too long"):
        _decode_node(_node_record(expires=NOW + LIFETIME_LIMIT + 1).raw)


# -- DHT keys ----------------------------------------------------------------------------------


def test_keys_are_20_bytes() -> None:
    for key in (node_record_key(NODE.id), node_record_key(b""), provider_key("role", "queue"),
                provider_key("", ""), dht_key(b""), dht_key(b"x" * 1000), REVOCATIONS_KEY):
        assert isinstance(key, bytes) and len(key) == ID_SIZE


def test_key_derivations_are_pinned() -> None:
    # Every node must derive the same keys: pin the derivation, not just its shape.
    def b2(data: bytes) -> bytes:
        return hashlib.blake2b(data, digest_size=20).digest()

    assert dht_key(b"abc") == b2(b"abc")
    assert node_record_key(NODE.id) == b2(b"gridnode/node/" + NODE.id)
    assert provider_key("role", "queue") == b2(b"gridnode/providers/role/queue")
    assert provider_key("dataset", "ünï") == b2("gridnode/providers/dataset/ünï".encode())
    assert REVOCATIONS_KEY == b2(b"gridnode/revocations")


def test_node_record_key_is_a_hash_not_a_prefix() -> None:
    k = node_record_key(NODE.id)
    assert NODE.id not in k and not k.startswith(b"gridnode")
    assert k == node_record_key(NODE.id)


def test_node_record_key_is_distinct_per_node() -> None:
    ids = [fixed_key(n).id for n in range(20, 60)]
    assert len({node_record_key(i) for i in ids}) == len(ids)


def test_provider_key_is_distinct_across_kinds() -> None:
    kinds = ("role", "dataset", "queue", "node", "revocations", "")
    for name in ("queue", "x", ""):
        keys = {provider_key(kind, name) for kind in kinds}
        assert len(keys) == len(kinds)
    assert provider_key("role", "queue") != provider_key("dataset", "queue")
    assert provider_key("role", "queue") != provider_key("queue", "role")


def test_provider_key_kind_may_not_contain_the_separator() -> None:
    # Else ("a/b", "c") and ("a", "b/c") would name the same provider set.
    with pytest.raises(ValueError, match="/"):
        provider_key("role/queue", "x")
    assert provider_key("dataset", "a/b") != provider_key("dataset", "a/c")


def test_namespaces_do_not_collide() -> None:
    keys = {REVOCATIONS_KEY, node_record_key(NODE.id), provider_key("role", "queue"),
            dht_key(NODE.id), NODE.id}
    assert len(keys) == 5


@SETTINGS
@given(a=st.binary(min_size=20, max_size=20), b=st.binary(min_size=20, max_size=20))
def test_node_record_key_is_injective(a: bytes, b: bytes) -> None:
    assert (node_record_key(a) == node_record_key(b)) == (a == b)
    assert node_record_key(a) not in (REVOCATIONS_KEY, dht_key(a))


@SETTINGS
@given(a=st.binary(max_size=64), b=st.binary(max_size=64))
def test_dht_key_is_injective(a: bytes, b: bytes) -> None:
    assert (dht_key(a) == dht_key(b)) == (a == b)


# Kinds and names around the separator, where an ambiguous encoding would collide.
_kinds = st.one_of(st.sampled_from(["role", "dataset", "a", "a/b", "", "/"]), st.text(max_size=8))
_names = st.one_of(st.sampled_from(["queue", "c", "b/c", "/", "", "a/b"]), st.text(max_size=8))


def _provider_key_or_none(kind: str, name: str) -> bytes | None:
    try:
        return provider_key(kind, name)
    except ValueError:
        assert "/" in kind
        return None


@SETTINGS
@given(a=st.tuples(_kinds, _names), b=st.tuples(_kinds, _names))
def test_provider_key_is_injective(a: tuple[str, str], b: tuple[str, str]) -> None:
    ka, kb = _provider_key_or_none(*a), _provider_key_or_none(*b)
    if ka is not None and kb is not None:
        assert (ka == kb) == (a == b)
        assert ka != REVOCATIONS_KEY


@SETTINGS
@given(a=st.tuples(_kinds, _names))
def test_provider_key_separator_is_unambiguous(a: tuple[str, str]) -> None:
    # Every other way of splitting "kind/name" at a "/" names another provider set.
    joined = a[0] + "/" + a[1]
    ka = _provider_key_or_none(*a)
    for i, ch in enumerate(joined):
        other = (joined[:i], joined[i + 1:])
        if ch == "/" and other != a:
            kb = _provider_key_or_none(*other)
            assert ka is None or kb is None or ka != kb, f"{a} and {other} share a key"
