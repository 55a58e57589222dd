#!/usr/bin/env python3
"""Start a local grid: N gridnode processes of one grid on loopback.

    python scripts/local_grid.py --nodes 5            # run until Ctrl-C
    python scripts/local_grid.py --nodes 5 --detach   # leave it running
    python scripts/local_grid.py --stop               # stop a detached grid

Node 0 holds the grid authority; every other node is initialised with the
grid's info, admitted by node 0's authority and bootstrapped from node 0.
Each node has its own data dir (DIR/node-NN) and port (BASE_PORT + N).
A data dir that exists is reused, so a second start rejoins the same grid.
The grid's admin user is kept in DIR/user; once the nodes see each other it
pings every node through node 0 over the secure channel, then runs a task
of --jobs small jobs through node 0 and shows where they ran.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from node.admin import admin_call
from node.cli import main as gridnode
from node.errors import UserError


def log(msg: str) -> None:
    """Progress goes to stderr, so that --json leaves stdout to the JSON."""
    print(msg, file=sys.stderr, flush=True)


def free_base_port(n: int) -> int:
    """A base port with ``n`` free UDP and TCP ports after it (node i listens on base + i);
    RuntimeError when 100 random tries found none."""
    for _ in range(100):
        base = random.randrange(20000, 60000 - n)
        socks = []
        try:
            for i in range(n):
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    s = socket.socket(socket.AF_INET, kind)
                    socks.append(s)
                    s.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no range of {n} free ports found on 127.0.0.1")


def node_dir(root: Path, i: int) -> Path:
    return root / f"node-{i:02d}"


def prepare(root: Path, n: int, base_port: int) -> None:
    """Initialise and admit every node that does not exist yet."""
    authority = node_dir(root, 0)
    for i in range(n):
        d = node_dir(root, i)
        if (d / "node.cert").exists():
            continue
        listen = f"127.0.0.1:{base_port + i}"
        site = f"site-{i:02d}"
        if i == 0:
            # The grid's admin user lives beside the nodes, not in the real user dir.
            steps = [["init", "--data-dir", str(d), "--name", "local-grid", "--site", site,
                      "--listen", listen, "--user-dir", str(root / "user")]]
        else:
            steps = [
                ["init", "--data-dir", str(d), "--grid", str(authority / "grid.info"),
                 "--site", site, "--listen", listen],
                ["grid", "admit", "--data-dir", str(authority), str(d / "join-request"),
                 "--out", str(d / "node.cert")],
                ["cert", "install", "--data-dir", str(d), str(d / "node.cert")],
            ]
        for argv in steps:
            with contextlib.redirect_stdout(io.StringIO()):
                code = gridnode(argv)
            if code != 0:
                raise SystemExit(f"local_grid: 'gridnode {' '.join(argv)}' failed")
        log(f"  {d.name}: {site}, listening on {listen}"
            + (" (grid authority)" if i == 0 else ", admitted by node-00"))


def start(root: Path, n: int, base_port: int, detach: bool) -> dict[int, subprocess.Popen]:
    procs = {}
    for i in range(n):
        d = node_dir(root, i)
        argv = [sys.executable, "-m", "node", "run", "--data-dir", str(d),
                "--listen", f"127.0.0.1:{base_port + i}"]
        if i:
            argv += ["--bootstrap", f"127.0.0.1:{base_port}"]
        logfile = open(d / "node.log", "ab")  # noqa: SIM115 - handed to the child
        procs[i] = subprocess.Popen(argv, stdout=logfile, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=detach)
        logfile.close()
    return procs


def snapshot(root: Path, n: int) -> list[dict]:
    rows = []
    for i in range(n):
        d = node_dir(root, i)
        try:
            status = admin_call(d / "admin.sock", "status", timeout=5)
            peers = admin_call(d / "admin.sock", "peers", timeout=5)
        except UserError as exc:
            rows.append({"node": i, "up": False, "error": str(exc)})
            continue
        rows.append({"node": i, "up": True, "id": status["id"], "site": status["site"],
                     "addresses": status["addresses"], "peers": len(peers),
                     "peer_ids": sorted(p["id"] for p in peers),
                     "records_held": status["dht"]["records_held"],
                     "uptime": status["uptime"]})
    return rows


def ping_all(root: Path, rows: list[dict]) -> None:
    """As the grid's admin user, ping every node through node 0 over the secure channel."""
    import trio

    from node.client import Client
    from overlay import RpcError

    async def run() -> None:
        async with Client.connect(rows[0]["addresses"][0], user_dir=root / "user") as client:
            for r in rows:
                try:
                    pong = await client.ping(bytes.fromhex(r["id"]))
                    r["ping_ms"] = round(pong["total_ms"], 2)
                except RpcError as exc:
                    r["ping_ms"] = None
                    r["ping_error"] = str(exc)

    try:
        trio.run(run)
    except Exception as exc:  # reported, not fatal: the table still shows the grid
        log(f"ping through node-00 failed: {exc}")
        return
    log("admin user -> node-00 -> every node, over the secure channel: " + ", ".join(
        f"node-{r['node']:02d} {r['ping_ms']} ms" if r.get("ping_ms") is not None
        else f"node-{r['node']:02d} failed ({r.get('ping_error')})" for r in rows))


def run_jobs(root: Path, rows: list[dict], count: int) -> None:
    """As the admin user, put a small dataset through node 0, submit ``count`` small jobs
    that read it, follow them, and show where they ran and who holds the dataset."""
    import collections

    import trio

    from node.client import Client
    from overlay import RpcError
    from steering import FINAL, JobSpec

    sites = {bytes.fromhex(r["id"]): r["site"] for r in rows}

    async def run() -> None:
        async with Client.connect(rows[0]["addresses"][0], user_dir=root / "user") as client:
            task = os.urandom(20).hex()
            src = root / "demo-data"
            src.mkdir(exist_ok=True)
            (src / "lines.txt").write_text("".join(f"line {i}\n" for i in range(1000)))
            data = await client.put(f"demo-{task[:8]}", [src / "lines.txt"], close=True)
            log(f"put dataset {data.name} ({data.size} bytes) through node-00")
            lines = f"inputs/{data.name.scope}/{data.name.name}/lines.txt"
            spec = {"argv": ["sh", "-c", f"echo job {{index}} read $(wc -l < {lines}) lines "
                             f"of {data.name}; sleep 0.5"],
                    "memory_mb": 64, "name": "demo", "inputs": [str(data.name)]}
            specs = [JobSpec.from_mapping({**spec, "task_id": task, "index": i,
                                           "argv": [a.replace("{index}", str(i))
                                                    for a in spec["argv"]]})
                     for i in range(count)]
            ids = await client.submit(specs)
            log(f"submitted {len(ids)} jobs (task {task[:12]}) through node-00")
            last = None
            while True:
                records = await client.jobs(task=task, limit=count)
                states = collections.Counter(r.state for r in records)
                summary = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
                if summary != last:
                    log(f"  jobs: {summary}")
                    last = summary
                if len(records) == count and all(r.state in FINAL for r in records):
                    break
                await trio.sleep(0.5)
            ran = collections.Counter(sites.get(r.history[-1].node, "?") for r in records)
            log("  ran on: " + ", ".join(f"{s} {n}" for s, n in sorted(ran.items())))
            held = (await client.replicas(str(data.name)))["holders"]
            log(f"  {data.name} is held by: " + ", ".join(sorted(h["site"] for h in held)))

    try:
        trio.run(run)
    except (RpcError, OSError) as exc:
        log(f"jobs through node-00 failed: {exc}")


def converged(rows: list[dict], n: int) -> bool:
    ids = {r["id"] for r in rows if r["up"]}
    return len(ids) == n and all(ids - {r["id"]} <= set(r["peer_ids"]) for r in rows)


def print_table(rows: list[dict]) -> None:
    log(f"{'NODE':<5} {'ID':<16} {'SITE':<9} {'ADDRESS':<16} {'PEERS':>5} {'RECORDS':>7}")
    for r in rows:
        if not r["up"]:
            log(f"{r['node']:<5} down: {r['error']}")
            continue
        log(f"{r['node']:<5} {r['id'][:16]:<16} {r['site']:<9} {','.join(r['addresses']):<16} "
            f"{r['peers']:>5} {r['records_held']:>7}")


def wait_converged(root: Path, n: int, procs: dict[int, subprocess.Popen],
                   timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    last = None
    while True:
        dead = {i: p.returncode for i, p in procs.items() if p.poll() is not None}
        if dead:
            for i in dead:
                tail = (node_dir(root, i) / "node.log").read_text().strip().splitlines()[-3:]
                log(f"node {i} exited with code {dead[i]}:\n  " + "\n  ".join(tail))
            raise SystemExit(1)
        rows = snapshot(root, n)
        seen = sum(1 for r in rows if r["up"] and r["peers"] >= n - 1)
        if seen != last:
            log(f"... {seen}/{n} nodes see all {n - 1} others")
            last = seen
        if converged(rows, n):
            return rows
        if time.monotonic() > deadline:
            print_table(rows)
            raise SystemExit(f"local_grid: nodes did not all see each other in {timeout:.0f} s")
        time.sleep(0.5)


def watch(root: Path, n: int, procs: dict[int, subprocess.Popen]) -> None:
    """Report every change in who sees whom until a node process exits."""
    last = None
    while all(p.poll() is None for p in procs.values()):
        rows = snapshot(root, n)
        summary = [(r["node"], r["up"], r.get("peers"), r.get("records_held")) for r in rows]
        if last is not None and summary != last:
            log(time.strftime("%H:%M:%S ") + "  ".join(
                f"node-{i:02d}: {peers} peers, {held} records" if up else f"node-{i:02d}: down"
                for i, up, peers, held in summary))
        last = summary
        time.sleep(2)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def stop(root: Path) -> int:
    pidfile = root / "pids.json"
    if not pidfile.exists():
        print(f"local_grid: no detached grid in {root} ({pidfile} missing)", file=sys.stderr)
        return 1
    pids = json.loads(pidfile.read_text())
    for pid in pids.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    alive = set(pids.values())
    while alive and time.monotonic() < deadline:
        for pid in list(alive):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                alive.discard(pid)
        time.sleep(0.1)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    pidfile.unlink()
    log(f"stopped {len(pids)} nodes" + (f" ({len(alive)} had to be killed)" if alive else ""))
    return 0


def terminate(procs: dict[int, subprocess.Popen]) -> list[int]:
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    codes = []
    for p in procs.values():
        try:
            codes.append(p.wait(timeout=15))
        except subprocess.TimeoutExpired:
            p.kill()
            codes.append(p.wait())
    return codes


def console_link(root: Path) -> None:
    """Node 0's admin console: where a site admin would look."""
    d = root / "node-00"
    try:
        url = admin_call(d / "admin.sock", "status", timeout=5)["console"]["url"]
        token = (d / "console.token").read_text().strip()
    except (UserError, OSError, KeyError, TypeError):
        log("node 0's console is not serving (see grid/node-00/node.log)")
        return
    log(f"node 0's admin console: {url}/login?token={token}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path("grid"), help="where the data dirs live")
    ap.add_argument("--nodes", type=int, default=5, help="how many nodes (default 5)")
    ap.add_argument("--base-port", type=int, default=7400, help="port of node 0 (default 7400)")
    ap.add_argument("--timeout", type=float, default=90, help="seconds to wait for convergence")
    ap.add_argument("--detach", action="store_true", help="leave the grid running and exit")
    ap.add_argument("--stop", action="store_true", help="stop a detached grid in --dir")
    ap.add_argument("--json", action="store_true", help="print the final table as JSON")
    ap.add_argument("--jobs", type=int, default=20,
                    help="demo jobs to run once the grid is up (default 20; 0: none)")
    args = ap.parse_args()
    # SIGTERM and a closed terminal stop the grid the way Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    root = args.dir.resolve()
    if args.stop:
        return stop(root)
    if not 1 <= args.nodes <= 200:
        ap.error("--nodes must be 1-200")
    if not 0 <= args.jobs <= 10000:
        ap.error("--jobs must be 0-10000")
    if (root / "pids.json").exists():
        ap.error(f"a detached grid is running in {root}; stop it with --stop first")
    root.mkdir(parents=True, exist_ok=True)
    log(f"preparing {args.nodes} nodes in {root}")
    prepare(root, args.nodes, args.base_port)
    procs = start(root, args.nodes, args.base_port, args.detach)
    last_port = args.base_port + args.nodes - 1
    log(f"started {args.nodes} nodes on 127.0.0.1:{args.base_port}-{last_port}")
    try:
        rows = wait_converged(root, args.nodes, procs, args.timeout)
        ping_all(root, rows)
        if args.jobs:
            run_jobs(root, rows, args.jobs)
        log(f"all {args.nodes} nodes see each other:")
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            print_table(rows)
        if args.detach:
            console_link(root)
            (root / "pids.json").write_text(json.dumps({str(i): p.pid for i, p in procs.items()}))
            log(f"detached; stop with: python scripts/local_grid.py --dir {args.dir} --stop")
            return 0
        console_link(root)
        log("grid running; Ctrl-C stops it")
        watch(root, args.nodes, procs)
        log("a node exited; stopping the others")
        return 1
    except KeyboardInterrupt:
        log("stopping")
        return 0
    finally:
        if not (args.detach and (root / "pids.json").exists()):
            codes = terminate(procs)
            log(f"stopped {len(codes)} nodes (exit codes {sorted(set(codes))})")


if __name__ == "__main__":
    sys.exit(main())
