"""The bottleneck classifier on synthetic series: ramps flagged early, spikes
ignored, hysteresis, failing and recovery."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steering.health import Classifier, HealthError, HealthParams

P = HealthParams()


def run(series, p=P):
    c = Classifier(p)
    return c, [c.sample(float(i), x) for i, x in enumerate(series)]


def test_a_ramp_is_flagged_before_it_saturates():
    ramp = [0.1 + 0.08 * i for i in range(12)]  # reaches 1.0 at the end
    c, states = run(ramp)
    first = states.index("congested")
    assert ramp[first] < P.congest_above  # seen coming, not when already there
    assert ramp[first] < 1.0
    assert "predicted" in c.reason


def test_a_flat_load_below_the_threshold_stays_ok():
    _, states = run([0.6] * 30)
    assert set(states) == {"ok"}


def test_a_sustained_overload_is_congested():
    _, states = run([0.3] * 5 + [0.95] * 6)
    assert states[-1] == "congested"


@pytest.mark.parametrize("height", [1.0, 1.5, 2.0, 50.0])
def test_a_single_spike_is_not_flagged(height):
    series = [0.2] * 6 + [height] + [0.2] * 8
    _, states = run(series)
    assert set(states) == {"ok"}


def test_hysteresis_holds_between_the_thresholds():
    c, states = run([0.95] * 6)
    assert states[-1] == "congested"
    # Around 0.7: under congest_above but over clear_below: stays congested.
    for i, x in enumerate([0.7, 0.75, 0.65, 0.72] * 5):
        assert c.sample(10.0 + i, x) == "congested"
    # Well under clear_below for long enough: ok again.
    states = [c.sample(40.0 + i, 0.1) for i in range(10)]
    assert states[-1] == "ok"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=60), st.floats(0.0, 1.0))
def test_a_series_oscillating_around_one_threshold_changes_state_rarely(noise, centre):
    """Noise of +-0.05 around any level flips the state at most once per hold+1
    samples (it needs hold samples in a row past a threshold)."""
    c = Classifier(P)
    states = [c.sample(float(i), centre + (x - 0.5) * 0.1) for i, x in enumerate(noise)]
    changes = sum(1 for a, b in zip(states, states[1:], strict=False) if a != b)
    assert changes <= len(states) // (P.hold + 1) + 1
    assert set(states) <= {"ok", "congested"}


def test_mostly_failing_jobs_make_a_node_failing_and_passing_probes_let_it_back():
    c = Classifier(P)
    for i in range(4):
        assert c.outcome(float(i), False) == "ok"  # too few outcomes to judge
    assert c.outcome(4.0, False) == "failing"
    assert "jobs failed" in c.reason and c.since == 4.0
    assert c.outcome(5.0, True) == "failing"
    assert c.outcome(6.0, False) == "failing"  # a probe failed: the run starts again
    assert [c.outcome(7.0 + i, True) for i in range(3)] == ["failing", "failing", "ok"]
    assert c.failure_rate == 0.0


def test_a_few_failures_among_many_successes_stay_ok():
    c = Classifier(P)
    states = [c.outcome(float(i), i % 4 != 0) for i in range(40)]  # 25% fail
    assert set(states) == {"ok"}


def test_failing_wins_over_congested():
    c, _ = run([0.95] * 6)
    for i in range(5):
        c.outcome(10.0 + i, False)
    assert c.state == "failing"
    ev = c.evidence()
    assert ev["state"] == "failing" and ev["failure_rate"] == 1.0 and ev["prediction"] > 0.8


def test_garbage_pressure_is_clamped():
    c = Classifier(P)
    for i, x in enumerate([float("nan"), float("inf"), -5.0]):
        c.sample(float(i), x)
    assert all(0.0 <= x <= 2.0 for x in c.pressure)


@pytest.mark.parametrize(("kw", "needle"), [
    ({"congest_above": 0.4}, "clear_below"),
    ({"clear_below": 0.0}, "clear_below"),
    ({"congest_above": float("nan")}, "congest_above"),
    ({"fail_above": 1.5}, "fail_above"),
    ({"hold": 0}, "hold"),
    ({"min_outcomes": 30}, "outcomes"),
    ({"window": 1}, "window"),
    ({"alpha": 0.0}, "alpha"),
])
def test_bad_parameters_are_refused_by_name(kw, needle):
    with pytest.raises(HealthError, match=needle):
        HealthParams(**kw)
