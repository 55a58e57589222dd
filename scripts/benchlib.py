"""What the benchmarks share: progress on stderr, this process's CPU and peak
memory, profiles, and the report (human table, or one JSON object on stdout)."""

from __future__ import annotations

import cProfile
import json
import pstats
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def log(msg: str) -> None:
    """Progress goes to stderr, so that --json leaves stdout to the JSON."""
    print(msg, file=sys.stderr, flush=True)


def peak_rss_mb() -> float:
    """This process's peak resident set size (``ru_maxrss`` is in KiB on Linux)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if sys.platform == "darwin":
        kib //= 1024  # bytes there
    return round(kib / 1024, 1)


def cpu_seconds() -> float:
    """User and system CPU time of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def print_profile(profile: cProfile.Profile, label: str, lines: int = 30) -> None:
    log(f"-- profile: {label} (top {lines} by own time) --")
    pstats.Stats(profile, stream=sys.stderr).sort_stats("tottime").print_stats(lines)


def emit(report: dict[str, Any], as_json: bool,
         human: Callable[[dict[str, Any], Callable[[str], None]], None]) -> None:
    """The human table on stdout; with --json on stderr, and the JSON on stdout."""
    if as_json:
        human(report, log)
        print(json.dumps(report, sort_keys=True))
    else:
        human(report, print)


class ServerProcess:
    """A server subprocess of a benchmark script (``script ARGV...``): its first line (what
    it listens on), its CPU time on request (a ``cpu`` line on its stdin), its last line."""

    def __init__(self, name: str, script: str, argv: list[str],
                 stdin_line: str | None = None) -> None:
        self.name = name
        script_path = Path(script).resolve()
        self.proc = subprocess.Popen([sys.executable, str(script_path), *argv],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     cwd=script_path.parents[1])
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._stdin, self._stdout = self.proc.stdin, self.proc.stdout
        if stdin_line is not None:
            self._stdin.write(stdin_line + "\n")
            self._stdin.flush()
        self.hello: dict[str, Any] = json.loads(self._readline("listened"))
        self.last: dict[str, Any] = {}

    def _readline(self, what: str) -> str:
        line = self._stdout.readline()
        if not line:
            self.kill()
            raise RuntimeError(f"the {self.name} exited ({self.proc.returncode}) before it "
                               f"{what}; its stderr says why")
        return line

    def cpu_seconds(self) -> float:
        """Its CPU time so far (blocks: call it from a thread)."""
        self._stdin.write("cpu\n")
        self._stdin.flush()
        return float(json.loads(self._readline("said its CPU time"))["cpu_s"])

    def stop(self) -> dict[str, Any]:
        """Close its stdin; its last line (peak RSS...), {} if it did not say in 30 s."""
        try:
            out, _ = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
            return {}
        lines = out.splitlines()
        self.last = json.loads(lines[-1]) if lines else {}
        return self.last

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
