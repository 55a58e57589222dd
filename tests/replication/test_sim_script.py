"""scripts/simulate.py: a small run's JSON, the same for the same seed; bad arguments."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "simulate.py"
POLICIES = ("static", "cache-on-access", "trend")
FIGURES = ("mean_wait_s", "p95_wait_s", "wan_bytes", "storage_mean_bytes", "storage_end_bytes",
           "datasets_lost", "jobs_finished", "makespan_s", "wall_s")


def simulate(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)


def test_small_run_reports_json_and_is_deterministic():
    argv = ("--scenario", "hot-spot", "--seed", "5", "--nodes", "40", "--jobs", "1500",
            "--json")
    out = simulate(*argv)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)  # exactly one JSON object
    for key in ("policies", "wait_cut_vs_static", "bytes_ratio_vs_cache", "datasets_lost",
                "targets", "wall_seconds", "workload"):
        assert key in report, key
    assert set(report["policies"]) == set(POLICIES)
    for name, fig in report["policies"].items():
        missing = [k for k in FIGURES if k not in fig]
        assert not missing, (name, missing)
        assert fig["jobs_finished"] + fig["jobs_failed"] == 1500
    p = report["policies"]
    assert report["wait_cut_vs_static"] == round(
        1 - p["trend"]["mean_wait_s"] / p["static"]["mean_wait_s"], 4)
    assert report["bytes_ratio_vs_cache"] == round(
        p["trend"]["wan_bytes"] / p["cache-on-access"]["wan_bytes"], 4)
    assert report["datasets_lost"] == p["trend"]["datasets_lost"]
    assert {t["pass"] for t in report["targets"].values()} <= {True, False}
    assert "running trend" in out.stderr and "targets:" in out.stderr

    again = json.loads(simulate(*argv).stdout)
    for r in (report, again):
        r.pop("wall_seconds")
        r.pop("peak_rss_mb")
        for fig in r["policies"].values():
            fig.pop("wall_s")
    assert again == report


def test_the_table_without_json():
    out = simulate("--nodes", "20", "--jobs", "300", "--policies", "static,trend")
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("grid simulation: hot-spot, seed 1, 20 nodes")
    assert [ln.split()[0] for ln in lines[2:4]] == ["static", "trend"]
    assert "FAIL" in out.stdout or "PASS" in out.stdout
    assert "cache-on-access" not in out.stdout.split("targets:")[0]


@pytest.mark.parametrize("argv, message", [
    (["--nodes", "1"], "--nodes must be 2-100000"),
    (["--jobs", "0"], "--jobs must be"),
    (["--scenario", "calm"], "invalid choice"),
    (["--policies", "static,lru"], "--policies must name"),
    (["--set", "nodes_per_site"], "--set wants NAME=VALUE"),
    (["--set", "colour=blue"], "no scenario field 'colour'"),
    (["--set", "utilization=lots"], "utilization: 'lots' is not a valid float"),
    (["--set", "utilization=2"], "utilization 2.0 must be in (0, 1]"),
    (["--policy-set", "reads_per_replica=-1"], "reads_per_replica must be > 0"),
    (["--policy-set", "window=1"], "window must be 2-1000"),
])
def test_bad_arguments_exit_2_with_one_line(argv, message):
    out = simulate(*argv)
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and message in lines[0], out.stderr
    assert "Traceback" not in out.stderr
