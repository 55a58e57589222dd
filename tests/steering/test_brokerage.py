"""The brokerage core: claims, matches, releases and sources, with properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steering.brokerage import (
    BrokerError,
    BrokerParams,
    Claim,
    NodeView,
    Option,
    Source,
    choose,
    claim,
    match,
    order_sources,
    pick_source,
    predicted_finish,
    rank_workers,
    should_release,
    stage_estimate,
)

P = BrokerParams()
FIFO = BrokerParams(lpt_weight=0.0)     # no longest-expected-first: queue order and locality
STATES = ("ok", "congested", "failing")


@st.composite
def views(draw, state=None):
    slots = draw(st.integers(1, 64))
    return NodeView(state=state or draw(st.sampled_from(STATES)),
                    prediction=draw(st.floats(0.0, 2.0)),
                    slope=draw(st.floats(-1.0, 1.0)),
                    free_slots=draw(st.integers(0, slots)), slots=slots,
                    staging=draw(st.integers(0, slots)))


options = st.lists(st.builds(Option, stage_s=st.floats(0.0, 1e5), age_s=st.floats(0.0, 1e5),
                             local=st.booleans(), excluded=st.booleans()), max_size=80)


# -- (b) claims ------------------------------------------------------------------------------


def test_an_ok_node_claims_its_free_slots():
    assert claim(NodeView("ok", free_slots=5, slots=8), P) == Claim(5, 5, False)


def test_a_congested_node_keeps_a_quarter_of_its_slots_staging_in_half_while_rising():
    steady = NodeView("congested", prediction=1.2, slope=-0.1, free_slots=8, slots=8)
    assert claim(steady, P) == Claim(8, 2, False)
    rising = NodeView("congested", prediction=1.2, slope=0.2, free_slots=8, slots=8)
    assert claim(rising, P) == Claim(8, 1, False)
    busy = NodeView("congested", prediction=1.2, free_slots=6, slots=8, staging=2)
    assert claim(busy, P) == Claim(6, 0, False)   # jobs with local input only


def test_a_failing_node_claims_nothing_but_a_probe_when_one_is_due():
    v = NodeView("failing", free_slots=8, slots=8)
    assert claim(v, P) == Claim(0, 0, False)
    assert claim(v, P, probe_due=True) == Claim(0, 0, True)
    full = NodeView("failing", free_slots=0, slots=8)
    assert claim(full, P, probe_due=True).probe is False


@settings(max_examples=300, deadline=None)
@given(views(), st.booleans())
def test_a_claim_never_exceeds_the_free_slots(v, due):
    c = claim(v, P, due)
    assert 0 <= c.stage_ins <= c.jobs <= v.free_slots
    assert c.probe == (v.state == "failing" and due and v.free_slots > 0)


@settings(max_examples=300, deadline=None)
@given(views(state="congested"))
def test_a_congested_node_never_claims_more_than_an_ok_one_with_the_same_slots(v):
    ok = NodeView("ok", 0.0, 0.0, v.free_slots, v.slots, v.staging)
    c, o = claim(v, P), claim(ok, P)
    assert c.jobs <= o.jobs and c.stage_ins <= o.stage_ins


@settings(max_examples=300, deadline=None)
@given(views(state="failing"), options, st.booleans())
def test_a_failing_node_is_never_given_a_job_only_probes(v, opts, due):
    m = match(v, opts, P, due)
    assert m.jobs == []
    assert m.probe == (due and v.free_slots > 0)


# -- (a) scores and matches ------------------------------------------------------------------


def test_stage_in_estimate_is_nominal_unless_an_end_is_congested():
    ok = NodeView()
    hot = NodeView("congested", prediction=2.0)
    assert stage_estimate(40.0, ok, None, P) == 0.0            # input on the worker
    assert stage_estimate(40.0, ok, ok, P) == 40.0
    assert stage_estimate(40.0, hot, ok, P) == 2.0 * P.stage_bound
    assert stage_estimate(40.0, ok, hot, P) == 2.0 * P.stage_bound
    assert stage_estimate(900.0, hot, ok, P) == 900.0          # never below nominal
    assert stage_estimate(40.0, ok, NodeView("failing", prediction=2.0), P) == 40.0


@settings(max_examples=200, deadline=None)
@given(st.floats(0.0, 1e4), views(), views())
def test_a_stage_in_estimate_is_never_below_the_nominal_time(nominal, w, s):
    assert stage_estimate(nominal, w, s, P) >= nominal


def test_the_worker_with_local_input_and_the_earliest_finish_ranks_first():
    cands = [(NodeView("ok"), 60.0, 0.0),          # remote input
             (NodeView("ok"), 0.0, 0.0),           # input here
             (NodeView("failing"), 0.0, 0.0),      # never
             (NodeView("ok"), 0.0, 600.0)]         # input here, but a slot frees in 10 min
    assert rank_workers(cands, 3600.0) == [1, 0, 3]
    assert predicted_finish(60.0, 3600.0) == 3660.0


def test_a_claim_takes_local_jobs_first_then_the_shortest_stage_ins():
    opts = [Option(300.0, 10.0), Option(40.0, 10.0), Option(0.0, 10.0, local=True),
            Option(5.0, 10.0, excluded=True), Option(40.0, 20.0)]
    assert choose(opts, Claim(3, 3, False), P) == [2, 4, 1]   # older wins the tie
    assert choose(opts, Claim(3, 0, False), P) == [2]         # no stage-in allowed
    assert choose(opts, Claim(0, 0, False), P) == []


def test_a_claim_looks_only_at_the_window():
    opts = [Option(100.0)] * P.window + [Option(0.0, local=True)]
    assert P.window not in choose(opts, Claim(P.window + 1, P.window + 1, False), P)


@settings(max_examples=300, deadline=None)
@given(options, st.integers(0, 10), st.integers(0, 10))
def test_choose_respects_the_claim_and_the_exclusions(opts, jobs, moves):
    c = Claim(jobs, min(jobs, moves), False)
    picked = choose(opts, c, P)
    assert len(picked) == len(set(picked)) <= c.jobs
    assert sum(1 for i in picked if not opts[i].local) <= c.stage_ins
    assert all(i < P.window and not opts[i].excluded for i in picked)
    # Nothing left out scores better than something taken of the same kind.
    score = [(0.0 if o.local else o.stage_s) - P.age_credit * o.age_s for o in opts]
    for i in range(min(len(opts), P.window)):
        if i in picked or opts[i].excluded:
            continue
        for k in picked:
            if opts[k].local == opts[i].local and len(picked) == c.jobs:
                assert score[k] <= score[i]


LPT = BrokerParams(lpt_weight=1.0, scouts=4)

timed = st.lists(st.builds(Option, stage_s=st.floats(0.0, 1e4), age_s=st.floats(0.0, 1e5),
                           local=st.booleans(), excluded=st.booleans(),
                           compute_s=st.none() | st.floats(0.0, 5e4),
                           running_s=st.floats(0.0, 5e4)), max_size=60)


@settings(max_examples=200, deadline=None)
@given(timed, st.integers(0, 10), st.integers(0, 10))
def test_with_no_lpt_weight_expected_compute_changes_nothing(opts, jobs, moves):
    c = Claim(jobs, min(jobs, moves), False)
    blind = [Option(o.stage_s, o.age_s, o.local, o.excluded) for o in opts]
    assert choose(opts, c, FIFO) == choose(blind, c, FIFO)


def test_with_lpt_weight_the_longest_expected_job_goes_first():
    opts = [Option(40.0, 100.0, compute_s=1800.0), Option(40.0, 100.0, compute_s=7200.0),
            Option(0.0, 100.0, local=True, compute_s=3600.0)]
    assert choose(opts, Claim(1, 1, False), FIFO) == [2]    # without: the local one
    assert choose(opts, Claim(3, 3, False), LPT) == [1, 2, 0]
    assert choose(opts, Claim(3, 0, False), LPT) == [2]     # no stage-in allowed


def test_an_unknown_compute_counts_as_the_mean_of_the_known_ones():
    opts = [Option(0.0, compute_s=None), Option(0.0, compute_s=1000.0),
            Option(0.0, compute_s=3000.0)]
    assert choose(opts, Claim(3, 3, False), LPT) == [2, 0, 1]   # None = 2000
    unknown = [Option(10.0, 5.0), Option(0.0, 5.0)]               # none known: as today
    assert choose(unknown, Claim(2, 2, False), LPT) == choose(unknown, Claim(2, 2, False), FIFO)


def test_an_unknown_compute_counts_at_least_as_long_as_its_task_has_computed():
    # None of its task's jobs has finished, but one has computed for 5000 s: the
    # task is longer than the known 3000 s one.
    opts = [Option(0.0, compute_s=3000.0), Option(0.0, running_s=5000.0),
            Option(0.0, running_s=100.0)]
    assert choose(opts, Claim(3, 3, False), LPT) == [1, 0, 2]   # the last = mean 3000, older
    known = [Option(0.0, compute_s=1000.0, running_s=9000.0), Option(0.0, compute_s=2000.0)]
    assert choose(known, Claim(2, 2, False), LPT) == [1, 0]    # a finished job's mean stands


def test_scouts_go_before_every_other_job():
    opts = [Option(0.0, 1e4, local=True, compute_s=9000.0), Option(300.0, scout=True)]
    assert choose(opts, Claim(1, 1, False), LPT) == [1]
    assert choose(opts, Claim(1, 0, False), LPT) == [0]     # a scout still needs its move


@settings(max_examples=300, deadline=None)
@given(timed, st.floats(0.0, 10.0), st.floats(0.01, 0.99))
def test_age_credit_still_overtakes_any_expected_compute(opts, weight, credit):
    # A job older than the rest by more than what its shorter compute and longer
    # stage-in cost it is taken first: no job waits forever behind long ones.
    p = BrokerParams(lpt_weight=weight, age_credit=credit, window=100)
    opts = [o for o in opts if not o.excluded and o.compute_s is not None]
    if not opts:
        return
    lead = max(weight * o.compute_s + credit * o.age_s for o in opts if o.compute_s is not None)
    old = Option(1e4, (lead + 1e4 + 1.0) / credit, compute_s=0.0)
    assert choose([*opts, old], Claim(1, 1, False), p) == [len(opts)]


# -- (c) releases ----------------------------------------------------------------------------


HOT = NodeView("congested", prediction=1.5)


def test_a_stuck_stage_in_is_released_only_past_the_bound_and_far_from_done():
    assert not should_release(599.0, 5000.0, 60.0, HOT, P)      # not long enough yet
    assert should_release(600.0, 5000.0, 60.0, HOT, P)
    assert not should_release(900.0, 500.0, 60.0, HOT, P)       # nearly through
    assert not should_release(900.0, 5000.0, 3000.0, HOT, P)    # no better elsewhere


def test_a_node_that_is_ok_releases_nothing_its_waits_come_from_elsewhere():
    assert not should_release(5000.0, 1e6, 1.0, NodeView("ok"), P)
    assert should_release(5000.0, 1e6, 1.0, NodeView("failing"), P)


@settings(max_examples=300, deadline=None)
@given(st.floats(0.0, 1e5), st.floats(0.0, 1e5), st.floats(0.0, 1e5), st.floats(0.0, 1e4),
       st.floats(0.0, 1e4), views())
def test_release_is_monotone_in_the_wait_and_what_is_left(waited, left, elsewhere, dw, dl, v):
    if should_release(waited, left, elsewhere, v, P):
        assert should_release(waited + dw, left + dl, elsewhere, v, P)
    if waited < P.release_after or left <= P.release_after or v.state == "ok":
        assert not should_release(waited, left, elsewhere, v, P)


# -- (d) sources -----------------------------------------------------------------------------


def test_the_source_is_local_then_not_congested_then_near_then_fast():
    srcs = [Source("congested", same_site=True, rate=1e9), Source("ok", rate=1e8),
            Source("ok", rate=2e8, readers=3), Source("congested", rate=5e8)]
    assert pick_source(srcs) == 2
    assert pick_source(srcs + [Source("congested", on_node=True)]) == 4
    assert pick_source([Source("ok", rate=1e8), Source("ok", same_site=True, rate=1.0)]) == 1
    # A failing node fails the jobs it runs; the bytes it serves are not slower.
    assert pick_source([Source("congested"), Source("failing")]) == 1
    assert pick_source([Source("ok", rate=1e8), Source("failing", rate=2e8)]) == 1
    assert pick_source([]) is None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.builds(Source, state=st.sampled_from(STATES), same_site=st.booleans(),
                          rate=st.floats(0.0, 1e10), readers=st.integers(0, 50)),
                min_size=1, max_size=12))
def test_a_congested_source_is_never_picked_while_another_exists(srcs):
    k = pick_source(srcs)
    assert k is not None
    if any(s.state != "congested" for s in srcs):
        assert srcs[k].state != "congested"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.builds(Source, state=st.sampled_from(STATES), on_node=st.booleans(),
                          same_site=st.booleans(), rate=st.floats(0.0, 1e10),
                          readers=st.integers(0, 50)), max_size=12))
def test_sources_in_order_begin_with_the_pick_and_put_congested_ones_last(srcs):
    order = order_sources(srcs)
    assert sorted(order) == list(range(len(srcs)))
    assert (order[0] if order else None) == pick_source(srcs)
    remote = [srcs[i].state == "congested" for i in order if not srcs[i].on_node]
    assert remote == sorted(remote)  # not congested, then congested
    assert order_sources([Source("congested", rate=9.0), Source("ok", rate=1.0),
                          Source("ok", rate=5.0)]) == [2, 1, 0]


# -- parameters ------------------------------------------------------------------------------


@pytest.mark.parametrize(("kw", "needle"), [
    ({"stage_bound": 0.0}, "stage_bound"),
    ({"congested_share": 1.5}, "congested_share"),
    ({"rising_factor": 0.0}, "rising_factor"),
    ({"release_gain": 0.5}, "release_gain"),
    ({"age_credit": 1.0}, "age_credit"),
    ({"window": 0}, "window"),
    ({"lpt_weight": -1.0}, "lpt_weight"),
    ({"scouts": -1}, "scouts"),
    ({"per_task": 1.5}, "per_task"),
    ({"probe_every": float("nan")}, "probe_every"),
])
def test_bad_parameters_are_refused_by_name(kw, needle):
    with pytest.raises(BrokerError, match=needle):
        BrokerParams(**kw)


@pytest.mark.parametrize("kw", [{"state": "sick"}, {"free_slots": 9, "slots": 8},
                                {"slots": 0}, {"prediction": float("inf")}])
def test_bad_views_are_refused(kw):
    with pytest.raises(BrokerError):
        NodeView(**kw)
