"""Steering on real node processes: a node whose jobs all fail is marked
failing, stops getting jobs, and returns once its probes pass again."""

from __future__ import annotations

import shutil

import pytest
import trio

from node.client import Client
from steering import JobSpec
from tests.integration.grid import Grid, running_grid
from tests.integration.test_datasets import run_cli

pytestmark = pytest.mark.slow


def spec(*argv: str, **kw) -> JobSpec:
    return JobSpec.from_mapping({"argv": list(argv), **kw})


async def finish(c: Client, ids: list[bytes], limit: float = 120) -> None:
    with trio.fail_after(limit):
        for j in ids:
            [rec] = await c.wait(j, poll=0.3)
            assert rec.state == "finished", (rec.state, rec.history)


def claimed(g: Grid, i: int) -> int:
    status = g.status(i)
    assert status is not None
    return status["worker"]["jobs_claimed"]


async def health_of(c: Client, node_id: bytes) -> str:
    nodes = (await c.health())["nodes"]
    return next(n["state"] for n in nodes if n["id"] == node_id.hex())


async def test_a_failing_node_gets_no_jobs_until_its_probes_pass(short_tmp):
    def fast_monitor(g: Grid) -> None:
        for i in range(3):
            g.edit_config(i, ("[monitor]\ninterval = 10.0", "[monitor]\ninterval = 0.3"),
                          ("probe_interval = 60.0", "probe_interval = 1.0"))

    async with running_grid(short_tmp, 3, fast_monitor) as g:
        bad = 2
        jobs = g.dir(bad) / "jobs"  # where its sandboxes go: a file, so every job fails
        shutil.rmtree(jobs)
        jobs.write_text("not a directory\n")
        async with Client.connect(g.address(0), user_dir=g.user_dir) as c:
            ids = await c.submit([spec("sh", "-c", "sleep 0.2", max_attempts=20)
                                  for _ in range(40)])
            await finish(c, ids)  # all of them, elsewhere when node 2 failed them
            with trio.fail_after(30):
                while await health_of(c, g.ids[bad]) != "failing":  # noqa: ASYNC110
                    await trio.sleep(0.3)
            before = claimed(g, bad)
            ids = await c.submit([spec("sh", "-c", "sleep 0.2") for _ in range(30)])
            await finish(c, ids)
            assert claimed(g, bad) == before  # steered around: not one job claimed
            code, out, _ = await run_cli("health", "--via", g.address(1), "--user-dir",
                                         str(g.user_dir))
            assert code == 0 and "failing" in out

            # The cause is removed: probes pass, it is let back in and claims again.
            jobs.unlink()
            jobs.mkdir(mode=0o700)
            with trio.fail_after(30):
                # ok, or congested if this machine is loaded: either claims jobs again
                while await health_of(c, g.ids[bad]) == "failing":  # noqa: ASYNC110
                    await trio.sleep(0.3)
            ids = await c.submit([spec("sh", "-c", "sleep 0.5") for _ in range(30)])
            await finish(c, ids)
            assert claimed(g, bad) > before
        status = g.status(bad)
        assert status is not None
        assert status["monitor"]["probes_passed"] >= 3 and status["monitor"]["probes_failed"] >= 0
        logs = (g.dir(bad) / "node.log").read_text()
        assert "event=health.changed state=failing" in logs
        assert "was=failing" in logs and "probes in a row passed" in logs
