"""Smoke test of the DHT benchmark: a small run of scripts/bench_dht.py."""

from __future__ import annotations

import importlib.util
import itertools
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
    # The first lookups after the joins, and the warm-up between them and the headline ones.
    "lookup_p50_cold_ms", "plain_p50_cold_ms", "ratio_vs_plain_cold", "success_all_up_cold",
    "warmup_lookups", "plain_warmup_lookups", "warmup_rule", "same_plan",
    "unseen_cert_share_cold", "unseen_cert_share_warm",
)


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_dht", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # its dataclasses look their module up there
    spec.loader.exec_module(sys.modules[spec.name])
    return sys.modules[spec.name]


def test_lookup_plan_is_seeded_and_keeps_warm_pairs_apart():
    bench = _bench_module()
    plan = bench.LookupPlan.draw(30, 50, 3)
    assert plan == bench.LookupPlan.draw(30, 50, 3)
    assert len(plan.cold) == len(plan.warm) == len(plan.down_pairs) == 50
    assert not set(plan.warm) & set(plan.cold)
    warmup = list(itertools.islice(plan.warmup_pairs(), 400))
    assert warmup == list(itertools.islice(plan.warmup_pairs(), 400))
    assert not set(warmup) & set(plan.warm)
    assert all(s != t for s, t in plan.cold + plan.warm + warmup)
    live = set(plan.live_down)
    assert len(live) == 24 and all(s in live and t in live for s, t in plan.down_pairs)


def test_small_benchmark_run_reports_json():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--nodes", "20", "--lookups", "10", "--warmup", "30",
         "--json"],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    missing = [k for k in KEYS if k not in report]
    assert not missing, f"missing keys {missing}"
    assert report["nodes"] == 20
    assert report["lookups"] == 10
    assert report["warmup_lookups"] == report["plain_warmup_lookups"] == 30
    assert report["same_plan"] is True
    for phase in ("up_cold", "up"):
        assert report["ours"][phase]["lookups"] == report["plain"][phase]["lookups"] == 10
    assert report["success_all_up"] == 1.0, out.stderr[-2000:]
    assert report["success_all_up_cold"] == 1.0, out.stderr[-2000:]
    assert 0.0 <= report["unseen_cert_share_cold"] <= 1.0
    assert "p50_ratio_vs_plain_warm_le_1.5" in report["targets"]
    assert all(isinstance(v, bool) for v in report["targets"].values())
