"""Where a node reads chunks from: the brokerage's rule (d) with its peers' health."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest

from node.sources import fetch_from, source_order
from replication import FetchError, FetchStats

A, B, C, D = (bytes([i]) * 20 for i in range(1, 5))


def node_of(health, sites):
    peers = {h: SimpleNamespace(site=s) for h, s in sites.items()}
    return SimpleNamespace(cert=SimpleNamespace(name="here"), peers=peers, health=health)


def test_holders_at_this_site_first_and_congested_ones_apart():
    node = node_of({A: {"state": "ok"}, B: {"state": "congested"}, D: {"state": "failing"}},
                   {A: "there", B: "here", D: "here"})  # C: no record, no known site
    first, congested = source_order(node, [A, B, C, D])
    # A failing holder serves bytes as well as an ok one (its jobs fail, not its disks).
    assert first == [D, A, C] and congested == [B]
    assert source_order(node, [B]) == ([], [B])


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
    stats = await fetch_from(data, [b"x"], [A, B], "alice/ds")
    if fail_first:
        assert data.fetcher.asked == [[B], [B, A]]
        assert (stats.chunks_fetched, stats.bytes_fetched) == (3, 15)
    else:
        assert data.fetcher.asked == [[B]]
    assert data.counters["transfers_avoiding_congested"] == 1


async def test_only_congested_holders_are_still_read_from():
    node = node_of({A: {"state": "congested"}}, {})
    data = SimpleNamespace(node=node, fetcher=Fetcher(False), counters=Counter())
    await fetch_from(data, [b"x"], [A], "alice/ds")
    assert data.fetcher.asked == [[A]]
