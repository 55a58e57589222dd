"""Autonomous replication on real node processes: repair after a holder dies,
replicas that grow toward the sites reading a dataset, shrink back when the
reads stop, and a holder that comes back after its replica was restored
elsewhere is trimmed away."""

from __future__ import annotations

import os
import re
import shutil

import pytest
import trio

from node.client import Client
from replication import ReplicationPolicy
from tests.integration.grid import Grid
from tests.integration.test_datasets import run_cli

pytestmark = pytest.mark.slow

# Seconds, scaled down from the defaults so that a grid goes through a whole
# rise and fall of demand in a test.
FAST = {"announce_interval": 1.0, "bucket_seconds": 2.0, "window": 6, "horizon": 1,
        "reads_per_replica": 3.0, "cooldown": 8.0, "grace": 5.0, "interval": 1.0,
        "add_timeout": 30.0}


def fast_grid(root, n: int) -> Grid:
    g = Grid(root, n)
    g.prepare()
    for i in range(n):
        config = g.dir(i) / "config.toml"
        sections = re.split(r"(?m)^(?=\[)", config.read_text())
        for key, value in FAST.items():
            section = "[storage]" if key == "announce_interval" else "[replication]"
            i = next(i for i, s in enumerate(sections) if s.startswith(section))
            sections[i], found = re.subn(rf"(?m)^{key} = .*", f"{key} = {value}", sections[i])
            assert found == 1, key
        config.write_text("".join(sections))
    return g


async def explain(c: Client, name: str) -> dict:
    return await c.explain_replicas(name)


async def wait_counted(c: Client, name: str, ok, limit: float) -> list[str]:
    """Poll the custodian until ``ok(counted holder ids)``; those ids."""
    last: object = None
    with trio.move_on_after(limit):
        while True:
            try:
                last = info = await explain(c, name)
                counted = [h["id"] for h in info["holders"] if h["counted"]]
                if ok(counted):
                    return counted
            except Exception as exc:  # the custodian may be the node that died
                last = exc
            await trio.sleep(0.5)
    raise AssertionError(f"not reached in {limit}s; last answer: {last}")


async def test_replicas_are_repaired_follow_demand_and_shrink_back(short_tmp, tmp_path):
    g = fast_grid(short_tmp, 5)
    for i in range(5):
        g.start(i)
    try:
        await g.converge()
        src = tmp_path / "src"
        src.mkdir()
        (src / "events.root").write_bytes(os.urandom(300_000))
        async with Client.connect(g.address(0), user_dir=g.user_dir) as c:
            rec = await c.put("hot", [src], close=True, policy=ReplicationPolicy(2, 4))
            name = str(rec.name)
            holders = await wait_counted(c, name, lambda h: len(h) >= 2, 60)

            # Repair: kill -9 a holder (not the bootstrap node); the count returns to 2.
            victim_id = next(h for h in holders if h != g.ids[0].hex())
            victim = [x.hex() for x in g.ids].index(victim_id)
            g.kill(victim)
            repaired = await wait_counted(
                c, name, lambda h: len(h) >= 2 and victim_id not in h, 90)
            assert victim_id not in repaired

            # Demand: two sites without a replica read the dataset again and again.
            live = [i for i in range(5) if i != victim]
            readers = [i for i in live if g.ids[i].hex() not in repaired][:2]
            assert len(readers) == 2
            reader_ids = {g.ids[i].hex() for i in readers}

            async def read_from(i: int, until: float) -> None:
                async with Client.connect(g.address(i), user_dir=g.user_dir) as rc:
                    n = 0
                    while trio.current_time() < until:
                        out = tmp_path / f"out{i}"
                        await rc.get(name, out)
                        shutil.rmtree(out)  # or the next get finds the file there
                        n += 1
                        await trio.sleep(0.05)
                    assert n > 20

            until = trio.current_time() + 14
            async with trio.open_nursery() as nursery:
                for i in readers:
                    nursery.start_soon(read_from, i, until)
            grown = await wait_counted(c, name, lambda h: reader_ids <= set(h), 30)
            assert 3 <= len(grown) <= 4, grown
            info = await explain(c, name)
            assert info["target"] >= 3 and info["trend"]["prediction"] > 0
            assert {f"site-{i}" for i in readers} <= set(info["by_site"])
            adds = [d for d in info["decisions"] if d["kind"] == "add"]
            assert {d["node"] for d in adds} >= reader_ids

            # The reads stop: after the cool-down the count falls back to the minimum.
            shrunk = await wait_counted(c, name, lambda h: len(h) == 2, 90)
            assert len(shrunk) == 2
            info = await explain(c, name)
            kinds = [d["kind"] for d in info["decisions"]]
            assert "announce_drop" in kinds and "drop" in kinds
            assert info["target"] == 2

            # The killed holder comes back with its old replica: surplus, trimmed again.
            g.start(victim)
            await wait_counted(c, name, lambda h: victim_id in h and len(h) == 3, 60)
            await wait_counted(c, name, lambda h: len(h) == 2, 60)
        code, out, err = await run_cli("replicas", "--via", g.address(0), "--user-dir",
                                       str(g.user_dir), name, "--explain")
        assert code == 0, err
        assert "target 2" in out and "prediction" in out and "drop" in out
        status = g.status(0)
        assert status is not None and "replication" in status
        # Every node's log says why each replica action happened.
        logs = g.logs(full=True)
        assert re.search(r"replica\.add .*reason=", logs)
        assert re.search(r"replica\.dropped .*reason=", logs)
    finally:
        for i in g.procs:  # shown when the test failed
            print(f"status of node {i}:", (g.status(i) or {}).get("replication"))
        g.stop()
        print(g.logs(full=True))
    assert "Traceback" not in g.logs(full=True)
