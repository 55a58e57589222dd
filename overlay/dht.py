"""The DHT node: trio-native transport and lookups around kademlia's routing table.

Why not the stock ``kademlia.Server``: its transport (rpcudp) accepts any
sender, waits a fixed 5 s per dead contact, runs fire-and-forget asyncio
tasks that raise where nobody looks, and pushes stored values to any
address that pings it.  Those parts are replaced here; the package's
k-buckets, replacement caches and node heap are kept (see ``_routing``
and docs/overlay.md).

Layers inside one node, bottom up:

- ``_dgram.DatagramChecker``: every datagram is decoded and authenticated
  (grid certificate, signature, timestamp, replay) before anything else
  looks at it; failures are counted and dropped.
- RPC: requests and responses matched by msg_id *and* address
  (``_calls``); timeouts follow measured round trips (``RttEstimator``); a
  request from an address that has not proved itself runs nothing and gets
  only a retry cookie, smaller than the request.  A lookup's queries run
  without a task each.
- Handlers: an explicit table ``ping``, ``find_node``, ``find_value``,
  ``store``; storage is the validating ``RecordStore``.
- Lookups (``_lookup``): iterative, ``alpha`` queries in flight, failed
  contacts dropped at once; value lookups return the union of valid records
  of the k closest nodes (paged when a provider set does not fit one
  datagram).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import Any

import trio
from kademlia.node import Node

from ._calls import Call, Outcome, PendingCalls
from ._dgram import (
    MAX_DATAGRAM,
    AddressBook,
    DatagramChecker,
    Request,
    Response,
    Retry,
    encode_request,
    encode_response,
    encode_response_within,
    encode_retry,
    new_msg_id,
)
from ._errors import BadMessage
from ._lookup import Lookup, LookupResult, Then, parse_contacts
from ._routing import RoutingTable, RttEstimator
from ._storage import RecordStore
from .certs import Certificate, GridInfo
from .identity import ID_SIZE, KeyPair
from .records import SignedRecord

logger = logging.getLogger("gridnode.dht")

Address = tuple[str, int]
RECORDS_BUDGET = MAX_DATAGRAM - 2048  # room left for the envelope and neighbours
MAX_PAGES = 64
MAX_COOKIES = 16384
RECEIVE_BURST = 64
# A cookie from a peer is used this long (its issuer accepts it for 120-240 s).
COOKIE_FRESH = 100.0
# Without a cookie for an address, requests are padded to this size so that
# a find_node answer (20 IPv4 contacts and a cookie) may come back at once.
PAD_UNPROVED = 1200
COUNTERS = (
    "datagrams_refused",  # malformed, unauthenticated, stale or replayed
    "requests_refused",  # authenticated, but an unknown method or bad arguments
    "records_refused",  # records in answers that failed validation
    "contacts_refused",  # malformed contacts in answers
    "late_replies",  # a reply to no outstanding request
    "replies_from_wrong_address",  # a reply from elsewhere than the request went
    "retries_sent",  # answers withheld from unproved addresses
    "calls_failed",
    "contacts_evicted",
    "socket_errors",
)


@dataclass(frozen=True)
class Contact:
    node_id: bytes
    host: str
    port: int
    last_seen: float  # wall-clock seconds of the last authenticated message, 0.0 if none


def _now_ms() -> int:
    return int(time.time() * 1000)


class GridDht:
    """One node's membership in the grid's DHT."""

    def __init__(self, key: KeyPair, cert: Certificate, grid: GridInfo, *, ksize: int = 20,
                 alpha: int = 3, store: RecordStore | None = None) -> None:
        self.key = key
        self.cert = cert
        self.grid = grid
        self.node_id = key.id
        self.ksize = ksize
        self.alpha = alpha
        self.node = Node(key.id)
        self.router = RoutingTable(ksize, self.node)
        self.checker = DatagramChecker(grid)
        self.book = AddressBook()
        self.rtt = RttEstimator()
        self.store = store if store is not None else RecordStore(grid)
        self.revoked: frozenset[bytes] = frozenset()
        self.address: Address | None = None
        self.counters: Counter[str] = Counter({name: 0 for name in COUNTERS})
        self.last_seen: dict[bytes, float] = {}
        self._sock: socket.socket | None = None
        self._calls = PendingCalls()
        self._background: trio.Nursery | None = None
        self._rechecking: set[bytes] = set()
        # Cookies that other nodes gave us, sent along so they answer at once.
        # Cookies peers gave us, with when (trio clock) we got them.
        self._cookies: OrderedDict[Address, tuple[bytes, float]] = OrderedDict()
        self._handlers: dict[str, Callable[[Request, Address], Any]] = {
            "ping": self._rpc_ping,
            "find_node": self._rpc_find_node,
            "find_value": self._rpc_find_value,
            "store": self._rpc_store,
        }

    # -- lifecycle -----------------------------------------------------------

    async def bind(self, host: str, port: int) -> Address:
        """Bind the UDP socket; OSError if it cannot be had."""
        # A plain non-blocking socket driven with trio.lowlevel: a burst of
        # datagrams is read and answered without a trip through the
        # scheduler for each one.  Hosts are IP literals: bind does no I/O.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        await trio.lowlevel.checkpoint()
        self._sock = sock
        name = sock.getsockname()
        self.address = (name[0], name[1])
        return self.address

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Serve on the bound socket until cancelled; closes it on the way out."""
        sock = self._sock
        if sock is None:
            raise RuntimeError("bind() before serve()")
        try:
            async with trio.open_nursery() as nursery:
                self._background = nursery
                nursery.start_soon(self._receive_loop)
                nursery.start_soon(self._calls.expire, self._fail)
                task_status.started()
        finally:
            self._background = None
            self._sock = None
            trio.lowlevel.notify_closing(sock)
            sock.close()
            self._calls.close(self._fail)

    # -- the door: receive and dispatch ----------------------------------------

    async def _receive_loop(self) -> None:
        sock = self._sock
        assert sock is not None
        while True:
            await trio.lowlevel.wait_readable(sock)
            for _ in range(RECEIVE_BURST):
                try:
                    data, addr = sock.recvfrom(MAX_DATAGRAM + 1)
                except BlockingIOError:
                    break
                except OSError as exc:  # e.g. an ICMP error surfacing on some kernels
                    self.counters["socket_errors"] += 1
                    logger.debug("recvfrom failed: %r", exc)
                    continue
                await self._handle_datagram(data, (addr[0], addr[1]))
            else:
                await trio.lowlevel.checkpoint()  # a long burst: let others run too

    async def _handle_datagram(self, data: bytes, addr: Address) -> None:
        try:
            msg = self.checker.decode_untrusted(data, _now_ms())
        except BadMessage as exc:
            self.counters["datagrams_refused"] += 1
            logger.debug("refused datagram from %s: %s", addr, exc)
            return
        if isinstance(msg, Request):
            await self._serve_request(msg, addr)
            return
        call = self._calls.by_id.get(msg.msg_id)
        if call is None:
            self.counters["late_replies"] += 1
            return
        if call.addr != addr:
            # Replies count only from the address the request went to.
            self.counters["replies_from_wrong_address"] += 1
            return
        if call.then is None:
            call.reply = msg
            call.done.set()
            return
        del self._calls.by_id[msg.msg_id]
        cookie = self._remember_cookie(addr, msg.cookie) if msg.cookie else b""
        if isinstance(msg, Retry):
            if call.attempts < 2:
                self._send_call(call, cookie)
            else:
                self._fail(call)
            return
        call.then(self._answered(call.addr, call.expect_id, msg, call.started))

    async def _serve_request(self, req: Request, addr: Address) -> None:
        now = time.monotonic()
        peer = (*addr, req.sender)
        proved = self.book.is_proved(peer, now)
        if not proved and req.cookie and self.book.cookie_valid(peer, req.cookie, now):
            self.book.prove(peer, now)
            proved = True
        handler = self._handlers.get(req.method)
        if handler is None:
            self.counters["requests_refused"] += 1
            return
        try:
            result = handler(req, addr)
        except BadMessage as exc:
            self.counters["requests_refused"] += 1
            logger.debug("refused %s from %s: %s", req.method, addr, exc)
            return
        if not proved:
            # An unproved address gets an answer (with a cookie to prove
            # itself next time) only if it is no larger than its request;
            # otherwise just the cookie.  It does not enter the routing table.
            cookie = self.book.cookie(peer, now)
            reply = encode_response_within(self.key.signing_key, self.cert, req.msg_id,
                                           _now_ms(), result, cookie, req.size)
            if reply is None:  # too large: not even signed
                reply = encode_retry(req.msg_id, cookie)
                self.counters["retries_sent"] += 1
            if len(reply) <= req.size:
                await self._send(reply, addr)
            return
        self.book.prove(peer, now)  # proved and talking: keep it proved
        self.last_seen[req.sender] = time.time()
        if req.sender not in self.revoked:
            self.router.add_contact(Node(req.sender, addr[0], addr[1]))
        reply = encode_response(self.key.signing_key, self.cert, req.msg_id, _now_ms(), result)
        await self._send(reply, addr)

    async def _send(self, data: bytes, addr: Address) -> bool:
        sock = self._sock
        if sock is None:
            return False
        try:
            while True:
                try:
                    sock.sendto(data, addr)
                    return True
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(sock)
        except OSError as exc:
            self.counters["socket_errors"] += 1
            logger.debug("sendto %s failed: %r", addr, exc)
            return False

    # -- RPC client --------------------------------------------------------------

    async def call(self, addr: Address, method: str, args: list[Any], *,
                   expect_id: bytes | None = None) -> tuple[bytes, Any] | None:
        """Ask ``addr``; return (responder id, result), or None on failure or timeout."""
        cookie = self._cookie_for(addr)
        for _attempt in range(2):
            msg_id = new_msg_id()
            data = encode_request(self.key.signing_key, self.cert, msg_id, _now_ms(), method,
                                  args, cookie, pad_to=0 if cookie else PAD_UNPROVED)
            call = Call(addr)
            self._calls.add(msg_id, call)
            started = time.monotonic()
            try:
                if not await self._send(data, addr):
                    break
                with trio.move_on_after(self.rtt.timeout(addr)):
                    await call.done.wait()
            finally:
                del self._calls.by_id[msg_id]
            reply = call.reply
            if reply is not None and reply.cookie:
                cookie = self._remember_cookie(addr, reply.cookie)
            if isinstance(reply, Retry):
                continue
            if reply is None:
                break
            return self._answered(addr, expect_id, reply, started)
        self._failed(addr, expect_id)
        return None

    def _answered(self, addr: Address, expect_id: bytes | None, reply: Response,
                  started: float) -> tuple[bytes, Any]:
        """What an answer teaches us about its sender; its (sender, result)."""
        now = time.monotonic()
        self.rtt.observe(addr, now - started)
        if expect_id is not None and reply.sender != expect_id:
            # Someone else lives there now: forget the old contact.
            self._forget(expect_id)
        self.book.prove((*addr, reply.sender), now)
        self.last_seen[reply.sender] = time.time()
        if reply.sender not in self.revoked:
            self.router.add_contact(Node(reply.sender, addr[0], addr[1]))
        return reply.sender, reply.result

    def _failed(self, addr: Address, expect_id: bytes | None) -> None:
        """A call got no answer: count it against the contact."""
        self.counters["calls_failed"] += 1
        if expect_id is not None:
            if self.router.note_failure(expect_id):
                self.counters["contacts_evicted"] += 1
            elif (self._background is not None and expect_id not in self._rechecking
                  and self.router.get(expect_id) is not None):
                # One more try decides soon whether a contact that failed once
                # is gone, instead of leaving it to cost other lookups.
                self._rechecking.add(expect_id)
                self._background.start_soon(self._recheck, addr, expect_id)

    # Task-less calls (see ``_calls``): a lookup's queries.

    def _start_call(self, addr: Address, method: str, args: list[Any], expect_id: bytes | None,
                    then: Callable[[Outcome], None]) -> None:
        """Ask ``addr`` as ``call`` does; ``then`` gets the outcome.  Only while serving."""
        call = Call(addr, then=then, method=method, args=args, expect_id=expect_id)
        self._send_call(call, self._cookie_for(addr))

    def _send_call(self, call: Call, cookie: bytes) -> None:
        sock = self._sock
        if sock is None:
            self._fail(call)
            return
        call.attempts += 1
        msg_id = new_msg_id()
        data = encode_request(self.key.signing_key, self.cert, msg_id, _now_ms(), call.method,
                              call.args, cookie, pad_to=0 if cookie else PAD_UNPROVED)
        call.started = time.monotonic()
        try:
            sock.sendto(data, call.addr)
        except BlockingIOError:  # a full send buffer: wait for room in the background
            if self._background is not None:
                self._background.start_soon(self._send, data, call.addr)
        except OSError as exc:
            self.counters["socket_errors"] += 1
            logger.debug("sendto %s failed: %r", call.addr, exc)
            self._fail(call)
            return
        self._calls.add(msg_id, call, trio.current_time() + self.rtt.timeout(call.addr))

    def _fail(self, call: Call) -> None:
        """A task-less call got no answer in time."""
        self._failed(call.addr, call.expect_id)
        assert call.then is not None
        call.then(None)

    async def _recheck(self, addr: Address, node_id: bytes) -> None:
        try:
            await self.ping(addr, node_id)
        finally:
            self._rechecking.discard(node_id)

    def _cookie_for(self, addr: Address) -> bytes:
        """A cookie the peer still accepts, or b"" (then the request is padded).

        A peer accepts its cookie in the time slot it was issued and the next
        (2-4 min, ``AddressBook.SLOT``): one younger than a slot always holds."""
        entry = self._cookies.get(addr)
        if entry is None:
            return b""
        if trio.current_time() - entry[1] >= COOKIE_FRESH:
            del self._cookies[addr]
            return b""
        return entry[0]

    def _remember_cookie(self, addr: Address, cookie: bytes) -> bytes:
        self._cookies[addr] = (cookie, trio.current_time())
        self._cookies.move_to_end(addr)
        while len(self._cookies) > MAX_COOKIES:
            self._cookies.popitem(last=False)
        return cookie

    def _forget(self, node_id: bytes) -> None:
        contact = self.router.get(node_id)
        if contact is not None:
            self.router.remove_contact(contact)

    async def ping(self, addr: Address, expect_id: bytes | None = None) -> bytes | None:
        reply = await self.call(addr, "ping", [], expect_id=expect_id)
        return reply[0] if reply else None

    # -- handlers (sync: they only read and write memory) -----------------------------

    def _rpc_ping(self, req: Request, addr: Address) -> list[Any]:
        return []

    def _neighbours(self, target: bytes, exclude: bytes) -> list[list[Any]]:
        # A contact that just failed us is not handed to others: it may be
        # dead, and a dead contact costs every lookup that tries it.
        failing = self.router.is_failing
        out = []
        for n in self.router.nearest(int.from_bytes(target, "big"), self.ksize + 8):
            if n.id != exclude and not failing(n.id):
                out.append([n.id, n.ip, n.port])
                if len(out) == self.ksize:
                    break
        return out

    def _rpc_find_node(self, req: Request, addr: Address) -> list[list[Any]]:
        (target,) = _args(req, 1)
        _check_id(target)
        return self._neighbours(target, req.sender)

    def _rpc_find_value(self, req: Request, addr: Address) -> dict[str, Any]:
        key, after = _args(req, 2)
        _check_id(key)
        if not (isinstance(after, bytes) and len(after) in (0, ID_SIZE)):
            raise BadMessage("bad cursor")
        records = sorted(self.store.get(key, time.time(), self.revoked), key=lambda r: r.signer)
        page: list[bytes] = []
        used = 0
        more = False
        for rec in records:
            if after and rec.signer <= after:
                continue
            if used + len(rec.raw) > RECORDS_BUDGET:
                more = True
                break
            page.append(rec.raw)
            used += len(rec.raw)
        nodes = self._neighbours(key, req.sender) if not after else []
        return {"records": page, "more": more, "nodes": nodes}

    def _rpc_store(self, req: Request, addr: Address) -> str:
        (raw,) = _args(req, 1)
        return self.store.put_untrusted(raw, time.time(), self.revoked)

    # -- lookups ---------------------------------------------------------------

    async def lookup(self, target: bytes, *, find_value: bool = False) -> LookupResult:
        """Iterative lookup of the k nodes closest to ``target`` (and their records).

        See ``_lookup``.  A node lookup's queries run without tasks; a value
        lookup's (paged) and those of a node that is not serving run one task
        each.  A query the lookup stopped waiting for goes on in the node's
        own nursery until its real timeout, and only then counts against the
        contact.
        """
        records: dict[bytes, SignedRecord] = {}

        def learn(answer: Any, known: Container[bytes]) -> list[Node]:
            if find_value and isinstance(answer, dict):
                self._merge_records(target, answer.get("records"), records)
            nodes = answer.get("nodes") if isinstance(answer, dict) else answer
            return self._parse_nodes(nodes, known)

        async with trio.open_nursery() as local:
            spawn = self._background.start_soon if self._background else local.start_soon

            def ask(contact: Node, then: Then) -> None:
                if find_value or self._background is None:
                    spawn(self._query, contact, target, find_value, then)
                else:
                    self._start_call((contact.ip, contact.port), "find_node", [target],
                                     contact.id, lambda outcome: then(_result(outcome)))

            lookup = Lookup(target, self.router, self.rtt, ksize=self.ksize, alpha=self.alpha)
            result = await lookup.run(ask, learn, local)
            local.cancel_scope.cancel()
        result.records = list(records.values())
        return result

    async def _query(self, contact: Node, target: bytes, find_value: bool,
                     then: Then) -> None:
        """One lookup step against one contact, as a task; the answer goes to ``then``."""
        addr = (contact.ip, contact.port)
        answer: Any = None
        if not find_value:
            reply = await self.call(addr, "find_node", [target], expect_id=contact.id)
            answer = None if reply is None else reply[1]
        else:
            after = b""
            for _page in range(MAX_PAGES):
                reply = await self.call(addr, "find_value", [target, after],
                                        expect_id=contact.id)
                if reply is None or not isinstance(reply[1], dict):
                    break
                page = reply[1]
                if answer is None:
                    answer = {"nodes": page.get("nodes"), "records": []}
                got = page.get("records")
                if not isinstance(got, list) or not got:
                    break
                answer["records"] += got
                if page.get("more") is not True:
                    break
                try:
                    after = SignedRecord.from_bytes_untrusted(
                        got[-1], self.grid, time.time(), revoked=self.revoked).signer
                except BadMessage:
                    break
        then(answer)

    def _parse_nodes(self, nodes: Any, known: Container[bytes] = ()) -> list[Node]:
        """Contacts from a peer's answer (see ``parse_contacts``), never ourselves."""
        found, refused = parse_contacts(nodes, 2 * self.ksize, known, self.node_id, self.revoked)
        self.counters["contacts_refused"] += refused
        return found

    def _merge_records(self, key: bytes, raws: Any, records: dict[bytes, SignedRecord]) -> None:
        if not isinstance(raws, list):
            return
        now = time.time()
        for raw in raws:
            try:
                rec = SignedRecord.from_bytes_untrusted(raw, self.grid, now, revoked=self.revoked)
                if rec.key != key:
                    raise BadMessage("record for another key")
            except BadMessage as exc:
                # Dropped on read, counted: get() never returns it.
                self.counters["records_refused"] += 1
                logger.debug("refused record for %s: %s", key.hex(), exc)
                continue
            old = records.get(rec.signer)
            if old is None or rec.seq > old.seq:
                records[rec.signer] = rec

    # -- the public operations -----------------------------------------------------

    async def bootstrap(self, addrs: list[Address]) -> int:
        """Ping ``addrs``, then look up our own id; returns how many answered."""
        addrs = [a for a in addrs if a != self.address]
        answered = 0

        async def one(addr: Address) -> None:
            nonlocal answered
            if await self.ping(addr) is not None:
                answered += 1

        async with trio.open_nursery() as nursery:
            for addr in addrs:
                nursery.start_soon(one, addr)
        if answered:
            result = await self.lookup(self.node_id)
            # The lookup's answers carried cookies: a ping with them proves
            # our address, which is what lets those nodes add us.
            async with trio.open_nursery() as nursery:
                for n in result.nodes:
                    nursery.start_soon(self.ping, (n.ip, n.port), n.id)
        return answered

    async def refresh(self) -> None:
        """Look up our own id and a random one; ask stale bucket heads; purge the store."""
        for target in (self.node_id, os.urandom(ID_SIZE)):
            await self.lookup(target)
        heads = list(self.router.to_ping.values())
        self.router.to_ping.clear()
        if self._background is not None:
            for head in heads:  # answered (or not) in the background
                self._background.start_soon(self._ping_head, head)
        self.store.purge(time.time(), self.revoked)
        # Keep last-seen times only for contacts still held: bounded by the table.
        held = {n.id for b in self.router.buckets
                for n in (*b.nodes.values(), *b.replacement_nodes.values())}
        self.last_seen = {i: t for i, t in self.last_seen.items() if i in held}

    async def _ping_head(self, head: Node) -> None:
        """Ask a full bucket's oldest contact whether it is still there."""
        await self.ping((head.ip, head.port), expect_id=head.id)  # failures evict it

    async def get(self, key: bytes) -> list[SignedRecord]:
        """The union of fresh, valid records under ``key`` from the k closest nodes."""
        result = await self.lookup(key, find_value=True)
        records = {r.signer: r for r in result.records}
        for rec in self.store.get(key, time.time(), self.revoked):
            if rec.signer not in records or rec.seq > records[rec.signer].seq:
                records[rec.signer] = rec
        return list(records.values())

    async def put(self, record: SignedRecord) -> int:
        """Store ``record`` on the k nodes closest to its key; returns how many took it."""
        result = await self.lookup(record.key)
        stored = 0
        farthest = max((goal_distance(n, record.key) for n in result.nodes), default=None)
        if farthest is None or goal_distance(self.node, record.key) < farthest or \
                len(result.nodes) < self.ksize:
            self.store.put(record)

        async def one(n: Node) -> None:
            nonlocal stored
            reply = await self.call((n.ip, n.port), "store", [record.raw], expect_id=n.id)
            if reply is not None and reply[1] in ("stored", "replaced", "same"):
                stored += 1

        async with trio.open_nursery() as nursery:
            for n in result.nodes:
                nursery.start_soon(one, n)
        return stored

    def set_revoked(self, revoked: frozenset[bytes]) -> None:
        """Adopt a revocation list: drop those contacts, their records and datagrams."""
        self.revoked = revoked
        self.checker.set_revoked(revoked)
        for node_id in revoked:
            self._forget(node_id)
        self.store.purge(time.time(), revoked)

    def contacts(self) -> list[Contact]:
        return [Contact(n.id, n.ip, n.port, self.last_seen.get(n.id, 0.0))
                for n in self.router.contacts()]

    def statistics(self) -> dict[str, int]:
        return {
            **{f"store_{k}": v for k, v in self.store.counters.items()},
            **self.counters,
            "contacts": len(self.router),
            "records_held": len(self.store),
            "buckets": len(self.router.buckets),
        }


def _result(outcome: Outcome) -> Any:
    return None if outcome is None else outcome[1]


def goal_distance(node: Node, key: bytes) -> int:
    return node.long_id ^ int.from_bytes(key, "big")


def _args(req: Request, n: int) -> list[Any]:
    if len(req.args) != n:
        raise BadMessage(f"{req.method} takes {n} arguments, got {len(req.args)}")
    return req.args


def _check_id(x: Any) -> None:
    if not (isinstance(x, bytes) and len(x) == ID_SIZE):
        raise BadMessage("ids and keys are 20 bytes")

