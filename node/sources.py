"""Where a node reads a dataset's chunks from: the brokerage's rule (d) on the node.

The holders are ordered by ``steering.order_sources`` from what their node
records say (health state; at the reader's site first) and what this node
measured of its link to each (``steering.links``: state, last rate).  The fetcher reads
from several holders at once, so the order alone would change little: the
congested holders are left out while another holder can give the chunks,
and asked only to finish what the others could not give.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from replication import FetchError, FetchStats
from steering import Source, node_state, order_sources

from .logs import log

if TYPE_CHECKING:
    from .daemon import Node
    from .data import DataService

logger = logging.getLogger("gridnode.data")


def source_order(node: Node, holders: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """The holders best first, split in those that are not congested and those that are.

    A holder is congested when its node record says so, or when this node's link to
    it (``monitor.links``, measured from the transfers it got) is congested or failing;
    its rate is the link's last measured rate (0 when none was measured)."""
    site = node.cert.name
    links = node.monitor.links.links
    sources = []
    for h in holders:
        peer = node.peers.get(h)
        state, _ = node_state(node.health.get(h))
        link = links.get(h)
        if link is not None and link.classifier.state in ("congested", "failing"):
            state = "congested"
        sources.append(Source(state, same_site=peer is not None and peer.site == site,
                              rate=link.rates[-1] if link is not None and link.rates else 0.0))
    ordered = [(holders[i], sources[i].state) for i in order_sources(sources)]
    return ([h for h, st in ordered if st != "congested"],
            [h for h, st in ordered if st == "congested"])


async def fetch_from(data: DataService, need: list[bytes], holders: list[bytes], name: str,
                     progress: Callable[[int, int], None] | None = None,
                     observe: Callable[[FetchStats], None] | None = None) -> FetchStats:
    """Fetch ``need`` from the holders that are not congested; from the congested ones
    only when there is no other, or to finish what the others could not give.
    ``observe`` is told of a first fetch that fell back (the caller, of the last)."""
    first, congested = source_order(data.node, holders)
    if not (first and congested):
        return await data.fetcher.fetch(need, first or congested, progress=progress)
    data.counters["transfers_avoiding_congested"] += 1
    try:
        return await data.fetcher.fetch(need, first, progress=progress)
    except FetchError as exc:
        log(logger, "transfer.fallback", logging.WARNING, dataset=name,
            congested=len(congested), reason=f"the holders that are not congested could not "
            f"give everything ({exc}); asking the congested ones too")
        done = exc.stats
        if observe is not None:  # what the first holders gave, or failed to, counts too
            observe(done)
    stats = await data.fetcher.fetch(need, first + congested,  # what is missing only
                                     progress=progress)
    stats.chunks_fetched += done.chunks_fetched
    stats.bytes_fetched += done.bytes_fetched
    return stats
