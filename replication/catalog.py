"""The catalog of datasets, with no centre.

The record of dataset ``scope:name`` lives on its *catalog home*: the R
(default 3) catalog nodes whose ids are closest by XOR to
``catalog_key(name)``, computed over the catalog nodes that are alive.

- A catalog node (:class:`CatalogNode`) keeps, per name, the one record it
  holds; it takes an offered record if it has none, or if the new one may
  replace its own by the append-only rule (``replace_refusal``), and stores
  it on disk before it says ``stored``.  Of two different records of one
  version it keeps the one it saw first.
- A write (:meth:`CatalogClient.put`) offers the record to every home
  member at once; it is acknowledged when a majority of the home set holds
  it.  A member that cannot be reached is replaced, for this write, by the
  next closest catalog node.
- A read (:meth:`CatalogClient.get`) asks every home member, verifies every
  answer, keeps the one of the highest version and offers it to the
  members that answered an older one or none (read repair).

No ballots are needed: records are signed by their owners, so a member can
store only what an owner wrote, and versions only grow under the replace
rule, so "the newest" is a property of the records, not of who wrote them.
docs/datasets.md ("Catalog") says what a reader sees when an owner signs
two different records of one version.
"""

from __future__ import annotations

import builtins
import hashlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

import trio

from overlay import (
    BadMessage,
    CallContext,
    GridInfo,
    Method,
    RpcError,
    RpcPool,
    bad_request,
    log_event,
)

from .dataset import DatasetName, DatasetNameError, DatasetRecord, replace_refusal

logger = logging.getLogger("gridnode.catalog")

CATALOG_DOMAIN = b"gridnode/dataset/"
KEY_SIZE = 20
DEFAULT_R = 3
MAX_R = 15
CALL_TIMEOUT = 5.0
# catalog.list: at most this many records per call, and the records of one
# answer stop before their total passes LIST_BUDGET bytes (the answer must
# fit one frame of 1 MiB; one record alone always goes, since it came in
# through a frame of the same size).
MAX_LIST = 10_000
LIST_BUDGET = 768 * 1024
# Bytes of records one catalog node keeps in memory (and on disk); an offer
# beyond it is refused and counted.
MAX_CATALOG_BYTES = 1024 * 1024 * 1024
# What a put message adds around the record (call id, method name, map).
FRAME_OVERHEAD = 256
# Catalog nodes asked at once by CatalogClient.list.
LIST_FAN_OUT = 8

STORED, SAME, REFUSED = "stored", "same", "refused: "


class CatalogError(ValueError):
    """The catalog could not do what was asked; one line says why."""


class CatalogStore(Protocol):
    """Where a catalog node keeps its records (the node's SQLite file)."""

    async def save_dataset(self, name: str, version: int, raw: bytes) -> None: ...
    async def load_datasets(self) -> list[bytes]: ...


def _no_revocations() -> frozenset[bytes]:
    return frozenset()


def log(event: str, level: int = logging.INFO, **fields: Any) -> None:
    log_event(logger, event, level, **fields)


# -- where a record lives (pure) ---------------------------------------------------


def catalog_key(name: DatasetName) -> bytes:
    """The 20-byte key of a dataset's name: its catalog home is closest to it."""
    return hashlib.blake2b(CATALOG_DOMAIN + str(name).encode(), digest_size=KEY_SIZE).digest()


def _ranked(name: DatasetName, catalog_nodes: Iterable[bytes]) -> list[bytes]:
    target = int.from_bytes(catalog_key(name), "big")
    return sorted(set(catalog_nodes), key=lambda n: int.from_bytes(n, "big") ^ target)


def catalog_home(name: DatasetName, catalog_nodes: Iterable[bytes],
                 r: int = DEFAULT_R) -> tuple[bytes, ...]:
    """The ``r`` catalog nodes closest by XOR to ``catalog_key(name)``, closest first.

    Node ids are distinct and of one length, so their distances to the key are
    distinct too: the order depends only on the set of ids, never on the order
    they were given in.  Fewer than ``r`` nodes: all of them.
    """
    if not 1 <= r <= MAX_R:
        raise ValueError(f"r must be 1-{MAX_R}, got {r}")
    return tuple(_ranked(name, catalog_nodes)[:r])


def majority(n: int) -> int:
    return n // 2 + 1


def is_refusal(answer: str) -> bool:
    return answer.startswith(REFUSED)


# -- one catalog node ----------------------------------------------------------------


class CatalogNode:
    """What a catalog-role node keeps: name -> the one record it holds.

    Records are in memory (and on disk through ``store``); ``offer`` stores a
    record on disk before it answers ``stored``.  Offers for one name are
    decided one at a time, so the disk never goes back to an older record.
    """

    def __init__(self, grid: GridInfo, store: CatalogStore,
                 revoked: Callable[[], frozenset[bytes]] = _no_revocations, *,
                 max_bytes: int = MAX_CATALOG_BYTES) -> None:
        self.grid = grid
        self.store = store
        self.revoked = revoked
        self.max_bytes = max_bytes
        self.records: dict[DatasetName, DatasetRecord] = {}
        self.bytes = 0
        self.counters: Counter[str] = Counter()
        for name in ("records_loaded", "records_unreadable", "records_stored", "records_same",
                     "records_refused", "records_refused_full", "records_bad", "gets",
                     "lists", "lists_truncated"):
            self.counters[name] = 0
        self._locks: dict[DatasetName, trio.Lock] = {}

    async def load(self) -> int:
        """Read the stored records (at start); those that no longer verify are skipped,
        counted and logged.  Returns how many were loaded."""
        revoked = self.revoked()
        for raw in await self.store.load_datasets():
            try:
                rec = DatasetRecord.from_bytes_untrusted(raw, self.grid, revoked=revoked)
            except BadMessage as exc:
                self.counters["records_unreadable"] += 1
                log("catalog.record_unreadable", logging.WARNING, reason=exc)
                continue
            old = self.records.get(rec.name)
            if old is not None:
                self.bytes -= len(old.raw)
            self.records[rec.name] = rec
            self.bytes += len(rec.raw)
            self.counters["records_loaded"] += 1
        log("catalog.loaded", records=len(self.records), bytes=self.bytes,
            unreadable=self.counters["records_unreadable"])
        return len(self.records)

    async def offer(self, record: DatasetRecord) -> str:
        """``stored``, ``same`` or ``refused: <why>``; ``record`` must be checked already."""
        lock = self._locks.get(record.name)
        if lock is None:
            lock = self._locks[record.name] = trio.Lock()
        try:
            async with lock:
                return await self._offer(record)
        finally:
            # Release hands the lock straight to the next waiter, if any.
            if not lock.locked() and self._locks.get(record.name) is lock:
                del self._locks[record.name]

    async def _offer(self, record: DatasetRecord) -> str:
        old = self.records.get(record.name)
        if old is not None and old.raw == record.raw:
            self.counters["records_same"] += 1
            return SAME
        why = None if old is None else replace_refusal(old, record)
        if why is None:
            grown = len(record.raw) - (0 if old is None else len(old.raw))
            if self.bytes + grown > self.max_bytes:
                self.counters["records_refused_full"] += 1
                why = (f"the catalog on this node is full ({self.bytes} of {self.max_bytes} "
                       f"bytes)")
        if why is not None:
            self.counters["records_refused"] += 1
            log("catalog.refused", logging.DEBUG, dataset=record.name,
                version=record.version, reason=why)
            return REFUSED + why
        await self.store.save_dataset(str(record.name), record.version, record.raw)
        self.records[record.name] = record
        self.bytes += grown
        self.counters["records_stored"] += 1
        log("catalog.stored", logging.DEBUG, dataset=record.name, version=record.version)
        return STORED

    def get(self, name: DatasetName) -> DatasetRecord | None:
        """The record held for ``name``; None if none, or its owner was revoked."""
        self.counters["gets"] += 1
        rec = self.records.get(name)
        if rec is None or rec.owner_id in self.revoked():
            return None
        return rec

    def list(self, scope: str | None = None, limit: int = 1000, *,
             after: DatasetName | None = None) -> builtins.list[DatasetRecord]:
        """Records sorted by name, of one scope or all, after ``after``, at most ``limit``."""
        self.counters["lists"] += 1
        revoked = self.revoked()
        names = sorted(n for n in self.records
                       if (scope is None or n.scope == scope) and (after is None or n > after))
        out: builtins.list[DatasetRecord] = []
        for n in names:
            if len(out) >= limit:
                break
            rec = self.records[n]
            if rec.owner_id not in revoked:
                out.append(rec)
        return out

    def statistics(self) -> dict[str, int]:
        return {**self.counters, "records": len(self.records), "bytes": self.bytes,
                "max_bytes": self.max_bytes}


# -- its RPC surface -------------------------------------------------------------------


def catalog_methods(node: CatalogNode) -> dict[str, Method]:
    """The catalog's RPC table: nodes write, members read."""

    async def put(ctx: CallContext, args: Any) -> str:
        if not (isinstance(args, dict) and isinstance(args.get("record"), bytes)):
            raise bad_request("catalog.put takes {record: bytes}")
        try:
            rec = DatasetRecord.from_bytes_untrusted(args["record"], node.grid,
                                                     revoked=node.revoked())
        except BadMessage as exc:
            node.counters["records_bad"] += 1
            log("catalog.bad_record", logging.WARNING, peer=ctx.peer_id, reason=exc)
            raise bad_request(f"bad record: {exc}") from None
        return await node.offer(rec)

    async def get(ctx: CallContext, args: Any) -> bytes | None:
        if not isinstance(args, dict):
            raise bad_request("catalog.get takes {name: 'scope:name'}")
        rec = node.get(_name_arg(args.get("name"), "name"))
        return None if rec is None else rec.raw

    async def list_(ctx: CallContext, args: Any) -> dict[str, Any]:
        if not isinstance(args, dict):
            raise bad_request("catalog.list takes {scope?, limit?, after?}")
        scope, limit = args.get("scope"), args.get("limit", 1000)
        if not (scope is None or isinstance(scope, str) and len(scope) <= 64):
            raise bad_request("scope must be a string")
        if not (type(limit) is int and 0 <= limit <= MAX_LIST):
            raise bad_request(f"limit must be 0-{MAX_LIST}")
        after = args.get("after")
        after_name = None if after is None else _name_arg(after, "after")
        records = node.list(scope, limit, after=after_name)
        out: list[bytes] = []
        used = 0
        for rec in records:
            used += len(rec.raw) + 8
            if out and used > LIST_BUDGET:
                break
            out.append(rec.raw)
        complete = len(out) == len(records)
        if not complete:
            node.counters["lists_truncated"] += 1
        return {"records": out, "complete": complete}

    return {
        "catalog.put": Method(put, access="node"),
        "catalog.get": Method(get, inline=True),
        "catalog.list": Method(list_),
    }


def _name_arg(text: Any, what: str) -> DatasetName:
    if not (isinstance(text, str) and len(text) <= 400):
        raise bad_request(f"{what} must be 'scope:name'")
    scope, colon, name = text.partition(":")
    try:
        if not colon:
            raise DatasetNameError(f"{text!r} has no scope")
        return DatasetName(scope, name)
    except DatasetNameError as exc:
        raise bad_request(f"bad dataset name: {exc}") from None


# -- how any node reads and writes it ---------------------------------------------------


class CatalogClient:
    """Reads and writes the catalog through the home sets of the live catalog nodes.

    ``catalog_nodes()`` gives the live catalog-role nodes (id -> address) as
    this node knows them; ``local`` is this node's own catalog when it has the
    role, used directly when it is a home member.
    """

    def __init__(self, grid: GridInfo, pool: RpcPool, me: bytes,
                 catalog_nodes: Callable[[], dict[bytes, tuple[str, int]]],
                 local: CatalogNode | None = None, r: int = DEFAULT_R,
                 revoked: Callable[[], frozenset[bytes]] = _no_revocations,
                 timeout: float = CALL_TIMEOUT) -> None:
        if not 1 <= r <= MAX_R:
            raise ValueError(f"r must be 1-{MAX_R}, got {r}")
        self.grid = grid
        self.pool = pool
        self.me = me
        self.catalog_nodes = catalog_nodes
        self.local = local
        self.r = r
        self.revoked = revoked
        self.timeout = timeout
        self.counters: Counter[str] = Counter()
        for name in ("puts", "puts_failed", "gets", "gets_failed", "gets_short_of_majority",
                     "lists", "lists_failed", "members_failed", "answers_bad",
                     "repairs_offered", "repairs_stored", "repairs_refused"):
            self.counters[name] = 0

    def statistics(self) -> dict[str, int]:
        return dict(self.counters)

    # -- who to ask

    def _nodes(self) -> dict[bytes, tuple[str, int] | None]:
        nodes: dict[bytes, tuple[str, int] | None] = dict(self.catalog_nodes())
        if self.local is not None:
            nodes[self.me] = None
        else:
            nodes.pop(self.me, None)  # no catalog here: no one would answer for it
        return nodes

    def home(self, name: DatasetName) -> tuple[bytes, ...]:
        """The home set of ``name`` over the live catalog nodes, closest first."""
        return catalog_home(name, self._nodes(), self.r)

    async def _call(self, nodes: dict[bytes, tuple[str, int] | None], member: bytes,
                    method: str, args: Any) -> Any:
        address = nodes.get(member)
        if address is None:
            raise RpcError("unavailable", f"catalog node {member.hex()} has no address")
        return await self.pool.call(address[0], address[1], method, args, expect_id=member,
                                    timeout=self.timeout)

    async def _spread(self, name: DatasetName,
                      ask: Callable[[bytes], Awaitable[Any]]) -> tuple[dict[bytes, Any], int]:
        """``ask`` each home member at once; one that cannot be reached is replaced by the
        next closest catalog node.  Returns the answers by member and the home's size."""
        ranked = _ranked(name, self._nodes())
        size = min(self.r, len(ranked))
        answers: dict[bytes, Any] = {}
        failed = 0

        async def one(member: bytes) -> None:
            nonlocal failed
            try:
                answers[member] = await ask(member)
            except (RpcError, BadMessage) as exc:
                failed += 1
                self.counters["members_failed"] += 1
                log("catalog.member_failed", logging.DEBUG, member=member, dataset=name,
                    reason=exc)

        wave, rest = ranked[:size], ranked[size:]
        with trio.move_on_after(self.timeout * 2):
            while wave:
                failed = 0
                async with trio.open_nursery() as nursery:
                    for member in wave:
                        nursery.start_soon(one, member)
                wave, rest = rest[:failed], rest[failed:]
        return answers, size

    # -- write

    async def put(self, record: DatasetRecord) -> int:
        """Offer ``record`` to its home set; how many members hold it now.

        CatalogError when fewer than a majority do, saying a member's refusal if
        there was one (a newer version, another owner...).
        """
        self.counters["puts"] += 1
        cap = self.pool.creds.max_frame - FRAME_OVERHEAD
        if len(record.raw) > cap:
            self.counters["puts_failed"] += 1
            raise CatalogError(f"the record of {record.name} is {len(record.raw)} bytes, over "
                               f"the {cap} bytes one message can carry: split the dataset")
        nodes = self._nodes()
        if not nodes:
            self.counters["puts_failed"] += 1
            raise CatalogError("no catalog node is known: cannot publish "
                               f"{record.name} (is any node of the grid a catalog node?)")

        async def offer(member: bytes) -> str:
            if member == self.me and self.local is not None:
                return await self.local.offer(record)
            try:
                answer = await self._call(nodes, member, "catalog.put", {"record": record.raw})
            except RpcError as exc:
                if exc.code in ("bad_request", "forbidden"):
                    return REFUSED + str(exc.args[0])  # it answered: no one takes its place
                raise
            if not (isinstance(answer, str) and (answer in (STORED, SAME)
                                                 or is_refusal(answer))):
                raise BadMessage(f"bad catalog.put answer {str(answer)[:80]!r}")
            return answer

        answers, size = await self._spread(record.name, offer)
        held = sum(1 for a in answers.values() if a in (STORED, SAME))
        need = majority(size)
        refusals = sorted({a[len(REFUSED):] for a in answers.values() if is_refusal(a)})
        if refusals:
            log("catalog.put_refused", dataset=record.name, version=record.version,
                held=held, reason="; ".join(refusals))
        if held < need:
            self.counters["puts_failed"] += 1
            why = f"refused: {refusals[0]}" if refusals else "not enough catalog nodes answered"
            raise CatalogError(f"{record.name} version {record.version} not published, {why} "
                               f"(stored on {held} of {size} catalog nodes, {need} needed)")
        log("catalog.put", logging.DEBUG, dataset=record.name, version=record.version,
            held=held, home=size)
        return held

    # -- read

    def _verify(self, raw: Any, checked: dict[bytes, DatasetRecord]) -> DatasetRecord:
        """A checked record from an answer (BadMessage otherwise); known bytes are not
        checked twice."""
        if not isinstance(raw, bytes):
            raise BadMessage("a record is bytes")
        rec = checked.get(raw)
        if rec is None:
            rec = DatasetRecord.from_bytes_untrusted(raw, self.grid, revoked=self.revoked())
            checked[raw] = rec
        return rec

    async def get(self, name: DatasetName) -> DatasetRecord | None:
        """The newest record of ``name`` among its home members, or None.

        Every answer is verified; one that does not verify or is for another name
        is counted and ignored.  Members that answered an older record or none get
        the newest (read repair, bounded by the timeout).  CatalogError when no
        member gave an answer.
        """
        self.counters["gets"] += 1
        nodes = self._nodes()
        if not nodes:
            self.counters["gets_failed"] += 1
            raise CatalogError(f"no catalog node is known: cannot look up {name}")
        checked: dict[bytes, DatasetRecord] = {}
        bad: list[bytes] = []

        async def ask(member: bytes) -> DatasetRecord | None:
            if member == self.me and self.local is not None:
                return self.local.get(name)
            raw = await self._call(nodes, member, "catalog.get", {"name": str(name)})
            if raw is None:
                return None
            try:
                rec = self._verify(raw, checked)
                if rec.name != name:
                    raise BadMessage(f"asked for {name}, got a record of {rec.name}")
            except BadMessage as exc:
                self.counters["answers_bad"] += 1
                bad.append(member)
                log("catalog.bad_answer", logging.WARNING, member=member, dataset=name,
                    reason=exc)
                raise
            return rec

        answers, size = await self._spread(name, ask)
        if not answers:
            self.counters["gets_failed"] += 1
            raise CatalogError(f"no catalog node answered for {name} ({size} asked)")
        if len(answers) < majority(size):
            self.counters["gets_short_of_majority"] += 1
        best = newest(answers.values())
        if best is not None:
            # Members that answered garbage get the record too (an honest one may have
            # a damaged copy); those that could not be reached are not waited for.
            stale = [m for m, rec in answers.items()
                     if rec is None or rec.version < best.version] + bad
            if stale:
                await self._repair(nodes, best, stale)
        return best

    async def _repair(self, nodes: dict[bytes, tuple[str, int] | None],
                      record: DatasetRecord, members: list[bytes]) -> None:
        async def one(member: bytes) -> None:
            self.counters["repairs_offered"] += 1
            try:
                if member == self.me and self.local is not None:
                    answer = await self.local.offer(record)
                else:
                    answer = await self._call(nodes, member, "catalog.put",
                                              {"record": record.raw})
            except RpcError as exc:
                log("catalog.repair_failed", logging.DEBUG, member=member,
                    dataset=record.name, reason=exc)
                return
            if answer in (STORED, SAME):
                self.counters["repairs_stored"] += 1
            else:
                self.counters["repairs_refused"] += 1
                log("catalog.repair_refused", member=member, dataset=record.name,
                    version=record.version, answer=str(answer)[:200])

        with trio.move_on_after(self.timeout):
            async with trio.open_nursery() as nursery:
                for member in dict.fromkeys(members):
                    nursery.start_soon(one, member)

    async def list(self, scope: str | None = None, limit: int = 1000
                   ) -> builtins.list[DatasetRecord]:
        """The datasets (of ``scope``, or all) known to the live catalog nodes: the
        newest record of each name, sorted by name, at most ``limit``."""
        if not 0 <= limit <= MAX_LIST:
            raise ValueError(f"limit must be 0-{MAX_LIST}")
        self.counters["lists"] += 1
        nodes = self._nodes()
        if not nodes:
            self.counters["lists_failed"] += 1
            raise CatalogError("no catalog node is known: cannot list datasets")
        checked: dict[bytes, DatasetRecord] = {}
        found: dict[DatasetName, list[DatasetRecord]] = {}
        answered = 0
        limiter = trio.CapacityLimiter(LIST_FAN_OUT)

        def take(rec: DatasetRecord) -> None:
            found.setdefault(rec.name, []).append(rec)

        async def one(member: bytes) -> None:
            nonlocal answered
            if member == self.me and self.local is not None:
                for rec in self.local.list(scope, limit):
                    take(rec)
                answered += 1
                return
            async with limiter:
                try:
                    for rec in await self._list_from(nodes, member, scope, limit, checked):
                        take(rec)
                except (RpcError, BadMessage) as exc:
                    self.counters["members_failed"] += 1
                    log("catalog.list_failed", logging.DEBUG, member=member, reason=exc)
                    return
                answered += 1

        async with trio.open_nursery() as nursery:
            for member in nodes:
                nursery.start_soon(one, member)
        if not answered:
            self.counters["lists_failed"] += 1
            raise CatalogError(f"no catalog node answered ({len(nodes)} asked)")
        out = [newest(recs) for _, recs in sorted(found.items())]
        return [rec for rec in out if rec is not None][:limit]

    async def _list_from(self, nodes: dict[bytes, tuple[str, int] | None], member: bytes,
                         scope: str | None, limit: int,
                         checked: dict[bytes, DatasetRecord]
                         ) -> builtins.list[DatasetRecord]:
        """One member's first ``limit`` records, page by page; bad records are counted
        and dropped."""
        out: builtins.list[DatasetRecord] = []
        after: DatasetName | None = None
        while len(out) < limit:
            args: dict[str, Any] = {"limit": limit - len(out)}
            if scope is not None:
                args["scope"] = scope
            if after is not None:
                args["after"] = str(after)
            answer = await self._call(nodes, member, "catalog.list", args)
            if not (isinstance(answer, dict) and isinstance(answer.get("records"), list)
                    and isinstance(answer.get("complete"), bool)
                    and len(answer["records"]) <= limit - len(out)):
                raise BadMessage("bad catalog.list answer")
            progressed = False
            for raw in answer["records"]:
                try:
                    rec = self._verify(raw, checked)
                    if (scope is not None and rec.name.scope != scope
                            or after is not None and rec.name <= after):
                        raise BadMessage(f"{rec.name} was not asked for")
                except BadMessage as exc:
                    self.counters["answers_bad"] += 1
                    log("catalog.bad_answer", logging.WARNING, member=member, reason=exc)
                    continue
                out.append(rec)
                after, progressed = rec.name, True
            if answer["complete"] or not progressed:
                break
        return out


def newest(records: Iterable[DatasetRecord | None]) -> DatasetRecord | None:
    """The record of the highest version; of two different ones of that version, the one
    the most answers hold, then the smallest bytes (so every reader picks the same)."""
    held: Counter[bytes] = Counter()
    by_raw: dict[bytes, DatasetRecord] = {}
    for rec in records:
        if rec is not None:
            held[rec.raw] += 1
            by_raw[rec.raw] = rec
    if not by_raw:
        return None
    best = min(by_raw, key=lambda raw: (-by_raw[raw].version, -held[raw], raw))
    return by_raw[best]
