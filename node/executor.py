"""The local executor: runs one grid job's payload in a sandbox, within limits.

``Executor.run(spec)`` reserves the job's cores and memory, creates a fresh
sandbox ``root/<job_id>/<attempt>/``, starts ``spec.argv`` there as the
leader of a new session and process group (stdout and stderr to files in
the sandbox, stdin from /dev/null) and supervises it until it ends:

* walltime: a deadline on the supervising cancel scope; when it passes the
  job's processes get SIGTERM, then SIGKILL after ``kill_grace`` seconds;
* memory: every ``poll_interval`` the RSS of every process in the job's
  session or process group is summed from ``/proc/<pid>/stat``; over the
  limit, they all get SIGKILL at once (waiting would let them grow);
* cancellation, by ``Executor.cancel`` or of the calling task: as walltime.

When the leader has exited, whatever it left running in its session or
group is killed with SIGKILL, and ``run`` returns only once those
processes are gone and reaped: a job leaves no process and no zombie
behind. To reap the orphans itself (rather than trusting an init that may
reap late or never, as in many containers) the process that constructs an
Executor becomes a *child subreaper* (Linux ``PR_SET_CHILD_SUBREAPER``):
orphaned descendants of all its children are re-parented to it. The
executor reaps those that belonged to a job; other code in the process
that leaves orphans behind must reap them itself.

Cancellation of the calling task kills the job the same way (inside a
shielded cleanup), logs ``job.ended`` with error ``cancelled`` and then
lets ``trio.Cancelled`` propagate: a cancelled ``run`` returns nothing.
``Executor.cancel(job_id, reason)`` instead makes ``run`` return a
``RunResult`` with error ``cancelled`` (during the stage-in too: it is cancelled).

Linux only (``/proc``, pidfd, prctl). See docs/executor.md.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from .logs import log

logger = logging.getLogger("gridnode.executor")

ERRORS = ("exit_nonzero", "killed_by_signal", "walltime_exceeded", "memory_exceeded",
          "cancelled", "command_not_found", "exec_failed", "sandbox_failed", "stage_in_failed")
STREAMS = ("stdout", "stderr")

MAX_JOB_ID_LEN = 128
MAX_ATTEMPT = 9999
MAX_CORES = 1024
MAX_MEMORY_MB = 4 * 1024 * 1024  # 4 TiB
MAX_WALLTIME_S = 30 * 24 * 3600.0
MAX_ARGV_BYTES = 128 * 1024

STDERR_TAIL_LINES = 20
STDERR_TAIL_BYTES = 64 * 1024  # read at most this much from the end of stderr
FOLLOW_INTERVAL = 0.1  # seconds between looks at a growing log
FOLLOW_CHUNK = 64 * 1024
REAP_INTERVAL = 0.02  # seconds between looks while a job's processes die
REAP_TIMEOUT = 10.0  # give up on processes that ignore SIGKILL (stuck in the kernel)

PR_SET_CHILD_SUBREAPER = 36
PROC_READ = 4096  # bytes per read of a procfs file (a process's stat is far shorter)
PAGE_MB = os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)
_HEX = re.compile(r"[0-9a-f]+")


class ExecutorError(RuntimeError):
    """The executor cannot take this job now (slots taken, job already running)."""


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_job_id(job_id: object) -> str:
    if (not isinstance(job_id, str) or not 0 < len(job_id) <= MAX_JOB_ID_LEN
            or not _HEX.fullmatch(job_id)):
        raise ValueError(f"job_id must be 1-{MAX_JOB_ID_LEN} lowercase hex digits, "
                         f"got {_short(job_id)}")
    return job_id


def check_attempt(attempt: object) -> int:
    if not isinstance(attempt, int) or isinstance(attempt, bool) or not (
            0 <= attempt <= MAX_ATTEMPT):
        raise ValueError(f"attempt must be an integer from 0 to {MAX_ATTEMPT}, "
                         f"got {_short(attempt)}")
    return attempt


def _check_int(name: str, value: object, low: int, high: int, unit: str = "") -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer from {low} to {high}{unit}, "
                         f"got {_short(value)}")


@dataclass(frozen=True)
class RunSpec:
    """What to run and within which limits. Construction validates every field."""

    job_id: str  # lowercase hex; also the sandbox directory's name
    attempt: int
    argv: tuple[str, ...]
    env: dict[str, str]  # merged over PATH, HOME=<sandbox>, LANG=C.UTF-8
    cores: int
    memory_mb: int
    walltime_s: float

    def __post_init__(self) -> None:
        check_job_id(self.job_id)
        check_attempt(self.attempt)
        argv = self.argv
        if isinstance(argv, (str, bytes)) or not isinstance(argv, Sequence) or not argv:
            raise ValueError(f"argv must be a non-empty sequence of strings, got {_short(argv)}")
        if not all(isinstance(a, str) and "\0" not in a for a in argv) or not argv[0]:
            raise ValueError(f"argv must hold strings without NUL and a non-empty command, "
                             f"got {_short(argv)}")
        if sum(len(a.encode("utf-8", "surrogateescape")) + 1 for a in argv) > MAX_ARGV_BYTES:
            raise ValueError(f"argv is longer than {MAX_ARGV_BYTES} bytes")
        object.__setattr__(self, "argv", tuple(argv))
        if not isinstance(self.env, dict):
            raise ValueError(f"env must be a dict of strings, got {_short(self.env)}")
        for key, value in self.env.items():
            if not isinstance(key, str) or not key or "=" in key or "\0" in key:
                raise ValueError(f"env names must be non-empty strings without '=' or NUL, "
                                 f"got {_short(key)}")
            if not isinstance(value, str) or "\0" in value:
                raise ValueError(f"env value of {key} must be a string without NUL, "
                                 f"got {_short(value)}")
        object.__setattr__(self, "env", dict(self.env))
        _check_int("cores", self.cores, 1, MAX_CORES)
        _check_int("memory_mb", self.memory_mb, 1, MAX_MEMORY_MB, " MB")
        w = self.walltime_s
        if (not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w)
                or not 0 < w <= MAX_WALLTIME_S):
            raise ValueError(f"walltime_s must be more than 0 and at most {MAX_WALLTIME_S:g} s "
                             f"(30 days), got {_short(w)}")


class StageInError(Exception):
    """Raised by a stage-in hook: the job's inputs could not be put in its sandbox."""


class StageOutError(Exception):
    """A finished job's outputs could not be kept (no such files are fine; a full
    quota or an unreadable file is not)."""


# Puts a job's inputs into its fresh sandbox before the job starts.
StageIn = Callable[[Path], Awaitable[None]]


@dataclass(frozen=True)
class RunResult:
    """How a run ended. ``error`` is None exactly when the payload exited 0 on its own."""

    exit_code: int | None  # None when killed by a signal or never started
    signal: int | None  # the signal that ended the leader, if one did
    error: str | None  # one of ERRORS
    diagnosis: str  # one line for a human
    stderr_tail: tuple[str, ...]  # the last STDERR_TAIL_LINES lines of stderr
    started: float  # wall-clock (time.time()) start and end
    ended: float
    max_rss_mb: int  # the largest summed RSS seen by the memory poll
    sandbox: Path
    pid: int | None  # the leader's pid = the job's process group and session id


@dataclass(frozen=True, slots=True)
class _Proc:
    pid: int
    ppid: int
    state: str
    pgid: int
    sid: int
    rss_pages: int

    @property
    def dead(self) -> bool:
        return self.state in "ZXx"


def _read_proc(path: str) -> bytes:
    """A procfs file whole, with os.read: a scan reads many of them, and a file
    object per read costs more than the read itself.  procfs fills each read as
    far as the file goes, so a short read is its end. Raises OSError."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = more = os.read(fd, PROC_READ)
        while len(more) == PROC_READ:
            more = os.read(fd, PROC_READ)
            data += more
        return data
    finally:
        os.close(fd)


def _descendants(skip: frozenset[int] = frozenset()) -> list[int]:
    """This process's descendants: the children of each of its threads, recursively,
    leaving out the trees of the pids in ``skip`` (other jobs' leaders).

    A job's processes are all among them (the node started the job's leader and is
    the subreaper of whatever the job leaves behind), so this reads a few entries of
    procfs per running job instead of one per process of the machine."""
    out: list[int] = []
    stack = [os.getpid()]
    while stack:
        pid = stack.pop()
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue  # gone meanwhile
        for tid in tids:
            try:
                kids = [k for k in map(int, _read_proc(f"/proc/{pid}/task/{tid}/children")
                                       .split()) if k not in skip]
            except OSError:
                continue
            out += kids
            stack += kids
    return out


def _scan_proc(leaders: set[int], skip: frozenset[int] = frozenset()
               ) -> dict[int, list[_Proc]]:
    """The processes of each job (by leader pid): those in its process group or session
    (not looking under the leaders in ``skip``: their trees are their own jobs').

    Reads procfs, which never blocks on a disk: cheap enough for the event loop.
    """
    found: dict[int, list[_Proc]] = {pid: [] for pid in leaders}
    if not leaders:
        return found
    for pid in _descendants(skip):
        proc = _read_stat(pid)
        if proc is None:
            continue  # gone meanwhile
        key = proc.pgid if proc.pgid in leaders else proc.sid
        if key in found:
            found[key].append(proc)
    return found


def _read_stat(pid: int) -> _Proc | None:
    try:
        data = _read_proc(f"/proc/{pid}/stat")
        # "pid (comm) state ppid pgrp session ..."; comm may hold anything.
        rest = data[data.rindex(b")") + 2:].split()
        return _Proc(pid, int(rest[1]), rest[0].decode(), int(rest[2]),
                     int(rest[3]), int(rest[21]))
    except (OSError, ValueError, IndexError):
        return None


def _scan_all(leader: int) -> list[_Proc]:
    """Every process of the machine in the leader's group or session.

    The children lists that ``_descendants`` reads may miss a process that is being
    re-parented at that moment (procfs documents them as reliable only for stopped
    children), so a job is declared gone only after this slower, complete look."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            proc = _read_stat(int(name))
            if proc is not None and leader in (proc.pgid, proc.sid):
                found.append(proc)
    return found


def _become_subreaper() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
        prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
        return bool(prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _prepare(sandbox: Path) -> tuple[int, int]:
    """Create a fresh sandbox with empty logs; return the logs' write ends (stdout,
    stderr). A job that cannot start still has (empty) logs. Raises OSError."""
    if sandbox.is_symlink() or sandbox.is_file():
        sandbox.unlink()
    elif sandbox.exists():
        shutil.rmtree(sandbox)  # left over from a crash: never reuse it
    sandbox.parent.mkdir(parents=True, exist_ok=True)
    sandbox.mkdir(mode=0o700)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    out = os.open(sandbox / "stdout", flags, 0o600)
    try:
        return out, os.open(sandbox / "stderr", flags, 0o600)
    except BaseException:
        os.close(out)
        raise


def _start(argv: Sequence[str], out: int, err: int, cwd: Path, env: dict[str, str]
           ) -> subprocess.Popen[bytes]:
    """Start a job's leader in a new session (its pid is the group's and the
    session's id). Blocks until exec succeeded or failed: run it in a thread.
    Raises OSError (a missing command is exec's own error: see _exec_error)."""
    return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                            cwd=cwd, env=env, start_new_session=True)


def _prepare_and_start(sandbox: Path, argv: Sequence[str], env: dict[str, str]
                       ) -> tuple[int, int, subprocess.Popen[bytes] | OSError]:
    """``_prepare`` then ``_start``, in one trip to a thread for a job with nothing
    to stage in. Raises the sandbox's OSError; returns the start's."""
    out, err = _prepare(sandbox)
    try:
        return out, err, _start(argv, out, err, sandbox, env)
    except OSError as exc:
        return out, err, exc
    except BaseException:
        os.close(out)
        os.close(err)
        raise


class _Leader:
    """A job's main process (started by ``_start``), waited for with the executor's
    pidfd of it, or by polling where there is none."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self.pid = popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    async def wait_exited(self, pidfd: int | None) -> None:
        """Return once it has exited; not reaped where there is a pidfd."""
        if pidfd is not None:
            await trio.lowlevel.wait_readable(pidfd)
        else:
            await self.wait(None)

    async def wait(self, pidfd: int | None) -> int:
        """Wait for it to exit, reap it; its return code (-N: killed by signal N)."""
        while (code := self.popen.poll()) is None:
            if pidfd is not None:
                await trio.lowlevel.wait_readable(pidfd)
            else:
                await trio.sleep(REAP_INTERVAL)
        return code


def _read_chunk(path: Path, offset: int, size: int) -> bytes | None:
    """Up to ``size`` bytes of a local file from ``offset``; None if there is no file."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(size)
    except FileNotFoundError:
        return None


def _tail(path: Path) -> tuple[str, ...]:
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - STDERR_TAIL_BYTES))
            data = f.read()
    except OSError:
        return ()
    lines = data.decode("utf-8", "replace").splitlines()
    if size > STDERR_TAIL_BYTES and lines:
        lines = lines[1:]  # cut mid-line
    return tuple(lines[-STDERR_TAIL_LINES:])


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


@dataclass(eq=False)
class _Job:
    spec: RunSpec
    sandbox: Path
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    # Around its stage-in: a job stopped while its inputs arrive stops waiting for them.
    stage_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    ready: bool = False  # the sandbox is fresh; logs may be read
    process: _Leader | None = None
    pidfd: int | None = None
    started: float = 0.0
    error: str | None = None
    reason: str = ""
    stopping: bool = False  # a kill was decided, or the leader exited
    exited: bool = False
    max_rss_mb: int = 0
    stderr_fd: int | None = None  # our copy of the job's stderr: its size without a disk read

    def close_stderr(self) -> None:
        if self.stderr_fd is not None:
            os.close(self.stderr_fd)
            self.stderr_fd = None

    def stop(self, error: str, reason: str) -> bool:
        if self.stopping:
            return False
        self.stopping, self.error, self.reason = True, error, reason
        self.scope.cancel()
        self.stage_scope.cancel()
        return True


class Executor:
    """Runs jobs on this node: slots, sandboxes, limits, logs. See the module docstring."""

    def __init__(self, root: Path, *, cores: int, memory_mb: int, poll_interval: float = 0.2,
                 kill_grace: float = 2.0) -> None:
        _check_int("cores", cores, 1, MAX_CORES)
        _check_int("memory_mb", memory_mb, 1, MAX_MEMORY_MB, " MB")
        if not 0 < poll_interval <= 60:
            raise ValueError(f"poll_interval must be more than 0 and at most 60 s, "
                             f"got {poll_interval!r}")
        if not 0 <= kill_grace <= 600:
            raise ValueError(f"kill_grace must be from 0 to 600 s, got {kill_grace!r}")
        if not os.path.exists("/proc/self/stat"):
            raise RuntimeError("the executor needs Linux /proc to watch jobs")
        self.root = Path(root).absolute()
        self.cores = cores
        self.memory_mb = memory_mb
        self.poll_interval = poll_interval
        self.kill_grace = kill_grace
        self._jobs: dict[str, _Job] = {}
        self._cores_used = 0
        self._memory_used = 0
        self._snapshot: dict[int, list[_Proc]] = {}
        self._snapshot_at = -math.inf
        self.counters: dict[str, int] = {"started": 0, "finished": 0, "refused": 0,
                                         "ok": 0, **{e: 0 for e in ERRORS}}
        self.subreaper = _become_subreaper()
        log(logger, "executor.subreaper", logging.DEBUG if self.subreaper else logging.WARNING,
            enabled=self.subreaper,
            reason="reap the orphaned processes of jobs" if self.subreaper else
            "prctl failed: orphans of jobs are left to init to reap")

    # -- slots -------------------------------------------------------------

    def free(self) -> tuple[int, int]:
        """(cores, memory_mb) not reserved by a running job."""
        return self.cores - self._cores_used, self.memory_mb - self._memory_used

    def can_run(self, cores: int, memory_mb: int) -> bool:
        free_cores, free_memory = self.free()
        return cores <= free_cores and memory_mb <= free_memory

    def running(self) -> list[str]:
        return list(self._jobs)

    def statistics(self) -> dict[str, int]:
        free_cores, free_memory = self.free()
        return {"cores": self.cores, "cores_free": free_cores, "memory_mb": self.memory_mb,
                "memory_mb_free": free_memory, "running": len(self._jobs), **self.counters}

    # -- logs --------------------------------------------------------------

    def sandbox(self, job_id: str, attempt: int) -> Path:
        return self.root / check_job_id(job_id) / str(check_attempt(attempt))

    def log_path(self, job_id: str, attempt: int, stream: str) -> Path:
        if stream not in STREAMS:
            raise ValueError(f"stream must be 'stdout' or 'stderr', got {_short(stream)}")
        return self.sandbox(job_id, attempt) / stream

    def _live(self, job_id: str, attempt: int) -> _Job | None:
        job = self._jobs.get(job_id)
        return job if job is not None and job.spec.attempt == attempt else None

    async def follow(self, job_id: str, attempt: int, stream: str, *,
                     offset: int = 0) -> AsyncIterator[bytes]:
        """The log from ``offset`` on, in chunks as it grows, until the run has ended
        and everything is read. Raises FileNotFoundError for a log that does not
        exist and will not. Use it inside ``contextlib.aclosing``."""
        path = self.log_path(job_id, attempt, stream)
        if not isinstance(offset, int) or offset < 0:
            raise ValueError(f"offset must be a non-negative integer, got {_short(offset)}")
        while True:
            job = self._live(job_id, attempt)  # looked at before reading: no byte is missed
            if job is not None and not job.ready:
                await trio.sleep(FOLLOW_INTERVAL)  # an old sandbox may still be on disk
                continue
            chunk = _read_chunk(path, offset, FOLLOW_CHUNK)
            if chunk:
                offset += len(chunk)
                yield chunk
                continue
            if job is None:
                if chunk is None:
                    raise FileNotFoundError(f"no {stream} log for job {job_id} "
                                            f"attempt {attempt}")
                return
            await trio.sleep(FOLLOW_INTERVAL)

    # -- running -----------------------------------------------------------

    def cancel(self, job_id: str, reason: str) -> bool:
        """Kill a running job; its ``run`` returns error "cancelled". False if the job
        is not running or is already being stopped (or has just exited)."""
        job = self._jobs.get(job_id)
        if job is None or not job.stop("cancelled", reason):
            return False
        log(logger, "job.cancel", job=job_id, attempt=job.spec.attempt, reason=reason)
        return True

    async def run(self, spec: RunSpec, stage_in: StageIn | None = None) -> RunResult:
        """Run one job to its end (see the module docstring). Raises ExecutorError,
        before starting anything, if the job is already running or its cores and
        memory are not free. ``stage_in`` fills the fresh sandbox before the job
        starts; its StageInError ends the job as ``stage_in_failed``."""
        if spec.job_id in self._jobs:
            self.counters["refused"] += 1
            raise ExecutorError(f"job {spec.job_id} is already running "
                                f"(attempt {self._jobs[spec.job_id].spec.attempt})")
        if not self.can_run(spec.cores, spec.memory_mb):
            self.counters["refused"] += 1
            free_cores, free_memory = self.free()
            raise ExecutorError(
                f"job {spec.job_id} needs {spec.cores} cores and {spec.memory_mb} MB; "
                f"free: {free_cores} of {self.cores} cores, {free_memory} of "
                f"{self.memory_mb} MB")
        job = _Job(spec, self.sandbox(spec.job_id, spec.attempt))
        self._jobs[spec.job_id] = job
        self._cores_used += spec.cores
        self._memory_used += spec.memory_mb
        try:
            return await self._run(job, stage_in)
        finally:
            del self._jobs[spec.job_id]
            self._cores_used -= spec.cores
            self._memory_used -= spec.memory_mb

    def _env(self, job: _Job) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH") or os.defpath, "HOME": str(job.sandbox),
               "LANG": "C.UTF-8"}
        env.update(job.spec.env)
        env.update(GRIDNODE_JOB_ID=job.spec.job_id, GRIDNODE_ATTEMPT=str(job.spec.attempt),
                   GRIDNODE_SANDBOX=str(job.sandbox))
        return env

    async def _run(self, job: _Job, stage_in: StageIn | None) -> RunResult:
        spec = job.spec
        job.started = time.time()
        env = self._env(job)
        try:
            # Each trip to a thread wakes one (much of a short job's cost): a job with
            # nothing to stage in gets its sandbox and its start in a single trip.
            # The trips are not cancellable: a process that starts is returned and
            # supervised below (and killed there when the job was stopped meanwhile).
            started: subprocess.Popen[bytes] | OSError | None = None
            try:
                if stage_in is None:
                    out, err, started = await trio.to_thread.run_sync(
                        _prepare_and_start, job.sandbox, spec.argv, env)
                else:
                    out, err = await trio.to_thread.run_sync(_prepare, job.sandbox)
                job.stderr_fd = err
            except OSError as exc:
                return self._ended(job, "sandbox_failed", f"cannot create sandbox "
                                   f"{job.sandbox}: {exc.strerror or exc}", None, None)
            job.ready = True
            try:
                if started is None:
                    if stage_in is not None and job.error is None:
                        try:
                            with job.stage_scope:
                                await stage_in(job.sandbox)
                        except StageInError as exc:
                            return self._ended(job, "stage_in_failed", str(exc), None, None)
                    if job.error is not None:
                        return self._ended(job, job.error, f"cancelled before it started: "
                                           f"{job.reason}", None, None)
                    try:
                        started = await trio.to_thread.run_sync(
                            _start, spec.argv, out, err, job.sandbox, env)
                    except OSError as exc:
                        started = exc
                if isinstance(started, OSError):
                    raise started
                job.process = _Leader(started)
            except OSError as exc:
                return self._ended(job, *self._exec_error(job, exc), None, None)
            finally:
                os.close(out)
                if job.process is None:
                    job.close_stderr()
        except trio.Cancelled:
            self._ended(job, "cancelled", "cancelled before it started", None, None)
            raise
        # Nothing may reap the leader before this: it holds the group's id.
        try:
            job.pidfd = os.pidfd_open(job.process.pid)
        except (AttributeError, OSError):
            job.pidfd = None
        self.counters["started"] += 1
        log(logger, "job.started", job=spec.job_id, attempt=spec.attempt, pid=job.process.pid,
            cores=spec.cores, memory_mb=spec.memory_mb, walltime_s=spec.walltime_s,
            sandbox=job.sandbox,
            reason=f"slots reserved: {spec.cores} core(s), {spec.memory_mb} MB")
        try:
            await self._supervise(job)
        except BaseException as exc:  # the calling task was cancelled (or a bug)
            job.stop("cancelled", "the node cancelled the run" if isinstance(exc, trio.Cancelled)
                     else f"the executor failed: {exc!r}")
            with trio.CancelScope(shield=True):
                await self._finish(job)
            raise
        with trio.CancelScope(shield=True):
            result = await self._finish(job)
        return result

    @staticmethod
    def _exec_error(job: _Job, exc: OSError) -> tuple[str, str]:
        command = job.spec.argv[0]
        if isinstance(exc, FileNotFoundError):
            if "/" in command and (job.sandbox / command).exists():
                return "exec_failed", (f"cannot start '{command}': its interpreter "
                                       f"(the #! line) was not found")
            return "command_not_found", (f"command '{command}' not found" if "/" in command
                                         else f"command '{command}' not found in PATH")
        return "exec_failed", f"cannot start '{command}': {exc.strerror or exc}"

    async def _supervise(self, job: _Job) -> None:
        """Return when the leader has exited (not reaped) or the job must be stopped."""
        job.scope.deadline = trio.current_time() + job.spec.walltime_s
        with job.scope:
            while True:
                self._check_memory(job)
                with trio.move_on_after(self.poll_interval):
                    await self._wait_leader(job)
                    break
            job.exited = job.stopping = True
        if job.scope.cancelled_caught and job.error is None:
            job.stop("walltime_exceeded", f"walltime of {job.spec.walltime_s:g} s exceeded")

    async def _wait_leader(self, job: _Job) -> None:
        assert job.process is not None
        await job.process.wait_exited(job.pidfd)  # not reaped yet where there is a pidfd

    def _members(self, job: _Job, *, fresh: bool) -> list[_Proc]:
        assert job.process is not None
        leader = job.process.pid
        if fresh:
            others = frozenset(j.process.pid for j in self._jobs.values()
                               if j.process is not None and j.process.pid != leader)
            return _scan_proc({leader}, others)[leader]
        # One scan of /proc per poll interval serves every running job.
        now = trio.current_time()
        if now - self._snapshot_at >= self.poll_interval / 2:
            self._snapshot = _scan_proc({j.process.pid for j in self._jobs.values()
                                         if j.process is not None})
            self._snapshot_at = now
        return self._snapshot.get(leader, [])

    def _check_memory(self, job: _Job) -> None:
        members = self._members(job, fresh=False)
        self._reap_orphans(members)
        rss_mb = int(sum(p.rss_pages for p in members) * PAGE_MB)
        job.max_rss_mb = max(job.max_rss_mb, rss_mb)
        if rss_mb > job.spec.memory_mb:
            job.stop("memory_exceeded", f"used {rss_mb} MB, limit {job.spec.memory_mb} MB")

    def _reap_orphans(self, members: list[_Proc]) -> None:
        """Reap the job's dead processes that were re-parented to us (never the leader:
        its pid stays reserved, so its group id cannot be reused, until we are done)."""
        me = os.getpid()
        # A snapshot may be stale: never reap a pid that is now some job's leader.
        leaders = {j.process.pid for j in self._jobs.values() if j.process is not None}
        for p in members:
            if p.dead and p.ppid == me and p.pid not in leaders:
                try:
                    os.waitpid(p.pid, os.WNOHANG)
                except ChildProcessError:
                    pass

    def _signal(self, job: _Job, sig: int, members: list[_Proc]) -> None:
        assert job.process is not None
        pgid = job.process.pid
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        for p in members:  # those that left the group but not the session
            if p.pgid != pgid and not p.dead:
                try:
                    os.kill(p.pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass

    async def _wait_gone(self, job: _Job, *, leader_too: bool,
                         members: list[_Proc] | None = None) -> None:
        """Wait until the job's processes (but the leader, unless ``leader_too``) are
        dead, and those re-parented to us reaped. ``members``: a fresh scan to start
        from (the common case, a job whose processes are all gone, needs no other)."""
        assert job.process is not None
        me, leader = os.getpid(), job.process.pid
        checked = False
        while True:
            if members is None:
                members = self._members(job, fresh=True)
            self._reap_orphans(members)
            left = [p for p in members
                    if (p.pid != leader or leader_too)
                    and not (p.dead and (p.ppid != me or p.pid == leader))]
            if not left and not checked:
                members, checked = _scan_all(leader), True
                continue
            if not left:
                return
            await trio.sleep(REAP_INTERVAL)
            members, checked = None, False

    async def _finish(self, job: _Job) -> RunResult:
        """Kill what is left of the job, reap it, build the result. Called shielded."""
        assert job.process is not None
        spec = job.spec
        pgid = job.process.pid
        if not job.exited:
            assert job.error is not None
            sig = signal.SIGKILL if job.error == "memory_exceeded" else signal.SIGTERM
            log(logger, "job.killed", logging.WARNING, job=spec.job_id, attempt=spec.attempt,
                pgid=pgid, signal=sig.name, error=job.error, reason=job.reason)
            self._signal(job, sig, self._members(job, fresh=True))
            if sig == signal.SIGTERM:
                with trio.move_on_after(self.kill_grace):
                    await self._wait_gone(job, leader_too=True)
        members = self._members(job, fresh=True)
        alive = [p for p in members if not p.dead]
        if alive:
            if job.exited and job.error is None:
                log(logger, "job.killed", job=spec.job_id, attempt=spec.attempt, pgid=pgid,
                    signal="SIGKILL", processes=len(alive),
                    reason="processes left running after the job's main process exited")
            self._signal(job, signal.SIGKILL, members)
        with trio.move_on_after(REAP_TIMEOUT) as timeout:
            await self._wait_gone(job, leader_too=False, members=None if alive else members)
            returncode: int | None = await job.process.wait(job.pidfd)
        if timeout.cancelled_caught:
            left = [p.pid for p in self._members(job, fresh=True) if not p.dead]
            log(logger, "job.unkillable", logging.ERROR, job=spec.job_id, attempt=spec.attempt,
                pgid=pgid, pids=",".join(map(str, left)) or "-",
                reason=f"processes survived SIGKILL for {REAP_TIMEOUT:g} s "
                       f"(stuck in the kernel?); giving up on them")
            returncode = job.process.returncode
        if job.pidfd is not None:
            trio.lowlevel.notify_closing(job.pidfd)
            os.close(job.pidfd)
            job.pidfd = None
        wrote_stderr = job.stderr_fd is None or os.fstat(job.stderr_fd).st_size > 0
        job.close_stderr()
        tail = await trio.to_thread.run_sync(_tail, job.sandbox / "stderr") if wrote_stderr else ()
        exit_code = returncode if returncode is not None and returncode >= 0 else None
        sig_num = -returncode if returncode is not None and returncode < 0 else None
        error, diagnosis = job.error, ""
        if error == "cancelled":
            diagnosis = f"cancelled: {job.reason}"
        elif error == "walltime_exceeded":
            diagnosis = f"killed after walltime of {spec.walltime_s:g} s"
        elif error == "memory_exceeded":
            diagnosis = job.reason
        elif exit_code == 0:
            diagnosis = "exited with code 0"
        elif exit_code is not None:
            error = "exit_nonzero"
            last = next((line.strip() for line in reversed(tail) if line.strip()), "")
            diagnosis = f"exited with code {exit_code}" + (f": {last[:200]}" if last else "")
        elif sig_num is not None:
            error = "killed_by_signal"
            diagnosis = f"killed by {_signal_name(sig_num)} ({sig_num})"
            if sig_num == signal.SIGKILL:
                diagnosis += ", not sent by gridnode (the kernel's out-of-memory killer?)"
        else:
            error, diagnosis = "killed_by_signal", "could not be killed"
        return self._ended(job, error, diagnosis, exit_code, sig_num, tail)

    def _ended(self, job: _Job, error: str | None, diagnosis: str, exit_code: int | None,
               sig: int | None, tail: tuple[str, ...] = ()) -> RunResult:
        spec = job.spec
        pid = job.process.pid if job.process is not None else None
        result = RunResult(exit_code=exit_code, signal=sig, error=error, diagnosis=diagnosis,
                           stderr_tail=tail, started=job.started, ended=time.time(),
                           max_rss_mb=job.max_rss_mb, sandbox=job.sandbox, pid=pid)
        self.counters["finished"] += 1
        self.counters[error or "ok"] += 1
        log(logger, "job.ended", job=spec.job_id, attempt=spec.attempt, pid=pid or "-",
            error=error or "none", exit_code=exit_code, signal=sig,
            max_rss_mb=job.max_rss_mb, seconds=round(result.ended - result.started, 3),
            reason=diagnosis)
        return result
