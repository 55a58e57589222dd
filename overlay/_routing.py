"""Routing table and round-trip timing for the DHT (pure cores).

The routing table is the ``kademlia`` package's (k-buckets, replacement
caches, splitting rules), with two changes that make it safe to drive from
trio and robust under churn:

- when a full bucket cannot split, the stock table pings the bucket's
  oldest contact with a stray asyncio task; ours queues that contact in
  ``to_ping`` for the node's own maintenance task;
- a contact at an ``ip:port`` that re-joins with a new id replaces the old
  entry, which would otherwise linger until it failed twice.

Contacts that fail their RPCs are removed after ``FAILURES_TO_EVICT``
consecutive failures; the bucket's replacement cache refills it (the stock
``KBucket.remove_node`` promotes the newest replacement).
"""

from __future__ import annotations

import bisect
from collections import OrderedDict, deque
from collections.abc import Iterator

from kademlia.node import Node, NodeHeap
from kademlia.routing import KBucket
from kademlia.routing import RoutingTable as _StockRoutingTable

ID_BITS = 160
FAILURES_TO_EVICT = 2
RECENT_SAMPLES = 128
PATIENCE_FLOOR = 0.01
PATIENCE_FACTOR = 4


class RoutingTable(_StockRoutingTable):
    # Views asked for on every datagram, kept up to date rather than rebuilt
    # per query: the buckets' upper ends (changed by a split) and the
    # contacts by long id (a newcomer is added in place; a removal or a
    # split rebuilds it when next needed).  Set by flush(), which the stock
    # __init__ calls.
    _uppers: list[int]
    _by_long: dict[int, Node] | None

    def __init__(self, ksize: int, node: Node) -> None:
        super().__init__(None, ksize, node)
        self.to_ping: OrderedDict[bytes, Node] = OrderedDict()
        self._by_address: dict[tuple[str, int], bytes] = {}
        self._failures: dict[bytes, int] = {}
        self._prune_at = 64

    def flush(self) -> None:
        super().flush()
        self._changed(split=True)

    def _changed(self, *, split: bool = False) -> None:
        self._by_long = None
        if split:
            self._uppers = [b.range[1] for b in self.buckets]

    def split_bucket(self, index: int) -> None:
        super().split_bucket(index)
        self._changed(split=True)

    def add_contact(self, node: Node) -> None:
        if node.id == self.node.id:
            return
        addr = (node.ip, node.port)
        old_id = self._by_address.get(addr)
        if old_id is not None and old_id != node.id:
            old = self.get(old_id)
            # Only a contact still listed at this address is replaced: one that
            # has since been seen elsewhere lives there.
            if old is not None and (old.ip, old.port) == addr:
                self.remove_contact(old)
        if len(self._by_address) >= self._prune_at:
            self._prune()
        self._by_address[addr] = node.id
        self._failures.pop(node.id, None)
        index = self.get_bucket_for(node)
        bucket = self.buckets[index]
        held = bucket.nodes.get(node.id)
        if held is not None and held.ip == node.ip and held.port == node.port:
            bucket.nodes.move_to_end(node.id)  # seen again: what the stock add_node does
            return
        if bucket.add_node(node):  # a newcomer, or a contact that moved
            if self._by_long is not None:
                self._by_long[node.long_id] = node
            return
        if bucket.has_in_range(self.node) or _depth(bucket) % 5 != 0:
            self.split_bucket(index)
            self.add_contact(node)
            return
        # Full: the newcomer waits in the replacement cache while the oldest
        # contact is asked whether it is still there.
        head = bucket.head()
        self.to_ping[head.id] = head
        while len(self.to_ping) > self.ksize * 4:
            self.to_ping.popitem(last=False)

    def remove_contact(self, node: Node) -> None:
        index = self.get_bucket_for(node)
        bucket = self.buckets[index]
        current = bucket.nodes.get(node.id) or bucket.replacement_nodes.get(node.id)
        if current is not None and self._by_address.get((current.ip, current.port)) == node.id:
            del self._by_address[(current.ip, current.port)]
        self._failures.pop(node.id, None)
        self.to_ping.pop(node.id, None)
        bucket.remove_node(node)
        self._changed()

    def note_failure(self, node_id: bytes) -> bool:
        """Count a failed RPC; evict after repeated failures. True if evicted."""
        contact = self.get(node_id)
        if contact is None:
            return False
        failures = self._failures.get(node_id, 0) + 1
        if failures >= FAILURES_TO_EVICT:
            self.remove_contact(contact)
            return True
        self._failures[node_id] = failures
        return False

    def _prune(self) -> None:
        """Forget the addresses and failure counts of contacts no longer held.

        Contacts leave silently (a full replacement cache drops its oldest, a
        contact moves): without this, every address ever seen would be kept.
        Amortised O(1): the next prune waits until the map has doubled.
        """
        live = {n.id: (n.ip, n.port) for b in self.buckets
                for n in (*b.nodes.values(), *b.replacement_nodes.values())}
        self._by_address = {a: i for a, i in self._by_address.items() if live.get(i) == a}
        self._failures = {i: f for i, f in self._failures.items() if i in live}
        self._prune_at = max(64, 2 * len(self._by_address))

    def get_bucket_for(self, node: Node) -> int:
        # Bucket ranges include both ends and KBucket.split puts the midpoint
        # in the lower half; the stock lookup (``<``) sent an id equal to a
        # bucket's upper end to the next bucket, where get/remove missed it.
        index = bisect.bisect_left(self._uppers, node.long_id)
        if index == len(self._uppers):
            raise ValueError(f"id {node.id!r} is outside the id space")
        return index

    def find_neighbors(self, node: Node, k: int | None = None,
                       exclude: Node | None = None) -> list[Node]:
        """The k contacts closest to ``node``, the node itself included.

        The stock table leaves out a contact whose id *is* the target, so
        a lookup of a node's own id could never find that node.
        """
        return self.nearest(node.long_id, k or self.ksize,
                            None if exclude is None else exclude.long_id)

    def nearest(self, target: int, k: int, exclude: int | None = None) -> list[Node]:
        """The k contacts whose long ids are closest to ``target`` (xor), nearest first."""
        by_long = self._by_long
        if by_long is None:
            by_long = self._by_long = {n.long_id: n for b in self.buckets
                                       for n in b.nodes.values()}
        closest = sorted(by_long, key=target.__xor__)
        if exclude is not None and exclude in by_long:
            closest.remove(exclude)
        return [by_long[x] for x in closest[:k]]

    def is_failing(self, node_id: bytes) -> bool:
        """Did the contact's last RPC fail (and none succeed since)?"""
        return node_id in self._failures

    def get(self, node_id: bytes) -> Node | None:
        probe = Node(node_id)
        bucket = self.buckets[self.get_bucket_for(probe)]
        return bucket.nodes.get(node_id) or bucket.replacement_nodes.get(node_id)

    def contacts(self) -> list[Node]:
        return [n for b in self.buckets for n in b.nodes.values()]

    def __len__(self) -> int:
        return sum(len(b) for b in self.buckets)


def _depth(bucket: KBucket) -> int:
    """KBucket.depth (the length of the prefix its contacts share), without bit strings."""
    ids = [n.long_id for n in bucket.nodes.values()]
    if not ids:
        return 0
    spread = 0
    for x in ids:
        spread |= x ^ ids[0]
    return ID_BITS - spread.bit_length()


class Shortlist(NodeHeap):
    """kademlia's NodeHeap with constant-time membership, kept sorted.

    The stock heap tests membership by scanning itself, once per pushed node
    (quadratic in the shortlist), and sorts itself for every look at its
    closest nodes.  Here ``heap`` is a list sorted by distance (which is
    also a valid heap): the closest ``maxsize`` are its head.
    """

    def __init__(self, node: Node, maxsize: int) -> None:
        super().__init__(node, maxsize)
        self.heap: list[tuple[int, Node]] = []
        self.ids: set[bytes] = set()  # of every node in the heap (read-only outside)

    def push(self, nodes: Node | list[Node]) -> None:
        goal = self.node.long_id
        for node in nodes if isinstance(nodes, list) else [nodes]:
            if node.id not in self.ids:
                self.ids.add(node.id)
                bisect.insort(self.heap, (goal ^ node.long_id, node))

    def remove(self, peers: list[bytes]) -> None:
        gone = set(peers)
        if gone & self.ids:
            self.heap = [entry for entry in self.heap if entry[1].id not in gone]
            self.ids -= gone

    def popleft(self) -> Node | None:
        if not self.heap:
            return None
        node = self.heap.pop(0)[1]
        self.ids.discard(node.id)
        return node

    def __iter__(self) -> Iterator[Node]:
        return iter([node for _, node in self.heap[: self.maxsize]])

    def uncontacted(self) -> list[Node]:
        """The closest ``maxsize`` not asked yet, closest first."""
        return [node for _, node in self.heap[: self.maxsize] if node.id not in self.contacted]

    def __contains__(self, node: Node) -> bool:
        return node.id in self.ids


class RttEstimator:
    """Per-address round-trip estimates (Jacobson/Karels, as TCP) -> RPC timeouts.

    An address we have no sample for gets the timeout of a typical address.
    """

    def __init__(self, *, initial: float = 1.0, floor: float = 0.2, ceiling: float = 3.0,
                 max_entries: int = 16384) -> None:
        self.initial = initial
        self.floor = floor
        self.ceiling = ceiling
        self.max_entries = max_entries
        self._est: OrderedDict[tuple[str, int], tuple[float, float]] = OrderedDict()
        self._typical: tuple[float, float] | None = None
        self._recent: deque[float] = deque(maxlen=RECENT_SAMPLES)
        self._median: float | None = None  # of _recent; None: to be computed

    def observe(self, addr: tuple[str, int], rtt: float) -> None:
        self._recent.append(rtt)
        self._median = None
        self._est[addr] = self._update(self._est.get(addr), rtt)
        self._est.move_to_end(addr)
        while len(self._est) > self.max_entries:
            self._est.popitem(last=False)
        self._typical = self._update(self._typical, rtt)

    @staticmethod
    def _update(est: tuple[float, float] | None, rtt: float) -> tuple[float, float]:
        if est is None:
            return rtt, rtt / 2
        srtt, rttvar = est
        rttvar = 0.75 * rttvar + 0.25 * abs(srtt - rtt)
        return 0.875 * srtt + 0.125 * rtt, rttvar

    def timeout(self, addr: tuple[str, int]) -> float:
        est = self._est.get(addr)
        # An address never measured gets twice what a typical one gets.
        factor = 1.0 if est is not None else 2.0
        est = est or self._typical
        if est is None:
            return self.initial
        srtt, rttvar = est
        return min(self.ceiling, max(self.floor, factor * (srtt + 4 * rttvar)))

    def patience(self, addr: tuple[str, int]) -> float:
        """How long a lookup waits for ``addr`` before it asks someone else.

        Shorter than :meth:`timeout`: a few times the median of recent round
        trips, which bursts of load do not inflate the way they inflate the
        smoothed variance.  The call itself still runs to ``timeout`` (and
        only then counts as a failure of that contact).
        """
        if not self._recent:
            return self.timeout(addr)
        median = self._median
        if median is None:  # asked for each query, changed by each answer: sorted lazily
            median = self._median = sorted(self._recent)[len(self._recent) // 2]
        return min(self.timeout(addr), max(PATIENCE_FLOOR, PATIENCE_FACTOR * median))
