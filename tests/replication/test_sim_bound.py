"""replication.sim.bound: replays of the reads under static, the oracle and online rules;
scripts/placement_bound.py on a small scenario."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from replication.sim import GB, Gbps
from replication.sim.bound import frontier, online, oracle, static

from .simkit import world

ROOT = Path(__file__).resolve().parents[2]
WAN, LAN = 1 * Gbps, 10 * Gbps  # simkit's wan_flow and lan_rate


def reads():
    # Dataset 0 (4 GB) at site 0.  Site 1 reads 2 GB of it three times, 100 s
    # apart; site 2 once; site 0 once (its own replica).
    return world([1, 1, 1], [(4 * GB, (0,))],
                 [(0.0, 1, 0, 2 * GB, 1.0), (100.0, 1, 0, 2 * GB, 1.0),
                  (200.0, 1, 0, 2 * GB, 1.0), (300.0, 2, 0, 2 * GB, 1.0),
                  (400.0, 0, 0, 2 * GB, 1.0)])


def test_static_reads_everything_from_the_first_replicas():
    r = static(reads())
    assert (r.remote_reads, r.read_bytes, r.copy_bytes, r.replicas) == (4, 8 * GB, 0, 0)
    assert r.mean_wait_s == pytest.approx((4 * 2 * GB / WAN + 2 * GB / LAN) / 5)


def test_the_oracle_places_where_the_reads_will_outweigh_the_copy():
    # Site 1 will read 6 GB of a 4 GB dataset: a replica from the start; site 2 only
    # 2 GB: none.
    r = oracle(reads())
    assert (r.remote_reads, r.read_bytes, r.copy_bytes, r.replicas) == (1, 2 * GB, 4 * GB, 1)
    assert r.wan_bytes == 6 * GB


def test_an_online_rule_places_after_the_reads_it_has_seen_and_trims_idle_replicas():
    # Two reads within the hour: the second is remote, then a copy; the third local.
    r = online(reads(), window=3600.0, add=2)
    assert (r.remote_reads, r.copy_bytes, r.replicas) == (3, 4 * GB, 1)
    assert r.wan_bytes == 3 * 2 * GB + 4 * GB
    # Kept only 50 s idle: gone before the third read, which copies it again.
    r = online(reads(), window=3600.0, add=2, keep=50.0)
    assert (r.remote_reads, r.copy_bytes, r.replicas) == (4, 8 * GB, 2)
    # One read is enough when the dataset is popular (two reads within the window).
    r = online(reads(), window=3600.0, add=3, popular=2)
    assert r.replicas == 2 and r.remote_reads == 3


def test_no_rule_places_beyond_max_replicas():
    # Sites 1 and 2 each read a dataset whose origin is at site 0; max 2: room for
    # one more replica, at the site that reads most (the oracle) or the first to
    # read twice (an online rule).
    w = world([1, 1, 1], [(4 * GB, (0,))],
              [(0.0, 2, 0, 2 * GB, 1.0), (10.0, 2, 0, 2 * GB, 1.0), (20.0, 1, 0, 2 * GB, 1.0),
               (30.0, 1, 0, 2 * GB, 1.0), (40.0, 1, 0, 2 * GB, 1.0)], max_replicas=2)
    r = oracle(w)
    assert r.replicas == 1 and r.remote_reads == 2      # site 1 (6 GB), not site 2 (4 GB)
    r = online(w, window=3600.0, add=2)
    assert r.replicas == 1 and r.remote_reads == 5      # at site 2, first to read twice


def test_the_frontier_trades_waits_for_bytes():
    out = frontier(reads())
    assert out
    waits = [r.mean_wait_s for r in out]
    assert waits == sorted(waits)
    assert all(a.wan_bytes > b.wan_bytes for a, b in zip(out, out[1:], strict=False))
    assert all(math.isfinite(r.mean_wait_s) for r in out)


def test_the_script_reports_json():
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "placement_bound.py"),
                          "--nodes", "30", "--jobs", "800", "--seed", "3", "--json"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    rules = [r["rule"] for r in report["rules"]]
    assert rules[:2] == ["static", "oracle"] and len(rules) > 3
    static_row = report["rules"][0]
    assert static_row["wait_cut_vs_static"] == 0.0
    assert report["simulated"]["cache_wan_bytes"] > 0
