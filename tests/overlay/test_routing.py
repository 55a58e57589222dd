"""Routing table and RTT estimates (overlay._routing): pure cores, driven synchronously.

Ids are built from integers so that the bucket each one falls in is known:
with our own id 0, the first split of the table is at 2**159 and a bucket
whose contacts share exactly 5 leading bits (``10000...``) is full for good
(it does not hold our id and its depth is 0 mod 5), so newcomers wait in its
replacement cache.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kademlia.node import Node
from kademlia.routing import KBucket

from overlay._routing import FAILURES_TO_EVICT, RoutingTable, RttEstimator, _depth
from tests.overlay.common import SETTINGS

ID_BITS = 160
OWN = bytes(20)


def nid(n: int) -> bytes:
    return n.to_bytes(20, "big")


def far(n: int, sixth_bit: int = 0) -> bytes:
    """An id starting ``10000`` then ``sixth_bit``: all such ids share a 5-bit prefix."""
    return nid((0b100000 | sixth_bit) << (ID_BITS - 6) | n)


def node(node_id: bytes, port: int | None = None, ip: str = "10.0.0.1") -> Node:
    return Node(node_id, ip, port if port is not None else 1000 + (int.from_bytes(node_id) % 50000))


def table(k: int = 2, own: bytes = OWN) -> RoutingTable:
    return RoutingTable(k, Node(own))


def ids(t: RoutingTable) -> set[bytes]:
    return {n.id for n in t.contacts()}


def replacements(t: RoutingTable) -> set[bytes]:
    return {i for b in t.buckets for i in b.replacement_nodes}


def full_far_bucket() -> tuple[RoutingTable, Node, Node, Node]:
    """k=2: contacts a, b fill the ``10000`` bucket for good; c waits as a replacement."""
    t = table(2)
    a, b, c = node(far(1, 0)), node(far(2, 1)), node(far(3, 0))
    for n in (a, b, c):
        t.add_contact(n)
    return t, a, b, c


# -- basics ---------------------------------------------------------------------------------


def test_add_get_contacts_len() -> None:
    t = table(3)
    assert len(t) == 0 and t.contacts() == [] and t.get(nid(5)) is None
    nodes = [node(nid(i << 100)) for i in range(1, 4)]
    for n in nodes:
        t.add_contact(n)
    assert len(t) == 3
    assert ids(t) == {n.id for n in nodes}
    for n in nodes:
        got = t.get(n.id)
        assert got is not None and (got.ip, got.port) == (n.ip, n.port)
    assert t.get(nid(99)) is None
    # Adding again refreshes, never duplicates.
    t.add_contact(nodes[0])
    assert len(t) == 3 and len(t.contacts()) == 3


def test_own_id_is_never_added() -> None:
    own = nid(12345)
    t = table(2, own)
    t.add_contact(Node(own, "10.0.0.9", 9))
    assert len(t) == 0 and t.get(own) is None
    t.add_contact(node(nid(1)))
    t.add_contact(Node(own, "10.0.0.9", 9))
    assert ids(t) == {nid(1)}


def test_remove_contact() -> None:
    t = table(2)
    a, b = node(nid(1)), node(nid(2))
    t.add_contact(a)
    t.add_contact(b)
    t.remove_contact(a)
    assert ids(t) == {b.id} and t.get(a.id) is None
    t.remove_contact(a)  # removing twice is harmless
    assert ids(t) == {b.id}


def test_rejoin_at_same_address_with_new_id_replaces_old_entry() -> None:
    t = table(3)
    old, other = Node(nid(7 << 120), "10.0.0.5", 4000), Node(nid(9 << 120), "10.0.0.6", 4000)
    t.add_contact(old)
    t.add_contact(other)
    new = Node(nid(3 << 140), "10.0.0.5", 4000)
    t.add_contact(new)
    assert ids(t) == {new.id, other.id}
    assert t.get(old.id) is None
    assert len(t) == 2
    # Only ip *and* port name a contact: another port is another contact.
    t.add_contact(Node(nid(5 << 130), "10.0.0.5", 4001))
    assert ids(t) == {new.id, other.id, nid(5 << 130)}


def test_rejoin_replaces_an_old_entry_waiting_in_the_replacement_cache() -> None:
    t, a, b, c = full_far_bucket()
    assert t.get(c.id) is c
    new = Node(nid(1 << 10), c.ip, c.port)
    t.add_contact(new)
    assert t.get(c.id) is None
    assert c.id not in replacements(t)
    assert t.get(new.id) is new


def test_a_moved_contact_survives_a_newcomer_at_its_old_address() -> None:
    """A contact seen at a new address lives there; its old address is free for others."""
    t = table(3)
    moved = Node(nid(7 << 120), "10.0.0.5", 4000)
    t.add_contact(moved)
    t.add_contact(Node(moved.id, "10.0.0.5", 4100))  # e.g. it restarted on another port
    newcomer = Node(nid(3 << 140), "10.0.0.5", 4000)
    t.add_contact(newcomer)
    assert ids(t) == {moved.id, newcomer.id}
    got = t.get(moved.id)
    assert got is not None and got.port == 4100


def test_an_id_on_a_bucket_boundary_is_found_where_it_is_stored() -> None:
    """Buckets are split at ``(lo + hi) // 2`` with the midpoint in the lower half."""
    t = table(1)
    mid = nid(2 ** 159)  # the first split point
    t.add_contact(node(mid))
    t.add_contact(node(nid(1)))  # splits twice: mid lands in [2**158 + 1, 2**159]
    assert len(t.buckets) >= 3
    assert ids(t) == {mid, nid(1)}
    assert t.get(mid) is not None
    t.add_contact(node(mid))
    assert len(t) == 2 and len(t.contacts()) == 2  # refreshed, not added twice
    assert t.note_failure(mid) is False
    assert t.note_failure(mid) is True
    assert ids(t) == {nid(1)}


# -- full buckets, failures, eviction ---------------------------------------------------------


def test_full_bucket_that_cannot_split_queues_its_head_and_keeps_the_newcomer() -> None:
    t, a, b, c = full_far_bucket()
    assert ids(t) == {a.id, b.id}
    assert list(t.to_ping) == [a.id] and t.to_ping[a.id] is a
    assert replacements(t) == {c.id}
    assert t.get(c.id) is c  # reachable while it waits
    assert len(t) == 2
    # The head answered (re-added: now newest); the next newcomer queues the new head.
    t.add_contact(a)
    d = node(far(4, 1))
    t.add_contact(d)
    assert list(t.to_ping) == [a.id, b.id]
    assert replacements(t) == {c.id, d.id}


def test_to_ping_is_bounded() -> None:
    rnd = random.Random(7)
    t = table(2)
    seen = 0
    for port in range(2000):
        t.add_contact(Node(rnd.randbytes(20), "10.0.0.1", port))
        assert len(t.to_ping) <= 4 * 2
        seen = max(seen, len(t.to_ping))
    assert seen == 4 * 2  # the cap was reached, so it was exercised


def test_replacement_cache_is_bounded() -> None:
    t, a, b, c = full_far_bucket()
    for n in range(10, 40):
        t.add_contact(node(far(n, n % 2)))
    [bucket] = [bk for bk in t.buckets if a.id in bk.nodes]
    assert len(bucket.replacement_nodes) == 2 * 5
    assert len(bucket.nodes) == 2
    # The newest are kept.
    assert far(39, 1) in bucket.replacement_nodes and c.id not in bucket.replacement_nodes


def test_eviction_needs_consecutive_failures() -> None:
    assert FAILURES_TO_EVICT >= 2
    t = table(2)
    a, b = node(nid(1 << 150)), node(nid(3 << 150))
    t.add_contact(a)
    t.add_contact(b)
    for _ in range(FAILURES_TO_EVICT - 1):
        assert t.note_failure(a.id) is False
    assert t.get(a.id) is not None
    t.add_contact(a)  # a success resets the count
    for _ in range(FAILURES_TO_EVICT - 1):
        assert t.note_failure(a.id) is False
    assert t.get(a.id) is not None
    assert t.note_failure(a.id) is True
    assert t.get(a.id) is None and ids(t) == {b.id}
    assert t.note_failure(a.id) is False  # unknown ids are ignored
    assert t.note_failure(nid(424242)) is False


def test_failures_are_counted_per_contact() -> None:
    t = table(2)
    a, b = node(nid(1 << 150)), node(nid(3 << 150))
    t.add_contact(a)
    t.add_contact(b)
    assert t.note_failure(a.id) is False
    assert t.note_failure(b.id) is False
    assert ids(t) == {a.id, b.id}


def test_eviction_promotes_a_replacement_so_the_bucket_does_not_shrink() -> None:
    t, a, b, c = full_far_bucket()
    for _ in range(FAILURES_TO_EVICT - 1):
        assert t.note_failure(a.id) is False
    assert t.note_failure(a.id) is True
    assert ids(t) == {b.id, c.id}
    assert len(t) == 2
    assert replacements(t) == set()
    assert a.id not in t.to_ping
    # The promoted contact is a full member: it can fail and be evicted in turn.
    for _ in range(FAILURES_TO_EVICT):
        t.note_failure(c.id)
    assert ids(t) == {b.id}


def test_addresses_of_departed_contacts_are_forgotten() -> None:
    """Endless newcomers (new ids on new ports) must not grow the table's memory."""
    rnd = random.Random(3)
    t = table(2)
    for port in range(6000):
        t.add_contact(Node(b"\xff" + rnd.randbytes(19), "10.0.0.2", port))
    live = sum(len(b.nodes) + len(b.replacement_nodes) for b in t.buckets)
    assert len(t._by_address) <= 2 * live + 64
    assert len(t._failures) <= live


# -- bounded under random churn --------------------------------------------------------------

BOUNDARY_IDS = [nid(2 ** e) for e in (0, 100, 157, 158, 159)] + [nid(2 ** 160 - 1), far(1)]
POOL = [far(n, n % 2) for n in range(6)] + [nid(n << 150) for n in range(1, 6)]
an_id = st.one_of(
    st.sampled_from(POOL + BOUNDARY_IDS),
    st.binary(min_size=20, max_size=20),
    st.just(OWN),
)
op = st.one_of(
    st.tuples(st.just("add"), an_id, st.integers(0, 7)),
    st.tuples(st.just("remove"), an_id, st.just(0)),
    st.tuples(st.just("fail"), an_id, st.just(0)),
)


@SETTINGS
@given(k=st.integers(1, 3), ops=st.lists(op, max_size=80))
def test_table_stays_bounded_and_consistent(k: int, ops: list[tuple[str, bytes, int]]) -> None:
    t = table(k)
    for what, node_id, port in ops:
        if what == "add":
            t.add_contact(Node(node_id, "10.0.0.1", port))
        elif what == "remove":
            contact = t.get(node_id)
            t.remove_contact(contact or Node(node_id))
            assert t.get(node_id) is None
        else:
            t.note_failure(node_id)
        everyone = [n for b in t.buckets for n in (*b.nodes.values(),
                                                   *b.replacement_nodes.values())]
        for b in t.buckets:
            assert len(b.nodes) <= k
            assert len(b.replacement_nodes) <= k * 5
        assert len(t.to_ping) <= 4 * k
        assert len(t._by_address) <= 2 * 6 * k * len(t.buckets) + 65
        assert len(t._failures) <= 2 * 6 * k * len(t.buckets) + 65
        assert len(t) == len(t.contacts()) <= k * len(t.buckets)
        assert OWN not in {n.id for n in everyone}
        assert len({n.id for n in everyone}) == len(everyone), "an id is held twice"
        addresses = [(n.ip, n.port) for n in everyone]
        assert len(set(addresses)) == len(addresses), "two contacts at one address"
        for n in everyone:
            assert t.get(n.id) is n
        if what == "add" and node_id != OWN:
            got = t.get(node_id)
            assert got is not None and got.port == port
        # The cached nearest-contacts view agrees with a full scan.
        goal = Node(node_id)
        brute = sorted(t.contacts(), key=lambda n: n.long_id ^ goal.long_id)
        assert [n.id for n in t.find_neighbors(goal, 3)] == [n.id for n in brute[:3]]
        assert t.find_neighbors(goal, 3) == brute[:3]


# -- RTT estimates -------------------------------------------------------------------------------

A, B, C = ("10.0.0.1", 1), ("10.0.0.2", 2), ("10.0.0.3", 3)


def test_rtt_initial_timeout_before_any_sample() -> None:
    assert RttEstimator().timeout(A) == 1.0
    assert RttEstimator(initial=0.7).timeout(A) == 0.7


def test_rtt_measured_address_gets_srtt_plus_four_rttvar() -> None:
    rtt = RttEstimator()
    rtt.observe(A, 0.1)  # srtt 0.1, rttvar 0.05
    assert rtt.timeout(A) == pytest.approx(0.1 + 4 * 0.05)
    rtt.observe(A, 0.3)  # rttvar .75*.05 + .25*.2 = .0875; srtt .875*.1 + .125*.3 = .125
    assert rtt.timeout(A) == pytest.approx(0.125 + 4 * 0.0875)


def test_rtt_unknown_address_gets_twice_the_typical() -> None:
    rtt = RttEstimator()
    rtt.observe(A, 0.1)
    assert rtt.timeout(B) == pytest.approx(2 * (0.1 + 4 * 0.05))
    assert rtt.timeout(B) > rtt.timeout(A)


def test_rtt_floor_and_ceiling() -> None:
    rtt = RttEstimator(floor=0.05, ceiling=3.0)
    rtt.observe(A, 0.001)
    assert rtt.timeout(A) == 0.05
    assert rtt.timeout(B) == 0.05
    rtt.observe(C, 50.0)
    assert rtt.timeout(C) == 3.0
    assert rtt.timeout(B) == 3.0  # the typical estimate now includes a slow address


def test_rtt_entries_are_bounded_least_recently_observed_first() -> None:
    rtt = RttEstimator(max_entries=3)
    for port in range(10):
        rtt.observe(("10.0.0.1", port), 0.01 * (port + 1))
    assert len(rtt._est) == 3
    rtt.observe(("10.0.0.1", 7), 0.2)  # refreshed: now the newest
    rtt.observe(("10.0.0.1", 99), 0.2)
    assert set(rtt._est) == {("10.0.0.1", p) for p in (7, 9, 99)}
    typical = rtt.timeout(("10.0.0.1", 0))  # forgotten: treated as unknown
    assert typical > rtt.timeout(("10.0.0.1", 9)) or typical == rtt.ceiling


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from([A, B]), st.floats(0, 1000)), max_size=30),
       st.floats(0.001, 0.5), st.floats(0.5, 10))
def test_rtt_timeouts_always_within_floor_and_ceiling(samples: list, floor: float,
                                                      ceiling: float) -> None:
    rtt = RttEstimator(floor=floor, ceiling=ceiling, max_entries=1)
    for addr, sample in samples:
        rtt.observe(addr, sample)
        for probe in (A, B, C):
            assert floor <= rtt.timeout(probe) <= ceiling
    assert len(rtt._est) <= 1


@SETTINGS
@given(ids=st.lists(st.binary(min_size=20, max_size=20), min_size=1, max_size=8))
def test_bucket_depth_agrees_with_the_stock_one(ids: list[bytes]) -> None:
    bucket = KBucket(0, 2 ** 160, 20)
    for i in ids:
        bucket.add_node(Node(i))
    assert _depth(bucket) == bucket.depth()
