"""Dataset names, policies, signed records and the rules of change."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overlay import BadMessage, Certificate, packb, seal
from replication import (
    DATASET_TAG,
    MAX_RECORD,
    DatasetError,
    DatasetName,
    DatasetNameError,
    DatasetRecord,
    FileManifest,
    ReplicationPolicy,
    add_files,
    can_replace,
    change_policy,
    close_dataset,
    parse_dataset_name,
    parse_file_address,
    replace_refusal,
)
from replication.chunks import chunk_hash
from tests.overlay.common import NOW, SETTINGS, fixed_key

from .common import (
    ADMIN_CERT,
    ALICE,
    ALICE_CERT,
    AUTH,
    BOB,
    BOB_CERT,
    GRID,
    OTHER_GRID,
    ROOT,
    SMALL,
    user_cert,
)
from .test_manifest import junk

DS = DatasetName("alice", "run1")


def manifest(name: str, size: int = 10, seed: int = 0) -> FileManifest:
    chunks = tuple(chunk_hash(f"{name}/{seed}/{i}".encode()) for i in range(-(-size // SMALL)))
    return FileManifest(name, size, chunk_hash(name.encode()), chunks, SMALL)


def record(files: tuple[FileManifest, ...] = (), **kw: Any) -> DatasetRecord:
    return DatasetRecord.create(ALICE, ALICE_CERT, kw.pop("name", DS), created=NOW + 0.5,
                                files=files, **kw)


def decode(raw: bytes, **kw: Any) -> DatasetRecord:
    return DatasetRecord.from_bytes_untrusted(raw, GRID, chunk_size=SMALL, **kw)


def fields(rec: DatasetRecord) -> list[Any]:
    return [1, rec.owner.raw, rec.name.scope, rec.name.name, rec.created, rec.policy.to_wire(),
            [f.to_wire() for f in rec.files], rec.closed, rec.version]


# -- names ---------------------------------------------------------------------------


@pytest.mark.parametrize("text, want", [
    ("run1", ("alice", "run1")),
    ("  run1 ", ("alice", "run1")),
    ("mc23:ttbar.v2-skim", ("mc23", "ttbar.v2-skim")),
    ("bob:_x", ("bob", "_x")),
    ("a:" + "n" * 255, ("a", "n" * 255)),
    ("s" * 64 + ":n", ("s" * 64, "n")),
])
def test_dataset_names_accepted(text: str, want: tuple[str, str]) -> None:
    name = parse_dataset_name(text, "alice")
    assert (name.scope, name.name) == want
    assert parse_dataset_name(str(name), "someone") == name


@pytest.mark.parametrize("text, why", [
    ("", "dataset name is empty"),
    (":run1", "scope is empty"),
    ("alice:", "dataset name is empty"),
    ("a:b:c", "may hold only"),
    ("alice:run/1", "may hold only"),
    ("-rf", "starts with"),
    ("..", "starts with"),
    ("x y", "may hold only"),
    ("ünï", "may hold only"),
    ("a:" + "n" * 256, "longer than 255"),
    ("s" * 65 + ":n", "longer than 64"),
])
def test_dataset_names_refused_with_a_reason(text: str, why: str) -> None:
    with pytest.raises(DatasetNameError, match=why):
        parse_dataset_name(text, "alice")


def test_a_user_name_that_cannot_be_a_scope_is_named() -> None:
    with pytest.raises(DatasetNameError, match="your user name 'Alice Smith'.*SCOPE:NAME"):
        parse_dataset_name("run1", "Alice Smith")
    assert parse_dataset_name("as:run1", "Alice Smith") == DatasetName("as", "run1")
    assert issubclass(DatasetNameError, ValueError)


@pytest.mark.parametrize("text, want", [
    ("run1", (DS, None)),
    ("run1/a.root", (DS, "a.root")),
    ("alice:run1/dir/sub/a.root", (DS, "dir/sub/a.root")),
    ("mc23:x/y", (DatasetName("mc23", "x"), "y")),
])
def test_file_addresses_split_at_the_first_slash(text: str, want: Any) -> None:
    assert parse_file_address(text, "alice") == want


@pytest.mark.parametrize("text, why", [
    ("run1/", "nothing after"),
    ("run1//x", "absolute"),
    ("run1/a//x", "empty"),
    ("run1/../x", r"'\.\.'"),
    ("/x", "dataset name is empty"),
    ("a:b:c/x", "may hold only"),
])
def test_bad_file_addresses(text: str, why: str) -> None:
    with pytest.raises(DatasetNameError, match=why):
        parse_file_address(text, "alice")


# -- policy -------------------------------------------------------------------------------


def test_policy_bounds() -> None:
    assert ReplicationPolicy().to_wire() == [2, 5]
    assert ReplicationPolicy(1, 1) and ReplicationPolicy(64, 64)
    for lo, hi in [(0, 1), (3, 2), (1, 65), (True, 2), (1.0, 2)]:
        with pytest.raises(DatasetError, match="1 <= min <= max <= 64"):
            ReplicationPolicy(lo, hi)  # type: ignore[arg-type]
    with pytest.raises(BadMessage, match="replication policy"):
        ReplicationPolicy.from_wire_untrusted([5, 2])
    with pytest.raises(BadMessage, match=r"\[min, max\]"):
        ReplicationPolicy.from_wire_untrusted([5])


# -- records ---------------------------------------------------------------------------------


def test_record_round_trip() -> None:
    rec = record((manifest("a", 3 * SMALL), manifest("dir/b", 0)),
                 policy=ReplicationPolicy(3, 7))
    back = decode(rec.raw, now=NOW)
    assert back == rec and back.raw == rec.raw
    assert back.owner_id == ALICE.id and back.owner.name == "alice"
    assert back.version == 1 and not back.closed and back.created == NOW + 0.5
    assert back.size == 3 * SMALL and back.file("dir/b") == manifest("dir/b", 0)
    assert back.file("nope") is None


def test_a_record_larger_than_an_envelope_round_trips() -> None:
    files = tuple(manifest(f"f{i:05d}", 2 * SMALL) for i in range(1500))
    rec = record(files)
    assert 64 * 1024 < len(rec.raw) < MAX_RECORD
    assert decode(rec.raw).files == files


def test_records_over_the_cap_are_refused_both_ways() -> None:
    n = MAX_RECORD // 32 // 2 + 10
    big = tuple(FileManifest(f"f{i}", n * SMALL, b"h" * 32, (b"c" * 32,) * n, SMALL)
                for i in range(2))
    with pytest.raises(DatasetError, match=f"over the cap of {MAX_RECORD}"):
        record(big)
    raw = seal(DATASET_TAG, [1, ALICE_CERT.raw, "alice", "x", NOW + 0.0, [2, 5],
                             [f.to_wire() for f in big], False, 1], ALICE.signing_key)
    with pytest.raises(BadMessage, match="exceeds the cap"):
        decode(raw)


def test_forged_and_tampered_records_are_refused() -> None:
    rec = record((manifest("a"),))
    forged = seal(DATASET_TAG, fields(rec), fixed_key(30).signing_key)
    with pytest.raises(BadMessage, match="signature"):
        decode(forged)
    # Signed by bob, carrying alice's certificate: still not alice's.
    with pytest.raises(BadMessage, match="signature"):
        decode(seal(DATASET_TAG, fields(rec), BOB.signing_key))
    flipped = bytearray(rec.raw)
    flipped[len(flipped) // 2] ^= 1
    with pytest.raises(BadMessage):
        decode(bytes(flipped))
    # A signature for another kind of thing is no signature for a dataset.
    with pytest.raises(BadMessage, match="wrong domain tag"):
        decode(seal(b"gridnode/job/v1", fields(rec), ALICE.signing_key))


def test_certificates_are_judged() -> None:
    rec = record((manifest("a"),))
    with pytest.raises(BadMessage, match="not by this grid"):
        DatasetRecord.from_bytes_untrusted(rec.raw, OTHER_GRID, chunk_size=SMALL)
    stranger = user_cert(ALICE, "alice", authority=fixed_key(2))
    other = DatasetRecord.create(ALICE, stranger, DS, created=NOW, files=(manifest("a"),))
    with pytest.raises(BadMessage, match="not by this grid"):
        decode(other.raw)
    assert DatasetRecord.from_bytes_untrusted(other.raw, OTHER_GRID, chunk_size=SMALL)
    with pytest.raises(BadMessage, match="revoked"):
        decode(rec.raw, revoked=frozenset({ALICE.id}))
    with pytest.raises(BadMessage, match="expired"):
        decode(rec.raw, now=NOW + 86400 * 400)
    # Without ``now``, a stored record outlives its owner's certificate.
    assert decode(rec.raw) == rec
    node_cert = Certificate.issue(AUTH, kind="node", subject_key=ALICE.public_key, name="alice",
                                  roles=(), not_before=NOW - 10, not_after=NOW + 10)
    with pytest.raises(DatasetError, match="user certificate"):
        DatasetRecord.create(ALICE, node_cert, DS, created=NOW)
    fake = fields(rec)
    fake[1] = node_cert.raw
    with pytest.raises(BadMessage, match="user"):
        decode(seal(DATASET_TAG, fake, ALICE.signing_key))


def test_only_the_scope_owner_or_an_admin_writes_a_scope() -> None:
    with pytest.raises(DatasetError, match="may not write scope 'alice'"):
        DatasetRecord.create(BOB, BOB_CERT, DS, created=NOW)
    with pytest.raises(DatasetError, match="not the one the certificate is for"):
        DatasetRecord.create(BOB, ALICE_CERT, DS, created=NOW)
    squat = fields(record())
    squat[1] = BOB_CERT.raw
    with pytest.raises(BadMessage, match="may not write scope 'alice'"):
        decode(seal(DATASET_TAG, squat, BOB.signing_key))
    shared = DatasetRecord.create(ROOT, ADMIN_CERT, DatasetName("mc23", "ttbar"), created=NOW)
    assert decode(shared.raw).name == DatasetName("mc23", "ttbar")


@pytest.mark.parametrize("i, value, why", [
    (0, 2, "envelope"),
    (0, True, "envelope"),
    (2, "a b", "dataset name"),
    (3, "", "dataset name"),
    (4, 1700000000, "creation time"),
    (4, float("nan"), "creation time"),
    (4, -1.0, "creation time"),
    (5, [0, 2], "policy"),
    (6, [["a", 1, b"h" * 32, b"c" * 32]] * 2, "listed twice"),
    (6, {"a": 1}, "must be a list"),
    (6, [["a", 1, b"h" * 32, b""]], "make 1 chunks"),
    (7, 1, "closed flag"),
    (8, 0, "version"),
    (8, 2**63, "version"),
])
def test_record_fields_are_checked(i: int, value: Any, why: str) -> None:
    wire = fields(record((manifest("a"),)))
    wire[i] = value
    with pytest.raises(BadMessage, match=why):
        decode(seal(DATASET_TAG, wire, ALICE.signing_key))


def test_create_refuses_duplicate_names_and_too_many_files() -> None:
    with pytest.raises(DatasetError, match="listed twice"):
        record((manifest("a"), manifest("a", seed=1)))
    with pytest.raises(DatasetError, match="at most 16384 files"):
        record(tuple([manifest("a")] * 16385))
    with pytest.raises(DatasetError, match="version"):
        record(version=0)


# -- the rules of change -------------------------------------------------------------------


def test_add_files_makes_the_next_version() -> None:
    v1 = record((manifest("a"),))
    v2 = add_files(v1, [manifest("b"), manifest("c")], ALICE, ALICE_CERT)
    assert v2.version == 2 and [f.name for f in v2.files] == ["a", "b", "c"]
    assert v2.created == v1.created and v2.policy == v1.policy
    assert decode(v2.raw) == v2
    assert can_replace(v1, v2) and not can_replace(v2, v1)


@pytest.mark.parametrize("files, why", [
    ([manifest("a", seed=1)], "'a' is already in dataset alice:run1"),
    ([manifest("b"), manifest("b")], "'b' is already in"),
    ([], "no files to add"),
])
def test_add_files_refuses_duplicates(files: list[FileManifest], why: str) -> None:
    with pytest.raises(DatasetError, match=why):
        add_files(record((manifest("a"),)), files, ALICE, ALICE_CERT)


def test_only_the_owner_changes_a_dataset() -> None:
    v1 = record()
    with pytest.raises(DatasetError, match="belongs to alice, not to bob"):
        add_files(v1, [manifest("b")], BOB, BOB_CERT)
    with pytest.raises(DatasetError, match="belongs to alice"):
        close_dataset(v1, ROOT, ADMIN_CERT)
    # The owner with a renewed certificate (same key) may.
    renewed = user_cert(ALICE, "alice")
    assert add_files(v1, [manifest("b")], ALICE, renewed).version == 2


def test_a_closed_dataset_gets_no_more_files_but_may_change_policy() -> None:
    v1 = record((manifest("a"),))
    v2 = close_dataset(v1, ALICE, ALICE_CERT)
    assert v2.closed and v2.version == 2 and can_replace(v1, v2)
    with pytest.raises(DatasetError, match="is closed"):
        add_files(v2, [manifest("b")], ALICE, ALICE_CERT)
    with pytest.raises(DatasetError, match="already closed"):
        close_dataset(v2, ALICE, ALICE_CERT)
    v3 = change_policy(v2, ReplicationPolicy(4, 8), ALICE, ALICE_CERT)
    assert v3.closed and v3.policy == ReplicationPolicy(4, 8) and can_replace(v2, v3)
    with pytest.raises(DatasetError, match="already has that policy"):
        change_policy(v3, ReplicationPolicy(4, 8), ALICE, ALICE_CERT)


def test_replace_refusals_say_why() -> None:
    a, b = manifest("a"), manifest("b")
    v1 = record((a,))
    closed = record((a,), closed=True, version=2)
    cases = [
        (v1, record((a,), version=1), "version 1 does not replace version 1"),
        (record((a,), version=3), record((a, b), version=2), "does not replace version 3"),
        (v1, record((a,), name=DatasetName("alice", "run2"), version=2),
         "alice:run2 does not replace one of alice:run1"),
        (v1, DatasetRecord.create(ROOT, ADMIN_CERT, DS, created=NOW, files=(a, b), version=2),
         "belongs to alice; root signed"),
        (closed, record((a,), version=3), "closed and stays closed"),
        (closed, record((a, b), closed=True, version=3), "no files may be added"),
        (record((a, b)), record((a,), version=2), "only add files"),
        (record((a, b)), record((b, a), version=2), "only add files"),
        (v1, record((manifest("a", seed=1), b), version=2), "only add files"),
    ]
    for old, new, why in cases:
        refusal = replace_refusal(old, new)
        assert refusal is not None and why in refusal, (why, refusal)
        assert not can_replace(old, new)
    assert replace_refusal(v1, record((a, b), closed=True, version=5)) is None


# -- the one door, fuzzed ---------------------------------------------------------------------

VALID = record((manifest("a", 2 * SMALL), manifest("d/b"))).raw


def _returns_or_bad_message(raw: bytes) -> None:
    try:
        rec = decode(raw)
    except BadMessage:
        return
    assert rec.raw == raw and decode(rec.raw) == rec


@SETTINGS
@given(raw=st.binary(max_size=400))
def test_from_bytes_on_garbage(raw: bytes) -> None:
    for data in (raw, packb([raw, b"s" * 64]), packb([packb([DATASET_TAG, raw]), b"s" * 64])):
        _returns_or_bad_message(data)


@SETTINGS
@given(i=st.integers(0, 8), value=junk)
def test_from_bytes_with_one_signed_field_replaced(i: int, value: Any) -> None:
    wire = fields(decode(VALID))
    wire[i] = value
    _returns_or_bad_message(seal(DATASET_TAG, wire, ALICE.signing_key))


@SETTINGS
@given(data=st.data())
def test_any_byte_flip_of_a_record_is_refused(data: st.DataObject) -> None:
    pos = data.draw(st.integers(0, len(VALID) - 1))
    bit = data.draw(st.integers(0, 7))
    raw = bytearray(VALID)
    raw[pos] ^= 1 << bit
    with pytest.raises(BadMessage):
        decode(bytes(raw))


@SETTINGS
@given(cut=st.integers(0, len(VALID) - 1))
def test_truncated_records_are_refused(cut: int) -> None:
    with pytest.raises(BadMessage):
        decode(VALID[:cut])
