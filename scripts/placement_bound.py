#!/usr/bin/env python3
"""What any replica placement could reach on a scenario's reads (``replication.sim.bound``).

    python scripts/placement_bound.py                    # hot-spot, 200 nodes, 20,000 jobs
    python scripts/placement_bound.py --nodes 1000 --jobs 100000 --json

Replays the reads of the workload that ``scripts/simulate.py`` runs (same
scenario, same seed) under ``static``, an ``oracle`` that knows every future
read, gridnode's own site rule (``site_add_reads`` reads within the window,
kept the window and the cool-down) and a grid of ``online`` rules that see
only past reads, in a model kinder than the simulator (instant copies, no
failures, no shared links); prints the online rules no other beats on both
counts.  Estimated wait cuts
are against the replayed static; byte ratios against the bytes between
sites that cache-on-access moves in the simulator (run here too), with the
repair copies static makes in the simulator added to every rule.  Exit 2 for
bad arguments.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from replication import PolicyParams, TrendParams
from replication.sim import SCENARIOS, CacheOnAccess, Static, build, run_one
from replication.sim.bound import Replay, frontier, online, oracle, static

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))  # benchlib, when loaded by path
from benchlib import emit, log  # noqa: E402

TB = 10**12


def row(r: Replay, base: Replay, repairs: int, cache: int) -> dict[str, Any]:
    return {"rule": r.rule, "mean_wait_s": round(r.mean_wait_s, 2),
            "wait_cut_vs_static": round(1 - r.mean_wait_s / base.mean_wait_s, 3),
            "wan_bytes": r.wan_bytes, "replicas": r.replicas,
            "remote_reads": r.remote_reads,
            "bytes_ratio_vs_cache": round((r.wan_bytes + repairs) / cache, 3)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    w = build(SCENARIOS[args.scenario](seed=args.seed, nodes=args.nodes, jobs=args.jobs))
    log("simulating static and cache-on-access for the reference figures ...")
    _, st = run_one(w, Static())
    _, cache = run_one(w, CacheOnAccess())
    repairs = st["wan_bytes_by_purpose"].get("replication", 0)
    log("replaying the reads ...")
    base = static(w)
    # gridnode's own rule in this model: a replica after site_add_reads reads within
    # the window, trimmed once its site has not read it for the window + cool-down.
    tp, pp = TrendParams(), PolicyParams()
    window = tp.window * tp.bucket_seconds
    ours = online(w, window, math.ceil(pp.site_add_reads), window + pp.cooldown)
    rows = [row(r, base, repairs, cache["wan_bytes"])
            for r in (base, oracle(w), ours, *frontier(w))]
    return {"scenario": args.scenario, "seed": args.seed, "nodes": args.nodes,
            "jobs": args.jobs, "rules": rows,
            "simulated": {"static_mean_wait_s": st["mean_wait_s"],
                          "static_repair_bytes": repairs,
                          "cache_wan_bytes": cache["wan_bytes"]},
            "wall_seconds": round(time.perf_counter() - started, 2)}


def human(report: dict[str, Any], out: Callable[[str], None]) -> None:
    sim = report["simulated"]
    out(f"placement bound: {report['scenario']}, seed {report['seed']}, {report['nodes']} "
        f"nodes, {report['jobs']} jobs; simulated static waits {sim['static_mean_wait_s']:.1f} s, "
        f"repairs {sim['static_repair_bytes'] / TB:.1f} TB, cache-on-access moves "
        f"{sim['cache_wan_bytes'] / TB:.1f} TB")
    out(f"{'wait s':>7}{'cut':>7}{'TB':>7}{'ratio':>7}{'replicas':>9}  rule")
    for r in report["rules"]:
        out(f"{r['mean_wait_s']:>7.1f}{r['wait_cut_vs_static']:>7.2f}{r['wan_bytes'] / TB:>7.1f}"
            f"{r['bytes_ratio_vs_cache']:>7.2f}{r['replicas']:>9}  {r['rule']}")
    out("model: instant copies, no failures, no shared links; TB = stage-ins between sites "
        "+ copies; ratio adds the simulated static repairs to it")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="placement_bound.py", description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="hot-spot", choices=sorted(SCENARIOS))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--jobs", type=int, default=20_000)
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = ap.parse_args(argv)
    if not (2 <= args.nodes <= 100_000 and 1 <= args.jobs <= 10_000_000):
        ap.error("--nodes must be 2-100000 and --jobs 1-10000000")
    emit(run(args), args.json, human)
    return 0


if __name__ == "__main__":
    sys.exit(main())
