"""Access trends: reads counted per dataset, site and time bucket, and a forecast.

Pure and I/O-free: the daemon and the grid simulator feed it times and
counts, and it answers with numbers.

- :class:`AccessLog` is one node's tally: every read (a job's stage-in, a
  ``gridnode get``) adds one to (dataset, requesting site, bucket). Its
  :meth:`AccessLog.summary` is what the node sends to each dataset's
  custodian: the counts of the last ``window`` buckets, nothing older, so
  the traffic per dataset is bounded by ``window`` x sites.
- :class:`DemandBook` is the custodian's view: the summaries of every
  reporter, each replacing that reporter's earlier one (sending a summary
  twice counts nothing twice).
- :func:`estimate` is Holt's double exponential smoothing over the complete
  buckets: a level (reads per bucket now) and a slope (change per bucket);
  the prediction is the level carried ``horizon`` buckets ahead along the
  slope, never below zero. Holt reacts to a rise within two or three
  buckets and needs no more state than the window the summaries carry
  anyway. Two guards keep it honest on counts:

  - a running median of three (Tukey's, with his end-point rule) goes over
    the series first, so a single-bucket spike is not taken for a trend.
    Holt alone turns a spike into a rise and then into a fall that carries
    the forecast far below the steady reads for most of the window (a spike
    of 10x on a baseline of 1 read per bucket predicted 0.24 five buckets
    later; 20x predicted 0), which would trim replicas the steady reads
    still need. A rise of two buckets or more passes the median unchanged;
    a rise in the newest bucket alone waits one bucket.
  - the slope never falls faster than the level (``slope >= -level``):
    reads cannot go negative, and without the bound a series that decays or
    stops drove the level itself below zero (-2.2 reads per bucket after
    three buckets of 40 and nine of 0).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["AccessLog", "DemandBook", "Trend", "TrendError", "TrendParams", "estimate"]

# Most sites one summary names per dataset; more are folded into "other".
MAX_SITES = 64


class TrendError(ValueError):
    """A trend parameter out of range."""


@dataclass(frozen=True)
class TrendParams:
    # Seconds of one bucket: the unit of the series, of the slope and of the horizon.
    bucket_seconds: float = 300.0
    # Buckets kept and sent to the custodian (12 x 5 min = the last hour).
    window: int = 12
    # Holt's smoothing of the level and of the slope, each in (0, 1].
    alpha: float = 0.5
    beta: float = 0.3
    # Buckets ahead the prediction looks (the time a new replica takes to be useful).
    horizon: int = 2

    def __post_init__(self) -> None:
        if not (math.isfinite(self.bucket_seconds) and self.bucket_seconds > 0):
            raise TrendError(f"bucket_seconds must be > 0, got {self.bucket_seconds}")
        if not (type(self.window) is int and 2 <= self.window <= 1000):
            raise TrendError(f"window must be 2-1000 buckets, got {self.window}")
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 < value <= 1):
                raise TrendError(f"{name} must be in (0, 1], got {value}")
        if not (type(self.horizon) is int and 0 <= self.horizon <= 100):
            raise TrendError(f"horizon must be 0-100 buckets, got {self.horizon}")

    def bucket(self, t: float) -> int:
        return int(t // self.bucket_seconds)

    def complete(self, now: float) -> range:
        """The last ``window`` complete buckets at ``now``, oldest first."""
        end = self.bucket(now)  # the current bucket is still filling
        return range(end - self.window, end)


@dataclass(frozen=True)
class Trend:
    series: tuple[float, ...]  # reads per bucket, oldest first
    level: float
    slope: float
    prediction: float  # reads per bucket, ``horizon`` buckets ahead

    @property
    def reads(self) -> float:
        return sum(self.series)


def estimate(series: Sequence[float], p: TrendParams) -> Trend:
    """Holt's level and slope over ``series`` (oldest first, reads >= 0) after a
    running median of three, and the prediction."""
    values = tuple(float(x) for x in series)
    if not values:
        return Trend((), 0.0, 0.0, 0.0)
    smooth = _median3(values)
    level, slope = smooth[0], 0.0
    for x in smooth[1:]:
        last = level
        level = p.alpha * x + (1 - p.alpha) * (level + slope)
        slope = max(-level, p.beta * (level - last) + (1 - p.beta) * slope)
    return Trend(values, level, slope, max(0.0, level + p.horizon * slope))


def _median(a: float, b: float, c: float) -> float:
    return max(min(a, b), min(max(a, b), c))


def _median3(values: tuple[float, ...]) -> list[float]:
    """Tukey's running median of three; each end is the median of its value, its
    smoothed neighbour and the line through the two smoothed neighbours."""
    n = len(values)
    if n < 3:
        return list(values)
    s = [values[0]] + [_median(*values[i - 1:i + 2]) for i in range(1, n - 1)] + [values[-1]]
    s[0] = _median(values[0], s[1], 3 * s[1] - 2 * s[2])
    s[-1] = _median(values[-1], s[-2], 3 * s[-2] - 2 * s[-3])
    return s


Counts = dict[str, dict[int, int]]  # site -> bucket -> reads


class AccessLog:
    """One node's reads, per dataset, requesting site and bucket."""

    def __init__(self, p: TrendParams) -> None:
        self.p = p
        self.counts: dict[str, Counts] = {}
        self.changed: set[str] = set()  # datasets read since the last summary

    def add(self, dataset: str, site: str, t: float, n: int = 1) -> None:
        buckets = self.counts.setdefault(dataset, {}).setdefault(site, {})
        b = self.p.bucket(t)
        buckets[b] = buckets.get(b, 0) + n
        self.changed.add(dataset)

    def load(self, dataset: str, site: str, bucket: int, n: int) -> None:
        """A count kept in the node's state, read back at start."""
        buckets = self.counts.setdefault(dataset, {}).setdefault(site, {})
        buckets[bucket] = buckets.get(bucket, 0) + n

    def prune(self, now: float) -> None:
        """Forget buckets older than the window, and datasets with none left."""
        first = self.p.complete(now).start
        for dataset in list(self.counts):
            sites = self.counts[dataset]
            for site in list(sites):
                sites[site] = {b: n for b, n in sites[site].items() if b >= first}
                if not sites[site]:
                    del sites[site]
            if not sites:
                del self.counts[dataset]

    def summary(self, dataset: str, now: float) -> Counts:
        """This node's counts of ``dataset`` in the window (the current bucket too)."""
        first = self.p.complete(now).start
        out: Counts = {}
        for site, buckets in self.counts.get(dataset, {}).items():
            kept = {b: n for b, n in buckets.items() if b >= first}
            if kept:
                out[site] = kept
        return _fold_sites(out)

    def take_changed(self) -> set[str]:
        """Datasets read since the last call (their custodians need a fresh summary)."""
        changed, self.changed = self.changed, set()
        return changed


def _fold_sites(counts: Counts) -> Counts:
    if len(counts) <= MAX_SITES:
        return counts
    ranked = sorted(counts, key=lambda s: (-sum(counts[s].values()), s))
    out = {s: dict(counts[s]) for s in ranked[:MAX_SITES - 1]}
    # Added to, not replaced: a busy site may itself be called "other".
    other = out.setdefault("other", {})
    for s in ranked[MAX_SITES - 1:]:
        for b, n in counts[s].items():
            other[b] = other.get(b, 0) + n
    return out


class DemandBook:
    """A custodian's merged view of the reads of its datasets."""

    def __init__(self, p: TrendParams) -> None:
        self.p = p
        # dataset -> reporter -> site -> bucket -> reads
        self.reports: dict[str, dict[bytes, Counts]] = {}

    def merge(self, reporter: bytes, dataset: str,
              counts: Mapping[str, Mapping[int, int]]) -> None:
        """``reporter``'s counts of ``dataset`` replace what it reported before."""
        self.reports.setdefault(dataset, {})[reporter] = {
            site: dict(buckets) for site, buckets in counts.items()}

    def datasets(self) -> list[str]:
        return list(self.reports)

    def series(self, dataset: str, now: float) -> list[float]:
        """Reads per complete bucket of the window, oldest first."""
        window = self.p.complete(now)
        totals = [0.0] * len(window)
        for counts in self.reports.get(dataset, {}).values():
            for buckets in counts.values():
                for b, n in buckets.items():
                    if b in window:
                        totals[b - window.start] += n
        return totals

    def trend(self, dataset: str, now: float) -> Trend:
        return estimate(self.series(dataset, now), self.p)

    def by_site(self, dataset: str, now: float) -> dict[str, float]:
        """Reads per requesting site within the window (the current bucket too), all
        weighing the same: a site's replica pays off over hours, so a site that
        read the dataset twice this hour is demand even if the reads were not in
        the last few minutes."""
        first = self.p.complete(now).start
        out: dict[str, float] = {}
        for counts in self.reports.get(dataset, {}).values():
            for site, buckets in counts.items():
                n = sum(n for b, n in buckets.items() if b >= first)
                if n > 0:
                    out[site] = out.get(site, 0.0) + n
        return out

    def prune(self, now: float) -> None:
        """Forget reports with nothing left in the window."""
        first = self.p.complete(now).start
        for dataset in list(self.reports):
            reporters = self.reports[dataset]
            for reporter in list(reporters):
                if not any(b >= first for buckets in reporters[reporter].values()
                           for b in buckets):
                    del reporters[reporter]
            if not reporters:
                del self.reports[dataset]
