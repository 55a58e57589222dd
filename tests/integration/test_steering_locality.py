"""Locality on real node processes: a worker that holds a job's input dataset is
handed that job before older jobs that would need a transfer (brokerage rule a)."""

from __future__ import annotations

from collections import Counter

import pytest

from node.client import Client
from replication import ReplicationPolicy
from tests.integration.grid import running_grid
from tests.integration.test_steering import finish, spec

pytestmark = pytest.mark.slow

PER_DATASET = 12


async def test_jobs_go_to_the_nodes_that_hold_their_inputs(short_tmp):
    async with running_grid(short_tmp, 3) as g:
        one = ReplicationPolicy(1, 1)  # one replica each, never copied elsewhere
        names = {}
        for i in (0, 1):  # dataset d0 only on node 0, d1 only on node 1
            src = short_tmp / f"src{i}"
            src.mkdir()
            (src / "events").write_bytes(bytes([i]) * (256 << 10))
            async with Client.connect(g.address(i), user_dir=g.user_dir) as c:
                rec = await c.put(f"d{i}", [src], close=True, policy=one)
                names[i] = str(rec.name)
                holders = [h["id"] for h in (await c.call(
                    "dataset.replicas", {"name": names[i]}))["holders"]]
            assert holders == [g.ids[i].hex()]
        async with Client.connect(g.address(2), user_dir=g.user_dir) as c:
            # Interleaved, so that the oldest job a node sees often reads the other one.
            ids = await c.submit([spec("sh", "-c", "sleep 0.3", inputs=[names[k % 2]])
                                  for k in range(2 * PER_DATASET)])
            await finish(c, ids)
            records = [await c.job(j) for j in ids]
        ran = Counter((r.history[-1].node, r.job.spec.inputs[0]) for r in records)
        # Each holder takes the jobs reading its own dataset first: of the jobs it ran,
        # those needing a transfer are the few left when it asked (without locality,
        # about half of them would: the jobs are interleaved).
        mine = [ran[(g.ids[i], names[i])] for i in (0, 1)]
        other = [ran[(g.ids[i], names[1 - i])] for i in (0, 1)]
        print("jobs each holder ran reading its own dataset, the other's:", mine, other)
        # (A holder may run none at all: the others may have taken every job while it
        # waited between two claims.)
        assert all(m >= o for m, o in zip(mine, other, strict=True)), (mine, other)
        assert sum(mine) >= max(4, 3 * sum(other)), (mine, other)
        rules = [p.rule for r in records for p in r.placements
                 if p.worker in (g.ids[0], g.ids[1])]
        assert any("its inputs are on the worker" in rule for rule in rules)
