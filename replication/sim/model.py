"""What the simulated grid is made of: sites, nodes, datasets, replicas, transfers.

Units: bytes, seconds, bytes per second.  ``GB`` is 10**9 bytes.

The network (``Network``) is a fluid model of links shared evenly:

* every node has a network card (``nic``, ``lan_rate``) and every site a
  link to the rest of the grid (``wan``).  A transfer inside a site uses the
  two nodes' cards; a transfer between sites uses the two cards and the two
  sites' links.  Each link is split evenly between the transfers using it,
  and a transfer gets the smallest of its shares, and never more than its
  own cap: ``rate = min(cap, min(link.capacity / link.transfers))``.  WAN
  transfers are capped at ``wan_flow`` (one TCP stream over a long round
  trip does not fill a fast link); the replication copies into a node also
  share its ``pulls`` link, the node's replication rate limit;
* the rates of every transfer on the links of a transfer that starts, ends
  or is aborted are recomputed, and each one's finish is rescheduled from
  the bytes it has left.  This is not max-min fairness (bandwidth a
  transfer cannot use on a link is not handed to the others), so it is a
  little pessimistic under mixed bottlenecks; it is exact for a transfer
  alone on its links;
* a transfer from a node to itself takes no time.

Bytes moved between sites are counted as they flow: a finished WAN transfer
adds its size, an aborted one (its source or destination died) what it had
moved.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .engine import Engine, Event, SimError

GB = 10**9
Gbps = 10**9 / 8  # a link of 1 Gb/s moves this many bytes per second

ORIGIN = "origin"   # placed at the start or by repair; counted against the minimum
CACHE = "cache"     # left by a read (cache-on-access); evicted least recently used
POLICY = "policy"   # added by the trend policy's decisions


@dataclass(slots=True, eq=False)
class Link:
    capacity: float                              # bytes/s
    active: dict[Transfer, None] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class Site:
    index: int
    name: str
    wan: Link                                    # to the rest of the grid
    nodes: list[Node] = field(default_factory=list)
    free_cores: int = 0


@dataclass(slots=True, eq=False)
class Node:
    index: int
    id: bytes
    site: Site
    nic: Link
    cores: int
    disk: int
    pulls: Link                                  # its replication copies' rate limit
    free_cores: int = 0
    used: int = 0                                # replica bytes held or reserved
    alive: bool = True
    generation: int = 0                          # +1 at each death
    replicas: dict[int, Replica] = field(default_factory=dict)   # dataset index ->
    transfers: dict[Transfer, None] = field(default_factory=dict)
    jobs: dict[int, Any] = field(default_factory=dict)           # job index -> Job
    repl_slots: int = 0                          # replication transfers in progress
    incoming: int = 0                            # its replicas still being written

    @property
    def free_disk(self) -> int:
        return self.disk - self.used

    @property
    def load(self) -> float:
        return 1.0 - self.free_cores / self.cores


@dataclass(slots=True, eq=False)
class Dataset:
    index: int
    name: str
    size: int
    min_replicas: int
    max_replicas: int
    replicas: dict[int, Replica] = field(default_factory=dict)   # node index ->
    gone: dict[int, float] = field(default_factory=dict)         # dead holder -> when
    lost: bool = False
    version: int = 0                             # +1 at each change of its replicas

    def sources(self) -> list[Replica]:
        """Complete replicas on live nodes (leaving ones still serve reads)."""
        return [r for r in self.replicas.values() if r.complete]


@dataclass(slots=True, eq=False)
class Replica:
    dataset: Dataset
    node: Node
    kind: str
    complete: bool = False
    leaving: bool = False
    last_used: float = 0.0
    reading: int = 0                             # transfers reading from it


@dataclass(slots=True, eq=False)
class Transfer:
    src: Node
    dst: Node
    size: int
    on_done: Callable[[Transfer], None]
    on_abort: Callable[[Transfer], None]
    wan: bool
    purpose: str
    links: tuple[Link, ...] = ()
    remaining: float = 0.0
    rate: float = 0.0
    last: float = 0.0
    event: Event | None = None
    source: Replica | None = None    # the replica read
    target: Replica | None = None    # the replica written, if it makes one
    cap: float = float("inf")        # most bytes/s it may use alone


@dataclass(slots=True)
class NetStats:
    wan_bytes: float = 0.0
    wan_bytes_by_purpose: dict[str, float] = field(default_factory=dict)
    lan_bytes: float = 0.0
    transfers: int = 0
    aborted: int = 0

    def count(self, tr: Transfer, nbytes: float) -> None:
        if tr.wan:
            self.wan_bytes += nbytes
            by = self.wan_bytes_by_purpose
            by[tr.purpose] = by.get(tr.purpose, 0.0) + nbytes
        else:
            self.lan_bytes += nbytes


class Network:
    """Transfers between nodes (see the module's docstring for the sharing model)."""

    def __init__(self, engine: Engine, wan_flow: float) -> None:
        if not wan_flow > 0:
            raise SimError(f"WAN flow cap {wan_flow} must be positive")
        self.engine = engine
        self.wan_flow = wan_flow
        self.stats = NetStats()

    def start(self, src: Node, dst: Node, size: int, purpose: str,
              on_done: Callable[[Transfer], None], on_abort: Callable[[Transfer], None],
              source: Replica | None = None, target: Replica | None = None,
              limit: Link | None = None) -> Transfer:
        """Move ``size`` bytes from ``src`` to ``dst``; ``on_done`` or ``on_abort`` follows.
        ``limit``: one more link the transfer shares (a rate limit)."""
        if not (src.alive and dst.alive):
            raise SimError(f"transfer between nodes {src.index} and {dst.index}: one is dead")
        now = self.engine.now
        wan = src.site is not dst.site
        links = self._links(src, dst)
        if links and limit is not None:
            links += (limit,)
        tr = Transfer(src, dst, size, on_done, on_abort, wan, purpose, links,
                      remaining=float(size), last=now, source=source, target=target,
                      cap=self.wan_flow if wan else float("inf"))
        self.stats.transfers += 1
        src.transfers[tr] = None
        dst.transfers[tr] = None
        if source is not None:
            source.reading += 1
        if not tr.links or size <= 0:
            tr.remaining = 0.0
            tr.event = self.engine.at(now, self._finish, tr)
        else:
            for link in tr.links:
                link.active[tr] = None
            self._reshare(tr.links)
        return tr

    @staticmethod
    def _links(src: Node, dst: Node) -> tuple[Link, ...]:
        if src is dst:
            return ()
        if src.site is dst.site:
            return (src.nic, dst.nic)
        return (src.nic, src.site.wan, dst.site.wan, dst.nic)

    def rate_if_started(self, src: Node, dst: Node) -> float:
        """The rate a new transfer from ``src`` to ``dst`` would get now."""
        links = self._links(src, dst)
        if not links:
            return float("inf")
        rate = min(link.capacity / (len(link.active) + 1) for link in links)
        return min(rate, self.wan_flow) if src.site is not dst.site else rate

    def set_capacity(self, link: Link, capacity: float) -> None:
        """Change what ``link`` carries from now on (a link degraded or mended): the
        transfers on it go on at their new shares."""
        if not capacity > 0:
            raise SimError(f"link capacity {capacity} must be positive")
        link.capacity = capacity
        if link.active:
            self._reshare((link,))

    def abort(self, tr: Transfer) -> None:
        """Stop ``tr`` now (an end died); its ``on_abort`` runs."""
        self._settle(tr, self.engine.now)
        self.stats.count(tr, tr.size - tr.remaining)
        self.stats.aborted += 1
        self._remove(tr)
        tr.on_abort(tr)

    def _finish(self, tr: Transfer) -> None:
        self.stats.count(tr, tr.size)
        tr.remaining = 0.0
        self._remove(tr)
        tr.on_done(tr)

    def _remove(self, tr: Transfer) -> None:
        Engine.cancel(tr.event)
        tr.event = None
        tr.src.transfers.pop(tr, None)
        tr.dst.transfers.pop(tr, None)
        if tr.source is not None:
            tr.source.reading -= 1
        if tr.links:
            for link in tr.links:
                link.active.pop(tr, None)
            self._reshare(tr.links)

    @staticmethod
    def _settle(tr: Transfer, now: float) -> None:
        if tr.rate > 0:
            tr.remaining = max(0.0, tr.remaining - tr.rate * (now - tr.last))
        tr.last = now

    def _reshare(self, links: tuple[Link, ...]) -> None:
        now = self.engine.now
        at = self.engine.at
        finish = self._finish
        settle = self._settle
        touched: dict[Transfer, None] = {}
        for link in links:
            touched.update(link.active)
        for tr in touched:
            rate = tr.cap
            for link in tr.links:
                share = link.capacity / len(link.active)
                if share < rate:
                    rate = share
            if rate == tr.rate and tr.event is not None:
                continue
            settle(tr, now)
            tr.rate = rate
            Engine.cancel(tr.event)
            tr.event = at(now + tr.remaining / rate, finish, tr)
