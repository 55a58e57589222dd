"""Job specs, signed jobs and job records: the doors for people and for the wire."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overlay import BadMessage, GridInfo, packb, seal
from steering.job import JOB_TAG, JobSpec, SignedJob, SpecError, parse_job_id
from steering.record import JobRecord, new_record
from tests.overlay.common import NOW, SETTINGS, fixed_key

from .common import ALICE, ALICE_CERT, GRID, job


def test_spec_defaults_and_round_trip() -> None:
    spec = JobSpec.from_mapping({"argv": ["echo", "hi"], "env": {"A": "1"}, "cores": 2})
    assert spec.cores == 2 and spec.memory_mb == 512 and spec.env == (("A", "1"),)
    assert JobSpec.from_wire_untrusted(spec.to_wire()) == spec
    assert JobSpec.from_mapping(spec.to_mapping()) == spec


@pytest.mark.parametrize("data, field, why", [
    ({}, "argv", "required"),
    ({"argv": []}, "argv", "1 to 1024"),
    ({"argv": ["x"], "cores": -1}, "cores", "from 1 to 1024"),
    ({"argv": ["x"], "cores": 1.5}, "cores", "integer"),
    ({"argv": ["x"], "memory_mb": 10**12}, "memory_mb", "from 1"),
    ({"argv": ["x"], "walltime_s": 0}, "walltime_s", "from 1"),
    ({"argv": ["x"], "colour": "red"}, "colour", "unknown field"),
    ({"argv": ["x"], "env": {"GRIDNODE_JOB_ID": "x"}}, "env", "set by the grid"),
    ({"argv": ["x"], "env": {"1A": "x"}}, "env", "not a variable name"),
    ({"argv": ["x\x00"]}, "argv", "without NUL"),
    ({"argv": ["x"], "task_id": "zz"}, "task_id", "40 hex"),
    ({"argv": ["x"], "max_attempts": 0}, "max_attempts", "from 1 to 100"),
    ({"argv": "echo hi"}, "argv", "list of strings"),
])
def test_bad_specs_name_the_field_and_why(data: dict[str, Any], field: str, why: str) -> None:
    with pytest.raises(SpecError, match=why) as err:
        JobSpec.from_mapping(data)
    assert err.value.field == field
    assert repr(field) in str(err.value)


def test_signed_job_round_trip_and_id() -> None:
    j = job(1, argv=["echo", "{index}"], priority=5)
    back = SignedJob.from_bytes_untrusted(j.raw, GRID, now=NOW)
    assert back.job_id == j.job_id and back.spec == j.spec and back.user_id == ALICE.id
    assert job(2).job_id != j.job_id
    assert parse_job_id(j.hex_id) == j.job_id
    with pytest.raises(ValueError):
        parse_job_id("abc")


def test_job_signed_by_another_key_or_grid_is_refused() -> None:
    mallory = fixed_key(12)
    spec = JobSpec.from_mapping({"argv": ["rm", "-rf", "/"]})
    forged = seal(JOB_TAG, [1, ALICE_CERT.raw, spec.to_wire(), NOW, b""], mallory.signing_key)
    with pytest.raises(BadMessage, match="signature"):
        SignedJob.from_bytes_untrusted(forged, GRID, now=NOW)
    other = GridInfo.create(fixed_key(2), "other", NOW)
    with pytest.raises(BadMessage, match="grid"):
        SignedJob.from_bytes_untrusted(job().raw, other, now=NOW)
    with pytest.raises(BadMessage, match="revoked"):
        SignedJob.from_bytes_untrusted(job().raw, GRID, now=NOW, revoked=frozenset({ALICE.id}))


def test_job_signed_by_a_node_cert_is_refused() -> None:
    from overlay import Certificate

    node_cert = Certificate.issue(fixed_key(1), kind="node", subject_key=ALICE.public_key,
                                  name="s", roles=(), not_before=NOW - 10, not_after=NOW + 10)
    raw = seal(JOB_TAG, [1, node_cert.raw, JobSpec(("x",)).to_wire(), NOW, b""],
               ALICE.signing_key)
    with pytest.raises(BadMessage, match="user"):
        SignedJob.from_bytes_untrusted(raw, GRID, now=NOW)


def test_record_round_trip() -> None:
    rec = new_record(job(3), (b"a" * 20, b"b" * 20, b"c" * 20), now=NOW, node=b"n" * 20)
    assert rec.state == "activated"
    assert JobRecord.from_wire_untrusted(rec.to_wire(), GRID) == rec
    assert new_record(job(4, inputs=["data:x"]), rec.home, now=NOW, node=b"").state == "defined"


_leaf = st.one_of(st.none(), st.integers(-3, 2**64 - 1), st.binary(max_size=30),
                  st.text(max_size=8), st.floats(allow_nan=True))
_junk = st.recursive(_leaf, lambda x: st.lists(x, max_size=9), max_leaves=20)


@SETTINGS
@given(data=_junk)
def test_decoders_return_or_raise_bad_message(data: Any) -> None:
    for decode in (lambda: JobSpec.from_wire_untrusted(data),
                   lambda: JobRecord.from_wire_untrusted(data, GRID)):
        try:
            decode()
        except BadMessage:
            pass


@SETTINGS
@given(i=st.integers(0, 7), value=_junk)
def test_record_with_one_field_replaced_returns_or_raises_bad_message(i: int, value: Any) -> None:
    wire = new_record(job(5), (b"a" * 20,), now=NOW, node=b"").to_wire()
    wire[i] = value
    try:
        JobRecord.from_wire_untrusted(wire, GRID)
    except BadMessage:
        pass


@SETTINGS
@given(raw=st.binary(max_size=300))
def test_signed_job_decoder_on_garbage(raw: bytes) -> None:
    for data in (raw, packb([raw, b"s" * 64])):
        try:
            SignedJob.from_bytes_untrusted(data, GRID, now=NOW)
        except BadMessage:
            pass
