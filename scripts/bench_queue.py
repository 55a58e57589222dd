#!/usr/bin/env python3
"""Benchmark the job queue: trivial jobs through a local grid, and the cost of a claim.

    python scripts/bench_queue.py                          # human table
    python scripts/bench_queue.py --json                   # one JSON object on stdout
    python scripts/bench_queue.py --jobs 40 --nodes 3 --claim-sizes 200,2000 --json

Three measurements in one run:

GRID (``--nodes`` node processes, default 4, on 127.0.0.1)
    A fresh temporary directory; the nodes are initialised, admitted and
    started the way ``scripts/local_grid.py`` does it (node 0 is the grid
    authority and its admin user, in DIR/user, submits), on a range of free
    ports.  Every node has every role; ``[capacity] cores`` of each node's
    config.toml is set to ``--cores-per-node`` (default 2) and ``memory_mb``
    to cores x 1024 before it starts.  Once every node sees the others, the
    admin user submits ``--jobs`` jobs (default 2000) through node 0 with the
    Python client, ``--batch`` (250) per ``submit`` call, one call after the
    other; each job is the default spec with argv ``["true"]`` and
    ``memory_mb`` 64, so cores are the limit.  Then it polls every node's
    ``status`` on its admin socket every ``--poll`` seconds (0.5) and sums the
    queue counters ``jobs_finished + jobs_failed + jobs_unschedulable`` (each
    job is made final once, by its primary) until every job is final or
    ``--timeout`` (600 s) passes.

    submit_per_s     jobs acknowledged / time from the first submit call to
                     the last acknowledgement (signing included: the client
                     signs each batch before it sends it);
    makespan_s       from the first submit call to the newest final event in
                     the job records (wall clock; every process runs on this
                     machine).  ``makespan_polled_s`` is when the poll saw
                     every job final (up to one poll interval later);
    dispatch_per_s   (jobs - 1) / (last finish - first finish), finish times
                     from the records' history.

    The records are read back from every node's state file after the nodes
    stopped (newest record of each job by ballot and version, the way the
    queue itself decides): every job must be ``finished`` with ``attempt``
    1 and one ``running`` event, none missing (``all_finished``).  The node
    logs are searched for warnings, errors and tracebacks (``node_logs``).
    ``node_cpu_s`` is each node process's CPU time from the first submit to
    the last poll (its jobs' CPU is ``job_cpu_s``), ``node_cpu_ms_per_job``
    their sum per job, and ``other_cpu_s`` what the rest of the machine used
    meanwhile: when other programs ran, the figures are not comparable.

    A node process that exits during the run is a result, not an error of
    the benchmark: ``grid_error`` says which node and the exception that
    ended it, the run stops waiting, and the rest is measured as usual.
    After the last poll, ``listing`` tells whether
    ``client.jobs(state="finished", limit=jobs)`` through node 0 returned
    every job (a reply must fit one 1 MiB frame), and ``killed_node`` whether
    answering it made a node exit.

DIRECT
    The same number of ``true`` processes with the same total parallelism
    (nodes x cores per node), started by ``trio.run_process`` under a
    ``trio.CapacityLimiter`` in this one process: the physical limit of the
    machine.  makespan_ratio = makespan_s / direct_makespan_s (target <= 2.0).

CLAIMS (in this process, no network)
    For each size of ``--claim-sizes`` (default 10000,200000) one
    ``QueueNode`` with an in-memory slot store and a membership in which it
    is the only queue node (home sets of one member: every write is local;
    it has no network at all), filled through ``QueueNode.create`` in
    batches of 1000 with jobs of one user, each signed on its own (the job
    id is the hash of the signed bytes).  Then ``--claim-rounds`` rounds
    (10) of ``--claims`` calls (100; at most an eighth of the smallest queue)
    of ``claim(Offer(cores=8, max_jobs=8))``, each of which must lease 8
    jobs; every round starts from a queue topped up to its size (untimed),
    and the rounds alternate between the sizes so that a change of the
    machine's load meets all of them.  A size's figure is the median of its
    rounds' claims per second.  claims_per_s_10k and claims_per_s_200k are
    the figures at the smallest and the largest size; claim_growth_ratio =
    largest / smallest (target >= 0.8).

Progress goes to stderr; with --json, stdout holds exactly one JSON object
(the human table goes to stderr then).  Targets are printed as PASS/FAIL;
the exit code is 0 either way (also when a node died: see ``grid_error``),
1 only when the benchmark itself could not run (the grid did not come up, a
submission failed), 2 for bad arguments, 130 when interrupted.  The node
processes are always stopped (also on errors, Ctrl-C and SIGTERM) and the
temporary directory is removed (``--keep`` keeps it, with the node logs).
``--profile-node K`` runs node K under cProfile and prints its top functions
to stderr (the figures are then not comparable); ``--log-level`` sets the
nodes' log level (info).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import hashlib
import io
import math
import os
import pstats
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parents[1]
# This tree's sources (and local_grid beside this script), whichever tree is installed.
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from benchlib import emit, log  # noqa: E402
from local_grid import (  # noqa: E402
    free_base_port,
    node_dir,
    prepare,
    terminate,
    wait_converged,
)

from node.admin import admin_call  # noqa: E402
from node.client import Client  # noqa: E402
from node.config import load_config, render_config  # noqa: E402
from node.datadir import write_atomic  # noqa: E402
from node.errors import UserError  # noqa: E402
from overlay import (  # noqa: E402
    Certificate,
    GridInfo,
    KeyPair,
    RpcError,
    unpackb_untrusted,
)
from steering import FINAL, JobRecord, JobSpec, Offer, SignedJob  # noqa: E402
from steering.solo import solo_queue  # noqa: E402

TARGET_MAKESPAN_RATIO = 2.0
TARGET_CLAIM_GROWTH = 0.8
JOB_MEMORY_MB = 64
CLAIM_CORES = 8
CLAIM_MAX_JOBS = 8
FILL_BATCH = 1000
PROFILE_LINES = 30
SOURCES = ("steering/queue.py", "steering/matching.py", "steering/worker.py",
           "steering/jobs.py", "steering/record.py", "steering/homeset.py", "node/jobs.py",
           "node/state.py", "node/executor.py", "node/daemon.py")


def sources_sha256() -> dict[str, str]:
    """Short hashes of the sources measured (the tree may be edited meanwhile)."""
    return {name: hashlib.sha256((ROOT / name).read_bytes()).hexdigest()[:16]
            for name in SOURCES if (ROOT / name).exists()}


SOURCES_AT_START = sources_sha256()


class BenchError(Exception):
    """The benchmark could not run; one line for the user, exit 1."""


class NodeDied(Exception):
    """A node process exited while jobs ran: the grid failed, the run goes on to report it."""


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups; trio's nurseries wrap what
    they carry."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in leaves(e)]
    return [exc]


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM and SIGHUP act as Ctrl-C (inside trio.run, trio's own SIGINT handling
    decides where KeyboardInterrupt is raised)."""
    signal.raise_signal(signal.SIGINT)


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def _round(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


def the_spec() -> JobSpec:
    """Every job of the benchmark: the default spec but argv and memory."""
    return JobSpec(argv=("true",), memory_mb=JOB_MEMORY_MB)


# -- the grid ---------------------------------------------------------------------------


def configure(root: Path, n: int, cores: int, log_level: str) -> None:
    """Set each node's capacity (and log level) in its config.toml before it starts."""
    for i in range(n):
        path = node_dir(root, i) / "config.toml"
        cfg = load_config(path)
        cfg = dataclasses.replace(
            cfg, log_level=log_level,
            capacity=dataclasses.replace(cfg.capacity, cores=cores, memory_mb=cores * 1024))
        write_atomic(path, render_config(cfg).encode())


def start_nodes(root: Path, n: int, base_port: int,
                profile_node: int | None) -> dict[int, subprocess.Popen]:
    """As ``local_grid.start``, in this process's group; one node may run under cProfile."""
    procs = {}
    for i in range(n):
        d = node_dir(root, i)
        argv = [sys.executable]
        if i == profile_node:
            argv += ["-m", "cProfile", "-o", str(d / "node.prof")]
        argv += ["-m", "node", "run", "--data-dir", str(d),
                 "--listen", f"127.0.0.1:{base_port + i}"]
        if i:
            argv += ["--bootstrap", f"127.0.0.1:{base_port}"]
        with open(d / "node.log", "ab") as logfile:
            procs[i] = subprocess.Popen(argv, stdout=logfile, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, cwd=ROOT)
    return procs


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(own CPU, CPU of its reaped children) of a process so far, in seconds."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


def machine_busy_seconds() -> float:
    """CPU seconds all processes of the machine have used (all CPUs, from /proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def node_status(root: Path, n: int) -> list[dict[str, Any]]:
    return [admin_call(node_dir(root, i) / "admin.sock", "status", timeout=10)
            for i in range(n)]


def final_count(statuses: Iterable[dict[str, Any]]) -> int:
    return sum(s["queue"].get(k, 0) for s in statuses
               for k in ("jobs_finished", "jobs_failed", "jobs_unschedulable"))


def _sum_counters(statuses: Iterable[dict[str, Any]], section: str) -> dict[str, int]:
    total: dict[str, int] = {}
    for s in statuses:
        for k, v in s.get(section, {}).items():
            if isinstance(v, int) and not isinstance(v, bool):
                total[k] = total.get(k, 0) + v
    return dict(sorted(total.items()))


async def drive(root: Path, n: int, base_port: int, procs: dict[int, subprocess.Popen],
                args: argparse.Namespace, out: dict[str, Any]) -> None:
    """Submit through node 0, wait until every job is final; the grid figures go in ``out``
    as they come (``ids`` and ``t_wall0`` first, so that a failed run can still be read)."""
    jobs, batch = args.jobs, args.batch
    ids: list[bytes] = out.setdefault("ids", [])

    def check_alive() -> None:
        dead = {i: p.returncode for i, p in procs.items() if p.poll() is not None}
        if dead:
            raise NodeDied("; ".join(how_it_ended(root, i, code)
                                     for i, code in sorted(dead.items())))

    async def check_alive_soon() -> None:
        """After a failed call: did a node die (it may take a moment to exit)?"""
        for _ in range(50):
            check_alive()
            await trio.sleep(0.1)

    async with Client.connect(f"127.0.0.1:{base_port}", user_dir=root / "user") as client:
        specs = [the_spec()] * jobs
        cpu0 = {i: cpu_seconds(p.pid) for i, p in procs.items()}
        busy0, me0 = machine_busy_seconds(), time.process_time()
        out["t_wall0"] = time.time()
        t0 = time.perf_counter()
        calls: list[float] = []
        for i in range(0, jobs, batch):
            check_alive()
            t = time.perf_counter()
            try:
                ids += await client.submit(specs[i:i + batch])
            except RpcError as exc:
                await check_alive_soon()
                raise BenchError(f"submit of jobs {i}-{i + batch - 1} failed: {exc}") from None
            calls.append(time.perf_counter() - t)
            log(f"  submitted {len(ids)}/{jobs} ({time.perf_counter() - t0:.1f} s)")
        submit_s = time.perf_counter() - t0
        if len(set(ids)) != jobs:
            raise BenchError(f"submit returned {len(set(ids))} distinct ids for {jobs} jobs")
        out["submit_seconds"] = round(submit_s, 3)
        out["submit_per_s"] = round(jobs / submit_s, 1)
        out["submit_call_p50_ms"] = round(1000 * (percentile(calls, 50) or 0.0), 1)
        out["submit_call_max_ms"] = round(1000 * max(calls), 1)

        # Wait for every job to be final: counters of every node, cheap to ask.
        deadline = time.perf_counter() + args.timeout
        last_log = 0.0
        done = 0
        while True:
            check_alive()
            try:
                statuses = await trio.to_thread.run_sync(node_status, root, n)
            except UserError as exc:
                await check_alive_soon()
                raise BenchError(f"status of a node failed: {exc}") from None
            done = final_count(statuses)
            out["final_by_counters"] = done
            for section in ("queue", "worker", "channel"):
                out[f"{section}_counters"] = _sum_counters(statuses, section)
            now = time.perf_counter()
            if done >= jobs:
                break
            if now > deadline:
                log(f"  timed out after {args.timeout:.0f} s with {done}/{jobs} jobs final")
                break
            if now - last_log >= 2.0:
                running = sum(s["worker"].get("jobs_running", 0) for s in statuses)
                queued = sum(s["queue"].get("jobs_queued", 0) for s in statuses)
                log(f"  final {done}/{jobs}, running {running}, queued {queued} "
                    f"({now - t0:.1f} s since the first submit)")
                last_log = now
            await trio.sleep(args.poll)
        out["makespan_polled_s"] = round(time.perf_counter() - t0, 3)
        out["timed_out"] = done < jobs
        cpu1 = {i: cpu_seconds(p.pid) for i, p in procs.items()}
        out["node_cpu_s"] = [round(cpu1[i][0] - cpu0[i][0], 2) for i in sorted(procs)]
        out["job_cpu_s"] = [round(cpu1[i][1] - cpu0[i][1], 2) for i in sorted(procs)]
        out["node_cpu_ms_per_job"] = round(1000 * sum(out["node_cpu_s"]) / jobs, 2)
        # What else ran on the machine meanwhile (other programs skew the figures).
        out["machine_busy_cpu_s"] = round(machine_busy_seconds() - busy0, 2)
        out["other_cpu_s"] = round(out["machine_busy_cpu_s"] - sum(out["node_cpu_s"])
                                   - sum(out["job_cpu_s"]) - (time.process_time() - me0), 2)

        # Listing every job through one node: does it fit one reply?
        t = time.perf_counter()
        try:
            listed = await client.jobs(state="finished", limit=jobs)
            out["listing"] = {"ok": True, "returned": len(listed),
                              "complete": {r.job_id for r in listed} >= set(ids),
                              "seconds": round(time.perf_counter() - t, 3)}
        except RpcError as exc:
            out["listing"] = {"ok": False, "error": f"{exc.code}: {exc}"[:300],
                              "seconds": round(time.perf_counter() - t, 3)}
    # Did answering the listing hurt a node?
    await trio.sleep(0.5)
    try:
        check_alive()
    except NodeDied as exc:
        out["listing"]["killed_node"] = str(exc)
        log(f"  the listing killed a node: {exc}")


def how_it_ended(root: Path, i: int, code: int) -> str:
    if code < 0:
        return f"node {i} was killed by {signal.Signals(-code).name}"
    return f"node {i} exited with code {code}: {last_error(root, i)}"


def last_error(root: Path, i: int) -> str:
    """The last exception in a node's log (what made it exit), with where it was raised."""
    path = node_dir(root, i) / "node.log"
    try:
        lines = [x.strip(" |+-") for x in path.read_text(errors="replace").splitlines()]
    except OSError:
        return "no log"
    for k in range(len(lines) - 1, -1, -1):
        text = lines[k]
        if ("Error" in text or "Exception" in text) and not text.startswith("File "):
            where = next((x for x in reversed(lines[:k]) if x.startswith("File ")), "")
            if where:
                file, _, rest = where[len("File "):].partition(", ")
                text += f" (at {Path(file.strip(chr(34))).name}, {rest})"
            return text[:400]
    return "no exception in its log"


def read_records(root: Path, n: int) -> dict[bytes, tuple[int, int, JobRecord]]:
    """The newest record of each job (by ballot, version) among the nodes' state files."""
    grid = GridInfo.from_bytes_untrusted((node_dir(root, 0) / "grid.info").read_bytes())
    best: dict[bytes, tuple[int, int, JobRecord]] = {}
    for i in range(n):
        path = node_dir(root, i) / "state.sqlite"
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT job_id, ballot, record FROM job_slots "
                              "WHERE record IS NOT NULL").fetchall()
        finally:
            db.close()
        for job_id, ballot, raw in rows:
            rec = JobRecord.from_wire_untrusted(unpackb_untrusted(raw, max_size=1 << 20), grid,
                                                stored=True)
            key = (ballot, rec.version)
            if job_id not in best or best[job_id][:2] < key:
                best[job_id] = (ballot, rec.version, rec)
    return best


def check_records(ids: list[bytes], jobs: int, best: dict[bytes, tuple[int, int, JobRecord]],
                  t_wall0: float, parallelism: int) -> dict[str, Any]:
    """Every job finished exactly once (attempt 1); finish times from the history.

    The makespan and the dispatch rate are given only when all ``jobs`` were
    submitted and every one is final."""
    wanted = set(ids)
    states: dict[str, int] = {}
    attempts: dict[int, int] = {}
    finishes: list[float] = []
    leases: list[float] = []
    held: list[float] = []  # from the lease to the final state: what a slot is taken for
    first_lease = math.inf
    not_final = []
    for j in ids:
        got = best.get(j)
        if got is None:
            continue
        rec = got[2]
        states[rec.state] = states.get(rec.state, 0) + 1
        attempts[rec.attempt] = attempts.get(rec.attempt, 0) + 1
        if rec.state not in FINAL:
            not_final.append(j)
        ends = [e.time for e in rec.history if e.state in FINAL]
        if ends:
            finishes.append(ends[-1])
        runs = [e.time for e in rec.history if e.state == "running"]
        if runs:
            leases.append(runs[0] - rec.history[0].time)
            if ends:
                held.append(ends[-1] - runs[-1])
                first_lease = min(first_lease, runs[0])
    missing = [j for j in ids if j not in best]
    finished_once = sum(1 for j in ids if j in best and best[j][2].state == "finished"
                        and best[j][2].attempt == 1
                        and sum(e.state == "running" for e in best[j][2].history) == 1)
    out: dict[str, Any] = {
        "states": dict(sorted(states.items())),
        "attempts": {str(k): v for k, v in sorted(attempts.items())},
        "missing": len(missing),
        "unknown": len(set(best) - wanted),
        "not_final": len(not_final),
        "finished_once": finished_once,
        "all_finished": finished_once == len(ids) == jobs and not missing,
    }
    if finishes and len(finishes) == len(ids) == jobs:
        first, last = min(finishes), max(finishes)
        out["makespan_s"] = round(last - t_wall0, 3)
        out["first_finish_s"] = round(first - t_wall0, 3)
        out["last_finish_s"] = round(last - t_wall0, 3)
        span = last - first
        out["dispatch_per_s"] = (round((len(finishes) - 1) / span, 1) if span > 0 else None)
    if leases:
        out["queue_wait_p50_s"] = _round(percentile(leases, 50))
        out["queue_wait_max_s"] = _round(max(leases))
    if held:
        out["lease_to_final_p50_ms"] = round(1000 * (percentile(held, 50) or 0.0), 1)
        out["lease_to_final_p99_ms"] = round(1000 * (percentile(held, 99) or 0.0), 1)
        if finishes and max(finishes) > first_lease:
            # How full the slots were between the first lease and the last finish.
            out["slots_busy_fraction"] = round(
                sum(held) / (parallelism * (max(finishes) - first_lease)), 3)
    return out


def grep_logs(root: Path, n: int) -> dict[str, Any]:
    """Warnings, errors and tracebacks in the node logs (counts and a few examples)."""
    counts: dict[str, int] = {}
    examples: list[str] = []
    for i in range(n):
        path = node_dir(root, i) / "node.log"
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            kind = ("traceback" if "Traceback (most recent call last)" in line else
                    "error" if "level=error" in line else
                    "warning" if "level=warning" in line else None)
            if kind is None:
                continue
            counts[kind] = counts.get(kind, 0) + 1
            if len(examples) < 10:
                examples.append(f"node-{i:02d}: {line[:300]}")
    return {"counts": counts, "examples": examples}


def print_node_profile(path: Path, label: str) -> None:
    if not path.exists():
        log(f"no profile of {label} ({path.name} missing)")
        return
    for key in ("cumulative", "tottime"):
        buf = io.StringIO()
        pstats.Stats(str(path), stream=buf).sort_stats(key).print_stats(PROFILE_LINES)
        log(f"--- profile of {label}, by {key} ---")
        log(buf.getvalue())


def run_grid(args: argparse.Namespace) -> dict[str, Any]:
    n = args.nodes
    # Unix socket paths are short: a short temporary directory.
    root = Path(tempfile.mkdtemp(prefix="gn-bq-"))
    procs: dict[int, subprocess.Popen] = {}
    out: dict[str, Any] = {"grid_error": None}
    try:
        try:
            base = free_base_port(n)
        except RuntimeError as exc:
            raise BenchError(str(exc)) from None
        log(f"[grid] preparing {n} nodes in {root} on 127.0.0.1:{base}-{base + n - 1}")
        with contextlib.redirect_stdout(sys.stderr):
            prepare(root, n, base)
        configure(root, n, args.cores_per_node, args.log_level)
        t = time.perf_counter()
        procs = start_nodes(root, n, base, args.profile_node)
        try:
            wait_converged(root, n, procs, args.converge_timeout)
        except SystemExit as exc:
            raise BenchError(f"the grid did not come up: {exc.code}") from None
        out["converge_seconds"] = round(time.perf_counter() - t, 3)
        log(f"[grid] {n} nodes see each other ({out['converge_seconds']:.1f} s); "
            f"submitting {args.jobs} jobs through node 0")
        try:
            trio.run(drive, root, n, base, procs, args, out)
        except BaseException as exc:
            found = leaves(exc)
            died = [e for e in found if isinstance(e, NodeDied)]
            if not died or any(isinstance(e, KeyboardInterrupt) for e in found):
                raise
            out["grid_error"] = str(died[0])
            log(f"[grid] FAILED: {died[0]}")
    finally:
        if procs:
            codes = terminate(procs)
            out["exit_codes"] = {str(i): p.returncode for i, p in procs.items()}
            out["exit_errors"] = {str(i): how_it_ended(root, i, p.returncode)
                                  for i, p in procs.items()
                                  if p.returncode not in (0, None)}
            log(f"[grid] stopped {len(codes)} nodes (exit codes {sorted(set(codes))})")
        try:
            if out.get("ids") and "t_wall0" in out:
                out.update(check_records(out["ids"], args.jobs, read_records(root, n),
                                         out["t_wall0"], n * args.cores_per_node))
            out["node_logs"] = grep_logs(root, n)
            if args.profile_node is not None and procs:
                print_node_profile(node_dir(root, args.profile_node) / "node.prof",
                                   f"node {args.profile_node}")
        finally:
            out.pop("ids", None)
            out.pop("t_wall0", None)
            if args.keep:
                log(f"[grid] kept {root}")
            else:
                shutil.rmtree(root, ignore_errors=True)
    return out


# -- the physical limit ------------------------------------------------------------------


async def _direct(jobs: int, parallel: int) -> float:
    limiter = trio.CapacityLimiter(parallel)

    async def one() -> None:
        async with limiter:
            await trio.run_process(["true"], stdin=subprocess.DEVNULL)

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(jobs):
            nursery.start_soon(one)
    return time.perf_counter() - t0


def run_direct(jobs: int, parallel: int) -> dict[str, Any]:
    log(f"[direct] {jobs} 'true' processes, {parallel} at a time, from this process")
    seconds = trio.run(_direct, jobs, parallel)
    log(f"[direct] {seconds:.2f} s ({jobs / seconds:.0f} jobs/s)")
    return {"direct_makespan_s": round(seconds, 3), "direct_per_s": round(jobs / seconds, 1)}


# -- claims in one process -----------------------------------------------------------------


class ClaimBench:
    """One queue node alone, its queue kept at ``size`` activated jobs of one user."""

    def __init__(self, size: int, grid: GridInfo, user: KeyPair, cert: Certificate) -> None:
        self.size = size
        self.user, self.cert = user, cert
        me = KeyPair.generate().id
        self.home = (me,)
        self.queue = solo_queue(grid, me, cores=CLAIM_CORES)
        self.spec = the_spec()
        self.offer = Offer(worker=b"\x01" * 20, site="bench", cores=CLAIM_CORES,
                           memory_mb=CLAIM_MAX_JOBS * JOB_MEMORY_MB * 4,
                           disk_mb=CLAIM_MAX_JOBS * self.spec.disk_mb * 4,
                           max_jobs=CLAIM_MAX_JOBS)
        self.signed = 0
        self.sign_s = self.create_s = 0.0
        self.rates: list[float] = []
        self.latencies: list[float] = []
        self.leased = 0

    async def top_up(self, progress: bool = False) -> None:
        """Create jobs (each signed on its own) until ``size`` are queued."""
        t_fill = last = time.perf_counter()
        while (need := self.size - len(self.queue.match)) > 0:
            count = min(FILL_BATCH, need)
            t = time.perf_counter()
            batch = [SignedJob.create(self.user, self.cert, self.spec, int(time.time()),
                                      os.urandom(8)) for _ in range(count)]
            self.sign_s += time.perf_counter() - t
            t = time.perf_counter()
            answer = await self.queue.create(batch, {j.job_id: self.home for j in batch})
            self.create_s += time.perf_counter() - t
            if any(v != "ok" for v in answer.values()):
                raise BenchError(f"QueueNode.create refused jobs: {set(answer.values())}")
            self.signed += count
            if progress and time.perf_counter() - last >= 2.0:
                last = time.perf_counter()
                log(f"  [claims] queued {len(self.queue.match)}/{self.size} "
                    f"({last - t_fill:.1f} s; signing {self.sign_s:.1f} s, "
                    f"create {self.create_s:.1f} s)")
        if len(self.queue.match) != self.size:
            raise BenchError(f"queue holds {len(self.queue.match)} activated jobs, "
                             f"wanted {self.size}")

    async def round(self, claims: int) -> None:
        leased = 0
        t0 = time.perf_counter()
        for _ in range(claims):
            t = time.perf_counter()
            got = await self.queue.claim(self.offer)
            self.latencies.append(time.perf_counter() - t)
            leased += len(got)
        seconds = time.perf_counter() - t0
        if leased != claims * CLAIM_MAX_JOBS:
            raise BenchError(f"{claims} claims leased {leased} jobs, not "
                             f"{claims * CLAIM_MAX_JOBS}")
        self.leased += leased
        self.rates.append(claims / seconds)

    def summary(self) -> dict[str, Any]:
        lat = self.latencies
        return {
            "queued": self.size, "rounds": len(self.rates), "claims": len(lat),
            "jobs_leased": self.leased,
            "claims_per_s": round(statistics.median(self.rates), 1),
            "claims_per_s_rounds": [round(r, 1) for r in self.rates],
            "claims_per_s_overall": round(len(lat) / sum(lat), 1),
            "claim_p50_us": round(1e6 * (percentile(lat, 50) or 0.0), 1),
            "claim_p99_us": round(1e6 * (percentile(lat, 99) or 0.0), 1),
            "jobs_signed": self.signed, "sign_seconds": round(self.sign_s, 2),
            "create_seconds": round(self.create_s, 2),
        }


async def _claims(sizes: list[int], claims: int, rounds: int) -> dict[str, Any]:
    now = int(time.time())
    authority = KeyPair.generate()
    grid = GridInfo.create(authority, "bench-queue", now - 60)
    user = KeyPair.generate()
    cert = Certificate.issue(authority, kind="user", subject_key=user.public_key, name="bench",
                             roles=(), not_before=now - 60, not_after=now + 86400)
    benches = [ClaimBench(size, grid, user, cert) for size in sizes]
    for b in benches:
        t = time.perf_counter()
        await b.top_up(progress=True)
        log(f"[claims] queue of {b.size} filled ({time.perf_counter() - t:.1f} s)")
    gc.collect()  # the fill's garbage is not the claims' cost
    for b in benches:  # warm-up, not timed
        await b.queue.claim(b.offer)
        await b.top_up()
    # Rounds alternate between the queues (the order flips every round), so that
    # a change in the machine's load meets both; each round starts from a full queue.
    for r in range(rounds):
        for b in benches if r % 2 == 0 else benches[::-1]:
            await b.top_up()
            await b.round(claims)
    out: dict[str, Any] = {"sizes": {}, "claims_per_round": claims, "rounds": rounds}
    for b in benches:
        out["sizes"][str(b.size)] = summary = b.summary()
        log(f"[claims] {b.size} queued: median {summary['claims_per_s']:.0f} claims/s over "
            f"{rounds} rounds of {claims}, p50 {summary['claim_p50_us']:.0f} us, "
            f"p99 {summary['claim_p99_us']:.0f} us")
    return out


def run_claims(sizes: list[int], claims: int, rounds: int) -> dict[str, Any]:
    log(f"[claims] one QueueNode per size in this process, queues of "
        f"{', '.join(map(str, sizes))} jobs, {rounds} rounds of {claims} claims of "
        f"{CLAIM_MAX_JOBS} jobs at each")
    return trio.run(_claims, sizes, claims, rounds)


# -- report -------------------------------------------------------------------------------


def _target(value: float | None, op: str, limit: float) -> dict[str, Any]:
    ok = value is not None and (value <= limit if op == "<=" else value >= limit)
    return {"value": value, "op": op, "limit": limit, "pass": ok}


def build_report(args: argparse.Namespace, grid: dict[str, Any], direct: dict[str, Any],
                 claims: dict[str, Any], wall: dict[str, float]) -> dict[str, Any]:
    sizes = claims.get("sizes", {})
    small = sizes.get(str(min(args.claim_sizes)), {})
    large = sizes.get(str(max(args.claim_sizes)), {})
    makespan = grid.get("makespan_s")
    report: dict[str, Any] = {
        "jobs": args.jobs,
        "nodes": args.nodes,
        "cores_per_node": args.cores_per_node,
        "parallelism": args.nodes * args.cores_per_node,
        "batch": args.batch,
        "submit_per_s": grid.get("submit_per_s"),
        "dispatch_per_s": grid.get("dispatch_per_s"),
        "makespan_s": makespan,
        "makespan_polled_s": grid.get("makespan_polled_s"),
        "direct_makespan_s": direct["direct_makespan_s"],
        "makespan_ratio": _ratio(makespan, direct["direct_makespan_s"]),
        "all_finished": grid.get("all_finished", False),
        "grid_error": grid.get("grid_error"),
        "finished_once": grid.get("finished_once", 0),
        "claim_sizes": sorted(args.claim_sizes),
        "claims_per_s_10k": small.get("claims_per_s"),
        "claims_per_s_200k": large.get("claims_per_s"),
        "claim_growth_ratio": _ratio(large.get("claims_per_s"), small.get("claims_per_s")),
        "grid": grid,
        "direct": direct,
        "claims": claims,
        "wall_seconds": {k: round(v, 3) for k, v in wall.items()},
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "profiled_node": args.profile_node,
        "notes": ("claims_per_s_10k/_200k are the figures at the smallest and the largest "
                  "--claim-sizes; makespan_s ends at the newest final event in the job "
                  "records; dispatch_per_s = (jobs - 1) / (last finish - first finish); "
                  "percentiles are nearest-rank"),
        "sources_sha256": SOURCES_AT_START,
    }
    if sources_sha256() != SOURCES_AT_START:
        report["sources_sha256_at_end"] = sources_sha256()  # edited while we ran
    report["targets"] = {
        "makespan_ratio": _target(report["makespan_ratio"], "<=", TARGET_MAKESPAN_RATIO),
        "claim_growth_ratio": _target(report["claim_growth_ratio"], ">=",
                                      TARGET_CLAIM_GROWTH),
    }
    return report


def _fmt(value: Any, spec: str = ".2f", suffix: str = "") -> str:
    return "n/a" if value is None else format(value, spec) + suffix


def human(report: dict[str, Any], emit: Callable[[str], None]) -> None:
    g = report["grid"]
    emit(f"queue benchmark: {report['jobs']} jobs on {report['nodes']} nodes x "
         f"{report['cores_per_node']} cores, {report['cpus']} CPUs, "
         f"load {report['load_average'][0]}")
    emit(f"  submit            {_fmt(report['submit_per_s'], '.0f', ' jobs/s')}"
         f"  ({_fmt(g.get('submit_seconds'), '.2f', ' s')} in batches of {report['batch']})")
    emit(f"  dispatch          {_fmt(report['dispatch_per_s'], '.1f', ' jobs/s')}"
         f"  (first finish {_fmt(g.get('first_finish_s'), '.2f', ' s')}, last "
         f"{_fmt(g.get('last_finish_s'), '.2f', ' s')})")
    emit(f"  makespan          {_fmt(report['makespan_s'], '.2f', ' s')}"
         f"  (poll saw it at {_fmt(report['makespan_polled_s'], '.2f', ' s')})")
    if g.get("lease_to_final_p50_ms") is not None:
        emit(f"  lease to final    p50 {g['lease_to_final_p50_ms']:.0f} ms, p99 "
             f"{g['lease_to_final_p99_ms']:.0f} ms; slots busy "
             f"{_fmt(g.get('slots_busy_fraction'), '.0%')} of the time")
    emit(f"  direct makespan   {_fmt(report['direct_makespan_s'], '.2f', ' s')}"
         f"  ({report['parallelism']} at a time)")
    emit(f"  makespan ratio    {_fmt(report['makespan_ratio'], '.2f')}")
    if report["grid_error"]:
        emit(f"  GRID FAILED: {report['grid_error']}")
    emit(f"  all finished once {report['all_finished']} ({report['finished_once']}/"
         f"{report['jobs']}; states {g.get('states')}, attempts {g.get('attempts')})")
    if g.get("node_cpu_s"):
        emit(f"  node CPU          {_fmt(g.get('node_cpu_ms_per_job'), '.2f', ' ms/job')}"
             f"  (per node {g['node_cpu_s']} s; jobs {sum(g.get('job_cpu_s', [])):.2f} s; "
             f"other programs {_fmt(g.get('other_cpu_s'), '.1f', ' s')})")
    listing = g.get("listing", {})
    if listing:
        emit("  listing via node 0: " + (
            f"{listing.get('returned')} records, complete {listing.get('complete')}"
            if listing.get("ok") else f"failed ({listing.get('error')})"))
        if listing.get("killed_node"):
            emit(f"    and it killed: {listing['killed_node']}")
    logs = g.get("node_logs", {})
    if logs.get("counts"):
        emit(f"  node logs: {logs['counts']}")
        for line in logs.get("examples", [])[:5]:
            emit(f"    {line}")
    for size, c in report["claims"].get("sizes", {}).items():
        emit(f"  claims, {int(size):>7} queued  {c['claims_per_s']:>9.0f} claims/s  "
             f"p50 {c['claim_p50_us']:.0f} us, p99 {c['claim_p99_us']:.0f} us")
    emit(f"  claim growth ratio {_fmt(report['claim_growth_ratio'], '.3f')}")
    emit(f"note: {report['notes']}")
    walls = ", ".join(f"{k} {v:.1f} s" for k, v in report["wall_seconds"].items())
    emit(f"wall time: {walls}")
    emit("targets:")
    for name, t in report["targets"].items():
        emit(f"  {'PASS' if t['pass'] else 'FAIL'}  {name} = {_fmt(t['value'], '.3f')} "
             f"(target {t['op']} {t['limit']})")


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of integers") from None
    if not sizes:
        raise argparse.ArgumentTypeError("give at least one size")
    return sizes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2000, help="jobs through the grid (2000)")
    ap.add_argument("--nodes", type=int, default=4, help="node processes (4)")
    ap.add_argument("--cores-per-node", type=int, default=2,
                    help="[capacity] cores of every node (2)")
    ap.add_argument("--batch", type=int, default=250, help="jobs per submit call (250)")
    ap.add_argument("--claim-sizes", type=_sizes, default=[10000, 200000],
                    help="queue sizes for the claim measurement (10000,200000)")
    ap.add_argument("--claims", type=int, default=100,
                    help="claims per round (100; at most smallest size / 64)")
    ap.add_argument("--claim-rounds", type=int, default=10,
                    help="timed rounds at each size, alternating; the median counts (10)")
    ap.add_argument("--poll", type=float, default=0.5, help="seconds between polls (0.5)")
    ap.add_argument("--timeout", type=float, default=600.0,
                    help="seconds to wait for every job to be final (600)")
    ap.add_argument("--converge-timeout", type=float, default=90.0,
                    help="seconds for the nodes to see each other (90)")
    ap.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                    help="the nodes' log level (info)")
    ap.add_argument("--profile-node", type=int, default=None, metavar="K",
                    help="run node K under cProfile; its top functions go to stderr")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--skip-grid", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--skip-claims", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = ap.parse_args(argv)
    if args.jobs < 2:
        ap.error("--jobs must be at least 2")
    if not 1 <= args.nodes <= 50:
        ap.error("--nodes must be 1-50")
    if not 1 <= args.cores_per_node <= 1024:
        ap.error("--cores-per-node must be 1-1024")
    if not 1 <= args.batch <= 1000:
        ap.error("--batch must be 1-1000")
    if any(s < 8 * CLAIM_MAX_JOBS for s in args.claim_sizes):
        ap.error(f"--claim-sizes must each be at least {8 * CLAIM_MAX_JOBS}")
    if args.claims < 1 or args.claim_rounds < 1:
        ap.error("--claims and --claim-rounds must be at least 1")
    if args.poll <= 0 or args.timeout <= 0:
        ap.error("--poll and --timeout must be positive")
    if args.profile_node is not None and not 0 <= args.profile_node < args.nodes:
        ap.error("--profile-node must name a node: 0 to --nodes - 1")
    args.claim_sizes = sorted(set(args.claim_sizes))
    # A round takes at most an eighth of the smallest queue.
    claims = min(args.claims, max(1, min(args.claim_sizes) // (8 * CLAIM_MAX_JOBS)))
    # SIGTERM and a closed terminal stop the run (and the nodes) the way Ctrl-C does;
    # SIGINT too when the shell started us with it ignored (in the background).
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)

    wall: dict[str, float] = {}
    started = time.perf_counter()
    try:
        grid: dict[str, Any] = {}
        if not args.skip_grid:
            grid = run_grid(args)
            wall["grid"] = time.perf_counter() - started
        t = time.perf_counter()
        direct = run_direct(args.jobs, args.nodes * args.cores_per_node)
        wall["direct"] = time.perf_counter() - t
        claim: dict[str, Any] = {}
        if not args.skip_claims:
            t = time.perf_counter()
            claim = run_claims(args.claim_sizes, claims, args.claim_rounds)
            wall["claims"] = time.perf_counter() - t
    except BaseException as exc:
        found = leaves(exc)
        if any(isinstance(e, KeyboardInterrupt) for e in found):
            log("bench_queue: interrupted; the nodes are stopped")
            return 130
        errors = [e for e in found if isinstance(e, BenchError)]
        if not errors:
            raise
        log(f"bench_queue: {errors[0]}")
        return 1
    wall["total"] = time.perf_counter() - started

    report = build_report(args, grid, direct, claim, wall)
    emit(report, args.json, human)
    return 0


if __name__ == "__main__":
    sys.exit(main())
