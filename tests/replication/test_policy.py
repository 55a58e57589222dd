"""The replica policy, alone: its rules on small cases, then simulated rounds of a
grid where nodes die, copies arrive late or never and two custodians act at once."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replication.policy import (
    Action,
    DatasetState,
    Decision,
    Holder,
    Memory,
    NodeInfo,
    PolicyError,
    PolicyParams,
    RateLimit,
    decide,
    target_count,
    wanted_sites,
)
from replication.trends import Trend

P = PolicyParams()  # a site's replica at 2 reads, kept down to 1; 12 h cool-down, 2 min grace
GB = 1 << 30
NAME = "alice:raw"
SETTINGS = settings(max_examples=120, deadline=None, database=None)


def nid(i: int) -> bytes:
    return bytes([i]) * 20


def predicted(reads: float) -> Trend:
    return Trend((), reads, 0.0, reads)


def grid(*sites: str, free: int = 100 * GB, load: float = 0.1) -> dict[bytes, NodeInfo]:
    """Node i + 1 at ``sites[i]``."""
    return {nid(i + 1): NodeInfo(nid(i + 1), site, free, load) for i, site in enumerate(sites)}


def dataset(*holders: bytes, seen: float = 0.0, lo: int = 1, hi: int = 5,
            size: int = GB, leaving: tuple[bytes, ...] = ()) -> DatasetState:
    return DatasetState(NAME, size, lo, hi,
                        tuple(Holder(h, seen, h in leaving) for h in holders))


def kinds(d: Decision) -> list[tuple[str, bytes]]:
    return [(a.kind, a.node) for a in d.actions]


# -- parameters --------------------------------------------------------------------


@pytest.mark.parametrize("field, value", [
    ("reads_per_replica", 0.0), ("reads_per_replica", -4.0), ("reads_per_replica", math.nan),
    ("reads_per_replica", math.inf),
    ("site_add_reads", 0.0), ("site_add_reads", math.nan), ("site_keep_reads", 0.0),
    ("site_keep_reads", 2.0), ("site_keep_reads", 3.0), ("site_keep_reads", math.nan),
    ("cooldown", -1.0), ("cooldown", math.nan), ("grace", -0.5), ("grace", math.inf),
    ("add_timeout", 0.0), ("add_timeout", -10.0), ("add_timeout", math.nan),
    ("max_adds", 0), ("max_adds", 101), ("max_adds", 2.0), ("max_adds", True),
    ("max_load", 0.0), ("max_load", 1.5), ("max_load", math.nan),
    ("headroom", -0.1), ("headroom", 1.0), ("headroom", math.nan),
])
def test_a_parameter_out_of_range_is_refused_by_name(field, value):
    with pytest.raises(PolicyError, match=field):
        PolicyParams(**{field: value})


@pytest.mark.parametrize("field, kw", [
    ("min_replicas", {"min_replicas": 3, "max_replicas": 2}),
    ("min_replicas", {"min_replicas": 0, "max_replicas": 2}),
    ("min_replicas", {"min_replicas": 1.0, "max_replicas": 2}),
    ("max_replicas", {"min_replicas": 1, "max_replicas": 0}),
    ("max_replicas", {"min_replicas": 1, "max_replicas": 2.5}),
    ("size", {"size": -1}),
])
def test_a_dataset_state_out_of_range_is_refused_by_name(field, kw):
    args = {"name": NAME, "size": GB, "min_replicas": 1, "max_replicas": 3, "holders": ()}
    with pytest.raises(PolicyError, match=field):
        DatasetState(**(args | kw))


def test_the_rate_limit_refuses_a_rate_or_burst_not_above_zero():
    for rate, burst in [(0, 1), (-1, 1), (math.nan, 1), (1, 0), (1, math.inf)]:
        with pytest.raises(PolicyError, match="rate .* burst"):
            RateLimit(rate, burst, 0.0)


# -- targets -----------------------------------------------------------------------


@SETTINGS
@given(prediction=st.floats(0.0, 1e6), lo=st.integers(1, 10), extra=st.integers(0, 10))
def test_the_target_is_the_prediction_over_reads_per_replica_within_min_and_max(
        prediction, lo, extra):
    hi = lo + extra
    target = target_count(prediction, lo, hi, P)
    assert lo <= target <= hi
    want = math.ceil(prediction / P.reads_per_replica)
    assert target == min(hi, max(lo, want))


def test_no_demand_asks_for_the_minimum_and_never_zero():
    assert target_count(0.0, 1, 5, P) == 1
    assert target_count(0.0, 3, 5, P) == 3
    assert target_count(4.0, 1, 5, P) == 1
    assert target_count(4.1, 1, 5, P) == 2


# -- decisions, one at a time ------------------------------------------------------


def test_a_rising_prediction_places_copies_near_the_demand():
    nodes = grid("a", "b", "b", "c")
    memory = Memory()
    d = decide(dataset(nid(1)), predicted(12.0), {"b": 30.0, "c": 1.0}, nodes, memory, P, 0.0)
    assert d.target == 3
    # Two adds at most per decision: both land where the reads come from, first b then
    # (b having one now) still b before c: 30 / 2 > 1.
    assert kinds(d) == [("add", nid(2)), ("add", nid(3))]
    assert set(memory.adding) == {nid(2), nid(3)}
    # The copies asked for count: nothing more is asked while they come.
    again = decide(dataset(nid(1), seen=60.0), predicted(12.0), {"b": 30.0}, nodes, memory,
                   P, 60.0)
    assert again.actions == ()


def test_a_cold_repair_prefers_a_site_without_a_replica():
    nodes = grid("a", "a", "b")
    d = decide(dataset(nid(1), lo=2), predicted(0.0), {}, nodes, Memory(), P, 0.0)
    assert kinds(d) == [("add", nid(3))]


def test_no_copy_goes_to_a_full_or_busy_node():
    nodes = {nid(1): NodeInfo(nid(1), "a", 100 * GB, 0.1),
             nid(2): NodeInfo(nid(2), "b", GB, 0.0),           # no room beyond the headroom
             nid(3): NodeInfo(nid(3), "b", 100 * GB, 0.9),     # at max_load
             nid(4): NodeInfo(nid(4), "c", 100 * GB, 0.5)}
    d = decide(dataset(nid(1), lo=3), predicted(0.0), {"b": 50.0}, nodes, Memory(), P, 0.0)
    assert kinds(d) == [("add", nid(4))]
    # Exactly enough room: the dataset and the headroom fit.
    nodes[nid(2)] = NodeInfo(nid(2), "b", math.ceil(GB / 0.9), 0.0)
    d = decide(dataset(nid(1), lo=3), predicted(0.0), {"b": 50.0}, nodes, Memory(), P, 0.0)
    assert kinds(d) == [("add", nid(2)), ("add", nid(4))]


def test_two_custodians_with_the_same_facts_ask_the_same_nodes():
    nodes = grid(*"abcdabcdabcd")
    facts = (dataset(nid(1), lo=3), predicted(9.0), {"b": 3.0, "d": 3.0}, nodes)
    one = decide(*facts, Memory(), P, 100.0)
    two = decide(*facts, Memory(), P, 100.0)
    assert kinds(one) == kinds(two) and len(one.actions) == 2


def test_a_copy_asked_too_long_ago_is_asked_again():
    nodes = grid("a", "b")
    memory = Memory()
    first = decide(dataset(nid(1), lo=2), predicted(0.0), {}, nodes, memory, P, 0.0)
    assert kinds(first) == [("add", nid(2))]
    wait = decide(dataset(nid(1), seen=P.add_timeout, lo=2), predicted(0.0), {}, nodes,
                  memory, P, P.add_timeout)
    assert wait.actions == ()
    later = P.add_timeout + 1
    again = decide(dataset(nid(1), seen=later, lo=2), predicted(0.0), {}, nodes, memory, P,
                   later)
    assert kinds(again) == [("add", nid(2))]


def test_a_blip_shorter_than_the_grace_changes_nothing_then_the_copy_is_replaced():
    nodes = grid("a", "b", "c")
    ds = DatasetState(NAME, GB, 2, 5, (Holder(nid(1), 1000.0), Holder(nid(2), 1000.0 -
                                                                       P.grace)))
    d = decide(ds, predicted(0.0), {}, nodes, Memory(), P, 1000.0)
    assert d.actions == () and d.lost == ()
    d = decide(ds, predicted(0.0), {}, nodes, Memory(), P, 1000.5)
    assert d.lost == (nid(2),) and d.counted == (nid(1),)
    assert kinds(d) == [("add", nid(3))]
    assert "unseen" in d.reason


def _trim(memory: Memory, now: float, holders: tuple[bytes, ...], leaving=(),
          prediction: float = 0.0, seen: float | None = None) -> Decision:
    return decide(dataset(*holders, seen=now if seen is None else seen, leaving=leaving),
                  predicted(prediction), {"a": 8.0}, grid("a", "b", "c"), memory, P, now)


def test_a_trim_waits_for_the_cooldown_then_announces_then_drops():
    memory = Memory()
    three = (nid(1), nid(2), nid(3))
    d = _trim(memory, 0.0, three)
    assert d.target == 1 and d.actions == () and "cooling down" in d.reason
    d = _trim(memory, P.cooldown - 1, three)
    assert d.actions == ()
    d = _trim(memory, P.cooldown, three)
    [(kind, gone)] = kinds(d)
    assert kind == "announce_drop" and gone != nid(1)  # site a has the reads
    d = _trim(memory, P.cooldown + 60, three, leaving=(gone,))
    assert kinds(d) == [("drop", gone)]
    rest = tuple(n for n in three if n != gone)
    d = _trim(memory, P.cooldown + 120, rest)
    assert [k for k, _ in kinds(d)] == ["announce_drop"]


def test_an_announced_drop_is_withdrawn_when_the_others_no_longer_meet_the_target():
    memory = Memory(above_since=0.0)
    two = (nid(1), nid(2))
    d = _trim(memory, P.cooldown, two)
    [(kind, gone)] = kinds(d)
    assert kind == "announce_drop"
    d = _trim(memory, P.cooldown + 60, two, leaving=(gone,), prediction=5.0)  # target 2
    assert kinds(d) == [("cancel_drop", gone)]
    assert set(d.counted) == set(two) and memory.leaving == {}


def test_a_drop_waits_until_the_others_are_seen_after_the_announcement():
    # Found by the simulation: holder 1 dies just after holder 2 is announced; within
    # the grace it still counted, and holder 2, the last live copy, was deleted.
    memory = Memory(above_since=0.0)
    t = P.cooldown
    d = _trim(memory, t, (nid(1), nid(2)))
    [(kind, gone)] = kinds(d)
    assert kind == "announce_drop"
    [other] = {nid(1), nid(2)} - {gone}

    def later(dt: float, other_seen: float) -> Decision:
        ds = DatasetState(NAME, GB, 1, 5, (Holder(gone, t + dt, True),
                                           Holder(other, other_seen)))
        return decide(ds, predicted(0.0), {"a": 8.0}, grid("a", "b", "c"), memory, P,
                      t + dt)

    d = later(60.0, t)  # the other not seen since the announcement: wait
    assert d.actions == () and "waits" in d.reason
    assert memory.leaving == {gone: t}
    d = later(120.0, t + 120.0)
    assert kinds(d) == [("drop", gone)] and "seen since" in d.actions[0].reason
    # Had it stayed unseen past the grace, the announcement would be withdrawn.
    memory.leaving = {gone: t}
    d = later(P.grace + 1, t)
    assert d.lost == (other,) and kinds(d)[0] == ("cancel_drop", gone)


def test_short_of_the_target_a_replica_announced_elsewhere_is_taken_back_not_replaced():
    # Found by the simulation: custodian A, short of the target, placed a new copy
    # while B withdrew its announcement of holder 2: three replicas for a max of two.
    ds = dataset(nid(1), nid(2), hi=2, leaving=(nid(2),))
    memory = Memory()
    d = decide(ds, predicted(5.0), {}, grid("a", "a", "a"), memory, P, 0.0)
    assert d.target == 2
    assert kinds(d) == [("cancel_drop", nid(2))] and memory.adding == {}
    assert set(d.counted) == {nid(1), nid(2)}


def test_an_announcement_whose_custodian_went_away_is_taken_over():
    # Found by the simulation: a custodian announced holder 3 and lost its memory; no
    # one dropped it or took it back, an uncounted copy for ever.
    memory = Memory()
    three = (nid(1), nid(2), nid(3))
    d = _trim(memory, 0.0, three, leaving=(nid(3),))
    assert d.actions == () and memory.leaving == {nid(3): 0.0} and "waits" in d.reason
    d = _trim(memory, 60.0, three, leaving=(nid(3),))
    assert kinds(d) == [("drop", nid(3))]


def test_the_last_replica_is_never_dropped():
    memory = Memory(above_since=0.0)
    d = _trim(memory, P.cooldown * 10, (nid(1),))
    assert d.actions == ()


# -- replicas that follow the reads ------------------------------------------------

ADD, KEEP = P.site_add_reads, P.site_keep_reads


def test_a_site_earns_a_replica_at_the_add_threshold_and_keeps_it_down_to_the_keep_one():
    held = {"a"}
    by_site = {"a": KEEP, "b": ADD, "c": ADD - 0.5, "d": KEEP / 2}
    # a holds one and still reads: kept; b reads enough for one; c, between the
    # thresholds, keeps none it has not got; d reads too little to keep one.
    assert wanted_sites(by_site, held, P) == {"a", "b"}
    assert wanted_sites(by_site, {"a", "c", "d"}, P) == {"a", "b", "c"}
    assert target_count(0.0, 1, 5, P, sites=3) == 3
    assert target_count(0.0, 1, 2, P, sites=3) == 2          # never above max
    assert target_count(20.0, 1, 9, P, sites=3) == 5         # the prediction wins


def test_a_replica_moves_to_the_site_that_reads_and_the_idle_one_is_trimmed():
    nodes = grid("a", "b", "c")
    memory = Memory()
    reads = {"c": 5.0}
    # Two replicas (the minimum) where nobody reads; site c reads: a copy goes there
    # although the count meets the target.
    d = decide(dataset(nid(1), nid(2), lo=2), predicted(0.5), reads, nodes, memory, P, 0.0)
    assert d.target == 2 and kinds(d) == [("add", nid(3))]
    assert "no replica at c" in d.actions[0].reason
    # While it comes, nothing more is asked and nothing trimmed.
    d = decide(dataset(nid(1), nid(2), seen=60.0, lo=2), predicted(0.5), reads, nodes,
               memory, P, 60.0)
    assert d.actions == ()
    # It has arrived: three for a target of two, and after the cool-down one of the
    # idle ones goes, never the one at c.
    three = (nid(1), nid(2), nid(3))
    t = 120.0
    d = decide(dataset(*three, seen=t, lo=2), predicted(0.5), reads, nodes, memory, P, t)
    assert d.actions == () and "cooling down" in d.reason
    t += P.cooldown
    d = decide(dataset(*three, seen=t, lo=2), predicted(0.5), reads, nodes, memory, P, t)
    [(kind, gone)] = kinds(d)
    assert kind == "announce_drop" and gone in (nid(1), nid(2))
    t += 60
    d = decide(dataset(*three, seen=t, lo=2, leaving=(gone,)), predicted(0.5), reads, nodes,
               memory, P, t)
    assert kinds(d) == [("drop", gone)]
    rest = tuple(n for n in three if n != gone)
    d = decide(dataset(*rest, seen=t + 60, lo=2), predicted(0.5), reads, nodes, memory, P,
               t + 60)
    assert d.actions == () and d.target == 2 and nid(3) in d.counted


def test_a_move_never_takes_the_count_below_the_target():
    # The idle replica is announced; before its drop the replica at the reading site
    # dies: the announcement is taken back, not carried out.
    nodes = grid("a", "b", "c")
    memory = Memory(above_since=0.0)
    reads = {"c": 5.0}
    d = decide(dataset(nid(1), nid(2), nid(3), seen=P.cooldown, lo=2), predicted(0.0), reads,
               nodes, memory, P, P.cooldown)
    [(kind, gone)] = kinds(d)
    assert kind == "announce_drop" and gone != nid(3)
    [kept] = {nid(1), nid(2)} - {gone}
    t = P.cooldown + P.grace + 1   # c's holder is unseen past the grace: lost
    ds = DatasetState(NAME, GB, 2, 5, (Holder(kept, t), Holder(gone, t, True),
                                       Holder(nid(3), P.cooldown)))
    d = decide(ds, predicted(0.0), reads, nodes, memory, P, t)
    assert ("cancel_drop", gone) in kinds(d) and ("drop", gone) not in kinds(d)
    assert len(d.counted) == 2 == d.target


def test_a_move_waits_while_a_replica_announced_elsewhere_could_be_taken_back():
    # Found by the simulated rounds: custodian A announced holder 1 (max 2); B took
    # the announcement over and, site s2 reading, asked for a copy there; then the
    # target rose, both took holder 1 back, and with B's copy three replicas stood
    # for a max of two.
    nodes = grid("s0", "s0", "s2")
    ds = dataset(nid(1), nid(2), hi=2, leaving=(nid(1),))
    d = decide(ds, predicted(0.0), {"s2": 7.0}, nodes, Memory(), P, 0.0)
    assert "add" not in [k for k, _ in kinds(d)]
    # Once the drop is done, the copy goes.
    d = decide(dataset(nid(2), hi=2), predicted(0.0), {"s2": 7.0}, nodes, Memory(), P, 60.0)
    assert kinds(d) == [("add", nid(3))]


def test_the_only_replica_of_a_site_that_reads_is_not_the_one_trimmed():
    # Two replicas at a (which reads a lot), one at b (which reads a little, enough to
    # keep it): a's reads per replica are more, but trimming b would leave a site that
    # reads without a replica while a has two.
    nodes = grid("a", "a", "b")
    memory = Memory(above_since=0.0)
    reads = {"a": 40.0, "b": KEEP}
    d = decide(dataset(nid(1), nid(2), nid(3), seen=P.cooldown), predicted(0.0), reads, nodes,
               memory, P, P.cooldown)
    assert d.target == 2
    [(kind, gone)] = kinds(d)
    assert kind == "announce_drop" and gone in (nid(1), nid(2))


def test_an_announced_replica_whose_site_reads_again_is_kept_not_copied_anew():
    nodes = grid("a", "b", "c", "c")
    memory = Memory(above_since=0.0)
    three = (nid(1), nid(2), nid(3))
    d = decide(dataset(*three, seen=P.cooldown), predicted(0.0), {"a": 3.0, "b": 3.0}, nodes,
               memory, P, P.cooldown)
    assert kinds(d) == [("announce_drop", nid(3))]
    t = P.cooldown + 60
    d = decide(dataset(*three, seen=t, leaving=(nid(3),)), predicted(0.0),
               {"a": 3.0, "b": 3.0, "c": ADD}, nodes, memory, P, t)
    assert kinds(d) == [("cancel_drop", nid(3))] and "reads it again" in d.actions[0].reason
    assert memory.adding == {} and d.target == 3


def test_a_site_that_reads_but_has_no_room_does_not_raise_the_target():
    nodes = {nid(1): NodeInfo(nid(1), "a", 100 * GB), nid(2): NodeInfo(nid(2), "b", 100 * GB),
             nid(3): NodeInfo(nid(3), "c", GB // 2), nid(4): NodeInfo(nid(4), "d", 100 * GB)}
    d = decide(dataset(nid(1), nid(2), lo=2), predicted(0.0), {"c": 9.0}, nodes, Memory(), P,
               0.0)
    assert d.target == 2 and d.actions == ()   # no copy to d, where nobody reads


def test_the_copies_of_a_burst_of_repairs_spread_over_a_sites_nodes():
    # Node 2 came back empty and idle: it used to take every copy for its site.
    nodes = {nid(1): NodeInfo(nid(1), "a", 100 * GB)}
    nodes |= {nid(i): NodeInfo(nid(i), "b", 300 * GB if i == 2 else 20 * GB,
                               0.0 if i == 2 else 0.5) for i in range(2, 12)}
    chosen: Counter[bytes] = Counter()
    for k in range(200):
        ds = DatasetState(f"sim:ds{k:05d}", GB, 2, 8, (Holder(nid(1), 0.0),))
        [(kind, node)] = kinds(decide(ds, predicted(0.0), {}, nodes, Memory(), P, 0.0))
        assert kind == "add" and nodes[node].site == "b"
        chosen[node] += 1
    assert len(chosen) == 10 and max(chosen.values()) < 200 / 10 * 2, chosen


def test_cold_repairs_spread_over_the_sites():
    # Before, ties between sites went to the largest name: repairs of cold datasets
    # all went to the same site and queued there.
    sites = [f"site-{i:02d}" for i in range(10)]
    nodes = {nid(i + 1): NodeInfo(nid(i + 1), sites[i % 10], 100 * GB) for i in range(40)}
    chosen: Counter[str] = Counter()
    for k in range(300):
        ds = DatasetState(f"sim:ds{k:05d}", GB, 2, 8, (Holder(nid(1), 0.0),))
        d = decide(ds, predicted(0.0), {}, nodes, Memory(), P, 0.0)
        [(kind, node)] = kinds(d)
        assert kind == "add" and nodes[node].site != "site-00"
        chosen[nodes[node].site] += 1
        again = decide(ds, predicted(0.0), {}, nodes, Memory(), P, 0.0)
        assert kinds(again) == kinds(d)        # the same facts, the same node
    assert len(chosen) == 9 and max(chosen.values()) < 300 / 9 * 1.6, chosen


# -- the rate limit ----------------------------------------------------------------


@SETTINGS
@given(rate=st.floats(1.0, 1e6), burst=st.floats(1.0, 1e6),
       sizes=st.lists(st.integers(0, 10**6), min_size=1, max_size=20))
def test_waits_add_up_to_the_bytes_over_the_rate_beyond_the_burst(rate, burst, sizes):
    # Callers that each wait their answer before sending: the last one sends when the
    # rate has paid for everything beyond the burst.
    limit = RateLimit(rate, burst, 0.0)
    now = 0.0
    for n in sizes:
        now += limit.take(n, now)
    assert now == pytest.approx(max(0.0, (sum(sizes) - burst) / rate), rel=1e-9, abs=1e-9)
    # Callers that ask at once: each answer includes those booked before it.
    limit = RateLimit(rate, burst, 0.0)
    waits = [limit.take(n, 0.0) for n in sizes]
    assert waits == sorted(waits)
    assert waits[-1] == pytest.approx(max(0.0, (sum(sizes) - burst) / rate), rel=1e-9,
                                      abs=1e-9)


@SETTINGS
@given(rate=st.floats(1.0, 1e4), burst=st.integers(1, 10**4), idle=st.floats(0.0, 1e4))
def test_idle_time_refills_up_to_the_burst_only(rate, burst, idle):
    limit = RateLimit(rate, burst, 0.0)
    assert limit.take(burst, 0.0) == 0.0  # all spent
    saved = min(burst, idle * rate)
    # What idling saved goes out at once; one byte more waits for the rate.
    assert limit.take(math.floor(saved), idle) == 0.0
    assert limit.take(1, idle) == pytest.approx((1 - (saved - math.floor(saved))) / rate)


def test_a_long_idle_saves_the_burst_and_no_more():
    limit = RateLimit(100.0, 1000.0, 0.0)
    assert limit.take(1000, 0.0) == 0.0
    assert limit.take(1000, 0.0) == pytest.approx(10.0)
    assert limit.take(1000, 3600.0) == 0.0
    assert limit.take(1, 3600.0) == pytest.approx(0.01)


# -- simulated rounds --------------------------------------------------------------

ROUND = 100.0  # seconds between two decisions
SITES = ["s0", "s1", "s2", "s3"]


@dataclass(frozen=True)
class Scenario:
    nodes: tuple[NodeInfo, ...]
    size: int
    lo: int
    hi: int
    params: PolicyParams
    max_delay: int  # rounds a copy may take to arrive
    holders: tuple[bytes, ...]
    demand: tuple[float, ...]  # predicted reads per round of the first, eventful part
    by_site: dict[str, float]
    deaths: dict[int, frozenset[bytes]]  # round -> nodes that stop then
    delays: tuple[int | None, ...]  # rounds each copy takes, in turn; None: it never comes
    orders: tuple[int, ...]  # per round: 0 both custodians see one state, 1 A then B, 2 B, A

    def fits(self, node: NodeInfo) -> bool:
        return (node.load < self.params.max_load
                and self.size <= (1 - self.params.headroom) * node.free_bytes)

    def settle_rounds(self) -> int:
        """Rounds of steady demand, no deaths and arriving copies after which the
        count must have converged: the dead past the grace, the lost copies past their
        timeout, every copy placed and arrived, the cool-down and each trim's two rounds."""
        p = self.params
        rounds = (p.grace + p.add_timeout + p.cooldown) / ROUND
        return int(rounds) + (self.max_delay + 1) * (self.hi + 1) + 2 * (self.hi + 1) + 4


@st.composite
def scenarios(draw: st.DrawFn, rounds: int = 25) -> Scenario:
    n = draw(st.integers(1, 9), label="nodes")
    nodes = tuple(NodeInfo(nid(i + 1), draw(st.sampled_from(SITES)),
                           draw(st.sampled_from([10_000, 3000, 1200, 500, 0])),
                           draw(st.sampled_from([0.0, 0.3, 0.89, 0.9, 1.0])))
                  for i in range(n))
    ids = [node.id for node in nodes]
    lo = draw(st.integers(1, 3), label="min")
    hi = draw(st.integers(lo, 5), label="max")
    max_delay = draw(st.integers(1, 3))
    params = PolicyParams(
        reads_per_replica=4.0,
        grace=ROUND * draw(st.integers(0, 3), label="grace rounds"),
        cooldown=ROUND * draw(st.integers(0, 4), label="cooldown rounds"),
        add_timeout=ROUND * (max_delay + draw(st.integers(1, 2))),
        max_adds=draw(st.integers(1, 3), label="max_adds"),
        headroom=draw(st.sampled_from([0.0, 0.1, 0.5]), label="headroom"))
    # Demand in steady stretches (a trim needs one longer than the cool-down).
    stretches = draw(st.lists(st.tuples(st.sampled_from([0.0, 3.0, 6.0, 11.0, 17.0, 30.0]),
                                        st.integers(1, 8)), min_size=1, max_size=4),
                     label="demand")
    demand = [reads for reads, length in stretches for _ in range(length)][:rounds]
    holders = draw(st.lists(st.sampled_from(ids), min_size=1, max_size=hi, unique=True),
                   label="holders")
    deaths: dict[int, frozenset[bytes]] = {}
    for t, node in draw(st.lists(st.tuples(st.integers(0, len(demand) - 1),
                                           st.sampled_from(holders) | st.sampled_from(ids)),
                                 max_size=3), label="deaths"):
        deaths[t] = deaths.get(t, frozenset()) | {node}
    return Scenario(
        nodes=nodes, size=draw(st.sampled_from([1, 400, 1000, 2000, 5000]), label="size"),
        lo=lo, hi=hi, params=params, max_delay=max_delay,
        holders=tuple(holders),
        demand=tuple(demand),
        by_site=draw(st.dictionaries(st.sampled_from(SITES), st.sampled_from([0.0, 1.0, 7.0])),
                     label="reads per site"),
        deaths=deaths,
        delays=tuple(draw(st.lists(st.one_of(st.none(), st.integers(1, max_delay)),
                                   min_size=1, max_size=6), label="delays")),
        orders=tuple(draw(st.lists(st.integers(0, 2), min_size=1, max_size=6),
                          label="orders")))


@dataclass
class Grid:
    """The ground truth the custodians see through ``DatasetState`` and ``NodeInfo``."""

    scn: Scenario
    custodians: int
    alive: set[bytes] = field(default_factory=set)
    holders: dict[bytes, Holder] = field(default_factory=dict)
    pending: dict[bytes, int] = field(default_factory=dict)  # node -> round its copy lands
    memories: list[Memory] = field(default_factory=list)
    restarts: int = 0  # custodian 1 forgets its memory every so many eventful rounds
    announced: dict[bytes, int] = field(default_factory=dict)  # node -> round, the last
    delays: Iterator[int | None] = iter(())
    round: int = 0
    log: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.alive = {node.id for node in self.scn.nodes}
        self.holders = {n: Holder(n, 0.0) for n in self.scn.holders}
        self.memories = [Memory() for _ in range(self.custodians)]
        self.delays = _cycle(self.scn.delays)

    # -- what the custodians see

    def state(self) -> DatasetState:
        s = self.scn
        return DatasetState(NAME, s.size, s.lo, s.hi, tuple(self.holders.values()))

    def nodes(self) -> dict[bytes, NodeInfo]:
        return {node.id: node for node in self.scn.nodes if node.id in self.alive}

    # -- the truth

    def live(self) -> set[bytes]:
        return {n for n in self.holders if n in self.alive}

    def live_counted(self) -> set[bytes]:
        return {n for n in self.live() if not self.holders[n].leaving}

    def capable(self) -> set[bytes]:
        """Live nodes that hold a replica or could take one."""
        return self.live() | {node.id for node in self.scn.nodes
                              if node.id in self.alive and self.scn.fits(node)}

    def within_grace(self, now: float) -> set[bytes]:
        return {n for n, h in self.holders.items()
                if now - h.last_seen <= self.scn.params.grace and not h.leaving}

    # -- one round

    def step(self, prediction: float, settle: bool = False) -> None:
        s, t = self.scn, self.round
        now = t * ROUND
        self.round += 1
        for n in () if settle else s.deaths.get(t, ()):
            self.alive.discard(n)
            self.pending.pop(n, None)
        for n, at in sorted(self.pending.items()):
            if at <= t:
                del self.pending[n]
                if self.live():  # a copy needs a live replica to come from
                    self.holders[n] = Holder(n, now)
        for n, h in self.holders.items():
            if n in self.alive:
                self.holders[n] = replace(h, last_seen=now)
        live_before = self.live()
        if self.restarts and not settle and t % self.restarts == self.restarts - 1:
            self.memories[1] = Memory()
        order = s.orders[t % len(s.orders)] if self.custodians == 2 else 1
        turns = [1, 0] if order == 2 else list(range(self.custodians))
        decisions: list[tuple[int, Decision]] = []
        snapshot = self.state()
        for c in turns:
            if order != 0:
                snapshot = self.state()
            memory = self.memories[c]
            leaving = dict(memory.leaving)
            d = decide(snapshot, predicted(prediction), s.by_site, self.nodes(), memory,
                       s.params, now)
            self.log.append(f"t={t} c={c} target {d.target}: "
                            + ", ".join(f"{a.kind} {a.node[0]}" for a in d.actions))
            self.check_decision(leaving, snapshot, d, now)
            decisions.append((c, d))
            if order != 0:
                self.apply(d.actions, t, settle)
        if order == 0:
            for _, d in decisions:
                self.apply(d.actions, t, settle)
        self.check_round(live_before, decisions, now)

    def apply(self, actions: tuple[Action, ...], t: int, settle: bool) -> None:
        for a in actions:
            h = self.holders.get(a.node)
            if a.kind == "announce_drop":
                self.announced[a.node] = t
            if a.kind == "add":
                if a.node not in self.pending and h is None and a.node in self.alive:
                    delay = next(self.delays)
                    if settle and delay is None:
                        delay = self.scn.max_delay
                    if delay is not None:
                        self.pending[a.node] = t + delay
            elif a.kind == "drop":
                self.holders.pop(a.node, None)
            elif h is not None:
                self.holders[a.node] = replace(h, leaving=a.kind == "announce_drop")

    # -- the properties

    def check_decision(self, leaving: dict[bytes, float], snapshot: DatasetState,
                       d: Decision, now: float) -> None:
        """``leaving``: the drops the custodian had announced (or taken over), and when."""
        s = self.scn
        held = {h.node: h for h in snapshot.holders}
        seen = {n for n, h in held.items() if now - h.last_seen <= s.params.grace}
        mine = {n: t for n, t in leaving.items() if n in seen}  # it forgets the unseen
        others = {n for n in seen if not held[n].leaving and n not in mine}
        for a in d.actions:
            if a.kind == "add":
                node = self.nodes().get(a.node)
                assert node is not None, f"{a}: no such live node"
                assert s.fits(node), f"{a}: {node} has no room or is too busy"
                assert a.node not in held, f"{a}: already a holder"
            elif a.kind == "drop":
                # (5) a drop only after an announcement, and with the target met by
                # holders seen since
                assert self.announced.get(a.node, self.round) < self.round - 1, (
                    f"{a}: dropped without an announce_drop in an earlier round")
                assert a.node in mine, f"{a}: dropped without an announcement in memory"
                confirmed = {n for n in others if held[n].last_seen > mine[a.node]}
                assert len(confirmed) >= d.target, f"{a}: only {len(confirmed)} others"
            elif a.kind == "announce_drop":
                assert len(others) > d.target, f"{a}: only {len(others)} counted"
        # (5) withdrawn when the others no longer meet the target
        for n in mine:
            if len(others) < d.target:
                assert ("cancel_drop", n) in kinds(d), (
                    f"{n[0]}: only {len(others)} others for {d.target}, not withdrawn")

    def check_round(self, live_before: set[bytes], decisions: list[tuple[int, Decision]],
                    now: float) -> None:
        s = self.scn
        # (1) never the last replica
        if live_before:
            assert self.live(), "the last live replica was deleted"
        # (3) max: counted holders and the copies asked for (a custodian that forgot
        # its memory forgot the copies it asked for too)
        if not self.restarts:
            coming = set().union(*(m.adding for m in self.memories))
            total = self.within_grace(now) | coming
            assert len(total) <= s.hi, f"{len(total)} replicas held or coming, max {s.hi}"
        # (4) no round's drops go below the target: the holders still seen within the
        # grace (what the custodians can know; the dead among them are (1)'s business)
        if any(a.kind == "drop" for _, d in decisions for a in d.actions):
            target = max(d.target for _, d in decisions)
            kept = {n for n, h in self.holders.items()
                    if now - h.last_seen <= s.params.grace}
            assert len(kept) >= max(target, 1), (
                f"drops left {len(kept)} replicas for a target of {target}")


def _cycle(values: tuple[int | None, ...]) -> Iterator[int | None]:
    while True:
        yield from values


def run(scn: Scenario, custodians: int, restarts: int = 0) -> Grid:
    g = Grid(scn, custodians, restarts=restarts)
    try:
        for prediction in scn.demand:
            g.step(prediction)
        for _ in range(scn.settle_rounds()):
            g.step(scn.demand[-1], settle=True)
    except AssertionError as exc:
        exc.add_note("\n".join(g.log[-12:]))
        raise
    return g


def expected(g: Grid) -> tuple[int, set[str], set[str]]:
    """The target the settled state should have, the sites that want a replica and
    the sites that hold one (counted)."""
    s = g.scn
    nodes = g.nodes()
    held = {nodes[n].site for n in g.live_counted()}
    reachable = {node.site for node in nodes.values()
                 if node.id not in g.holders and s.fits(node)}
    wanted = {site for site in wanted_sites(s.by_site, held, s.params)
              if site in held or site in reachable}
    return target_count(s.demand[-1], s.lo, s.hi, s.params, len(wanted)), wanted, held


def check_settled(g: Grid) -> None:
    s = g.scn
    if not g.live():
        return  # every replica died: nothing to copy from
    counted = g.live_counted()
    capable = g.capable()
    target, wanted, held = expected(g)
    log = "\n".join(g.log[-6:])
    # (2) never below min while enough nodes live
    if len(capable) >= s.lo:
        assert len(counted) >= s.lo, f"{len(counted)} < min {s.lo}\n{log}"
    # (4) converged on the target
    assert len(counted) <= s.hi
    if len(capable) >= target:
        assert len(counted) == target, f"{len(counted)} replicas for a target of {target}\n{log}"
        assert not any(g.holders[n].leaving for n in g.live()), log
        # (6) the replicas followed the reads: every site that wants one and can take
        # one has one, unless the count is at its max
        assert wanted <= held or len(counted) == s.hi, f"{wanted - held} have none\n{log}"


def check_steady(g: Grid) -> None:
    """(7) No flapping: settled under steady demand, nothing more is asked for, over
    more than a cool-down."""
    target, _, _ = expected(g)
    if not g.live() or len(g.capable()) < target:
        return
    start = len(g.log)
    for _ in range(int(g.scn.params.cooldown / ROUND) + 5):
        g.step(g.scn.demand[-1], settle=True)
    busy = [line for line in g.log[start:] if not line.endswith(": ")]
    assert not busy, "\n".join(busy[:6])


@settings(max_examples=300, deadline=None, database=None)
@given(scn=scenarios())
def test_one_custodian_keeps_the_rules_through_deaths_and_lost_copies(scn):
    g = run(scn, 1)
    check_settled(g)
    check_steady(g)


@settings(max_examples=300, deadline=None, database=None)
@given(scn=scenarios())
def test_two_custodians_on_one_state_keep_the_rules_and_converge(scn):
    g = run(scn, 2)
    check_settled(g)
    check_steady(g)


@settings(max_examples=150, deadline=None, database=None)
@given(scn=scenarios(), restarts=st.integers(1, 4))
def test_a_custodian_that_forgets_its_memory_leaves_no_announcement_standing(scn, restarts):
    # Custodians change hands (a new catalog node, a restart) and the memory goes with
    # them; the announcements they leave in the holders' records are taken over.
    check_settled(run(scn, 2, restarts))
