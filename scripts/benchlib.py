"""What the benchmarks share: progress on stderr, this process's CPU and peak
memory, profiles, and the report (human table, or one JSON object on stdout)."""

from __future__ import annotations

import cProfile
import json
import pstats
import resource
import sys
from collections.abc import Callable
from typing import Any


def log(msg: str) -> None:
    """Progress goes to stderr, so that --json leaves stdout to the JSON."""
    print(msg, file=sys.stderr, flush=True)


def peak_rss_mb() -> float:
    """This process's peak resident set size (``ru_maxrss`` is in KiB on Linux)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if sys.platform == "darwin":
        kib //= 1024  # bytes there
    return round(kib / 1024, 1)


def cpu_seconds() -> float:
    """User and system CPU time of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def print_profile(profile: cProfile.Profile, label: str, lines: int = 30) -> None:
    log(f"-- profile: {label} (top {lines} by own time) --")
    pstats.Stats(profile, stream=sys.stderr).sort_stats("tottime").print_stats(lines)


def emit(report: dict[str, Any], as_json: bool,
         human: Callable[[dict[str, Any], Callable[[str], None]], None]) -> None:
    """The human table on stdout; with --json on stderr, and the JSON on stdout."""
    if as_json:
        human(report, log)
        print(json.dumps(report, sort_keys=True))
    else:
        human(report, print)
