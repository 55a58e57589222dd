#!/usr/bin/env python3
"""Simulate a grid under three replica policies, or four job schedulers, and compare
them (``replication.sim``, ``steering.sim``).

    python scripts/simulate.py                          # hot-spot, 200 nodes, 20,000 jobs
    python scripts/simulate.py --json                   # one JSON object on stdout
    python scripts/simulate.py --nodes 1000 --jobs 100000 --seed 7
    python scripts/simulate.py --set locality=0 --policy-set reads_per_replica=2
    python scripts/simulate.py --scenario bottleneck    # steering under bottlenecks
    python scripts/simulate.py --scenario bottleneck --set link_drops=3 \
        --policy-set congested_share=0.5

One run builds the scenario's workload once (the grid, the jobs, the node
deaths, all from ``--seed``) and plays it under ``static``, ``cache-on-access``
and ``trend`` (gridnode's policy: the real trend and policy cores).  The
model and the figures are described in ``replication/sim/`` (``model.py``,
``workload.py``, ``policies.py``, ``run.py``).  ``--set NAME=VALUE`` changes a
field of the scenario (``replication.sim.Scenario``), ``--policy-set
NAME=VALUE`` one of the trend policy's parameters (``PolicyParams`` or
``TrendParams``, or ``interval``).

``--scenario bottleneck`` (``steering.sim``) builds one workload of bulk
tasks and one schedule of bottlenecks (a site's link at a tenth, a slow
storage node, a site failing every job for an hour) and plays it under the
job schedulers ``round-robin`` (push), ``random`` and ``least-loaded`` (pull)
and ``gridnode`` (pull with the real classifier and brokerage cores), with an
oracle lower bound on the makespan; ``--set`` then also takes the fields of
``steering.sim.BottleneckScenario`` and ``--policy-set`` those of
``steering.brokerage.BrokerParams`` and ``steering.HealthParams``.  The model:
``docs/simulator.md``.

The same seed and arguments give the same figures (only the ``wall_s`` and
``wall_seconds`` timings differ).  Targets (PASS/FAIL; the exit code is 0
either way): the trend policy cuts the mean stage-in wait by at least 50%
against static, moves at most half the bytes between sites that
cache-on-access moves, and loses no dataset; under bottlenecks, gridnode's
throughput is at least 1.6x round-robin's and its makespan within 1.15x of
the oracle.  Progress goes to stderr; with --json stdout holds exactly one
JSON object.  Exit 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from replication import PolicyError, PolicyParams, TrendError, TrendParams
from replication.sim import (
    POLICIES,
    SCENARIOS,
    Policy,
    Scenario,
    ScenarioError,
    Trend,
    build,
    run_one,
    summary,
)
from steering import HealthError, HealthParams
from steering.brokerage import BrokerError, BrokerParams
from steering.sim import SCHEDULERS, bottleneck, build_world, run_all

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))  # benchlib, when loaded by path
from benchlib import emit, log, peak_rss_mb  # noqa: E402

TARGET_WAIT_CUT = 0.5
TARGET_BYTES_RATIO = 0.5
TARGET_THROUGHPUT_RATIO = 1.6
TARGET_ORACLE_RATIO = 1.15
TB = 10**12


class ArgError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line on stderr, exit 2 (not argparse's usage block)."""
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


ANY_LENGTH = {"node_cores"}   # tuple fields of any length; the others are (low, high)


def _convert(text: str, like: Any, name: str) -> Any:
    try:
        if isinstance(like, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
        if isinstance(like, int):
            return int(float(text)) if float(text).is_integer() else int(text)
        if isinstance(like, float):
            return float(text)
        if isinstance(like, tuple):
            parts = text.split(",")
            if name in ANY_LENGTH:
                like = (like[0],) * len(parts)
            if len(parts) != len(like):
                raise ValueError(text)
            return tuple(_convert(p, x, name) for p, x in zip(parts, like, strict=True))
    except ValueError:
        raise ArgError(f"{name}: {text!r} is not a valid {type(like).__name__}") from None
    raise ArgError(f"{name} cannot be set")


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ArgError(f"{flag} wants NAME=VALUE, got {item!r}")
        out[name] = value
    return out


def make_scenario(args: argparse.Namespace) -> Scenario:
    sc = SCENARIOS[args.scenario](seed=args.seed, nodes=args.nodes, jobs=args.jobs)
    fields = {f.name: getattr(sc, f.name) for f in dataclasses.fields(sc)}
    changes = {}
    for name, text in _pairs(args.set, "--set").items():
        if name not in fields or name in ("name", "seed", "nodes", "jobs"):
            raise ArgError(f"--set: no scenario field {name!r} (seed, nodes and jobs have "
                           f"their own options)")
        changes[name] = _convert(text, fields[name], name)
    sc = dataclasses.replace(sc, **changes)
    sc.check()
    return sc


def make_trend(args: argparse.Namespace) -> Callable[[], Policy]:
    tp_fields = {f.name: getattr(TrendParams(), f.name) for f in dataclasses.fields(TrendParams)}
    pp_fields = {f.name: getattr(PolicyParams(), f.name)
                 for f in dataclasses.fields(PolicyParams)}
    tp: dict[str, Any] = {}
    pp: dict[str, Any] = {}
    interval = 60.0
    for name, text in _pairs(args.policy_set, "--policy-set").items():
        if name in pp_fields:
            pp[name] = _convert(text, pp_fields[name], name)
        elif name in tp_fields:
            tp[name] = _convert(text, tp_fields[name], name)
        elif name == "interval":
            interval = _convert(text, 1.0, name)
            if not interval > 0:
                raise ArgError("interval must be > 0 seconds")
        else:
            raise ArgError(f"--policy-set: no trend policy parameter {name!r}")
    trend_params, policy_params = TrendParams(**tp), PolicyParams(**pp)
    return lambda: Trend(trend_params, policy_params, interval=interval)


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    sc = make_scenario(args)
    factories = dict(POLICIES)
    factories["trend"] = make_trend(args)
    log(f"building the {sc.name} workload: {sc.nodes} nodes, {sc.jobs} jobs, seed {sc.seed}")
    workload = build(sc)
    hot = sum(1 for j in workload.jobs if j.hot)
    log(f"  {len(workload.sites)} sites, {len(workload.datasets)} datasets, "
        f"{len(workload.episodes)} hot spots, {len(workload.failures)} node deaths, "
        f"{workload.duration / 3600:.1f} h of submissions")
    policies: dict[str, dict[str, Any]] = {}
    for name in args.policies:
        log(f"running {name} ...")
        _, fig = run_one(workload, factories[name]())
        policies[name] = fig
        log(f"  {name}: mean wait {fig['mean_wait_s']:.1f} s, between sites "
            f"{fig['wan_bytes'] / TB:.1f} TB, {fig['wall_s']:.1f} s")
    report: dict[str, Any] = {
        "scenario": sc.name,
        "seed": sc.seed,
        "nodes": sc.nodes,
        "jobs": sc.jobs,
        "settings": {k: v for k, v in sorted(dataclasses.asdict(sc).items())
                     if k not in ("name", "seed", "nodes", "jobs")},
        "policy_settings": _pairs(args.policy_set, "--policy-set"),
        "workload": {
            "sites": len(workload.sites),
            "datasets": len(workload.datasets),
            "dataset_bytes": sum(d.size for d in workload.datasets),
            "hot_spots": len(workload.episodes),
            "hot_jobs": hot,
            "node_deaths_planned": len(workload.failures),
            "submission_hours": round(workload.duration / 3600, 2),
        },
        "policies": policies,
        **summary(policies),
    }
    cut, ratio, lost = (report["wait_cut_vs_static"], report["bytes_ratio_vs_cache"],
                        report["datasets_lost"])
    report["targets"] = {
        "wait_cut_vs_static": {"limit": f">= {TARGET_WAIT_CUT}", "value": cut,
                               "pass": cut is not None and cut >= TARGET_WAIT_CUT},
        "bytes_ratio_vs_cache": {"limit": f"<= {TARGET_BYTES_RATIO}", "value": ratio,
                                 "pass": ratio is not None and ratio <= TARGET_BYTES_RATIO},
        "datasets_lost": {"limit": "== 0", "value": lost, "pass": lost == 0},
    }
    report["peak_rss_mb"] = peak_rss_mb()
    report["wall_seconds"] = round(time.perf_counter() - started, 2)
    report["notes"] = ("waits per completed stage-in, seconds; bytes between sites = "
                       "stage-ins + cache fills + replication copies; storage = replica "
                       "bytes on live nodes (complete or being written), mean over time "
                       "to the makespan and at the makespan; TB = 10**12 bytes; wall_s "
                       "and wall_seconds are real seconds, the rest is simulated")
    return report


def _fmt(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def human(report: dict[str, Any], out: Callable[[str], None]) -> None:
    w = report["workload"]
    out(f"grid simulation: {report['scenario']}, seed {report['seed']}, {report['nodes']} "
        f"nodes at {w['sites']} sites, {report['jobs']} jobs ({w['hot_jobs']} for "
        f"{w['hot_spots']} hot spots), {w['datasets']} datasets "
        f"({w['dataset_bytes'] / TB:.1f} TB)")
    out(f"{'policy':16}{'wait s':>9}{'p95 s':>8}{'WAN TB':>9}{'store TB':>10}"
        f"{'end TB':>8}{'lost':>6}{'finished':>10}{'makespan h':>12}{'wall s':>8}")
    for name, f in report["policies"].items():
        out(f"{name:16}{f['mean_wait_s']:>9.1f}{f['p95_wait_s']:>8.1f}"
            f"{f['wan_bytes'] / TB:>9.1f}{f['storage_mean_bytes'] / TB:>10.1f}"
            f"{f['storage_end_bytes'] / TB:>8.1f}{f['datasets_lost']:>6}"
            f"{f['jobs_finished']:>10}{f['makespan_s'] / 3600:>12.1f}{f['wall_s']:>8.1f}")
    if "trend" in report["policies"]:
        acts = report["policies"]["trend"]["actions"]
        out("trend actions: " + ", ".join(f"{k} {v}" for k, v in acts.items()))
    out(f"note: {report['notes']}")
    out(f"wall time: {report['wall_seconds']:.1f} s, peak RSS {report['peak_rss_mb']} MB, "
        f"{os.cpu_count()} CPUs")
    out("targets:")
    for name, t in report["targets"].items():
        out(f"  {'PASS' if t['pass'] else 'FAIL'}  {name} = {_fmt(t['value'], '')} "
            f"({t['limit']})")


# -- the bottleneck scenario (steering.sim) ---------------------------------------------


def make_bottleneck(args: argparse.Namespace) -> Any:
    sc = bottleneck(seed=args.seed, nodes=args.nodes, jobs=args.jobs)
    own = {f.name: getattr(sc, f.name) for f in dataclasses.fields(sc) if f.name != "base"}
    base = {f.name: getattr(sc.base, f.name) for f in dataclasses.fields(sc.base)}
    mine: dict[str, Any] = {}
    theirs: dict[str, Any] = {}
    for name, text in _pairs(args.set, "--set").items():
        if name in own:
            mine[name] = _convert(text, own[name], name)
        elif name in base and name not in ("name", "seed", "nodes", "jobs"):
            theirs[name] = _convert(text, base[name], name)
        else:
            raise ArgError(f"--set: no scenario field {name!r} (seed, nodes and jobs have "
                           f"their own options)")
    sc = dataclasses.replace(sc, base=dataclasses.replace(sc.base, **theirs), **mine)
    sc.check()
    return sc


def make_steering(args: argparse.Namespace) -> tuple[BrokerParams, HealthParams]:
    bp_fields = {f.name: getattr(BrokerParams(), f.name) for f in dataclasses.fields(BrokerParams)}
    hp_fields = {f.name: getattr(HealthParams(), f.name) for f in dataclasses.fields(HealthParams)}
    bp: dict[str, Any] = {}
    hp: dict[str, Any] = {}
    for name, text in _pairs(args.policy_set, "--policy-set").items():
        if name in bp_fields:
            bp[name] = _convert(text, bp_fields[name], name)
        elif name in hp_fields:
            hp[name] = _convert(text, hp_fields[name], name)
        else:
            raise ArgError(f"--policy-set: no steering parameter {name!r}")
    return BrokerParams(**bp), HealthParams(**hp)


def run_bottleneck(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    sc = make_bottleneck(args)
    broker, health = make_steering(args)
    log(f"building the bottleneck workload: {sc.nodes} nodes, {sc.jobs} jobs, seed {sc.seed}")
    world = build_world(sc)
    w = world.workload
    log(f"  {len(w.sites)} sites, {len(w.datasets)} datasets, {world.tasks} tasks, "
        f"{world.work / 3600:.0f} core-hours ({world.span / 3600:.1f} h on every core), "
        f"{len(world.bottlenecks)} bottlenecks")
    out = run_all(world, args.policies, broker, health, progress=log)
    settings = {k: v for k, v in sorted(dataclasses.asdict(sc.base).items())
                if k not in ("name", "seed", "nodes", "jobs")}
    settings.update({f.name: getattr(sc, f.name) for f in dataclasses.fields(sc)
                     if f.name != "base"})
    report: dict[str, Any] = {
        "scenario": "bottleneck",
        "seed": sc.seed,
        "nodes": sc.nodes,
        "jobs": sc.jobs,
        "settings": settings,
        "policy_settings": _pairs(args.policy_set, "--policy-set"),
        "workload": {
            "sites": len(w.sites),
            "datasets": len(w.datasets),
            "tasks": world.tasks,
            "work_core_hours": round(world.work / 3600, 1),
            "submission_hours": round(w.duration / 3600, 2),
            "bottlenecks": [{"kind": b.kind, "start_h": round(b.start / 3600, 2),
                             "end_h": round(b.end / 3600, 2),
                             "site": w.sites[b.site].name, "node": b.node,
                             "factor": b.factor} for b in world.bottlenecks],
        },
        **out,
    }
    tr, mr = out["throughput_ratio_vs_round_robin"], out["makespan_ratio_vs_oracle"]
    report["targets"] = {
        "throughput_ratio_vs_round_robin": {
            "limit": f">= {TARGET_THROUGHPUT_RATIO}", "value": tr,
            "pass": tr is not None and tr >= TARGET_THROUGHPUT_RATIO},
        "makespan_ratio_vs_oracle": {
            "limit": f"<= {TARGET_ORACLE_RATIO}", "value": mr,
            "pass": mr is not None and mr <= TARGET_ORACLE_RATIO},
    }
    report["peak_rss_mb"] = peak_rss_mb()
    report["wall_seconds"] = round(time.perf_counter() - started, 2)
    report["notes"] = ("throughput = jobs finished per hour of makespan; 90% h = when 90% of "
                       "the jobs had finished; job wait = from "
                       "submission to the start of the compute that finished the job; "
                       "stage-in per completed stage-in; core_hours split the cores' time "
                       "(idle_jobs_waiting: free cores while jobs wait; idle_arrivals, "
                       "idle_tail: no job waits, before and after the last submission); the "
                       "oracle is a lower bound on the makespan; wall_s and wall_seconds are "
                       "real seconds, the rest is simulated")
    return report


def human_bottleneck(report: dict[str, Any], out: Callable[[str], None]) -> None:
    w = report["workload"]
    out(f"grid simulation: bottleneck, seed {report['seed']}, {report['nodes']} nodes at "
        f"{w['sites']} sites, {report['jobs']} jobs in {w['tasks']} tasks "
        f"({w['work_core_hours']:.0f} core-hours), {w['datasets']} datasets")
    for b in w["bottlenecks"]:
        where = b["site"] + (f" node {b['node']}" if b["node"] is not None else "")
        extra = f" to {b['factor']:g}" if b["kind"] != "failing" else ""
        out(f"  {b['kind']:8} {where}{extra}, {b['start_h']:.2f}-{b['end_h']:.2f} h")
    out(f"{'policy':14}{'jobs/h':>9}{'makespan h':>12}{'90% h':>7}{'wait h':>8}{'stage s':>9}"
        f"{'failed att':>11}{'jobs lost':>10}{'idle/wait ch':>13}{'wall s':>8}")
    for name, f in report["policies"].items():
        t90 = f["t90_s"] / 3600 if f["t90_s"] is not None else None
        out(f"{name:14}{f['throughput_jobs_per_h']:>9.1f}{f['makespan_s'] / 3600:>12.2f}"
            f"{_fmt(t90, '.2f'):>7}{f['mean_job_wait_s'] / 3600:>8.2f}{f['mean_stage_in_s']:>9.1f}"
            f"{f['failed_attempts']:>11}{f['jobs_failed']:>10}"
            f"{f['core_hours']['idle_jobs_waiting']:>13}{f['wall_s']:>8.1f}")
    o = report["oracle"]
    out(f"{'oracle':14}{o['throughput_jobs_per_h']:>9.1f}{o['makespan_s'] / 3600:>12.2f}")
    g = report["policies"].get("gridnode")
    if g:
        out(f"gridnode: {g['released']} released, {g['probes']} probes "
            f"({g['probes_failed']} failed), node-hours by state {g['node_hours_by_state']}")
    out(f"note: {report['notes']}")
    out(f"wall time: {report['wall_seconds']:.1f} s, peak RSS {report['peak_rss_mb']} MB, "
        f"{os.cpu_count()} CPUs")
    out("targets:")
    for name, t in report["targets"].items():
        out(f"  {'PASS' if t['pass'] else 'FAIL'}  {name} = {_fmt(t['value'], '')} "
            f"({t['limit']})")


def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="simulate.py", description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="hot-spot", choices=sorted([*SCENARIOS, "bottleneck"]))
    ap.add_argument("--seed", type=int, default=1, help="random seed (1)")
    ap.add_argument("--nodes", type=int, default=200, help="nodes in the grid (200)")
    ap.add_argument("--jobs", type=int, default=20_000, help="jobs to run (20000)")
    ap.add_argument("--policies", default=None,
                    help=f"comma-separated, of {', '.join(POLICIES)} (all); for the "
                         f"bottleneck scenario of {', '.join(SCHEDULERS)} (all)")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="change a scenario field (repeatable)")
    ap.add_argument("--policy-set", action="append", default=[], metavar="NAME=VALUE",
                    help="change a trend policy (or steering) parameter (repeatable)")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = ap.parse_args(argv)
    if not 2 <= args.nodes <= 100_000:
        ap.error("--nodes must be 2-100000")
    if not 1 <= args.jobs <= 10_000_000:
        ap.error("--jobs must be 1-10000000")
    known = SCHEDULERS if args.scenario == "bottleneck" else tuple(POLICIES)
    if args.policies is None:
        args.policies = ",".join(known)
    args.policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = [p for p in args.policies if p not in known]
    if unknown or not args.policies or len(set(args.policies)) != len(args.policies):
        ap.error(f"--policies must name some of {', '.join(known)}, each once")
    try:
        if args.scenario == "bottleneck":
            report = run_bottleneck(args)
        else:
            report = run(args)
    except (ArgError, ScenarioError, TrendError, PolicyError, BrokerError,
            HealthError) as exc:
        ap.error(str(exc))
    emit(report, args.json, human_bottleneck if args.scenario == "bottleneck" else human)
    return 0


if __name__ == "__main__":
    sys.exit(main())
