"""Smoke test of the queue benchmark: a tiny run of scripts/bench_queue.py."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "bench_queue.py"

pytestmark = pytest.mark.slow

KEYS = (
    "makespan_ratio", "claim_growth_ratio", "submit_per_s", "dispatch_per_s", "makespan_s",
    "direct_makespan_s", "jobs", "nodes", "claims_per_s_10k", "claims_per_s_200k", "targets",
)


def _positive(value: object) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)


def test_tiny_benchmark_run_reports_json() -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--jobs", "40", "--nodes", "3", "--cores-per-node", "2",
         "--claim-sizes", "200,2000", "--claim-rounds", "3", "--json"],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)  # exactly one JSON object
    missing = [k for k in KEYS if k not in report]
    assert not missing, f"missing keys {missing}"
    assert (report["jobs"], report["nodes"]) == (40, 3)
    assert report["grid_error"] is None, report["grid_error"]
    # Every job finished, exactly once, on its first attempt.
    assert report["all_finished"] is True, (report["grid"].get("states"),
                                            report["grid"].get("attempts"))
    assert report["finished_once"] == 40
    assert report["grid"]["states"] == {"finished": 40}
    assert report["grid"]["attempts"] == {"1": 40}
    for key in ("makespan_ratio", "claim_growth_ratio", "submit_per_s", "dispatch_per_s",
                "makespan_s", "direct_makespan_s", "claims_per_s_10k", "claims_per_s_200k"):
        assert _positive(report[key]), f"{key} = {report[key]!r}"
    targets = report["targets"]
    assert set(targets) >= {"makespan_ratio", "claim_growth_ratio"}
    for name, t in targets.items():
        assert isinstance(t["pass"], bool), name
        assert t["value"] == report[name] and isinstance(t["limit"], int | float), name


def test_bad_arguments_exit_2_with_one_line() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--jobs", "1"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 2
    assert out.stdout == ""
    assert "--jobs must be at least 2" in out.stderr.splitlines()[-1]
