"""Access trends, alone: the tally, the custodian's merged view and Holt's forecast."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replication.policy import PolicyParams, target_count
from replication.trends import (
    MAX_SITES,
    AccessLog,
    DemandBook,
    TrendError,
    TrendParams,
    estimate,
)

P = TrendParams()  # 5-minute buckets, a window of 12, alpha 0.5, beta 0.3, horizon 2
B = P.bucket_seconds
NOW = 1_700_000_000 // 300 * 300 + 10.0  # 10 s into a bucket
PP = PolicyParams()
SETTINGS = settings(max_examples=60, deadline=None, database=None)

baselines = st.floats(1.0, 200.0, allow_nan=False)


def near(x: float, value: float) -> bool:
    return abs(x - value) <= 0.25 * value + 0.5


# -- the forecast ------------------------------------------------------------------


@SETTINGS
@given(value=st.floats(0.0, 1e6, allow_nan=False))
def test_a_flat_series_predicts_its_value_with_no_slope(value):
    t = estimate([value] * P.window, P)
    assert t.prediction == pytest.approx(value)
    assert t.level == pytest.approx(value)
    assert t.slope == pytest.approx(0.0, abs=1e-9 * max(1.0, value))


@SETTINGS
@given(start=st.floats(0.0, 100.0), step=st.floats(0.5, 50.0))
def test_a_rising_series_predicts_above_its_last_value(start, step):
    series = [start + step * i for i in range(P.window)]
    t = estimate(series, P)
    assert t.slope > 0
    assert t.prediction > series[-1]


def test_a_rise_shows_within_three_buckets():
    for k in (2, 3):
        t = estimate([5.0] * (P.window - k) + [20.0] * k, P)
        assert t.slope > 0 and t.prediction > 15.0, (k, t)


@SETTINGS
@given(base=baselines, ratio=st.floats(3.0, 30.0), data=st.data())
def test_a_single_spike_is_forgotten_after_a_few_buckets(base, ratio, data):
    # A spike a few buckets old: the prediction is back near the baseline, neither kept
    # high (a target of many replicas) nor dragged toward zero by the fall that follows
    # the spike (a target trimmed below what the steady reads need).
    k = data.draw(st.integers(3, P.window - 1), label="buckets since the spike")
    series = [base] * (P.window - 1 - k) + [base * ratio] + [base] * k
    t = estimate(series, P)
    assert near(t.prediction, base), t
    assert target_count(t.prediction, 1, 10, PP) <= target_count(base * 1.25 + 0.5, 1, 10, PP)


def test_the_minimal_spike_that_dragged_the_forecast_down():
    # Holt alone predicted 0.24 here, a quarter of the steady reads.
    t = estimate([1.0] * 6 + [10.0] + [1.0] * 5, P)
    assert t.prediction == pytest.approx(1.0)


def test_a_spike_in_the_newest_bucket_waits_for_a_second_one():
    assert estimate([5.0] * 11 + [100.0], P).prediction == pytest.approx(5.0)
    assert estimate([5.0] * 10 + [100.0, 100.0], P).prediction > 100.0


@SETTINGS
@given(start=st.floats(1.0, 1000.0), ratio=st.floats(0.3, 0.95))
def test_a_decaying_series_has_a_falling_prediction_never_negative(start, ratio):
    series = [start * ratio ** i for i in range(P.window)]
    t = estimate(series, P)
    assert t.slope < 0
    assert 0.0 < t.level  # reads per bucket: a positive series has a positive level
    assert 0.0 <= t.prediction < t.level


def test_a_series_that_stops_predicts_nothing():
    t = estimate([40.0, 40.0, 40.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], P)
    assert t.prediction == 0.0
    assert t.level >= 0.0


def test_an_empty_series_predicts_nothing():
    t = estimate([], P)
    assert (t.level, t.slope, t.prediction, t.reads) == (0.0, 0.0, 0.0, 0.0)


@SETTINGS
@given(series=st.lists(st.integers(0, 10**6), max_size=40))
def test_any_count_series_gives_a_finite_prediction_never_negative(series):
    t = estimate(series, P)
    assert math.isfinite(t.level) and math.isfinite(t.slope)
    assert math.isfinite(t.prediction) and t.prediction >= 0.0
    assert t.reads == sum(series)


# -- parameters --------------------------------------------------------------------


@pytest.mark.parametrize("field, value", [
    ("bucket_seconds", 0.0), ("bucket_seconds", -300.0), ("bucket_seconds", math.nan),
    ("bucket_seconds", math.inf),
    ("window", -12), ("window", 0), ("window", 1), ("window", 1001), ("window", 12.0),
    ("window", True),
    ("alpha", 0.0), ("alpha", 1.5), ("alpha", -0.1), ("alpha", math.nan),
    ("beta", 0.0), ("beta", 1.01), ("beta", math.inf),
    ("horizon", -1), ("horizon", 101), ("horizon", 2.0),
])
def test_a_parameter_out_of_range_is_refused_by_name(field, value):
    with pytest.raises(TrendError, match=field):
        TrendParams(**{field: value})


def test_the_edges_of_the_ranges_are_accepted():
    TrendParams(window=2, alpha=1.0, beta=1.0, horizon=0)
    TrendParams(window=1000, horizon=100, bucket_seconds=0.001)


# -- one node's tally --------------------------------------------------------------

reads = st.lists(st.tuples(st.sampled_from(["a", "b", "c"]),
                           st.floats(NOW - 40 * B, NOW), st.integers(1, 5)), max_size=40)


@SETTINGS
@given(reads=reads)
def test_a_summary_holds_the_window_and_nothing_older(reads):
    log = AccessLog(P)
    for site, t, n in reads:
        log.add("alice:raw", site, t, n)
    first, current = P.complete(NOW).start, P.bucket(NOW)
    summary = log.summary("alice:raw", NOW)
    expect: dict[str, dict[int, int]] = {}
    for site, t, n in reads:
        if P.bucket(t) >= first:
            bucket = expect.setdefault(site, {})
            bucket[P.bucket(t)] = bucket.get(P.bucket(t), 0) + n
    assert summary == expect
    assert all(first <= b <= current for buckets in summary.values() for b in buckets)
    assert len({b for buckets in summary.values() for b in buckets}) <= P.window + 1


def test_a_summary_is_of_its_dataset_only_and_changes_are_taken_once():
    log = AccessLog(P)
    log.add("alice:raw", "s1", NOW)
    log.add("bob:sim", "s2", NOW, 3)
    assert log.summary("alice:raw", NOW) == {"s1": {P.bucket(NOW): 1}}
    assert log.summary("nobody:none", NOW) == {}
    assert log.take_changed() == {"alice:raw", "bob:sim"}
    assert log.take_changed() == set()


def test_prune_forgets_buckets_older_than_the_window_and_empty_datasets():
    log = AccessLog(P)
    log.add("old:data", "s1", NOW - 20 * B, 7)
    log.add("alice:raw", "s1", NOW - 20 * B, 7)
    log.add("alice:raw", "s2", NOW - 30 * B, 1)
    log.add("alice:raw", "s1", NOW - 3 * B, 2)
    log.load("alice:raw", "s3", P.bucket(NOW) - P.window, 4)  # the oldest kept bucket
    log.prune(NOW)
    first = P.complete(NOW).start
    assert log.counts == {"alice:raw": {"s1": {P.bucket(NOW) - 3: 2}, "s3": {first: 4}}}
    log.prune(NOW + P.window * B)
    assert log.counts == {}


def test_the_sites_beyond_the_limit_are_folded_with_their_reads_kept():
    log = AccessLog(P)
    sites = [f"site-{i:03d}" for i in range(MAX_SITES + 20)]
    for i, site in enumerate(sites):
        log.add("alice:raw", site, NOW - (i % 5) * B, n=i + 1)
    summary = log.summary("alice:raw", NOW)
    assert len(summary) == MAX_SITES
    # The busiest sites keep their names; the rest add up in "other".
    kept = [s for s in summary if s != "other"]
    assert set(kept) == set(sites[-(MAX_SITES - 1):])
    total = sum(n for buckets in summary.values() for n in buckets.values())
    assert total == sum(range(1, len(sites) + 1))


def test_a_site_called_other_keeps_its_reads_through_the_fold():
    log = AccessLog(P)
    log.add("alice:raw", "other", NOW, 65)  # the busiest site, and named "other"
    for i in range(MAX_SITES):
        log.add("alice:raw", f"site-{i:03d}", NOW, 1)
    summary = log.summary("alice:raw", NOW)
    assert len(summary) <= MAX_SITES
    assert sum(n for buckets in summary.values() for n in buckets.values()) == 65 + MAX_SITES
    assert summary["other"] == {P.bucket(NOW): 65 + 2}  # its own and the two folded
    assert log.counts["alice:raw"]["other"] == {P.bucket(NOW): 65}  # the tally untouched


@SETTINGS
@given(reads=st.lists(st.integers(1, 100), min_size=MAX_SITES - 2, max_size=MAX_SITES + 30),
       other=st.one_of(st.none(), st.integers(1, 200)))
def test_the_fold_keeps_every_buckets_total(reads, other):
    log = AccessLog(P)
    current = P.bucket(NOW)
    expect: dict[int, int] = {}
    sites = [(f"site-{i:03d}", n) for i, n in enumerate(reads)]
    if other is not None:  # a site may well be called "other"
        sites.append(("other", other))
    for i, (site, n) in enumerate(sites):
        log.load("alice:raw", site, current - i % 4, n)
        expect[current - i % 4] = expect.get(current - i % 4, 0) + n
    summary = log.summary("alice:raw", NOW)
    assert len(summary) <= MAX_SITES
    got: dict[int, int] = {}
    for buckets in summary.values():
        for b, n in buckets.items():
            got[b] = got.get(b, 0) + n
    assert got == expect
    if len(sites) <= MAX_SITES:
        assert summary == {site: {current - i % 4: n} for i, (site, n) in enumerate(sites)}


# -- the custodian's view ----------------------------------------------------------

R1, R2 = b"\x01" * 20, b"\x02" * 20


def test_the_same_summary_merged_twice_counts_once():
    log = AccessLog(P)
    for k in range(1, 6):
        log.add("alice:raw", "s1", NOW - k * B, k)
    book = DemandBook(P)
    book.merge(R1, "alice:raw", log.summary("alice:raw", NOW))
    once = book.series("alice:raw", NOW)
    book.merge(R1, "alice:raw", log.summary("alice:raw", NOW))
    assert book.series("alice:raw", NOW) == once
    assert once[-5:] == [5.0, 4.0, 3.0, 2.0, 1.0]
    assert len(once) == P.window


def test_a_newer_summary_replaces_the_older_one():
    book = DemandBook(P)
    last = P.bucket(NOW) - 1
    book.merge(R1, "alice:raw", {"s1": {last: 3}})
    book.merge(R1, "alice:raw", {"s1": {last: 5}, "s2": {last: 1}})
    assert book.series("alice:raw", NOW)[-1] == 6.0


@SETTINGS
@given(a=st.dictionaries(st.integers(-P.window, -1), st.integers(0, 50)),
       b=st.dictionaries(st.integers(-P.window, -1), st.integers(0, 50)))
def test_two_reporters_add_up(a, b):
    current = P.bucket(NOW)
    book = DemandBook(P)
    book.merge(R1, "alice:raw", {"s1": {current + k: n for k, n in a.items()}})
    book.merge(R2, "alice:raw", {"s1": {current + k: n for k, n in b.items()},
                                 "s2": {current + k: n for k, n in b.items()}})
    series = book.series("alice:raw", NOW)
    assert series == [a.get(k, 0) + 2 * b.get(k, 0) for k in range(-P.window, 0)]
    assert book.trend("alice:raw", NOW).reads == sum(series)


def test_the_series_holds_complete_buckets_only():
    current = P.bucket(NOW)
    book = DemandBook(P)
    book.merge(R1, "alice:raw", {"s1": {current: 100, current - P.window - 1: 100,
                                        current - 1: 2, current - P.window: 1}})
    assert book.series("alice:raw", NOW) == [1.0] + [0.0] * (P.window - 2) + [2.0]
    assert book.series("nobody:none", NOW) == [0.0] * P.window


def test_by_site_counts_the_reads_of_the_window_per_site():
    current = P.bucket(NOW)
    book = DemandBook(P)
    book.merge(R1, "alice:raw", {"old": {current - P.window: 10}, "new": {current - 1: 10}})
    book.merge(R2, "alice:raw", {"new": {current: 2}, "gone": {current - P.window - 1: 50}})
    w = book.by_site("alice:raw", NOW)
    assert set(w) == {"old", "new"}
    assert w["new"] == pytest.approx(10 + 2)  # the newest complete bucket and the current
    assert w["old"] == pytest.approx(10)      # the oldest bucket of the window, in full


@SETTINGS
@given(n=st.integers(1, 100), older=st.integers(1, P.window - 1))
def test_the_same_reads_weigh_the_same_anywhere_in_the_window(n, older):
    # A site's replica pays off over hours: two reads half an hour ago are as much
    # a sign of that site's interest as two reads a minute ago.
    current = P.bucket(NOW)
    book = DemandBook(P)
    book.merge(R1, "x:y", {"recent": {current - 1: n}, "older": {current - 1 - older: n}})
    w = book.by_site("x:y", NOW)
    assert w["recent"] == w["older"] == n


def test_prune_forgets_reporters_with_nothing_in_the_window():
    current = P.bucket(NOW)
    book = DemandBook(P)
    book.merge(R1, "alice:raw", {"s1": {current - P.window - 1: 9}})
    book.merge(R2, "alice:raw", {"s1": {current - 2: 1}})
    book.merge(R1, "old:data", {"s1": {current - 40: 9}})
    book.prune(NOW)
    assert book.datasets() == ["alice:raw"]
    assert list(book.reports["alice:raw"]) == [R2]
    book.prune(NOW + P.window * B)
    assert book.datasets() == []
