"""Jobs through real nodes in one process: submit anywhere, run, read anywhere."""

from __future__ import annotations

import os
import sys

import pytest
import trio

from node.client import Client
from overlay import RpcError
from steering import JobSpec
from tests.conftest import make_grid
from tests.node.test_daemon import address, start_node

FAST = {"queue": {"lease_duration": 4.0, "unschedulable_after": 1.0},
        "capacity": {"cores": 2, "memory_mb": 2048, "disk_gb": 1}}


async def grid_of(nursery: trio.Nursery, dirs, **overrides):
    first, _ = await start_node(nursery, dirs[0], **{**FAST, **overrides})
    nodes = [first]
    for dd in dirs[1:]:
        node, _ = await start_node(nursery, dd, bootstrap=[address(first)],
                                   **{**FAST, **overrides})
        nodes.append(node)
    with trio.fail_after(60):
        for n in nodes:
            await n.wait_peers(len(dirs) - 1)
    return nodes


async def until(check, interval: float = 0.1):
    """Poll another component's state until ``check()`` returns something true."""
    while not (result := await check()):  # noqa: ASYNC110 - remote state, no event to wait on
        await trio.sleep(interval)
    return result


def spec(*argv: str, **kw) -> JobSpec:
    return JobSpec.from_mapping({"argv": list(argv), **kw})


async def _in_state(c, j, state):
    rec = await c.job(j)
    return rec if rec.state == state else None


async def _has_text(path):
    await trio.lowlevel.checkpoint()
    return path.exists() and path.read_text().strip()


async def test_submit_through_one_node_run_and_read_through_another(short_tmp):
    dirs = make_grid(short_tmp, 3)
    async with trio.open_nursery() as nursery:
        nodes = await grid_of(nursery, dirs)
        async with Client.connect(address(nodes[0])) as a:
            ids = await a.submit([spec("sh", "-c", f"echo job {i}; echo err >&2")
                                  for i in range(6)])
        assert len(ids) == 6
        async with Client.connect(address(nodes[2])) as c:
            with trio.fail_after(60):
                for j in ids:
                    rec = await until(lambda j=j: _in_state(c, j, "finished"))
                    assert rec.attempt == 1
                    assert [e.state for e in rec.history] == ["activated", "running",
                                                              "finished"]
            rec = await c.job(ids[3])
            async with c.logs(ids[3]) as chunks:
                out = b"".join([x async for x in chunks])
            assert out == b"job 3\n"
            async with c.logs(ids[3], stream="stderr") as chunks:
                assert b"".join([x async for x in chunks]) == b"err\n"
            listed = await c.jobs(state="finished")
            assert {r.job_id for r in listed} >= set(ids)
            with pytest.raises(RpcError) as err:
                await c.job(b"\x07" * 20)
            assert err.value.code == "not_found"
        # Every job is stored on a majority of its home set.
        for j in ids:
            holders = [n for n in nodes if (s := n.queue.slots.get(j)) and s.record
                       and s.record.state == "finished"]
            assert len(holders) >= 2
        nursery.cancel_scope.cancel()


async def test_failures_carry_their_diagnosis(short_tmp):
    dirs = make_grid(short_tmp, 2)
    async with trio.open_nursery() as nursery:
        nodes = await grid_of(nursery, dirs)
        async with Client.connect(address(nodes[1])) as c:
            bad, missing, slow, unfit, hog = await c.submit([
                spec("sh", "-c", "echo oops >&2; exit 3"),
                spec("no-such-command-here"),
                spec("sleep", "30", walltime_s=1),
                spec("true", cores=64),
                spec(sys.executable, "-c", "import time; x = bytearray(300 << 20); "
                     "x[::4096] = b'1' * len(x[::4096]); time.sleep(30)", memory_mb=100),
            ])
            with trio.fail_after(60):
                recs = {j: (await c.wait(j))[0] for j in (bad, missing, slow, unfit, hog)}
        assert recs[hog].failure.code == "memory_exceeded", recs[hog].failure
        assert recs[bad].failure.code == "exit_nonzero" and recs[bad].failure.exit_code == 3
        assert "oops" in recs[bad].failure.stderr_tail
        assert recs[missing].failure.code == "command_not_found"
        assert "no-such-command-here" in recs[missing].failure.diagnosis
        assert recs[slow].failure.code == "walltime_exceeded"
        assert recs[unfit].state == "failed" and recs[unfit].failure.code == "unschedulable"
        assert all(r.attempt <= 1 for r in recs.values())
        nursery.cancel_scope.cancel()


async def test_cancel_a_running_job_kills_its_process_group(short_tmp):
    dirs = make_grid(short_tmp, 2)
    async with trio.open_nursery() as nursery:
        nodes = await grid_of(nursery, dirs)
        async with Client.connect(address(nodes[0])) as c:
            [j] = await c.submit([spec("sh", "-c", "sleep 300 & echo $$ > pid; wait")])
            with trio.fail_after(30):
                rec = await until(lambda: _in_state(c, j, "running"))
            worker = next(n for n in nodes if n.key.id == rec.lease.worker)
            pid_file = worker.executor.sandbox(j.hex(), 1) / "pid"
            with trio.fail_after(10):
                await until(lambda: _has_text(pid_file))
            pgid = int(pid_file.read_text())
            assert await c.cancel(j) == "cancelled"
            with trio.fail_after(30):
                while True:
                    try:
                        os.killpg(pgid, 0)
                    except ProcessLookupError:
                        break
                    await trio.sleep(0.1)
            assert (await c.job(j)).state == "cancelled"
            # A job killed on request is no evidence against the node that ran it.
            def ended() -> bool:  # its run has returned (and counted any outcome)
                held = worker.worker.held.get(j)
                return held is None or held.ended

            with trio.fail_after(30):
                while not ended():  # noqa: ASYNC110 - the worker's own pace
                    await trio.sleep(0.05)
            assert sum(worker.runner.outcomes.values()) == 0
            assert not worker.monitor.health.results
        nursery.cancel_scope.cancel()


async def test_only_the_owner_or_an_admin_may_cancel(short_tmp, tmp_path):
    from tests.conftest import cli

    dirs = make_grid(short_tmp, 1)
    bob = tmp_path / "bob"
    cli("user", "init", "--user-dir", str(bob), "--grid", str(dirs[0].grid_info),
        "--name", "bob")
    [req] = bob.glob("*/join-request")
    cli("grid", "admit", "--data-dir", str(dirs[0].root), str(req), "--out",
        str(tmp_path / "bob.cert"))
    cli("user", "install", "--user-dir", str(bob), str(tmp_path / "bob.cert"))
    async with trio.open_nursery() as nursery:
        [node] = await grid_of(nursery, dirs)
        async with Client.connect(address(node), user_dir=bob) as b:
            [j] = await b.submit([spec("sleep", "300")])
        async with Client.connect(address(node)) as admin:  # the grid's admin user
            [mine] = await admin.submit([spec("sleep", "300")])
            assert await admin.cancel(j) == "cancelled"  # an admin may
        async with Client.connect(address(node), user_dir=bob) as b:
            with pytest.raises(RpcError) as err:
                await b.cancel(mine)
            assert err.value.code == "forbidden"
        nursery.cancel_scope.cancel()


async def test_home_sets_are_repaired_when_a_member_stays_gone(short_tmp):
    dirs = make_grid(short_tmp, 4)
    fast = {**FAST, "queue": {**FAST["queue"], "repair_after": 1.0},
            "capacity": {"cores": 1, "memory_mb": 2048, "disk_gb": 1}}
    async with trio.open_nursery() as nursery:
        first, _ = await start_node(nursery, dirs[0], **fast)
        runs = [(first, None)]
        for dd in dirs[1:]:
            runs.append(await start_node(nursery, dd, bootstrap=[address(first)], **fast))
        nodes = [n for n, _ in runs]
        with trio.fail_after(60):
            for n in nodes:
                await n.wait_peers(3)
        async with Client.connect(address(nodes[0])) as c:
            ids = await c.submit([spec("sleep", "120") for _ in range(8)])
            gone = nodes[3].key.id
            await runs[3][1].stop()  # for good

            async def repaired():
                recs = [await c.job(j) for j in ids]
                return all(gone not in r.home and len(r.home) == 3 for r in recs) and recs

            with trio.fail_after(60):
                recs = await until(repaired, 0.3)
            assert all(set(r.home) == {n.key.id for n in nodes[:3]} for r in recs)
            assert any("home set repaired" in e.reason for r in recs for e in r.history)
            for j in ids:
                await c.cancel(j)
        nursery.cancel_scope.cancel()


async def test_cli_job_commands_and_their_refusals(short_tmp, tmp_path):
    from tests.node.test_client import error, gridnode

    dirs = make_grid(short_tmp, 2)
    async with trio.open_nursery() as nursery:
        nodes = await grid_of(nursery, dirs)
        via = ["--via", address(nodes[1])]
        out = await gridnode("submit", *via, "--name", "hello", "--", "echo", "hi")
        job = out.stdout.decode().strip()
        assert len(job) == 40
        done = await gridnode("wait", *via, job, "--timeout", "60", "--json")
        import json

        assert json.loads(done.stdout)["states"] == {"finished": 1}
        status = json.loads((await gridnode("status", *via, job, "--json")).stdout)
        assert status["state"] == "finished" and status["name"] == "hello"
        logs = await gridnode("logs", "--via", address(nodes[0]), job)
        assert logs.stdout == b"hi\n"
        task = tmp_path / "task.toml"
        task.write_text('name = "t"\n[defaults]\nwalltime_s = 60\n'
                        '[[job]]\nargv = ["sh", "-c", "exit {index}"]\ncount = 3\n')
        tid = (await gridnode("submit", *via, "--file", str(task))).stdout.decode().strip()
        waited = await trio.run_process([sys.executable, "-m", "node", "wait", *via, tid,
                                         "--json"], capture_stdout=True, check=False)
        assert waited.returncode == 1  # two of three exit non-zero: no error, a verdict
        assert json.loads(waited.stdout)["states"] == {"failed": 2, "finished": 1}
        listed = json.loads((await gridnode("jobs", *via, "--task", tid, "--json")).stdout)
        assert sorted(j["index"] for j in listed) == [0, 1, 2]

        before = len(nodes[0].queue.slots) + len(nodes[1].queue.slots)
        refusals = [
            (["submit", *via, "--cores", "-1", "--", "true"], "field 'cores'"),
            (["submit", *via, "--memory", "999999999999", "--", "true"], "field 'memory_mb'"),
            (["submit", *via, "--env", "NOEQUALS", "--", "true"], "NAME=VALUE"),
            (["submit", *via], "say what to run"),
            (["status", *via, "ab" * 20], "no job"),
            (["status", *via, "nothex"], "not a job id"),
            (["cancel", *via, "cd" * 20], "no job or task"),
            (["logs", *via, "ef" * 20], "no job"),
        ]
        for n, (text, why) in enumerate([("[[job]]\nargv = ['x']\ncolour = 1\n", "field 'colour'"),
                          ("[[job]]\nargv = 'x'\n", "field 'argv'"),
                          ("nonsense = = 1", "not valid TOML"),
                          ("[defaults]\ncores = 1\n", "at least one [[job]]"),
                          ("[[job]]\nargv = ['x']\n[[job]]\ncores = 0\n", "job 2")]):
            bad_task = tmp_path / f"bad{n}.toml"
            bad_task.write_text(text)
            refusals.append((["submit", *via, "--file", str(bad_task)], why))
        for argv, why in refusals:
            proc = await gridnode(*argv, check=False)
            assert why in error(proc), (argv, error(proc))
        # Nothing was stored half-way.
        assert len(nodes[0].queue.slots) + len(nodes[1].queue.slots) == before
        nursery.cancel_scope.cancel()
