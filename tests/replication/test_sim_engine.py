"""The simulator's event loop and network."""

from __future__ import annotations

import random

import pytest

from replication.sim import GB, Engine, Gbps, SimError
from replication.sim.model import Link, Network, Node, Site


def test_events_run_in_time_order_and_ties_in_scheduling_order():
    engine = Engine()
    seen: list[tuple[float, int]] = []
    rng = random.Random(5)
    times = [float(rng.randint(0, 50)) for _ in range(300)]
    for i, t in enumerate(times):
        engine.at(t, lambda t=t, i=i: seen.append((engine.now, i)))
    engine.run()
    assert [t for t, _ in seen] == sorted(times)
    assert all(engine_t == times[i] for engine_t, i in seen)
    # Events at one time ran in the order they were scheduled.
    for (t1, i1), (t2, i2) in zip(seen, seen[1:], strict=False):
        if t1 == t2:
            assert i1 < i2
    assert engine.events_run == 300


def test_events_scheduled_by_events_and_cancelled_ones():
    engine = Engine()
    seen = []

    def chain(n: int) -> None:
        seen.append((engine.now, n))
        if n < 3:
            engine.after(10, chain, n + 1)

    engine.at(5, chain, 0)
    dropped = engine.at(12, seen.append, "cancelled")
    Engine.cancel(dropped)
    engine.run(until=30)
    assert seen == [(5, 0), (15, 1), (25, 2)]
    engine.run()
    assert seen[-1] == (35, 3)


def test_no_event_in_the_past():
    engine = Engine()
    engine.at(10, lambda: None)
    engine.run()
    with pytest.raises(SimError, match="time goes forward only"):
        engine.at(9.5, lambda: None)
    with pytest.raises(SimError):
        engine.at(float("nan"), lambda: None)


def _net(wan: list[float], wan_flow: float = 100 * Gbps) -> tuple[Engine, Network, list[Node]]:
    engine = Engine()
    net = Network(engine, wan_flow)
    nodes = []
    for i, w in enumerate(wan):
        site = Site(i, f"s{i}", Link(w))
        for _ in range(2):
            n = len(nodes)
            node = Node(n, n.to_bytes(8, "big"), site, Link(10 * Gbps), 4, 100 * GB,
                        Link(1 * Gbps))
            site.nodes.append(node)
            nodes.append(node)
    return engine, net, nodes


def test_a_transfer_takes_size_over_bandwidth():
    engine, net, nodes = _net([2 * Gbps, 4 * Gbps])
    done: dict[str, float] = {}

    def finish(name):
        return lambda tr: done.setdefault(name, engine.now)

    # Inside a site: the nodes' cards (10 Gb/s); across: the slower site link.
    net.start(nodes[0], nodes[1], 5 * GB, "t", finish("lan"), finish("x"))
    engine.run()
    net.start(nodes[1], nodes[2], 5 * GB, "t", finish("wan"), finish("x"))
    engine.run()
    net.start(nodes[3], nodes[3], 5 * GB, "t", finish("self"), finish("x"))
    engine.run()
    assert done["lan"] == pytest.approx(5 * GB / (10 * Gbps))
    assert done["wan"] - done["lan"] == pytest.approx(5 * GB / (2 * Gbps))
    assert done["self"] == done["wan"]
    assert net.stats.wan_bytes == 5 * GB and net.stats.lan_bytes == 10 * GB


def test_transfers_share_a_link_and_speed_up_when_one_ends():
    engine, net, nodes = _net([2 * Gbps, 100 * Gbps, 100 * Gbps])
    done = {}
    rate = 2 * Gbps
    # Both leave site 0: each gets half its link; the small one ends first, then the
    # big one has the whole link for what it has left.
    net.start(nodes[0], nodes[2], 1 * GB, "t", lambda tr: done.setdefault("a", engine.now),
              lambda tr: None)
    net.start(nodes[1], nodes[4], 3 * GB, "t", lambda tr: done.setdefault("b", engine.now),
              lambda tr: None)
    engine.run()
    assert done["a"] == pytest.approx(1 * GB / (rate / 2))
    assert done["b"] == pytest.approx(done["a"] + 2 * GB / rate)


def test_the_wan_flow_cap_and_an_abort_count_what_moved():
    engine, net, nodes = _net([100 * Gbps, 100 * Gbps], wan_flow=1 * Gbps)
    aborted = []
    tr = net.start(nodes[0], nodes[2], 10 * GB, "t", lambda tr: None, aborted.append)
    engine.at(4.0, net.abort, tr)
    engine.run()
    assert aborted == [tr]
    assert net.stats.wan_bytes == pytest.approx(4.0 * Gbps)   # 4 s at 1 Gb/s
    assert not nodes[0].transfers and not nodes[0].site.wan.active
