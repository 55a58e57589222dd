"""Smoke test of the transfer benchmark: a tiny run of scripts/bench_transfer.py."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "bench_transfer.py"

pytestmark = pytest.mark.slow

KEYS = (
    "one_holder_ratio", "three_vs_one_ratio", "one_holder_mb_s", "three_holders_mb_s",
    "plain_mb_s", "peak_rss_mb_fetcher", "peak_rss_mb_holder", "size_mb", "holders",
    "verified", "all_verified", "bytes_received", "targets",
)


def _positive(value: object) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)


def test_tiny_benchmark_run_reports_json(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--size-mb", "16", "--holders", "3", "--json",
         "--tmp-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)  # exactly one JSON object
    missing = [k for k in KEYS if k not in report]
    assert not missing, f"missing keys {missing}"
    assert (report["size_mb"], report["holders"], report["chunks"]) == (16, 3, 4)
    # Every byte arrived, verified, on every path; nothing failed on the way.
    assert report["all_verified"] is True
    assert report["verified"] == {"plain": True, "one_holder": True, "three_holders": True}
    assert set(report["bytes_received"].values()) == {16 * 1024 * 1024}
    assert (report["failures"], report["bad_chunks"]) == (0, 0)
    for key in ("one_holder_ratio", "three_vs_one_ratio", "one_holder_mb_s",
                "three_holders_mb_s", "plain_mb_s", "peak_rss_mb_fetcher",
                "peak_rss_mb_holder"):
        assert _positive(report[key]), f"{key} = {report[key]!r}"
    # The chunks of the three-holder get came from the holders, once each.
    assert sum(report["three_holders_mb_by_holder"].values()) == 16
    targets = report["targets"]
    assert set(targets) == {"one_holder_ratio", "three_vs_one_ratio"}
    for name, t in targets.items():
        assert isinstance(t["pass"], bool), name
        assert t["value"] == report[name] and isinstance(t["limit"], int | float), name
    assert "PASS" in out.stderr or "FAIL" in out.stderr
    assert list(tmp_path.iterdir()) == []  # the temporary files are gone


def test_bad_arguments_exit_2_with_one_line() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--holders", "1"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 2
    assert out.stdout == ""
    assert "--holders must be 2-16" in out.stderr.splitlines()[-1]


def test_cannot_run_exits_1(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    out = subprocess.run([sys.executable, str(SCRIPT), "--size-mb", "1", "--tmp-dir",
                          str(missing)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr.splitlines()[-1].startswith("error:")
