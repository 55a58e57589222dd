"""Where a node reads chunks from: the brokerage's rule (d) with its peers' health."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest

from node.sources import fetch_from, source_order
from replication import FetchError, FetchStats
from steering import LinkBook

A, B, C, D = (bytes([i]) * 20 for i in range(1, 5))


def node_of(health, sites, links=None):
    peers = {h: SimpleNamespace(site=s) for h, s in sites.items()}
    return SimpleNamespace(cert=SimpleNamespace(name="here"), peers=peers, health=health,
                           monitor=SimpleNamespace(links=links or LinkBook()))


def test_holders_at_this_site_first_and_congested_ones_apart():
    node = node_of({A: {"state": "ok"}, B: {"state": "congested"}, D: {"state": "failing"}},
                   {A: "there", B: "here", D: "here"})  # C: no record, no known site
    first, congested = source_order(node, [A, B, C, D])
    # A failing holder serves bytes as well as an ok one (its jobs fail, not its disks).
    assert first == [D, A, C] and congested == [B]
    assert source_order(node, [B]) == ([], [B])


def test_the_links_this_node_measured_rank_and_class_the_holders():
    links = LinkBook()
    mb = 1 << 20
    for t in range(3):  # A: steady at 10 MB/s; C: 20 MB/s
        links.observe(float(t), A, 10 * mb, 1.0)
        links.observe(float(t), C, 20 * mb, 1.0)
        links.sample(float(t))
    node = node_of({}, {}, links)
    assert source_order(node, [A, C]) == ([C, A], [])  # the faster link first
    for t in range(3, 8):  # C's link falls to a twentieth of its best: congested
        links.observe(float(t), C, mb, 1.0)
        links.sample(float(t))
    assert links.state(C) == "congested"
    assert source_order(node, [A, C]) == ([A], [C])


class Fetcher:
    """Records whom each fetch asked; fails the first one when told to."""

    def __init__(self, fail_first: bool) -> None:
        self.asked: list[list[bytes]] = []
        self.fail_first = fail_first

    async def fetch(self, need, holders, progress=None):
        self.asked.append(list(holders))
        if self.fail_first and len(self.asked) == 1:
            raise FetchError("chunk x could not be fetched", {b"x": "not found"},
                             FetchStats(chunks_fetched=2, bytes_fetched=10))
        return FetchStats(chunks_fetched=1, bytes_fetched=5)


@pytest.mark.parametrize("fail_first", [False, True])
async def test_congested_holders_are_asked_only_for_what_the_others_lack(fail_first):
    node = node_of({A: {"state": "congested"}, B: {"state": "ok"}}, {A: "x", B: "y"})
    data = SimpleNamespace(node=node, fetcher=Fetcher(fail_first), counters=Counter())
    observed: list = []
    stats = await fetch_from(data, [b"x"], [A, B], "alice/ds", observe=observed.append)
    if fail_first:
        assert data.fetcher.asked == [[B], [B, A]]
        assert (stats.chunks_fetched, stats.bytes_fetched) == (3, 15)
        assert [s.bytes_fetched for s in observed] == [10]  # the first fetch, for the links
    else:
        assert data.fetcher.asked == [[B]] and observed == []
    assert data.counters["transfers_avoiding_congested"] == 1


async def test_only_congested_holders_are_still_read_from():
    node = node_of({A: {"state": "congested"}}, {})
    data = SimpleNamespace(node=node, fetcher=Fetcher(False), counters=Counter())
    await fetch_from(data, [b"x"], [A], "alice/ds")
    assert data.fetcher.asked == [[A]]
