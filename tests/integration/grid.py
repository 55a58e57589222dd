"""A grid of real node processes on loopback for the integration tests."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from node.admin import admin_call
from node.errors import UserError
from tests.conftest import cli
from tests.integration.test_local_grid import free_base_port

LEASE = 3.0


class Grid:
    """N node processes of one grid on loopback; node 0 holds the authority."""

    def __init__(self, root: Path, n: int) -> None:
        self.root, self.n = root, n
        self.base = free_base_port(n)
        self.user_dir = root / "user"
        self.procs: dict[int, subprocess.Popen] = {}
        self.ids: list[bytes] = []

    def dir(self, i: int) -> Path:
        return self.root / f"n{i}"

    def address(self, i: int) -> str:
        return f"127.0.0.1:{self.base + i}"

    def prepare(self) -> None:
        for i in range(self.n):
            d = str(self.dir(i))
            if i == 0:
                cli("init", "--data-dir", d, "--site", "site-0", "--listen", self.address(0),
                    "--user-dir", str(self.user_dir))
            else:
                cli("init", "--data-dir", d, "--grid", str(self.dir(0) / "grid.info"),
                    "--site", f"site-{i}", "--listen", self.address(i))
                cli("grid", "admit", "--data-dir", str(self.dir(0)), f"{d}/join-request",
                    "--out", f"{d}/node.cert")
                cli("cert", "install", "--data-dir", d, f"{d}/node.cert")
            config = self.dir(i) / "config.toml"
            text = config.read_text()
            text = re.sub(r"lease_duration = .*", f"lease_duration = {LEASE}", text)
            text = re.sub(r"refresh_interval = .*", "refresh_interval = 1.0", text)
            text = re.sub(r"(?m)^cores = .*", "cores = 2", text)
            config.write_text(text)

    def edit_config(self, i: int, *changes: tuple[str, str]) -> None:
        """Replace text in node i's config.toml; each old text must be there."""
        config = self.dir(i) / "config.toml"
        text = config.read_text()
        for old, new in changes:
            assert old in text, f"{old!r} not in {config}"
            text = text.replace(old, new)
        config.write_text(text)

    def start(self, i: int) -> None:
        argv = [sys.executable, "-m", "node", "run", "--data-dir", str(self.dir(i))]
        if i:
            argv += ["--bootstrap", self.address(0)]
        log = open(self.dir(i) / "node.log", "ab")  # noqa: SIM115 - handed to the child
        self.procs[i] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        log.close()

    def status(self, i: int) -> dict | None:
        try:
            return admin_call(self.dir(i) / "admin.sock", "status", timeout=5)
        except UserError:
            return None

    async def converge(self) -> None:
        with trio.fail_after(60):
            while True:
                statuses = [await trio.to_thread.run_sync(self.status, i) for i in self.procs]
                if all(s and s["peers_known"] >= len(self.procs) - 1 for s in statuses):
                    self.ids = [bytes.fromhex(s["id"]) for s in statuses]
                    return
                await trio.sleep(0.3)

    def kill(self, i: int) -> None:
        self.procs[i].send_signal(signal.SIGKILL)
        self.procs[i].wait()

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def logs(self, *, full: bool = False) -> str:
        return "\n".join((self.dir(i) / "node.log").read_text(errors="replace")[
            0 if full else -3000:] for i in self.procs)


@asynccontextmanager
async def running_grid(root: Path, n: int, configure: Callable[[Grid], None] | None = None
                       ) -> AsyncIterator[Grid]:
    """``n`` node processes (``configure`` may edit their configs before they start),
    converged; stopped at the end, their logs printed (pytest shows them when the test
    failed), and, when the test passed, checked for tracebacks: no node hit a bug."""
    g = Grid(root, n)
    g.prepare()
    if configure is not None:
        configure(g)
    for i in range(n):
        g.start(i)
    try:
        await g.converge()
        yield g
    finally:
        g.stop()
        print(g.logs(full=True))
    assert "Traceback" not in g.logs(full=True)
