"""The node's monitor: samples, history in the state file, Prometheus /metrics."""

from __future__ import annotations

import math
import os
import socket
import sqlite3
import time
import urllib.request

import trio

from node.config import Config, MonitorSection
from steering import Classifier, HealthParams
from tests.conftest import make_grid
from tests.node.test_jobs import grid_of, until

FAST = {"monitor": {"interval": 0.1, "history_every": 3, "metrics_listen": "127.0.0.1:0"}}


def get(url: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 - loopback test URL
        return r.status, r.headers["content-type"], r.read().decode()


async def test_samples_history_and_prometheus_metrics(short_tmp):
    dirs = make_grid(short_tmp, 1)
    async with trio.open_nursery() as nursery:
        [node] = await grid_of(nursery, dirs, **FAST)
        mon = node.monitor

        async def history():  # read from the state file as another process would
            def read():
                with sqlite3.connect(node.datadir.state) as db:
                    return db.execute("SELECT t, name, value FROM metrics").fetchall()
            return await trio.to_thread.run_sync(read)

        rows = await until(history)
        assert {name for _, name, _ in rows} >= {"slots_total", "load", "disk_free_bytes"}
        slots = [v for _, name, v in rows if name == "slots_total"]
        assert slots and slots[0] == float(node.executor.cores)
        assert len(mon.series["load"]) >= 3
        assert mon.metrics_url is not None and mon.metrics_url.startswith("http://127.0.0.1:")
        status, ctype, text = await trio.to_thread.run_sync(get, mon.metrics_url)
        assert status == 200 and ctype.startswith("text/plain")
        site = node.cert.name
        assert f'gridnode_sample_slots_total{{node="{node.key.id.hex()[:16]}",site="{site}"}} ' \
               f'{float(node.executor.cores)}' in text
        # One health state at a time (which one depends on this machine's load).
        health = [line for line in text.splitlines() if line.startswith("gridnode_health{")]
        assert len(health) == 3 and sum(float(h.rsplit(" ", 1)[1]) for h in health) == 1
        assert f'state="{mon.health.state}"}} 1' in text
        assert "gridnode_data_datasets_held{" in text
        assert "gridnode_peers_known{" in text
        for line in text.splitlines():  # every sample line is NAME{LABELS} NUMBER
            if not line.startswith("#"):
                float(line.rsplit(" ", 1)[1])
        st = await node._op_status()
        assert st["monitor"]["health"] in ("ok", "congested")
        assert st["monitor"]["metrics_url"] == mon.metrics_url
        nursery.cancel_scope.cancel()


async def test_a_taken_metrics_port_is_logged_and_the_node_serves_on(short_tmp, caplog):
    dirs = make_grid(short_tmp, 1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with trio.open_nursery() as nursery:
            [node] = await grid_of(nursery, dirs, monitor={
                "interval": 0.1, "metrics_listen": f"127.0.0.1:{port}"})
            assert node.monitor.metrics_url is None
            [refused] = [r for r in caplog.records if r.msg == "http.unavailable"]
            assert refused.fields["what"] == "metrics"  # type: ignore[attr-defined]
            assert (await node._op_status())["peers_known"] == 0  # still answering
            nursery.cancel_scope.cancel()


def test_auto_metrics_address_follows_the_listen_port():
    cfg = Config()
    assert cfg.metrics_address(7400) == "127.0.0.1:8400"
    assert cfg.metrics_address(0) == "127.0.0.1:0"
    assert cfg.metrics_address(65000) == "127.0.0.1:0"
    off = Config(monitor=MonitorSection(metrics_listen=""))
    assert off.metrics_address(7400) == ""


async def test_claims_follow_the_brokerage_claim_rule(short_tmp):
    dirs = make_grid(short_tmp, 1)
    async with trio.open_nursery() as nursery:
        [node] = await grid_of(nursery, dirs, capacity={"cores": 8},
                               monitor={"interval": 3600.0, "metrics_listen": ""})
        mon = node.monitor
        mon.health = Classifier(HealthParams(), 0.0)  # judged afresh, not by this machine
        plan = mon.claim_plan(8)
        assert (plan.jobs, plan.stage_ins, plan.state) == (8, 8, "ok")
        assert mon.claim_plan(3).jobs == 3

        # The node is fine but the link it reads over crawls: fewer stage-ins, as many jobs.
        now, peer = time.time(), b"\x07" * 20
        for i, rate in enumerate([100e6] * 5 + [5e6] * 5):
            t = now - 100 + 10 * i
            mon.links.observe(t, peer, 8 << 20, (8 << 20) / rate)
            mon.links.sample(t)
        assert mon.links.state(peer) == "congested"
        plan = mon.claim_plan(8)
        assert (plan.jobs, plan.state) == (8, "ok") and plan.stage_ins < 8
        assert "1 of the 1 links it read over lately are congested" in plan.why
        mon.links.observe(now, b"\x08" * 20, 8 << 20, 0.1)  # another, fine, link
        mon.links.observe(now, b"\x09" * 20, 8 << 20, 0.1)  # and a third: 1 of 3 crawls
        assert mon.claim_plan(8).stage_ins == 8
        mon.links.links.clear()

        for t in range(4):  # pressure high and level: congested
            mon.health.sample(float(t), 1.5)
        assert mon.health.state == "congested"
        cap = math.ceil(8 * 0.25 * (0.5 if mon.health.trend.slope > 0 else 1.0))
        mon._cpu_bound = False  # the disk is the pressure: jobs without inputs still fill
        plan = mon.claim_plan(8)
        assert (plan.jobs, plan.stage_ins, plan.state) == (8, cap, "congested")
        node.runner.staging = cap  # as many staging in as it may: no further stage-in
        plan = mon.claim_plan(8)
        assert (plan.jobs, plan.stage_ins) == (8, 0) and "at most 0 stage-ins" in plan.why
        node.runner.staging = 0
        mon._cpu_bound = True  # its CPU is the pressure: half its free cores
        plan = mon.claim_plan(8)
        assert plan.jobs == 4 and plan.stage_ins == min(cap, 4) and "CPU" in plan.why

        for t in range(5):  # every job fails: failing claims nothing
            mon.health.outcome(10.0 + t, False)
        assert mon.health.state == "failing"
        plan = mon.claim_plan(8)
        assert (plan.jobs, plan.stage_ins, plan.state) == (0, 0, "failing")
        nursery.cancel_scope.cancel()


async def test_a_transfer_gives_the_link_a_state_shown_by_health(short_tmp, tmp_path):
    from node.client import Client
    from replication import ReplicationPolicy
    from tests.node.test_daemon import address

    dirs = make_grid(short_tmp, 2)
    async with trio.open_nursery() as nursery:
        a, b = await grid_of(nursery, dirs, monitor={"interval": 0.1},
                             replication={"interval": 3600.0})
        (tmp_path / "f").write_bytes(os.urandom(3 << 20))
        async with Client.connect(address(a)) as c:
            rec = await c.put("big", [tmp_path / "f"], policy=ReplicationPolicy(1, 1))
        name = str(rec.name)
        holder, reader = (a, b) if name in a.data.holdings else (b, a)
        async with Client.connect(address(reader)) as c:
            await c.get(name, tmp_path / "out")
        link = await until(lambda: _link(reader, holder))
        assert link["state"] == "ok" and link["bytes"] >= 3 << 20 and link["transfers"] == 1
        assert link["rate"] > 0 and link["best"] == link["rate"]
        health = await reader._op_health()
        [seen] = [x for x in health["links"] if x["peer"] == holder.key.id.hex()]
        assert seen["from"] == reader.key.id.hex() and seen["to_site"] == holder.cert.name
        assert seen["state"] == "ok" and seen["reason"]
        # Latency: the least round trip of the calls over the pooled connection.
        assert 0 < seen["rtt_ms"] < 5000
        [row] = [n for n in health["nodes"] if n["id"] == holder.key.id.hex()]
        assert row["source"] == "asked now" and 0 < row["rtt_ms"] <= seen["rtt_ms"]
        nursery.cancel_scope.cancel()


async def _link(reader, holder):
    links = {x["peer"]: x for x in reader.monitor.links.view()}
    link = links.get(holder.key.id.hex())
    return link if link and link["rate"] is not None else None


def test_a_peers_link_report_keeps_only_checked_fields():
    from node.daemon import _link_report

    assert _link_report("junk") is None and _link_report({"state": "ok"}) is None
    r = _link_report({"peer": "ab" * 40, "state": "evil", "rate": "fast", "best": 2,
                      "transfers": True, "failures": 3.0, "reason": 5, "extra": [1]})
    assert r == {"peer": "ab" * 32, "state": "unknown", "reason": "5", "rate": None,
                 "best": 2.0, "rtt_ms": None, "transfers": 0, "failures": 3}


def test_a_peers_health_answer_keeps_only_checked_fields():
    import pytest

    from node.daemon import _health_report

    with pytest.raises(TypeError):
        _health_report(["not", "a", "map"])
    r = _health_report({"state": "great", "pressure": "high", "load": 0.5, "cores": -1,
                        "jobs_running": 3, "reason": 7, "id": "forged", "self": True,
                        "evidence": {"reason": "x" * 999, "pressure": [0.1, "y"], "n": 2},
                        "links": "no"})
    assert r == {"state": "unknown", "load": 0.5, "jobs_running": 3,
                 "evidence": {"n": 2, "reason": "x" * 300}}
