"""The local grid launcher with real node processes on loopback."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "local_grid.py"


def _load_script() -> Any:
    spec = importlib.util.spec_from_file_location("local_grid", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


free_base_port = _load_script().free_base_port

pytestmark = pytest.mark.slow


def gridnode(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "node", *args], capture_output=True,
                          text=True, timeout=60)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_detach_list_survive_a_kill_and_stop(short_tmp):
    n = 4
    base = free_base_port(n)
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--dir", str(short_tmp), "--nodes", str(n),
         "--base-port", str(base), "--detach", "--json"],
        capture_output=True, text=True, timeout=120)
    try:
        assert out.returncode == 0, out.stderr
        pids = {int(k): v for k, v in json.loads((short_tmp / "pids.json").read_text()).items()}
        rows = json.loads(out.stdout)
        assert "all 4 nodes see each other" in out.stderr
        ids = {r["id"] for r in rows}
        assert len(ids) == n and all(r["up"] and r["peers"] == n - 1 for r in rows)
        listed = gridnode("peers", "--json", "--data-dir", str(short_tmp / "node-02"))
        assert listed.returncode == 0, listed.stderr
        peers = json.loads(listed.stdout)
        assert {p["id"] for p in peers} == ids - {rows[2]["id"]}
        assert {p["site"] for p in peers} == {"site-00", "site-01", "site-03"}
        # The admin user pinged every node through node 0 over the secure channel.
        assert all(r["ping_ms"] is not None for r in rows), rows
        user = ["--user-dir", str(short_tmp / "user")]
        via2 = ["--via", f"127.0.0.1:{base + 2}"]
        who = gridnode("whoami", "--json", *user, *via2)
        assert who.returncode == 0, who.stderr
        assert json.loads(who.stdout)["access"] == ["member", "user", "admin"]
        ping = gridnode("ping", "--json", *user, *via2, rows[1]["id"])
        assert ping.returncode == 0 and json.loads(ping.stdout)["id"] == rows[1]["id"]
        # One node dies hard; the others keep serving, and asking for it through
        # another node is a typed, one-line error, not a hang.
        os.kill(pids[1], signal.SIGKILL)
        for i in (0, 2, 3):
            status = gridnode("status", "--json", "--data-dir", str(short_tmp / f"node-{i:02d}"))
            assert status.returncode == 0, status.stderr
            assert json.loads(status.stdout)["peers_known"] == n - 1
        gone = gridnode("ping", *user, *via2, rows[1]["id"])
        assert gone.returncode == 1 and "did not answer" in gone.stderr, gone.stderr
        assert gone.stderr.count("\n") == 1 and "Traceback" not in gone.stderr
        remote = gridnode("status", "--json", *user, "--via", f"127.0.0.1:{base + 3}")
        assert json.loads(remote.stdout)["channel"]["handshakes_ok"] >= 1
    finally:
        stop = subprocess.run([sys.executable, str(SCRIPT), "--dir", str(short_tmp), "--stop"],
                              capture_output=True, text=True, timeout=60)
    assert stop.returncode == 0, stop.stderr
    assert "stopped 4 nodes" in stop.stderr
    assert not any(alive(p) for p in pids.values())
    assert not (short_tmp / "pids.json").exists()


def test_ctrl_c_stops_every_node(short_tmp):
    base = free_base_port(3)
    with subprocess.Popen(
        [sys.executable, str(SCRIPT), "--dir", str(short_tmp), "--nodes", "3",
         "--base-port", str(base)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    ) as proc:
        try:
            lines = []
            for line in proc.stderr:
                lines.append(line)
                if "grid running" in line:
                    break
            assert any("all 3 nodes see each other" in x for x in lines), "".join(lines)
        finally:
            proc.send_signal(signal.SIGINT)  # also what stops the grid if the test failed
            rest = proc.stderr.read()
        assert proc.wait(timeout=60) == 0
    assert "stopped 3 nodes (exit codes [0])" in rest
    for i in range(3):
        assert not (short_tmp / f"node-{i:02d}" / "admin.sock").exists()


def test_client_of_a_node_killed_under_it_gets_unavailable(short_tmp):
    import trio

    from node.client import Client
    from overlay import Unavailable

    d = short_tmp / "n"
    base = free_base_port(1)
    assert gridnode("init", "--data-dir", str(d), "--listen", f"127.0.0.1:{base}",
                    "--user-dir", str(short_tmp / "u")).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "node", "run", "--data-dir", str(d)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async def main() -> None:
            with trio.fail_after(30):
                while not (d / "admin.sock").exists():  # noqa: ASYNC110 - another process
                    await trio.sleep(0.05)
            async with Client.connect(f"127.0.0.1:{base}", user_dir=short_tmp / "u") as client:
                assert (await client.status())["pid"] == proc.pid
                async with trio.open_nursery() as nursery:
                    async def pings() -> None:
                        with trio.fail_after(10), pytest.raises(Unavailable):
                            while True:
                                await client.ping()
                    nursery.start_soon(pings)
                    await trio.sleep(0.2)
                    os.kill(proc.pid, signal.SIGKILL)  # mid-call: pings never stop

        trio.run(main)
    finally:
        proc.kill()
        proc.wait()
