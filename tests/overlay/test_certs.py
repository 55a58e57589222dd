"""Signed envelopes: grid info, certificates, join requests, revocation lists, DHT records.

Every decoder is "one door for untrusted bytes": it returns a checked object
or raises BadMessage, and a single flipped byte anywhere in a signed blob
never yields something that verifies.
"""

from __future__ import annotations

from collections.abc import Callable
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
    check_certificate,
    node_id_of,
    open_envelope_untrusted,
    packb,
    unpackb_untrusted,
)
from overlay._wire import MAX_ENVELOPE, seal
from overlay.certs import (
    CERT_TAG,
    CLOCK_SKEW,
    GRID_INFO_TAG,
    JOIN_REQUEST_TAG,
    KINDS,
    MAX_NAME,
    REVOCATIONS_TAG,
    VERSION,
    roles_for,
)
from overlay.records import (
    CAPACITY_KEYS,
    MAX_PROVIDER_VALUE,
    MAX_RECORD,
    MAX_RECORD_TTL,
    RECORD_TAG,
    REVOCATIONS_KEY,
    SignedRecord,
    node_record_key,
    provider_key,
)
from overlay.records import KINDS as RECORD_KINDS
from tests.overlay.common import NOW, SETTINGS, fixed_key

AUTH = fixed_key(1)
OTHER_AUTH = fixed_key(2)
NODE = fixed_key(3)
NODE2 = fixed_key(4)
USER = fixed_key(5)

GRID = GridInfo.create(AUTH, "test-grid", NOW - 10_000, ("tcp://10.0.0.1:7000",))
OTHER_GRID = GridInfo.create(OTHER_AUTH, "other-grid", NOW - 10_000)

CERT = Certificate.issue(AUTH, kind="node", subject_key=NODE.public_key, name="site-a",
                         roles=("queue", "storage"), not_before=NOW - 100,
                         not_after=NOW + 86_400)
USER_CERT = Certificate.issue(AUTH, kind="user", subject_key=USER.public_key, name="alice",
                              roles=(), not_before=NOW - 100, not_after=NOW + 86_400)
OTHER_GRID_CERT = Certificate.issue(OTHER_AUTH, kind="node", subject_key=NODE.public_key,
                                    name="site-a", roles=("queue",), not_before=NOW - 100,
                                    not_after=NOW + 86_400)
JOIN = JoinRequest.create(NODE, GRID, "site-a", ("queue", "storage"), NOW)
REVS = RevocationList.issue(AUTH, 3, NOW, frozenset({NODE2.id, USER.id}))
RECORD = NodeRecord.create(NODE, CERT, addresses=("tcp://10.0.0.3:7000",), roles=("queue",),
                           capacity={"cores": 8, "memory_mb": 16_000}, seq=1,
                           expires=NOW + 3600)
REVS_RECORD = SignedRecord.create(NODE, CERT, key=REVOCATIONS_KEY, kind="revocations", seq=1,
                                  expires=NOW + 3600, value=REVS.raw)
NODE_VALUE = packb([["tcp://h:1"], ["queue"], {"cores": 2}])

ALL_TAGS = (GRID_INFO_TAG, CERT_TAG, JOIN_REQUEST_TAG, REVOCATIONS_TAG, RECORD_TAG)


# -- invariants of whatever a decoder returns ----------------------------------------


def _is_uint63(x: object) -> bool:
    return type(x) is int and 0 <= x < 2**63


def _is_name(x: object) -> bool:
    return isinstance(x, str) and 0 < len(x) <= MAX_NAME and x.isprintable()


def _is_roles(x: object, kind: str = "node") -> bool:
    return (isinstance(x, tuple) and all(r in roles_for(kind) for r in x)
            and len(set(x)) == len(x))


def _check_invariants(obj: object, data: bytes) -> None:
    """A decoded object is fully checked and keeps the exact bytes it came from."""
    if isinstance(obj, GridInfo):
        assert _is_name(obj.name)
        assert isinstance(obj.authority_key, bytes) and len(obj.authority_key) == 32
        assert _is_uint63(obj.created)
        assert isinstance(obj.bootstrap, tuple) and len(obj.bootstrap) <= 64
        assert all(isinstance(b, str) and len(b) < 256 for b in obj.bootstrap)
        assert obj.raw == data
    elif isinstance(obj, Certificate):
        assert obj.kind in KINDS
        assert isinstance(obj.grid_id, bytes) and len(obj.grid_id) == 20
        assert isinstance(obj.subject_key, bytes) and len(obj.subject_key) == 32
        assert isinstance(obj.issuer_key, bytes) and len(obj.issuer_key) == 32
        assert _is_name(obj.name)
        assert _is_roles(obj.roles, obj.kind)
        assert _is_uint63(obj.not_before) and _is_uint63(obj.not_after)
        assert obj.raw == data
        # It verifies against its own issuer (checked at the door).
        nacl.signing.VerifyKey(obj.issuer_key).verify(obj.body, obj.sig)
    elif isinstance(obj, JoinRequest):
        assert isinstance(obj.grid_id, bytes) and len(obj.grid_id) == 20
        assert isinstance(obj.subject_key, bytes) and len(obj.subject_key) == 32
        assert _is_name(obj.name)
        assert _is_roles(obj.roles, obj.kind)
        assert obj.kind in KINDS
        assert _is_uint63(obj.created)
        assert obj.raw == data
    elif isinstance(obj, RevocationList):
        assert obj.grid_id == GRID.grid_id
        assert _is_uint63(obj.serial) and _is_uint63(obj.issued_at)
        assert isinstance(obj.revoked, frozenset)
        assert all(isinstance(r, bytes) and len(r) == 20 for r in obj.revoked)
        assert obj.raw == data
    elif isinstance(obj, NodeRecord):
        assert isinstance(obj.public_key, bytes) and len(obj.public_key) == 32
        assert obj.node_id == node_id_of(obj.public_key)
        assert obj.cert.subject_key == obj.public_key
        assert obj.cert.kind == "node"
        assert obj.cert.issuer_key == GRID.authority_key
        assert _is_roles(obj.roles) and set(obj.roles) <= set(obj.cert.roles)
        assert all(isinstance(a, str) and 0 < len(a) < 128 for a in obj.addresses)
        assert set(obj.capacity) <= set(CAPACITY_KEYS)
        assert all(_is_uint63(v) for v in obj.capacity.values())
        assert _is_uint63(obj.seq) and _is_uint63(obj.expires)
        assert NOW <= obj.expires <= NOW + MAX_RECORD_TTL + 300
        assert obj.raw == data
    elif isinstance(obj, SignedRecord):
        assert isinstance(obj.key, bytes) and len(obj.key) == 20
        assert obj.kind in RECORD_KINDS
        assert obj.cert.kind == "node"
        assert obj.cert.issuer_key == GRID.authority_key
        check_certificate(obj.cert, GRID, NOW, kind="node")
        # Signed by the key its certificate names.
        body, sig = msgpack.unpackb(data)
        nacl.signing.VerifyKey(obj.cert.subject_key).verify(body, sig)
        assert obj.signer == obj.cert.subject_id
        assert _is_uint63(obj.seq) and _is_uint63(obj.expires)
        assert NOW <= obj.expires <= NOW + MAX_RECORD_TTL + 300
        assert isinstance(obj.value, bytes)
        assert obj.raw == data and len(data) <= MAX_RECORD
        if obj.kind == "node":
            assert obj.key == node_record_key(obj.signer)
            _check_invariants(NodeRecord.from_signed(obj), data)
        elif obj.kind == "provider":
            assert len(obj.value) <= MAX_PROVIDER_VALUE
        else:
            assert obj.key == REVOCATIONS_KEY
            _check_invariants(RevocationList.from_bytes_untrusted(obj.value, GRID), obj.value)
    else:  # pragma: no cover - a decoder returned something unexpected
        raise AssertionError(f"unexpected decoded object {obj!r}")


def _decode_cert_and_check(data: bytes) -> Certificate:
    cert = Certificate.from_bytes_untrusted(data)
    _check_invariants(cert, data)
    check_certificate(cert, GRID, NOW)
    return cert


DECODERS: dict[str, Callable[[bytes], object]] = {
    "certificate": Certificate.from_bytes_untrusted,
    "grid-info": GridInfo.from_bytes_untrusted,
    "join-request": JoinRequest.from_bytes_untrusted,
    "revocation-list": lambda d: RevocationList.from_bytes_untrusted(d, GRID),
    "node-record": lambda d: NodeRecord.from_bytes_untrusted(d, GRID, NOW),
    "signed-record": lambda d: SignedRecord.from_bytes_untrusted(d, GRID, NOW),
    "unpackb": unpackb_untrusted,
}


def _returns_or_bad_message(name: str, data: bytes) -> None:
    try:
        obj = DECODERS[name](data)
    except BadMessage as exc:
        assert str(exc), "BadMessage should say what is wrong"
        return
    if name == "unpackb":
        return
    _check_invariants(obj, data)
    if isinstance(obj, Certificate):
        # A decoded certificate goes on to be judged: that too is total.
        try:
            check_certificate(obj, GRID, NOW)
        except BadMessage:
            pass


# -- strategies -------------------------------------------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(),
    st.text(max_size=20),
    st.binary(max_size=40),
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=12)),
    st.builds(msgpack.Timestamp, st.integers(-(2**40), 2**40), st.integers(0, 999_999_999)),
)

_decodable_values = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.dictionaries(st.one_of(st.text(max_size=8), st.binary(max_size=8)), children,
                        max_size=4),
    ),
    max_leaves=10,
)

msgpack_values = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.dictionaries(st.one_of(st.text(max_size=8), st.binary(max_size=8)), children,
                        max_size=4),
        # Keys that strict_map_key refuses.
        st.dictionaries(st.integers(-5, 5), children, max_size=3),
    ),
    max_leaves=15,
)

# Values that sit just beside a valid field: wrong by one.
_near_misses = st.sampled_from([
    None, True, False, -1, 0, 1, 2, 2**63 - 1, 2**63, 2**64 - 1, 1.0, 0.5,
    "", " ", "x" * MAX_NAME, "x" * (MAX_NAME + 1), "bad\nname", "\x00", "tab\there",
    b"", b"\x00" * 19, b"\x00" * 20, b"\x00" * 21, b"\x00" * 31, b"\x00" * 32, b"\x00" * 33,
    [], ["queue"], ["queue", "queue"], ["nope"], ["queue", 1], [b"queue"], list(ROLES),
    {}, {"cores": 1}, {"cores": -1}, {"cores": True}, {"bogus": 1}, {b"cores": 1},
    "node", "user", "admin", b"node", ["x" * 255], ["x" * 256], ["a"] * 65, [""],
    GRID.grid_id, OTHER_GRID.grid_id, AUTH.public_key, NODE.public_key, NODE2.public_key,
    CERT.raw, USER_CERT.raw, OTHER_GRID_CERT.raw, NODE.id,
    *RECORD_KINDS, node_record_key(NODE.id), node_record_key(NODE2.id), REVOCATIONS_KEY,
    provider_key("role", "queue"), NODE_VALUE, REVS.raw, b"x" * (MAX_PROVIDER_VALUE + 1),
    NOW + MAX_RECORD_TTL + 300, NOW + MAX_RECORD_TTL + 301,
])

junk = st.one_of(msgpack_values, _near_misses)
# Junk for a field inside a body that must still decode, so the field checks run.
_field_junk = st.one_of(_near_misses, _decodable_values)


def mostly(good: Any) -> st.SearchStrategy[Any]:
    """``good`` four times in five, else junk: reaches the checks behind the first."""
    return st.sampled_from([True] * 4 + [False]).flatmap(
        lambda ok: st.just(good) if ok else _field_junk)


# -- round trips -------------------------------------------------------------------------


def test_grid_info_round_trip() -> None:
    back = GridInfo.from_bytes_untrusted(GRID.raw)
    assert back == GRID
    assert back.raw == GRID.raw
    assert back.name == "test-grid"
    assert back.authority_key == AUTH.public_key
    assert back.grid_id == AUTH.id == node_id_of(AUTH.public_key)
    assert back.created == NOW - 10_000
    assert back.bootstrap == ("tcp://10.0.0.1:7000",)


def test_certificate_round_trip() -> None:
    back = Certificate.from_bytes_untrusted(CERT.raw)
    assert back == CERT
    assert back.raw == CERT.raw
    assert (back.kind, back.name, back.roles) == ("node", "site-a", ("queue", "storage"))
    assert back.grid_id == GRID.grid_id
    assert back.subject_key == NODE.public_key
    assert back.subject_id == NODE.id
    assert back.issuer_key == AUTH.public_key
    assert (back.not_before, back.not_after) == (NOW - 100, NOW + 86_400)
    check_certificate(back, GRID, NOW, kind="node", subject_key=NODE.public_key)


def test_join_request_round_trip() -> None:
    back = JoinRequest.from_bytes_untrusted(JOIN.raw)
    assert back == JOIN
    assert back.raw == JOIN.raw
    assert back.grid_id == GRID.grid_id
    assert back.subject_key == NODE.public_key
    assert back.subject_id == NODE.id
    assert (back.name, back.roles, back.created) == ("site-a", ("queue", "storage"), NOW)


def test_revocation_list_round_trip() -> None:
    back = RevocationList.from_bytes_untrusted(REVS.raw, GRID)
    assert back == REVS
    assert back.raw == REVS.raw
    assert back.grid_id == GRID.grid_id
    assert (back.serial, back.issued_at) == (3, NOW)
    assert back.revoked == frozenset({NODE2.id, USER.id})


def test_empty_revocation_list() -> None:
    empty = RevocationList.empty(GRID)
    assert empty.grid_id == GRID.grid_id
    assert empty.serial == 0
    assert empty.revoked == frozenset()


_printable_names = st.text(
    alphabet=st.one_of(
        st.just(" "),
        st.characters(exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs")),
    ),
    min_size=1,
    max_size=MAX_NAME,
)
_roles = st.lists(st.sampled_from(ROLES), unique=True).map(tuple)
_times = st.integers(0, 2**62)


@SETTINGS
@given(name=_printable_names, created=_times,
       bootstrap=st.lists(st.text(max_size=40), max_size=8).map(tuple))
def test_grid_info_round_trip_any(name: str, created: int, bootstrap: tuple[str, ...]) -> None:
    info = GridInfo.create(AUTH, name, created, bootstrap)
    back = GridInfo.from_bytes_untrusted(info.raw)
    assert back == info
    assert (back.name, back.created, back.bootstrap) == (name, created, bootstrap)


@SETTINGS
@given(kind=st.sampled_from(KINDS), name=_printable_names, roles=_roles,
       not_before=_times, length=st.integers(1, 2**40))
def test_certificate_round_trip_any(kind: str, name: str, roles: tuple[str, ...],
                                    not_before: int, length: int) -> None:
    if kind == "user":
        roles = ("admin",) if roles else ()
    cert = Certificate.issue(AUTH, kind=kind, subject_key=NODE.public_key, name=name,
                             roles=roles, not_before=not_before,
                             not_after=not_before + length)
    back = Certificate.from_bytes_untrusted(cert.raw)
    assert back == cert
    assert (back.kind, back.name, back.roles) == (kind, name, roles)
    check_certificate(back, GRID, not_before, kind=kind, subject_key=NODE.public_key)


@SETTINGS
@given(name=_printable_names, roles=_roles, created=_times)
def test_join_request_round_trip_any(name: str, roles: tuple[str, ...], created: int) -> None:
    req = JoinRequest.create(NODE2, GRID, name, roles, created)
    back = JoinRequest.from_bytes_untrusted(req.raw)
    assert back == req
    assert (back.name, back.roles, back.created) == (name, roles, created)
    assert back.subject_key == NODE2.public_key


@SETTINGS
@given(serial=_times, issued_at=_times,
       revoked=st.frozensets(st.binary(min_size=20, max_size=20), max_size=50))
def test_revocation_list_round_trip_any(serial: int, issued_at: int,
                                        revoked: frozenset[bytes]) -> None:
    revs = RevocationList.issue(AUTH, serial, issued_at, revoked)
    back = RevocationList.from_bytes_untrusted(revs.raw, GRID)
    assert back == revs
    assert (back.serial, back.issued_at, back.revoked) == (serial, issued_at, revoked)


def test_issue_refuses_local_mistakes() -> None:
    with pytest.raises(ValueError, match="kind"):
        Certificate.issue(AUTH, kind="admin", subject_key=NODE.public_key, name="x",
                          roles=(), not_before=NOW, not_after=NOW + 1)
    with pytest.raises(ValueError, match="expire"):
        Certificate.issue(AUTH, kind="node", subject_key=NODE.public_key, name="x",
                          roles=(), not_before=NOW, not_after=NOW)


# -- a single flipped byte never verifies ------------------------------------------------


def _full_check_cert(data: bytes) -> None:
    cert = Certificate.from_bytes_untrusted(data)
    check_certificate(cert, GRID, NOW, kind="node", subject_key=NODE.public_key)


FLIP_TARGETS: dict[str, tuple[bytes, Callable[[bytes], object]]] = {
    "certificate": (CERT.raw, _full_check_cert),
    "grid-info": (GRID.raw, GridInfo.from_bytes_untrusted),
    "join-request": (JOIN.raw, JoinRequest.from_bytes_untrusted),
    "revocation-list": (REVS.raw, lambda d: RevocationList.from_bytes_untrusted(d, GRID)),
    "node-record": (RECORD.raw, lambda d: NodeRecord.from_bytes_untrusted(d, GRID, NOW)),
    "revocations-record": (REVS_RECORD.raw,
                           lambda d: SignedRecord.from_bytes_untrusted(d, GRID, NOW)),
}


@pytest.mark.parametrize("target", sorted(FLIP_TARGETS))
def test_untouched_blob_verifies(target: str) -> None:
    raw, check = FLIP_TARGETS[target]
    check(raw)  # the control: without the flip everything passes


def _flip(raw: bytes, pos: int, xor: int) -> bytes:
    out = bytearray(raw)
    out[pos] ^= xor
    return bytes(out)


@pytest.mark.parametrize("target", sorted(FLIP_TARGETS))
@SETTINGS
@given(data=st.data())
def test_any_single_byte_flip_is_refused(target: str, data: st.DataObject) -> None:
    raw, check = FLIP_TARGETS[target]
    pos = data.draw(st.integers(0, len(raw) - 1), label="pos")
    xor = data.draw(st.integers(1, 255), label="xor")
    with pytest.raises(BadMessage):
        check(_flip(raw, pos, xor))


@pytest.mark.parametrize("target", sorted(FLIP_TARGETS))
def test_every_position_flipped_is_refused(target: str) -> None:
    """Exhaustive over positions for a few xor values: no byte is unprotected."""
    raw, check = FLIP_TARGETS[target]
    accepted = []
    for pos in range(len(raw)):
        for xor in (0x01, 0x80, 0xFF):
            try:
                check(_flip(raw, pos, xor))
            except BadMessage:
                continue
            accepted.append((pos, xor))
    assert accepted == []


@pytest.mark.parametrize("target", sorted(FLIP_TARGETS))
def test_truncated_or_extended_blob_is_refused(target: str) -> None:
    raw, check = FLIP_TARGETS[target]
    for n in range(len(raw)):
        with pytest.raises(BadMessage):
            check(raw[:n])
    for extra in (b"\x00", b"\xc0", raw):
        with pytest.raises(BadMessage):
            check(raw + extra)


# -- any bytes: returns or raises BadMessage ------------------------------------------------


# Each example goes through every decoder (cheaper than generating it six times).


def _all_decoders(data: bytes) -> None:
    for decoder in sorted(DECODERS):
        _returns_or_bad_message(decoder, data)


@SETTINGS
@given(data=st.binary(max_size=600))
def test_decoders_on_any_bytes(data: bytes) -> None:
    _all_decoders(data)


@SETTINGS
@given(value=msgpack_values)
def test_decoders_on_any_msgpack(value: Any) -> None:
    _all_decoders(packb(value))


@SETTINGS
@given(
    tag=st.one_of(st.sampled_from(ALL_TAGS), junk),
    fields=st.lists(junk, max_size=11),
    sig=st.one_of(st.binary(min_size=64, max_size=64), junk),
    wrap=st.sampled_from(["pair", "bare-body", "triple", "body-as-list"]),
)
def test_decoders_on_envelope_shapes(tag: Any, fields: list[Any], sig: Any,
                                     wrap: str) -> None:
    body = packb([tag, *fields])
    outer: Any = {
        "pair": [body, sig],
        "bare-body": body,
        "triple": [body, sig, sig],
        "body-as-list": [[tag, *fields], sig],
    }[wrap]
    _all_decoders(packb(outer))


@SETTINGS
@given(which=st.sampled_from(["cert", "grid", "join", "revs", "record", "revs-record"]),
       prefix_len=st.integers(0, 600), tail=st.binary(max_size=64))
def test_decoders_on_valid_prefix_plus_garbage(which: str, prefix_len: int,
                                               tail: bytes) -> None:
    raw = {"cert": CERT.raw, "grid": GRID.raw, "join": JOIN.raw, "revs": REVS.raw,
           "record": RECORD.raw, "revs-record": REVS_RECORD.raw}[which]
    _all_decoders(raw[:prefix_len] + tail)


# Properly signed envelopes whose fields are mostly right: the decoders must check
# every field behind the signature too.

def _signed_fields_strategy(tag: bytes, key: KeyPair,
                            good: list[Any]) -> st.SearchStrategy[bytes]:
    """Good fields, mostly; an entry of ``good`` may itself be a strategy."""
    return st.tuples(
        st.sampled_from([True] * 9 + [False]).flatmap(
            lambda ok: st.just(VERSION) if ok else _field_junk),
        *[g if isinstance(g, st.SearchStrategy) else mostly(g) for g in good],
        st.sampled_from(["keep"] * 18 + ["drop", "add"]),
    ).map(lambda t: seal(tag, _resize(list(t[:-1]), t[-1]), key.signing_key))


def _resize(fields: list[Any], choice: str) -> list[Any]:
    """Usually keep the field count; sometimes drop or add a field."""
    if choice == "drop":
        return fields[:-1]
    if choice == "add":
        return [*fields, None]
    return fields


SIGNED_SHAPES: dict[str, tuple[str, st.SearchStrategy[bytes]]] = {
    "grid-info": ("grid-info", _signed_fields_strategy(
        GRID_INFO_TAG, AUTH, ["g", AUTH.public_key, NOW, ["tcp://h:1"]])),
    "certificate": ("certificate", _signed_fields_strategy(
        CERT_TAG, AUTH, ["node", GRID.grid_id, NODE.public_key, "site", ["queue"],
                         NOW - 10, NOW + 10, AUTH.public_key])),
    "join-request": ("join-request", _signed_fields_strategy(
        JOIN_REQUEST_TAG, NODE,
        [GRID.grid_id, NODE.public_key, "site", ["queue"], NOW, "node"])),
    "revocation-list": ("revocation-list", _signed_fields_strategy(
        REVOCATIONS_TAG, AUTH, [GRID.grid_id, 1, NOW, [NODE2.id]])),
    "node-record": ("node-record", _signed_fields_strategy(
        RECORD_TAG, NODE, [node_record_key(NODE.id), "node", CERT.raw, 1, NOW + 10,
                           # the value's own fields, mostly right
                           st.one_of(mostly(NODE_VALUE), st.tuples(
                               mostly(["tcp://h:1"]), mostly(["queue"]), mostly({"cores": 2}),
                           ).map(lambda t: packb(list(t))))])),
    # (provider and revocations records: test_records.test_signed_records_with_wrong_fields)
}


@pytest.mark.parametrize("shape", sorted(SIGNED_SHAPES))
@SETTINGS
@given(data=st.data())
def test_decoder_on_signed_envelopes_with_wrong_fields(shape: str, data: st.DataObject) -> None:
    decoder, strategy = SIGNED_SHAPES[shape]
    _returns_or_bad_message(decoder, data.draw(strategy))


@pytest.mark.parametrize("shape", sorted(SIGNED_SHAPES))
def test_signed_shape_control_decodes(shape: str) -> None:
    """The 'good' values above really are good, so the junk is what gets refused."""
    decoder, _ = SIGNED_SHAPES[shape]
    good = {
        "grid-info": seal(GRID_INFO_TAG, [VERSION, "g", AUTH.public_key, NOW, ["tcp://h:1"]],
                          AUTH.signing_key),
        "certificate": seal(CERT_TAG, [VERSION, "node", GRID.grid_id, NODE.public_key,
                                       "site", ["queue"], NOW - 10, NOW + 10,
                                       AUTH.public_key], AUTH.signing_key),
        "join-request": seal(JOIN_REQUEST_TAG, [VERSION, GRID.grid_id, NODE.public_key,
                                                "site", ["queue"], NOW, "node"],
                             NODE.signing_key),
        "revocation-list": seal(REVOCATIONS_TAG, [VERSION, GRID.grid_id, 1, NOW, [NODE2.id]],
                                AUTH.signing_key),
        "node-record": seal(RECORD_TAG, [VERSION, node_record_key(NODE.id), "node", CERT.raw,
                                         1, NOW + 10, NODE_VALUE], NODE.signing_key),
    }[shape]
    obj = DECODERS[decoder](good)
    _check_invariants(obj, good)


@pytest.mark.parametrize(
    ("decoder", "raw"),
    [
        ("grid-info", seal(GRID_INFO_TAG, [2, "g", AUTH.public_key, NOW, []],
                           AUTH.signing_key)),
        ("grid-info", seal(GRID_INFO_TAG, [VERSION, "g", AUTH.public_key, NOW],
                           AUTH.signing_key)),
        ("grid-info", seal(GRID_INFO_TAG, [VERSION, "g", AUTH.public_key, NOW, [], 0],
                           AUTH.signing_key)),
        ("grid-info", seal(GRID_INFO_TAG, [VERSION, "g", AUTH.public_key, NOW, ["x"] * 65],
                           AUTH.signing_key)),
        ("grid-info", seal(GRID_INFO_TAG, [VERSION, "g", AUTH.public_key, -1, []],
                           AUTH.signing_key)),
        ("grid-info", seal(GRID_INFO_TAG, [VERSION, "", AUTH.public_key, NOW, []],
                           AUTH.signing_key)),
        ("certificate", seal(CERT_TAG, [VERSION, "admin", GRID.grid_id, NODE.public_key,
                                        "s", [], 0, 1, AUTH.public_key], AUTH.signing_key)),
        ("certificate", seal(CERT_TAG, [VERSION, "node", GRID.grid_id, NODE.public_key,
                                        "s", ["root"], 0, 1, AUTH.public_key],
                             AUTH.signing_key)),
        ("certificate", seal(CERT_TAG, [VERSION, "node", GRID.grid_id, NODE.public_key,
                                        "s", ["queue", "queue"], 0, 1, AUTH.public_key],
                             AUTH.signing_key)),
        ("certificate", seal(CERT_TAG, [VERSION, "node", GRID.grid_id, NODE.public_key,
                                        "s", [], True, 1, AUTH.public_key],
                             AUTH.signing_key)),
        ("certificate", seal(CERT_TAG, [VERSION, "node", GRID.grid_id, NODE.public_key[:31],
                                        "s", [], 0, 1, AUTH.public_key], AUTH.signing_key)),
        ("join-request", seal(JOIN_REQUEST_TAG, [VERSION, GRID.grid_id[:19], NODE.public_key,
                                                 "s", [], NOW], NODE.signing_key)),
        ("join-request", seal(JOIN_REQUEST_TAG, [VERSION, GRID.grid_id, NODE.public_key,
                                                 "s\n", [], NOW], NODE.signing_key)),
        ("revocation-list", seal(REVOCATIONS_TAG, [VERSION, GRID.grid_id, -1, NOW, []],
                                 AUTH.signing_key)),
        ("revocation-list", seal(REVOCATIONS_TAG, [VERSION, GRID.grid_id, 1, NOW,
                                                   [NODE.public_key]], AUTH.signing_key)),
        ("revocation-list", seal(REVOCATIONS_TAG, [VERSION, GRID.grid_id, 1, NOW,
                                                   [NODE.id[:19]]], AUTH.signing_key)),
        ("revocation-list", seal(REVOCATIONS_TAG, [VERSION, GRID.grid_id, 1, NOW,
                                                   NODE.id], AUTH.signing_key)),
        ("signed-record", seal(RECORD_TAG, [VERSION, node_record_key(NODE.id), "node",
                                            CERT.raw, 1, NOW + 10, packb([[], [], {}])[:-1]],
                               NODE.signing_key)),
        ("signed-record", seal(RECORD_TAG, [VERSION, node_record_key(NODE.id), "admin",
                                            CERT.raw, 1, NOW + 10, b""], NODE.signing_key)),
        ("signed-record", seal(RECORD_TAG, [VERSION, REVOCATIONS_KEY, "revocations", CERT.raw,
                                            1, NOW + 10, CERT.raw], NODE.signing_key)),
        ("signed-record", seal(RECORD_TAG, [VERSION, REVOCATIONS_KEY, "provider", CERT.raw,
                                            1, NOW + 10, b"x" * (MAX_PROVIDER_VALUE + 1)],
                               NODE.signing_key)),
        ("signed-record", seal(RECORD_TAG, [VERSION, REVOCATIONS_KEY, "provider", USER_CERT.raw,
                                            1, NOW + 10, b""], USER.signing_key)),
        ("node-record", seal(RECORD_TAG, [VERSION, node_record_key(NODE.id), "node", CERT.raw,
                                          1, NOW + 10, packb([[], ["catalog"], {}])],
                             NODE.signing_key)),
        ("node-record", seal(RECORD_TAG, [VERSION, node_record_key(NODE2.id), "node",
                                          CERT.raw, 1, NOW + 10, NODE_VALUE],
                             NODE.signing_key)),
    ],
)
def test_properly_signed_but_malformed_is_refused(decoder: str, raw: bytes) -> None:
    with pytest.raises(BadMessage):
        DECODERS[decoder](raw)


# -- unpackb_untrusted ----------------------------------------------------------------------


@pytest.mark.parametrize("not_bytes", ["\x90", 0, None, [b"\x90"], 1.5])
def test_unpackb_refuses_non_bytes(not_bytes: Any) -> None:
    with pytest.raises(BadMessage, match="expected bytes"):
        unpackb_untrusted(not_bytes)


def test_unpackb_accepts_bytes_like() -> None:
    packed = packb([1, "a", b"b"])
    for data in (packed, bytearray(packed), memoryview(packed)):
        assert unpackb_untrusted(data) == [1, "a", b"b"]


def test_unpackb_refuses_oversized_input_before_decoding() -> None:
    big = packb(b"\x00" * MAX_ENVELOPE)
    assert len(big) > MAX_ENVELOPE
    with pytest.raises(BadMessage, match="exceeds the cap"):
        unpackb_untrusted(big)
    with pytest.raises(BadMessage, match="exceeds the cap"):
        unpackb_untrusted(packb([1, 2, 3]), max_size=3)
    assert unpackb_untrusted(packb([1, 2, 3]), max_size=4) == [1, 2, 3]
    for decoder in sorted(DECODERS):
        with pytest.raises(BadMessage):
            DECODERS[decoder](big)


def test_envelope_caps_apply_to_envelope_and_body() -> None:
    key = nacl.signing.SigningKey(b"\x07" * 32)
    big = seal(b"tag", [b"\x00" * MAX_ENVELOPE], key)
    with pytest.raises(BadMessage, match="exceeds the cap"):
        open_envelope_untrusted(b"tag", big)
    fields, _, _ = open_envelope_untrusted(b"tag", big, max_size=2 * MAX_ENVELOPE)
    assert fields == [b"\x00" * MAX_ENVELOPE]
    many = seal(b"tag", [list(range(5000))], key)
    with pytest.raises(BadMessage):
        open_envelope_untrusted(b"tag", many)
    assert open_envelope_untrusted(b"tag", many, max_items=5000)[0] == [list(range(5000))]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never used
        b"\x92\x01",  # incomplete
        b"\x01\x02",  # extra data
        b"\x91" * 60_000 + b"\xc0",  # too deep
        b"\x81\x01\x02",  # int map key
        b"\xa2\xff\xfe",  # bad UTF-8
        b"\xc7\x05\xff" + b"\x00" * 5,  # bad timestamp length
        b"\xd7\xff" + b"\xff" * 8,  # timestamp nanoseconds out of range
        b"\xdd\xff\xff\xff\xff",  # array claims 4G elements
        b"\xc6\xff\xff\xff\xff",  # bin claims 4 GiB
    ],
)
def test_unpackb_refuses_bad_msgpack(data: bytes) -> None:
    with pytest.raises(BadMessage):
        unpackb_untrusted(data)


_plain_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
              st.floats(allow_nan=False), st.text(max_size=20), st.binary(max_size=40)),
    lambda c: st.lists(c, max_size=6) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=20,
)


@SETTINGS
@given(value=_plain_values)
def test_unpackb_round_trips_packb(value: Any) -> None:
    assert unpackb_untrusted(packb(value)) == value


# -- certificate validity in time -----------------------------------------------------------

NB, NA = NOW, NOW + 1000
TIMED = Certificate.issue(AUTH, kind="node", subject_key=NODE.public_key, name="timed",
                          roles=("queue",), not_before=NB, not_after=NA)


@pytest.mark.parametrize("now", [NB, NA, NB - CLOCK_SKEW, NA + CLOCK_SKEW, NB + 500,
                                 NA + CLOCK_SKEW - 0.5, NB - CLOCK_SKEW + 0.5])
def test_certificate_valid_within_clock_skew(now: float) -> None:
    check_certificate(TIMED, GRID, now)


@pytest.mark.parametrize("now", [NA + CLOCK_SKEW + 1, NA + CLOCK_SKEW + 0.001, NA + 10**9])
def test_expired_certificate_is_rejected(now: float) -> None:
    with pytest.raises(CertificateRejected, match="expired"):
        check_certificate(TIMED, GRID, now)


@pytest.mark.parametrize("now", [NB - CLOCK_SKEW - 1, NB - CLOCK_SKEW - 0.001, 0])
def test_not_yet_valid_certificate_is_rejected(now: float) -> None:
    with pytest.raises(CertificateRejected, match="not valid yet"):
        check_certificate(TIMED, GRID, now)


def test_clock_skew_is_minutes_not_hours() -> None:
    assert 0 < CLOCK_SKEW <= 3600


@SETTINGS
@given(now=st.integers(NB - 10 * CLOCK_SKEW, NA + 10 * CLOCK_SKEW))
def test_certificate_validity_window(now: int) -> None:
    inside = NB - CLOCK_SKEW <= now <= NA + CLOCK_SKEW
    try:
        check_certificate(TIMED, GRID, now)
    except CertificateRejected:
        assert not inside
    else:
        assert inside


# -- revocation, grids, subjects, kinds ----------------------------------------------------------


def test_revoked_certificate_is_rejected() -> None:
    with pytest.raises(CertificateRejected, match="revoked"):
        check_certificate(CERT, GRID, NOW, revoked=frozenset({NODE.id}))


def test_revocation_list_revokes_its_ids() -> None:
    revs = RevocationList.from_bytes_untrusted(
        RevocationList.issue(AUTH, 4, NOW, frozenset({NODE.id})).raw, GRID)
    with pytest.raises(CertificateRejected, match="revoked"):
        check_certificate(CERT, GRID, NOW, revoked=revs.revoked)


def test_revocation_of_others_does_not_reject() -> None:
    assert NODE.id not in REVS.revoked
    check_certificate(CERT, GRID, NOW, revoked=REVS.revoked)
    with pytest.raises(CertificateRejected, match="revoked"):
        check_certificate(USER_CERT, GRID, NOW, revoked=REVS.revoked)


def test_revocation_is_by_id_not_byfixed_key() -> None:
    # Revoking the raw public key bytes is not revoking the subject id.
    check_certificate(CERT, GRID, NOW, revoked=frozenset({NODE.public_key}))


def test_certificate_from_another_grid_is_rejected() -> None:
    check_certificate(OTHER_GRID_CERT, OTHER_GRID, NOW)  # fine in its own grid
    with pytest.raises(CertificateRejected, match="not by this grid"):
        check_certificate(OTHER_GRID_CERT, GRID, NOW)
    with pytest.raises(CertificateRejected):
        check_certificate(CERT, OTHER_GRID, NOW)


def test_certificate_claiming_our_grid_signed_by_another_key_is_refused() -> None:
    # Claims our grid id and our authority as issuer, but another key signed it.
    forged = seal(CERT_TAG, [VERSION, "node", GRID.grid_id, NODE.public_key, "site",
                             ["queue"], NOW - 10, NOW + 10, AUTH.public_key],
                  OTHER_AUTH.signing_key)
    with pytest.raises(BadMessage, match="bad signature"):
        Certificate.from_bytes_untrusted(forged)


def test_certificate_with_our_grid_id_but_another_issuer_is_rejected() -> None:
    # Honest signature by its issuer, but the issuer is not our authority.
    raw = seal(CERT_TAG, [VERSION, "node", GRID.grid_id, NODE.public_key, "site",
                          ["queue"], NOW - 10, NOW + 10, OTHER_AUTH.public_key],
               OTHER_AUTH.signing_key)
    cert = Certificate.from_bytes_untrusted(raw)
    with pytest.raises(CertificateRejected):
        check_certificate(cert, GRID, NOW)


def test_certificate_from_our_authority_for_another_grid_id_is_rejected() -> None:
    raw = seal(CERT_TAG, [VERSION, "node", OTHER_GRID.grid_id, NODE.public_key, "site",
                          ["queue"], NOW - 10, NOW + 10, AUTH.public_key], AUTH.signing_key)
    cert = Certificate.from_bytes_untrusted(raw)
    with pytest.raises(CertificateRejected):
        check_certificate(cert, GRID, NOW)


def test_certificate_for_another_key_is_rejected() -> None:
    check_certificate(CERT, GRID, NOW, subject_key=NODE.public_key)
    with pytest.raises(CertificateRejected, match="not for this key"):
        check_certificate(CERT, GRID, NOW, subject_key=NODE2.public_key)


def test_certificate_kind_mismatch_is_rejected() -> None:
    check_certificate(USER_CERT, GRID, NOW, kind="user")
    with pytest.raises(CertificateRejected, match="expected a node"):
        check_certificate(USER_CERT, GRID, NOW, kind="node")
    with pytest.raises(CertificateRejected, match="expected a user"):
        check_certificate(CERT, GRID, NOW, kind="user")


def test_certificate_with_swapped_signature_is_refused() -> None:
    # Two valid certificates from the same authority: body of one, signature of the other.
    other = Certificate.issue(AUTH, kind="node", subject_key=NODE2.public_key, name="site-b",
                              roles=("queue",), not_before=NOW - 100, not_after=NOW + 100)
    mixed = packb([CERT.body, other.sig])
    with pytest.raises(BadMessage, match="bad signature"):
        Certificate.from_bytes_untrusted(mixed)


# -- domain separation ------------------------------------------------------------------------


def _relabel(raw: bytes, new_tag: bytes) -> bytes:
    body, sig = msgpack.unpackb(raw)
    inner = msgpack.unpackb(body)
    return packb([packb([new_tag, *inner[1:]]), sig])


def test_certificate_relabelled_as_join_request_is_refused() -> None:
    with pytest.raises(BadMessage, match="domain tag"):
        JoinRequest.from_bytes_untrusted(CERT.raw)
    with pytest.raises(BadMessage):
        JoinRequest.from_bytes_untrusted(_relabel(CERT.raw, JOIN_REQUEST_TAG))


@pytest.mark.parametrize("decoder", ["grid-info", "join-request", "revocation-list",
                                     "node-record", "signed-record"])
def test_certificate_is_not_any_other_kind(decoder: str) -> None:
    with pytest.raises(BadMessage, match="domain tag"):
        DECODERS[decoder](CERT.raw)


# For each kind: fields that its decoder accepts and the key that must sign them.
VALID_FIELDS: dict[bytes, tuple[list[Any], KeyPair, Callable[[bytes], object]]] = {
    GRID_INFO_TAG: ([VERSION, "g", AUTH.public_key, NOW, []], AUTH,
                    GridInfo.from_bytes_untrusted),
    CERT_TAG: ([VERSION, "node", GRID.grid_id, NODE.public_key, "site", ["queue"],
                NOW - 10, NOW + 10, AUTH.public_key], AUTH, _decode_cert_and_check),
    JOIN_REQUEST_TAG: ([VERSION, GRID.grid_id, NODE.public_key, "site", ["queue"], NOW,
                        "node"], NODE, JoinRequest.from_bytes_untrusted),
    REVOCATIONS_TAG: ([VERSION, GRID.grid_id, 1, NOW, []], AUTH,
                      lambda d: RevocationList.from_bytes_untrusted(d, GRID)),
    RECORD_TAG: ([VERSION, node_record_key(NODE.id), "node", CERT.raw, 1, NOW + 10,
                  NODE_VALUE], NODE, lambda d: NodeRecord.from_bytes_untrusted(d, GRID, NOW)),
}


@pytest.mark.parametrize(
    ("signed_as", "read_as"),
    [(a, b) for a in ALL_TAGS for b in ALL_TAGS if a != b],
    ids=lambda t: t.decode().split("/")[1],
)
def test_signature_under_one_domain_tag_is_useless_for_another(signed_as: bytes,
                                                               read_as: bytes) -> None:
    fields, key, decode = VALID_FIELDS[read_as]
    # Control: the same fields under their own tag decode.
    decode(seal(read_as, fields, key.signing_key))
    # The right key signed exactly these fields, but for another kind of thing.
    sig = key.signing_key.sign(packb([signed_as, *fields])).signature
    relabelled = packb([packb([read_as, *fields]), sig])
    with pytest.raises(BadMessage, match="bad signature"):
        decode(relabelled)


# -- grid info, join requests and revocation lists: signer checks ------------------------------


def test_grid_info_with_substituted_authority_key_is_refused() -> None:
    raw = seal(GRID_INFO_TAG, [VERSION, "test-grid", OTHER_AUTH.public_key, NOW, []],
               AUTH.signing_key)
    with pytest.raises(BadMessage, match="bad signature"):
        GridInfo.from_bytes_untrusted(raw)


def test_join_request_must_be_signed_by_its_subjectfixed_key() -> None:
    raw = seal(JOIN_REQUEST_TAG, [VERSION, GRID.grid_id, NODE.public_key, "site-a",
                                  ["queue"], NOW, "node"], NODE2.signing_key)
    with pytest.raises(BadMessage, match="bad signature"):
        JoinRequest.from_bytes_untrusted(raw)


def test_join_request_with_tampered_fields_is_refused() -> None:
    body, sig = msgpack.unpackb(JOIN.raw)
    inner = msgpack.unpackb(body)
    # inner is [tag, version, grid id, subject key, name, roles, created, kind]
    for i, value in [(2, OTHER_GRID.grid_id), (3, NODE2.public_key), (4, "site-b"),
                     (5, list(ROLES)), (6, NOW + 1), (7, "user")]:
        tampered = list(inner)
        tampered[i] = value
        with pytest.raises(BadMessage, match="bad signature"):
            JoinRequest.from_bytes_untrusted(packb([packb(tampered), sig]))


def test_join_request_is_for_its_grid() -> None:
    req = JoinRequest.create(NODE2, OTHER_GRID, "x", (), NOW)
    assert req.grid_id == OTHER_GRID.grid_id != GRID.grid_id


def test_revocation_list_for_another_grid_is_refused() -> None:
    other = RevocationList.issue(OTHER_AUTH, 9, NOW, frozenset({NODE.id}))
    RevocationList.from_bytes_untrusted(other.raw, OTHER_GRID)  # fine for its own grid
    with pytest.raises(BadMessage, match="another grid"):
        RevocationList.from_bytes_untrusted(other.raw, GRID)


def test_revocation_list_signed_by_a_non_authority_key_is_refused() -> None:
    for signer in (OTHER_AUTH, NODE, USER):
        raw = seal(REVOCATIONS_TAG, [VERSION, GRID.grid_id, 99, NOW, [NODE.id]],
                   signer.signing_key)
        with pytest.raises(BadMessage, match="bad signature"):
            RevocationList.from_bytes_untrusted(raw, GRID)


def test_revocation_list_with_tampered_ids_is_refused() -> None:
    body, sig = msgpack.unpackb(REVS.raw)
    inner = msgpack.unpackb(body)
    # inner is [tag, version, grid id, serial, issued_at, revoked ids]
    inner[5] = [*inner[5], NODE.id]
    with pytest.raises(BadMessage, match="bad signature"):
        RevocationList.from_bytes_untrusted(packb([packb(inner), sig]), GRID)
    inner[5] = []
    with pytest.raises(BadMessage, match="bad signature"):
        RevocationList.from_bytes_untrusted(packb([packb(inner), sig]), GRID)


# -- user certificates and user join requests (issue 4) ----------------------------------


def test_user_request_round_trips_with_the_admin_role() -> None:
    req = JoinRequest.create(NODE2, GRID, "alice", ("admin",), NOW, kind="user")
    back = JoinRequest.from_bytes_untrusted(req.raw)
    assert (back.kind, back.roles, back.name) == ("user", ("admin",), "alice")


@pytest.mark.parametrize("kind, role", [("user", "queue"), ("node", "admin")])
def test_roles_of_the_other_kind_are_refused(kind: str, role: str) -> None:
    with pytest.raises(BadMessage, match=f"unknown {kind} role"):
        JoinRequest.create(NODE2, GRID, "x", (role,), NOW, kind=kind)
    with pytest.raises(BadMessage, match=f"unknown {kind} role"):
        Certificate.issue(AUTH, kind=kind, subject_key=NODE2.public_key, name="x",
                          roles=(role,), not_before=NOW, not_after=NOW + 10)


def test_request_of_an_unknown_kind_is_refused() -> None:
    raw = seal(JOIN_REQUEST_TAG, [VERSION, GRID.grid_id, NODE2.public_key, "x", [], NOW,
                                  "robot"], NODE2.signing_key)
    with pytest.raises(BadMessage, match="unknown request kind"):
        JoinRequest.from_bytes_untrusted(raw)
