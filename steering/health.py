"""The bottleneck classifier: ``ok``, ``congested`` or ``failing``, per node or link.

Pure and I/O-free: the monitor feeds each subject (a node, or a link
between two nodes) two kinds of evidence, and asks for its state.

- **Pressure** samples, taken at a fixed interval: how close to saturation
  the subject is, 0 idle .. 1 saturated (a node: queue wait over its bound,
  slots in use, load; a link: throughput lost against its best, latency
  grown).  The series goes through the same estimator as access trends
  (``replication.trends.estimate``: Tukey's running median of three, then
  Holt's level and slope), so a single-sample spike is ignored and a ramp is
  seen from its slope: the subject is flagged when the *prediction*
  ``horizon`` samples ahead crosses ``congest_above``, before the level
  itself saturates.
- **Outcomes**: each job (or probe) that ended there, ok or not.  When at
  least ``min_outcomes`` of the last ``outcomes`` are known and the share
  that failed reaches ``fail_above``, the subject is ``failing``.  A failing
  subject gets no jobs but probes; it is let back in after
  ``recover_after`` outcomes in a row succeed.

Hysteresis: congestion starts after ``hold`` samples in a row predict at or
above ``congest_above`` and ends after ``hold`` samples in a row predict
below ``clear_below``; a prediction between the two changes nothing.
``failing`` wins over ``congested``.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

from replication import Trend, TrendParams, estimate

__all__ = ["STATES", "Classifier", "HealthError", "HealthParams"]

STATES = ("ok", "congested", "failing")


class HealthError(ValueError):
    """A classifier parameter out of range."""


@dataclass(frozen=True)
class HealthParams:
    congest_above: float = 0.8
    clear_below: float = 0.5
    hold: int = 2
    window: int = 12
    alpha: float = 0.5
    beta: float = 0.3
    horizon: int = 3
    fail_above: float = 0.5
    min_outcomes: int = 5
    outcomes: int = 20
    recover_after: int = 3

    def __post_init__(self) -> None:
        for name in ("congest_above", "clear_below", "fail_above"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 < value <= 1):
                raise HealthError(f"{name} must be in (0, 1], got {value}")
        if not self.clear_below < self.congest_above:
            raise HealthError(f"clear_below ({self.clear_below}) must be under congest_above "
                              f"({self.congest_above}), or the state would flap")
        for name, low in (("hold", 1), ("min_outcomes", 1), ("recover_after", 1)):
            value = getattr(self, name)
            if not (type(value) is int and low <= value <= 1000):
                raise HealthError(f"{name} must be {low}-1000, got {value}")
        if not (type(self.outcomes) is int and self.min_outcomes <= self.outcomes <= 1000):
            raise HealthError(f"outcomes must be min_outcomes-1000, got {self.outcomes}")
        self.trend_params()  # window, alpha, beta, horizon (TrendError is a ValueError)

    def trend_params(self) -> TrendParams:
        try:
            return TrendParams(1.0, self.window, self.alpha, self.beta, self.horizon)
        except ValueError as exc:
            raise HealthError(str(exc)) from None


class Classifier:
    """The state of one node or link, from its pressure samples and job outcomes."""

    def __init__(self, p: HealthParams, now: float = 0.0) -> None:
        self.p = p
        self._tp = p.trend_params()
        self.state = "ok"
        self.since = now
        self.reason = "no evidence yet"
        self.pressure: deque[float] = deque(maxlen=p.window)
        self.results: deque[bool] = deque(maxlen=p.outcomes)
        self.trend = Trend((), 0.0, 0.0, 0.0)
        self._congested = False
        self._over = self._under = 0
        self._failing = False
        self._ok_run = 0

    def sample(self, now: float, pressure: float) -> str:
        """A pressure sample (clamped to 0..2); the state after it."""
        x = pressure if math.isfinite(pressure) else 2.0
        self.pressure.append(min(2.0, max(0.0, x)))
        self.trend = estimate(self.pressure, self._tp)
        predicted = self.trend.prediction
        if predicted >= self.p.congest_above:
            self._over, self._under = self._over + 1, 0
        elif predicted < self.p.clear_below:
            self._over, self._under = 0, self._under + 1
        else:
            self._over = self._under = 0
        if not self._congested and self._over >= self.p.hold:
            self._congested = True
        elif self._congested and self._under >= self.p.hold:
            self._congested = False
        return self._settle(now)

    def outcome(self, now: float, ok: bool) -> str:
        """A job or probe ended here; the state after it."""
        self.results.append(ok)
        self._ok_run = self._ok_run + 1 if ok else 0
        if self._failing:
            if self._ok_run >= self.p.recover_after:
                self._failing = False
                self.results.clear()  # judged afresh from here on
        elif (len(self.results) >= self.p.min_outcomes
              and self.failure_rate >= self.p.fail_above):
            self._failing = True
        return self._settle(now)

    @property
    def failure_rate(self) -> float:
        return (sum(1 for r in self.results if not r) / len(self.results)
                if self.results else 0.0)

    def _settle(self, now: float) -> str:
        state = "failing" if self._failing else "congested" if self._congested else "ok"
        if state != self.state:
            self.state, self.since = state, now
            self.reason = self._why()
        return state

    def current_reason(self) -> str:
        """Why the state is what it is, from the evidence now (``reason`` is the one
        given when it last changed)."""
        return self._why()

    def _why(self) -> str:
        if self.state == "failing":
            return (f"{self.failure_rate:.0%} of the last {len(self.results)} jobs failed "
                    f"(threshold {self.p.fail_above:.0%})")
        t = self.trend
        if self.state == "congested":
            return (f"pressure predicted {t.prediction:.2f} (level {t.level:.2f}, slope "
                    f"{t.slope:+.2f}/sample) at or above {self.p.congest_above} "
                    f"for {self.p.hold} samples")
        return (f"pressure predicted {t.prediction:.2f}, failure rate "
                f"{self.failure_rate:.0%}")

    def evidence(self) -> dict[str, Any]:
        t = self.trend
        return {"state": self.state, "since": self.since, "reason": self.reason,
                "pressure": list(self.pressure), "level": t.level, "slope": t.slope,
                "prediction": t.prediction, "failure_rate": self.failure_rate,
                "outcomes": len(self.results)}
