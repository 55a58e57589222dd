"""Smoke test of the transport benchmark: a tiny run of scripts/bench_transport.py."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "bench_transport.py"

KEYS = (
    "bulk_ratio", "small_call_ratio", "bulk_mb_s", "plain_mb_s", "calls_per_s",
    "plain_calls_per_s", "peak_rss_mb_client", "peak_rss_mb_server", "bulk_mb", "calls",
    "targets", "crypto_push_mb_s", "crypto_pull_mb_s", "bulk_ceiling_mb_s", "bulk_ceiling_ratio",
)


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_tiny_benchmark_run_reports_json() -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--bulk-mb", "8", "--calls", "500",
         "--also-concurrency", "8", "--json"],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)  # exactly one JSON object
    missing = [k for k in KEYS if k not in report]
    assert not missing, f"missing keys {missing}"
    assert (report["bulk_mb"], report["calls"]) == (8, 500)
    for key in ("bulk_ratio", "small_call_ratio", "bulk_mb_s", "plain_mb_s", "calls_per_s",
                "plain_calls_per_s", "channel_mb_s", "calls_per_s_concurrent",
                "peak_rss_mb_client", "peak_rss_mb_server", "crypto_push_mb_s",
                "crypto_pull_mb_s", "bulk_ceiling_mb_s", "bulk_ceiling_ratio"):
        assert _positive(report[key]), f"{key} = {report[key]!r}"
    targets = report["targets"]
    assert any(name.startswith("bulk_ratio") for name in targets)
    assert any(name.startswith("small_call_ratio") for name in targets)
    assert all(isinstance(ok, bool) for ok in targets.values())


def test_bad_arguments_exit_2_with_one_line() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--calls", "0"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 2
    assert out.stdout == ""
    assert "--calls must be at least 1" in out.stderr.splitlines()[-1]
