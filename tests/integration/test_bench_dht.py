"""Smoke test of the DHT benchmark: a small run of scripts/bench_dht.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "bench_dht.py"

pytestmark = pytest.mark.slow

KEYS = (
    "nodes", "success_all_up", "success_20pct_down", "lookup_p50_ms", "lookup_p99_ms",
    "lookup_p99_20pct_down_ms", "hops_mean", "ratio_vs_plain", "plain_p50_ms", "plain_p99_ms",
    "plain_p99_20pct_down_ms", "plain_success_all_up", "plain_success_20pct_down",
    "join_seconds", "plain_join_seconds", "lookups", "targets",
)


def test_small_benchmark_run_reports_json():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--nodes", "20", "--lookups", "20", "--json"],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    missing = [k for k in KEYS if k not in report]
    assert not missing, f"missing keys {missing}"
    assert report["nodes"] == 20
    assert report["lookups"] > 0
    assert report["success_all_up"] == 1.0, out.stderr[-2000:]
    assert all(isinstance(v, bool) for v in report["targets"].values())
