"""Steering on real node processes: a node made slow gets fewer jobs, and
``gridnode explain`` tells, from any node, where each job went and why."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from node.client import Client
from tests.integration.grid import Grid, running_grid
from tests.integration.test_datasets import run_cli
from tests.integration.test_steering import finish, spec

pytestmark = pytest.mark.slow

SLOW = 2
JOBS = 40


async def test_a_slow_node_gets_fewer_jobs_and_explain_says_why(short_tmp):
    def slow(g: Grid) -> None:
        # Testing only: each job holds its slot 4 s before it starts (a slow node).
        g.edit_config(SLOW, ("start_delay = 0.0", "start_delay = 4.0"))

    async with running_grid(short_tmp, 3, slow) as g:
        async with Client.connect(g.address(0), user_dir=g.user_dir) as c:
            ids = await c.submit([spec("sh", "-c", "sleep 0.2") for _ in range(JOBS)])
            await finish(c, ids)
            records = [await c.job(j) for j in ids]
        ran = Counter(r.history[-1].node for r in records)  # the worker that finished it
        assert sum(ran.values()) == JOBS and set(ran) <= set(g.ids)
        print("jobs run per node:", {i: ran[g.ids[i]] for i in range(3)})
        fast = [ran[g.ids[i]] for i in range(3) if i != SLOW]
        # Pull scheduling: a node claims only for its free slots, and the slow node's
        # slots stay taken; each fast node ran more than twice as many jobs.
        assert 2 * ran[g.ids[SLOW]] < min(fast), ran

        # explain, asked through a node that is not (necessarily) the job's primary.
        slow_job = next(r for r in records if r.history[-1].node == g.ids[SLOW])
        code, out, err = await run_cli("explain", slow_job.job.hex_id, "--json", "--via",
                                       g.address(1), "--user-dir", str(g.user_dir))
        assert code == 0, err
        view = json.loads(out)
        assert view["id"] == slow_job.job.hex_id and view["state"] == "finished"
        last = view["attempts"][-1]
        assert last["worker"] == g.ids[SLOW].hex()
        assert last["worker_state"] in ("ok", "congested")  # as its monitor judged itself
        assert last["claim"]["max_jobs"] >= 1 and last["claim"]["why"]
        assert last["rule"].startswith("matched: requirements ok, priority 0")
        assert last["outcome"]["state"] == "finished"
        others = {n["id"] for n in last["nodes"]}
        assert others and others <= {i.hex() for i in g.ids} - {g.ids[SLOW].hex()}

        code, out, err = await run_cli("explain", records[0].job.hex_id, "--via",
                                       g.address(2), "--user-dir", str(g.user_dir))
        assert code == 0, err
        print(out)
        assert "attempt 1" in out and "primary: matched" in out and "outcome: finished" in out

        # An id no node knows: one line on stderr, a non-zero exit, no traceback.
        code, out, err = await run_cli("explain", "ab" * 20, "--via", g.address(0),
                                       "--user-dir", str(g.user_dir))
        assert code != 0 and out == ""
        assert err.count("\n") == 1 and err.startswith("gridnode: error:") and "ab" * 20 in err
