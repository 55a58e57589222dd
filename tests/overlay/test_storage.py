"""The DHT record store (overlay._storage.RecordStore): outcomes, no rollback, quotas.

The store is a pure core: every test drives it synchronously with explicit
times.  Records are real signed records (kind ``provider``) made with
certificates of a fixed authority, so ``put_untrusted`` runs the full check.
"""

from __future__ import annotations

from collections import Counter
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from overlay import Certificate, GridInfo, KeyPair, RecordStore, SignedRecord, provider_key
from overlay._storage import INVALID, QUOTA, REPLACED, SAME, STALE, STORED
from tests.overlay.common import NOW, SETTINGS, fixed_key

AUTH = fixed_key(31)
OTHER_AUTH = fixed_key(32)
GRID = GridInfo.create(AUTH, "store-grid", NOW)
OTHER_GRID = GridInfo.create(OTHER_AUTH, "other-grid", NOW)
SIGNERS = [fixed_key(40 + i) for i in range(4)]
KEYS = [provider_key("dataset", f"d{i}") for i in range(4)]
LATER = NOW + 600


def _cert(key: KeyPair, authority: KeyPair = AUTH) -> Certificate:
    return Certificate.issue(authority, kind="node", subject_key=key.public_key, name="site",
                             roles=(), not_before=NOW - 3600, not_after=NOW + 365 * 86400)


CERTS = [_cert(k) for k in SIGNERS]


@cache
def rec(signer: int = 0, key: int = 0, *, seq: int = 1, expires: int = LATER,
        value: bytes = b"") -> SignedRecord:
    """A provider record of signer ``signer`` under ``KEYS[key]`` (memoised: signing is
    deterministic, so the same arguments give the same raw bytes anyway)."""
    return SignedRecord.create(SIGNERS[signer], CERTS[signer], key=KEYS[key], kind="provider",
                               seq=seq, expires=expires, value=value)


def _stored(store: RecordStore) -> dict[tuple[bytes, bytes], SignedRecord]:
    out: dict[tuple[bytes, bytes], SignedRecord] = {}
    for r in store.records():
        assert (r.key, r.signer) not in out, "a (key, signer) is stored twice"
        out[(r.key, r.signer)] = r
    return out


# -- outcomes -------------------------------------------------------------------------------


def test_fresh_record_is_stored_and_returned() -> None:
    store = RecordStore(GRID)
    assert store.put_untrusted(rec().raw, NOW) == STORED
    assert len(store) == 1
    [got] = store.get(KEYS[0], NOW)
    assert got.raw == rec().raw
    assert got.signer == SIGNERS[0].id
    assert store.keys() == [KEYS[0]]
    assert store.get(KEYS[1], NOW) == []


def test_same_raw_again_is_same() -> None:
    store = RecordStore(GRID)
    store.put_untrusted(rec().raw, NOW)
    assert store.put_untrusted(rec().raw, NOW) == SAME
    assert store.put(rec()) == SAME
    assert len(store) == 1
    assert [r.raw for r in store.get(KEYS[0], NOW)] == [rec().raw]


def test_higher_seq_replaces_and_only_the_newer_is_returned() -> None:
    store = RecordStore(GRID)
    store.put_untrusted(rec(seq=1).raw, NOW)
    assert store.put_untrusted(rec(seq=5, value=b"v5").raw, NOW) == REPLACED
    assert len(store) == 1
    assert [(r.seq, r.value) for r in store.get(KEYS[0], NOW)] == [(5, b"v5")]
    assert [r.seq for r in store.records()] == [5]


@pytest.mark.parametrize("older", [
    {"seq": 4},                      # lower seq: a rollback
    {"seq": 0, "value": b"other"},  # lower seq, other bytes
    {"seq": 5, "value": b"other"},  # same seq, other bytes: refused, not a replace
])
def test_lower_or_conflicting_seq_is_stale_and_changes_nothing(older: dict) -> None:
    store = RecordStore(GRID)
    current = rec(seq=5, value=b"current")
    assert store.put_untrusted(current.raw, NOW) == STORED
    assert store.put_untrusted(rec(**older).raw, NOW) == STALE
    assert store.put(rec(**older)) == STALE
    assert len(store) == 1
    assert [r.raw for r in store.get(KEYS[0], NOW)] == [current.raw]


def test_a_replay_after_a_replace_is_stale() -> None:
    store = RecordStore(GRID)
    store.put_untrusted(rec(seq=1).raw, NOW)
    store.put_untrusted(rec(seq=2).raw, NOW)
    assert store.put_untrusted(rec(seq=1).raw, NOW) == STALE
    assert [r.seq for r in store.get(KEYS[0], NOW)] == [2]


def test_other_signers_under_one_key_make_a_provider_set() -> None:
    store = RecordStore(GRID)
    for i in range(3):
        assert store.put_untrusted(rec(signer=i).raw, NOW) == STORED
    assert len(store) == 3
    assert {r.signer for r in store.get(KEYS[0], NOW)} == {k.id for k in SIGNERS[:3]}
    # The same signer under another key is another record.
    assert store.put_untrusted(rec(signer=0, key=1).raw, NOW) == STORED
    assert len(store) == 4
    assert sorted(store.keys()) == sorted(KEYS[:2])


# -- invalid input --------------------------------------------------------------------------


def _outsider_record() -> SignedRecord:
    key = SIGNERS[0]
    return SignedRecord.create(key, _cert(key, OTHER_AUTH), key=KEYS[0], kind="provider",
                               seq=1, expires=LATER, value=b"")


@pytest.mark.parametrize("raw, revoked", [
    pytest.param(b"", frozenset(), id="empty"),
    pytest.param(b"garbage", frozenset(), id="garbage"),
    pytest.param(b"\x92\xc4\x00\xc4\x00", frozenset(), id="empty-envelope"),
    pytest.param("text", frozenset(), id="str"),
    pytest.param(None, frozenset(), id="none"),
    pytest.param(rec().raw[:-1], frozenset(), id="truncated"),
    pytest.param(rec().raw[:-1] + bytes([rec().raw[-1] ^ 1]), frozenset(), id="bad-sig"),
    pytest.param(_outsider_record().raw, frozenset(), id="another-grid"),
    pytest.param(rec(expires=NOW - 1).raw, frozenset(), id="expired"),
    pytest.param(rec().raw, frozenset({SIGNERS[0].id}), id="revoked"),
])
def test_invalid_records_are_refused_and_nothing_is_stored(raw: object,
                                                           revoked: frozenset[bytes]) -> None:
    store = RecordStore(GRID)
    assert store.put_untrusted(raw, NOW, revoked) == INVALID
    assert len(store) == 0
    assert list(store.records()) == []
    assert store.keys() == []
    assert store.counters == Counter({INVALID: 1})


def test_record_from_another_grid_is_valid_in_its_own_grid() -> None:
    """The another-grid case above fails for the grid, not for the bytes."""
    store = RecordStore(OTHER_GRID)
    assert store.put_untrusted(_outsider_record().raw, NOW) == STORED


def test_an_invalid_newer_copy_does_not_replace() -> None:
    store = RecordStore(GRID)
    store.put_untrusted(rec(seq=1).raw, NOW)
    forged = bytearray(rec(seq=9).raw)
    forged[-1] ^= 0x40
    assert store.put_untrusted(bytes(forged), NOW) == INVALID
    assert [r.seq for r in store.get(KEYS[0], NOW)] == [1]


# -- get and purge --------------------------------------------------------------------------


def test_get_filters_expired_and_revoked() -> None:
    store = RecordStore(GRID)
    store.put_untrusted(rec(signer=0, expires=NOW + 10).raw, NOW)
    store.put_untrusted(rec(signer=1, expires=NOW + 100).raw, NOW)
    both = {SIGNERS[0].id, SIGNERS[1].id}
    assert {r.signer for r in store.get(KEYS[0], NOW + 10)} == both  # expires is inclusive
    assert {r.signer for r in store.get(KEYS[0], NOW + 11)} == {SIGNERS[1].id}
    assert {r.signer for r in store.get(KEYS[0], NOW, frozenset({SIGNERS[1].id}))} == {
        SIGNERS[0].id}
    assert store.get(KEYS[0], NOW + 101) == []
    # get only filters: the records are still held until purge.
    assert len(store) == 2


def test_purge_drops_expired_and_revoked_and_counts_them() -> None:
    store = RecordStore(GRID)
    store.put_untrusted(rec(signer=0, key=0, expires=NOW + 10).raw, NOW)
    store.put_untrusted(rec(signer=0, key=1, expires=NOW + 100).raw, NOW)
    store.put_untrusted(rec(signer=1, key=0, expires=NOW + 100).raw, NOW)
    store.put_untrusted(rec(signer=2, key=2, expires=NOW + 100).raw, NOW)
    assert len(store) == 4
    assert store.purge(NOW + 10) == 0
    assert store.purge(NOW + 11) == 1
    assert len(store) == 3
    assert store.purge(NOW + 11, frozenset({SIGNERS[2].id})) == 1
    assert len(store) == 2
    assert KEYS[2] not in store.keys()  # an emptied key is gone
    assert {(r.key, r.signer) for r in store.records()} == {
        (KEYS[1], SIGNERS[0].id), (KEYS[0], SIGNERS[1].id)}
    assert store.purge(NOW + 101) == 2
    assert len(store) == 0
    assert store.keys() == []
    assert store.counters["purged"] == 4


def test_purge_frees_quota() -> None:
    store = RecordStore(GRID, max_records=1, max_per_signer=1)
    store.put_untrusted(rec(signer=0, key=0, expires=NOW + 10).raw, NOW)
    assert store.put_untrusted(rec(signer=0, key=1).raw, NOW) == QUOTA
    assert store.purge(NOW + 11) == 1
    assert store.put_untrusted(rec(signer=0, key=1).raw, NOW + 11) == STORED
    assert len(store) == 1


# -- quotas ---------------------------------------------------------------------------------


def test_max_records_is_a_total_cap() -> None:
    store = RecordStore(GRID, max_records=3)
    outcomes = [store.put(rec(signer=s, key=k)) for s in range(2) for k in range(2)]
    assert outcomes == [STORED, STORED, STORED, QUOTA]
    assert len(store) == 3
    # Replacing an existing record needs no room.
    assert store.put(rec(signer=0, key=0, seq=2)) == REPLACED
    assert len(store) == 3


def test_one_signer_cannot_fill_the_store() -> None:
    store = RecordStore(GRID, max_per_signer=2)
    flood = [store.put_untrusted(rec(signer=0, key=k).raw, NOW) for k in range(4)]
    assert flood == [STORED, STORED, QUOTA, QUOTA]
    assert store.put_untrusted(rec(signer=1, key=3).raw, NOW) == STORED
    assert store.put_untrusted(rec(signer=0, key=1, seq=2).raw, NOW) == REPLACED
    assert len(store) == 3
    assert store.get(KEYS[2], NOW) == []


def test_a_full_provider_set_refuses_new_signers_but_lets_members_update() -> None:
    store = RecordStore(GRID, max_signers_per_key=2)
    assert store.put(rec(signer=0)) == STORED
    assert store.put(rec(signer=1)) == STORED
    assert store.put(rec(signer=2)) == QUOTA
    assert store.put(rec(signer=1, seq=2, value=b"new")) == REPLACED
    assert store.put(rec(signer=0)) == SAME
    assert {(r.signer, r.seq) for r in store.get(KEYS[0], NOW)} == {
        (SIGNERS[0].id, 1), (SIGNERS[1].id, 2)}
    # The cap is per key: signer 2 may still provide something else.
    assert store.put(rec(signer=2, key=1)) == STORED


def test_counters_count_every_outcome() -> None:
    store = RecordStore(GRID, max_records=2)
    puts = [
        rec(seq=1).raw,              # stored
        rec(seq=1).raw,              # same
        rec(seq=2).raw,              # replaced
        rec(seq=1).raw,              # stale
        b"junk",                     # invalid
        rec(signer=1).raw,           # stored
        rec(signer=2).raw,           # quota
        rec(signer=2).raw,           # quota
    ]
    outcomes = [store.put_untrusted(raw, NOW) for raw in puts]
    assert outcomes == [STORED, SAME, REPLACED, STALE, INVALID, STORED, QUOTA, QUOTA]
    assert store.counters == Counter(outcomes)


# -- properties -----------------------------------------------------------------------------

SMALL = {"max_records": 6, "max_per_signer": 3, "max_signers_per_key": 2}
EXPIRIES = [NOW + 50, NOW + 200, NOW + 400]


class StoreMachine(RuleBasedStateMachine):
    """Drive a small store and a dictionary model side by side; they must agree."""

    def __init__(self) -> None:
        super().__init__()
        self.store = RecordStore(GRID, **SMALL)
        self.now = NOW
        self.revoked: frozenset[bytes] = frozenset()
        self.model: dict[tuple[bytes, bytes], SignedRecord] = {}
        self.max_seq: dict[tuple[bytes, bytes], int] = {}
        self.counters: Counter[str] = Counter()

    def _expect(self, r: SignedRecord, untrusted: bool) -> str:
        if untrusted and (r.expires < self.now or r.signer in self.revoked):
            return INVALID
        old = self.model.get((r.key, r.signer))
        if old is not None:
            if r.seq > old.seq:
                return REPLACED
            return SAME if r.raw == old.raw else STALE
        per_signer = sum(1 for (_, s) in self.model if s == r.signer)
        per_key = sum(1 for (k, _) in self.model if k == r.key)
        if (len(self.model) >= SMALL["max_records"]
                or per_signer >= SMALL["max_per_signer"]
                or per_key >= SMALL["max_signers_per_key"]):
            return QUOTA
        return STORED

    @rule(signer=st.integers(0, 3), key=st.integers(0, 3), seq=st.integers(0, 4),
          expires=st.sampled_from(EXPIRIES), value=st.sampled_from([b"", b"x"]),
          untrusted=st.booleans())
    def put(self, signer: int, key: int, seq: int, expires: int, value: bytes,
            untrusted: bool) -> None:
        r = rec(signer, key, seq=seq, expires=expires, value=value)
        expected = self._expect(r, untrusted)
        got = self.store.put_untrusted(r.raw, self.now, self.revoked) if untrusted \
            else self.store.put(r)
        assert got == expected
        self.counters[got] += 1
        if got in (STORED, REPLACED):
            self.model[(r.key, r.signer)] = r
            pair = (r.key, r.signer)
            self.max_seq[pair] = max(self.max_seq.get(pair, -1), r.seq)

    @rule(raw=st.binary(max_size=40))
    def put_junk(self, raw: bytes) -> None:
        assert self.store.put_untrusted(raw, self.now) == INVALID
        self.counters[INVALID] += 1

    @rule(advance=st.integers(0, 250), revoke=st.sets(st.integers(0, 3), max_size=1))
    def purge(self, advance: int, revoke: set[int]) -> None:
        self.now += advance
        self.revoked |= {SIGNERS[i].id for i in revoke}
        drop = [p for p, r in self.model.items() if r.expires < self.now or p[1] in self.revoked]
        assert self.store.purge(self.now, self.revoked) == len(drop)
        for p in drop:
            del self.model[p]
            del self.max_seq[p]
        self.counters["purged"] += len(drop)

    @rule(key=st.integers(0, 3))
    def get(self, key: int) -> None:
        want = {r.raw for (k, s), r in self.model.items()
                if k == KEYS[key] and r.expires >= self.now and s not in self.revoked}
        assert {r.raw for r in self.store.get(KEYS[key], self.now, self.revoked)} == want

    @invariant()
    def agrees_with_model(self) -> None:
        stored = _stored(self.store)
        assert len(self.store) == len(stored) == len(self.model)
        assert {p: r.raw for p, r in stored.items()} == {p: r.raw for p, r in self.model.items()}
        assert {p: r.seq for p, r in stored.items()} == self.max_seq
        assert set(self.store.keys()) == {k for k, _ in self.model}
        assert len(self.store) <= SMALL["max_records"]
        assert self.store.counters == self.counters


TestStoreMachine = StoreMachine.TestCase
TestStoreMachine.settings = settings(SETTINGS, max_examples=60, stateful_step_count=40)


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 6)),
                max_size=30))
def test_stored_seq_is_the_highest_put(puts: list[tuple[int, int, int]]) -> None:
    store = RecordStore(GRID)
    for signer, key, seq in puts:
        store.put(rec(signer, key, seq=seq))
    stored = _stored(store)
    assert len(store) == len(stored)
    want: dict[tuple[bytes, bytes], int] = {}
    for signer, key, seq in puts:
        pair = (KEYS[key], SIGNERS[signer].id)
        want[pair] = max(want.get(pair, -1), seq)
    assert {p: r.seq for p, r in stored.items()} == want
