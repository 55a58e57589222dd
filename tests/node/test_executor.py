"""The executor with real processes: sandboxes, exits, signals, limits, kills, logs, slots."""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
from contextlib import aclosing
from pathlib import Path

import pytest
import trio

from node.executor import Executor, ExecutorError, RunResult, RunSpec, StageInError

JOB = "ab12"
PY = sys.executable


def spec(*argv: str, job_id: str = JOB, attempt: int = 1, env: dict[str, str] | None = None,
         cores: int = 1, memory_mb: int = 512, walltime_s: float = 20.0) -> RunSpec:
    return RunSpec(job_id=job_id, attempt=attempt, argv=argv, env=env or {}, cores=cores,
                   memory_mb=memory_mb, walltime_s=walltime_s)


def sh(script: str, **kw: object) -> RunSpec:
    return spec("sh", "-c", script, **kw)  # type: ignore[arg-type]


@pytest.fixture
def ex(tmp_path: Path) -> Executor:
    return Executor(tmp_path / "jobs", cores=4, memory_mb=2048, poll_interval=0.05,
                    kill_grace=1.0)


class Launched:
    result: RunResult | None = None


async def launch(nursery: trio.Nursery, ex: Executor, s: RunSpec) -> Launched:
    """Start ``ex.run(s)`` in the nursery; on return its slots are reserved."""
    box = Launched()

    async def go(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        box.result = await ex.run(s)

    await nursery.start(go)
    return box


async def first_line(ex: Executor, job_id: str = JOB, attempt: int = 1) -> str:
    data = b""
    async with aclosing(ex.follow(job_id, attempt, "stdout")) as chunks:
        async for chunk in chunks:
            data += chunk
            if b"\n" in data:
                return data.split(b"\n", 1)[0].decode()
    raise AssertionError(f"the job ended before printing a line: {data!r}")


def assert_group_gone(pgid: int | None) -> None:
    assert pgid is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)


def assert_gone(pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def zombie_children() -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                rest = Path(f"/proc/{name}/stat").read_bytes().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if rest[0] == b"Z" and int(rest[1]) == os.getpid():
                found.append(int(name))
    return found


async def test_exit_0_outputs_in_the_sandbox_and_env_visible(ex, tmp_path):
    stale = tmp_path / "jobs" / JOB / "1"
    stale.mkdir(parents=True)
    (stale / "left-by-a-crash").write_text("old")
    script = ('echo "$GRIDNODE_JOB_ID|$GRIDNODE_ATTEMPT|$GRIDNODE_SANDBOX|$HOME|$LANG|$FOO";'
              'pwd; echo result > out.txt; echo to stderr >&2; read x || echo stdin-empty')
    r = await ex.run(sh(script, env={"FOO": "bar", "GRIDNODE_JOB_ID": "evil"}))
    sandbox = (tmp_path / "jobs" / JOB / "1").absolute()
    assert (r.error, r.exit_code, r.signal, r.diagnosis) == (None, 0, None, "exited with code 0")
    assert r.sandbox == sandbox and r.pid is not None and r.started <= r.ended
    assert (sandbox / "stdout").read_text().splitlines() == [
        f"{JOB}|1|{sandbox}|{sandbox}|C.UTF-8|bar", str(sandbox), "stdin-empty"]
    assert (sandbox / "out.txt").read_text() == "result\n"
    assert not (sandbox / "left-by-a-crash").exists()
    assert r.stderr_tail == ("to stderr",)
    assert ex.log_path(JOB, 1, "stderr") == sandbox / "stderr"
    assert ex.running() == [] and ex.free() == (4, 2048)
    stats = ex.statistics()
    assert (stats["started"], stats["finished"], stats["ok"]) == (1, 1, 1)


async def test_nonzero_exit_keeps_the_stderr_tail(ex):
    r = await ex.run(sh("for i in $(seq 0 29); do echo line $i >&2; done; exit 3"))
    assert (r.error, r.exit_code, r.signal) == ("exit_nonzero", 3, None)
    assert r.stderr_tail == tuple(f"line {i}" for i in range(10, 30))
    assert r.diagnosis == "exited with code 3: line 29"
    assert ex.statistics()["exit_nonzero"] == 1


async def test_killed_by_a_signal(ex):
    r = await ex.run(sh("kill -USR1 $$"))
    assert (r.error, r.exit_code, r.signal) == ("killed_by_signal", None, signal.SIGUSR1)
    assert r.diagnosis == f"killed by SIGUSR1 ({int(signal.SIGUSR1)})"


async def test_command_not_found(ex, tmp_path):
    r = await ex.run(spec("no-such-command-for-gridnode"))
    assert r.error == "command_not_found" and r.pid is None and r.exit_code is None
    assert r.diagnosis == "command 'no-such-command-for-gridnode' not found in PATH"
    r = await ex.run(spec("./not-in-the-sandbox", attempt=2))
    assert (r.error, r.diagnosis) == ("command_not_found", "command './not-in-the-sandbox' "
                                                           "not found")
    r = await ex.run(spec("true", env={"PATH": str(tmp_path / "empty")}, attempt=3))
    assert r.error == "command_not_found"
    # The logs exist (empty), so following them just ends.
    assert ex.log_path(JOB, 3, "stdout").read_bytes() == b""
    assert ex.running() == [] and ex.free() == (4, 2048)


async def test_exec_failures(ex, tmp_path):
    plain = tmp_path / "not-executable"
    plain.write_text("echo hi\n")
    r = await ex.run(spec(str(plain)))
    assert r.error == "exec_failed"
    assert r.diagnosis == f"cannot start '{plain}': Permission denied"
    script = tmp_path / "bad-interpreter"
    script.write_text("#!/no/such/interpreter\n")
    script.chmod(0o755)
    r = await ex.run(spec(str(script), attempt=2))
    assert r.error == "exec_failed" and "interpreter" in r.diagnosis


async def test_walltime_kills_the_group(ex, caplog):
    caplog.set_level(logging.INFO, logger="gridnode.executor")
    r = await ex.run(spec("sleep", "30", walltime_s=0.5))
    assert (r.error, r.signal) == ("walltime_exceeded", signal.SIGTERM)
    assert r.diagnosis == "killed after walltime of 0.5 s"
    assert r.ended - r.started < 10
    assert_group_gone(r.pid)
    events = {rec.msg: rec.fields for rec in caplog.records}  # type: ignore[attr-defined]
    assert events["job.killed"]["signal"] == "SIGTERM"
    assert events["job.killed"]["reason"] == "walltime of 0.5 s exceeded"
    assert events["job.ended"]["error"] == "walltime_exceeded"
    assert events["job.ended"]["reason"] == r.diagnosis


async def test_walltime_escalates_to_sigkill(tmp_path):
    ex = Executor(tmp_path, cores=1, memory_mb=512, poll_interval=0.05, kill_grace=0.3)
    # Ignored signals stay ignored across exec: the sleep ignores SIGTERM too.
    r = await ex.run(sh("trap '' TERM; sleep 30 & sleep 30; wait", walltime_s=0.3))
    assert (r.error, r.signal) == ("walltime_exceeded", signal.SIGKILL)
    assert r.ended - r.started < 10
    assert_group_gone(r.pid)


async def test_memory_limit_counts_every_process_of_the_job(ex):
    alloc = "import time; b = b'x' * (150 << 20); time.sleep(30)"
    # Each child stays under the limit; together they do not.
    r = await ex.run(sh(f"'{PY}' -c \"{alloc}\" & '{PY}' -c \"{alloc}\" & wait",
                        memory_mb=200))
    assert (r.error, r.signal) == ("memory_exceeded", signal.SIGKILL)
    assert re.fullmatch(r"used \d+ MB, limit 200 MB", r.diagnosis), r.diagnosis
    assert r.max_rss_mb > 200
    assert r.ended - r.started < 10
    assert_group_gone(r.pid)


async def test_cancel_kills_the_group_with_its_background_grandchild(ex):
    async with trio.open_nursery() as nursery:
        box = await launch(nursery, ex, sh("sleep 30 & echo $$ $!; wait"))
        pgid, grandchild = map(int, (await first_line(ex)).split())
        assert ex.cancel(JOB, "the user killed it")
    r = box.result
    assert r is not None and (r.error, r.pid) == ("cancelled", pgid)
    assert r.diagnosis == "cancelled: the user killed it"
    assert_group_gone(pgid)
    assert_gone(grandchild)
    assert not ex.cancel(JOB, "again")
    assert zombie_children() == []


async def test_processes_left_behind_are_killed_when_the_job_exits(ex):
    r = await ex.run(sh("sleep 30 & echo $!"))
    assert (r.error, r.exit_code) == (None, 0)
    assert r.ended - r.started < 10
    assert_gone(int(ex.log_path(JOB, 1, "stdout").read_text()))
    assert_group_gone(r.pid)
    assert zombie_children() == []


async def test_slot_accounting(tmp_path):
    ex = Executor(tmp_path, cores=4, memory_mb=1000, poll_interval=0.05)
    assert ex.can_run(4, 1000) and not ex.can_run(5, 1) and not ex.can_run(1, 1001)
    async with trio.open_nursery() as nursery:
        await launch(nursery, ex, spec("sleep", "30", cores=3, memory_mb=600))
        assert ex.running() == [JOB] and ex.free() == (1, 400)
        assert not ex.can_run(2, 100) and ex.can_run(1, 400) and not ex.can_run(1, 401)
        with pytest.raises(ExecutorError, match=r"needs 2 cores and 100 MB; free: 1 of 4 cores"):
            await ex.run(spec("true", job_id="cd34", cores=2, memory_mb=100))
        with pytest.raises(ExecutorError, match="already running"):
            await ex.run(spec("true", attempt=2))
        assert ex.cancel(JOB, "test over")
    assert ex.running() == [] and ex.free() == (4, 1000) and ex.can_run(2, 100)
    stats = ex.statistics()
    assert (stats["refused"], stats["cancelled"], stats["cores_free"]) == (2, 1, 4)


async def test_follow_streams_a_growing_log(ex):
    async with trio.open_nursery() as nursery:
        # The job waits for the test to have seen its first line.
        box = await launch(nursery, ex, sh(
            "echo 0; while [ ! -e go ]; do sleep 0.02; done; echo 1; echo 2 >&2; echo 3"))
        seen = b""
        async with aclosing(ex.follow(JOB, 1, "stdout")) as chunks:
            async for chunk in chunks:
                if not seen:
                    assert chunk == b"0\n" and ex.running() == [JOB]
                    (ex.log_path(JOB, 1, "stdout").parent / "go").touch()
                seen += chunk
        assert box.result is not None and box.result.error is None
    assert seen == b"0\n1\n3\n"
    rest = [c async for c in ex.follow(JOB, 1, "stdout", offset=2)]
    assert b"".join(rest) == b"1\n3\n"
    assert [c async for c in ex.follow(JOB, 1, "stderr")] == [b"2\n"]
    with pytest.raises(FileNotFoundError, match="no stdout log for job ffff attempt 1"):
        [c async for c in ex.follow("ffff", 1, "stdout")]
    with pytest.raises(ValueError, match="stream"):
        ex.log_path(JOB, 1, "stdin")


async def test_cancelling_the_caller_leaves_no_process(ex):
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            box = await launch(nursery, ex, sh("sleep 30 & echo $$ $!; wait"))
            pgid, grandchild = map(int, (await first_line(ex)).split())
            scope.cancel()
    assert box.result is None  # run() raised Cancelled
    assert_group_gone(pgid)
    assert_gone(grandchild)
    assert ex.running() == [] and ex.free() == (4, 2048)
    assert ex.statistics()["cancelled"] == 1
    assert zombie_children() == []


async def test_no_file_descriptor_leaks(ex):
    await ex.run(spec("true", attempt=0))  # trio's thread pool and the like settle in
    before = len(os.listdir("/proc/self/fd"))
    await ex.run(spec("true", attempt=1))
    await ex.run(spec("no-such-command-for-gridnode", attempt=2))
    await ex.run(spec("sleep", "30", attempt=3, walltime_s=0.1))
    assert len(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize(("change", "message"), [
    ({"argv": ()}, "argv must be a non-empty sequence"),
    ({"argv": "ls"}, "argv must be a non-empty sequence"),
    ({"argv": ("",)}, "non-empty command"),
    ({"job_id": "../etc"}, "job_id must be 1-128 lowercase hex digits"),
    ({"job_id": "AB"}, "job_id must be"),
    ({"attempt": -1}, "attempt must be an integer from 0"),
    ({"cores": 0}, "cores must be an integer from 1 to 1024"),
    ({"cores": True}, "cores must be an integer"),
    ({"memory_mb": 10**9}, "memory_mb must be an integer from 1 to"),
    ({"walltime_s": 0}, "walltime_s must be more than 0"),
    ({"walltime_s": float("inf")}, "walltime_s must be"),
    ({"walltime_s": 365 * 86400.0}, "at most 2.592e\\+06 s \\(30 days\\)"),
    ({"env": {"A=B": "x"}}, "env names must be"),
    ({"env": {"A": None}}, "env value of A must be a string"),
])
def test_bad_specs_are_refused_in_one_line(change, message):
    fields = {"job_id": JOB, "attempt": 1, "argv": ("true",), "env": {}, "cores": 1,
              "memory_mb": 100, "walltime_s": 10.0, **change}
    with pytest.raises(ValueError, match=message) as info:
        RunSpec(**fields)
    assert "\n" not in str(info.value)


def test_bad_executor_settings(tmp_path):
    with pytest.raises(ValueError, match="cores"):
        Executor(tmp_path, cores=0, memory_mb=100)
    with pytest.raises(ValueError, match="poll_interval"):
        Executor(tmp_path, cores=1, memory_mb=100, poll_interval=0)
    with pytest.raises(ValueError, match="job_id"):
        Executor(tmp_path, cores=1, memory_mb=100).log_path("../x", 1, "stdout")


async def test_stage_in_fills_the_sandbox_before_the_job_starts(ex, tmp_path):
    async def stage(sandbox):
        (sandbox / "inputs").mkdir()
        (sandbox / "inputs" / "data.txt").write_text("staged\n")

    r = await ex.run(spec("cat", "inputs/data.txt"), stage_in=stage)
    assert r.error is None
    assert (r.sandbox / "stdout").read_text() == "staged\n"


async def test_a_failed_stage_in_ends_the_job_before_it_starts(ex, tmp_path):
    async def stage(sandbox):
        raise StageInError("dataset alice:raw: no live node holds it")

    marker = tmp_path / "ran"
    r = await ex.run(spec("touch", str(marker)), stage_in=stage)
    assert (r.error, r.diagnosis) == ("stage_in_failed", "dataset alice:raw: no live node holds it")
    assert r.pid is None and not marker.exists()
    assert ex.statistics()["stage_in_failed"] == 1


async def test_cancel_during_the_stage_in_stops_waiting_for_the_inputs(ex, tmp_path):
    staging = trio.Event()

    async def stage(sandbox):
        staging.set()
        await trio.sleep_forever()  # inputs that never arrive

    marker = tmp_path / "ran"
    result = []
    async with trio.open_nursery() as nursery:
        async def run():
            result.append(await ex.run(spec("touch", str(marker)), stage_in=stage))

        nursery.start_soon(run)
        await staging.wait()
        assert ex.cancel(JOB, "released: stuck")
        with trio.fail_after(5):
            while not result:  # noqa: ASYNC110 - run returns when the stage-in stops
                await trio.sleep(0.01)
    [r] = result
    assert r.error == "cancelled" and "released: stuck" in r.diagnosis
    assert r.pid is None and not marker.exists() and ex.free()[0] == ex.cores
