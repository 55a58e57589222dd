"""The dataset catalog: where records live, one catalog node's rules, and the
catalog over real secure channels (majority writes, verified reads, repair)."""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from overlay import (
    CallContext,
    Certificate,
    ChannelServer,
    Credentials,
    Method,
    RpcError,
    RpcPool,
    RpcServer,
    seal,
)
from replication import (
    CHUNK_SIZE,
    DATASET_TAG,
    CatalogClient,
    CatalogError,
    CatalogNode,
    DatasetName,
    DatasetRecord,
    FileManifest,
    ReplicationPolicy,
    add_files,
    catalog_home,
    catalog_key,
    catalog_methods,
    change_policy,
    close_dataset,
)
from replication.catalog import LIST_BUDGET, newest
from replication.chunks import chunk_hash
from tests.overlay.common import SETTINGS, fixed_key

from .common import ADMIN_CERT, ALICE, ALICE_CERT, AUTH, BOB, BOB_CERT, GRID, NOW, ROOT

RUN1 = DatasetName("alice", "run1")
WALL = int(time.time())  # node certificates must be valid now for the handshake


def manifest(name: str, chunks: int = 1) -> FileManifest:
    hashes = tuple(chunk_hash(f"{name}/{i}".encode()) for i in range(chunks))
    return FileManifest(name, chunks * CHUNK_SIZE, chunk_hash(name.encode()), hashes)


def record(name: DatasetName = RUN1, files: tuple[FileManifest, ...] = (), *,
           key: Any = ALICE, cert: Certificate = ALICE_CERT, **kw: Any) -> DatasetRecord:
    return DatasetRecord.create(key, cert, name, created=NOW + 0.5, files=files, **kw)


def forged(rec: DatasetRecord, **changes: Any) -> bytes:
    """``rec`` with fields changed, signed by a key that is not the owner's."""
    fields = [1, rec.owner.raw, rec.name.scope, rec.name.name, rec.created,
              rec.policy.to_wire(), [f.to_wire() for f in rec.files], rec.closed,
              changes.get("version", rec.version)]
    return seal(DATASET_TAG, fields, BOB.signing_key)


@dataclass
class MemoryStore:
    """The two methods of node.state.State that the catalog uses, in memory."""

    rows: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    saves: int = 0
    gate: trio.Event | None = None  # when set, saves wait for it
    broken: bool = False

    async def save_dataset(self, name: str, version: int, raw: bytes) -> None:
        await trio.lowlevel.checkpoint()
        if self.gate is not None:
            await self.gate.wait()
        if self.broken:
            raise OSError("disk full")
        self.rows[name] = (version, raw)
        self.saves += 1

    async def load_datasets(self) -> list[bytes]:
        return [raw for _, raw in self.rows.values()]


def catalog(store: MemoryStore | None = None, **kw: Any) -> CatalogNode:
    return CatalogNode(GRID, store if store is not None else MemoryStore(), **kw)


def node_id(n: int) -> bytes:
    return fixed_key(n).id


# -- where a record lives -----------------------------------------------------------------


def test_catalog_key_is_the_hash_of_the_name_under_its_domain() -> None:
    key = catalog_key(RUN1)
    assert key == hashlib.blake2b(b"gridnode/dataset/alice:run1", digest_size=20).digest()
    assert len(key) == 20
    assert catalog_key(DatasetName("alice", "run2")) != key
    assert catalog_key(DatasetName("bob", "run1")) != key


def test_catalog_home_is_the_closest_nodes_closest_first() -> None:
    nodes = [node_id(n) for n in range(40, 50)]
    home = catalog_home(RUN1, nodes)
    target = int.from_bytes(catalog_key(RUN1), "big")
    dist = [int.from_bytes(n, "big") ^ target for n in home]
    assert len(home) == 3 and dist == sorted(dist)
    assert all(int.from_bytes(n, "big") ^ target > dist[-1] for n in nodes if n not in home)
    # The order the nodes come in, and repeats, change nothing.
    rng = random.Random(5)
    for _ in range(20):
        shuffled = rng.sample(nodes, len(nodes))
        assert catalog_home(RUN1, shuffled + shuffled[:3]) == home
    assert catalog_home(RUN1, nodes, 5)[:3] == home
    # Another name has another home (for these ten nodes).
    assert catalog_home(DatasetName("alice", "run2"), nodes) != home


def test_catalog_home_with_fewer_nodes_than_r() -> None:
    nodes = [node_id(40), node_id(41)]
    home = catalog_home(RUN1, nodes, 3)
    assert sorted(home) == sorted(nodes)
    assert catalog_home(RUN1, [], 3) == ()
    with pytest.raises(ValueError, match="r must be"):
        catalog_home(RUN1, nodes, 0)


def test_catalog_home_when_a_member_leaves_the_next_closest_joins() -> None:
    nodes = [node_id(n) for n in range(40, 50)]
    ranked = catalog_home(RUN1, nodes, len(nodes))
    for gone in ranked[:3]:
        home = catalog_home(RUN1, [n for n in nodes if n != gone])
        assert home == tuple(n for n in ranked[:4] if n != gone)


@SETTINGS
@given(st.sets(st.binary(min_size=20, max_size=20), max_size=30), st.integers(1, 15),
       st.text("abcxyz0189_", min_size=1, max_size=8))
def test_catalog_home_is_a_prefix_of_the_xor_ranking(nodes: set[bytes], r: int,
                                                     name: str) -> None:
    dn = DatasetName("s", name)
    target = int.from_bytes(catalog_key(dn), "big")
    ranked = sorted(nodes, key=lambda n: int.from_bytes(n, "big") ^ target)
    assert catalog_home(dn, nodes, r) == tuple(ranked[:r])
    assert catalog_home(dn, reversed(ranked), r) == tuple(ranked[:r])


def test_newest_prefers_the_version_then_the_most_held_then_the_smallest_bytes() -> None:
    v1 = record()
    v2a = record(version=2)
    v2b = record(version=2, closed=True)
    assert newest([None, v1, v2a, None]) is v2a
    assert newest([None, None]) is None
    assert newest([v2a, v2b, v2b, v1]) is v2b
    small = min(v2a, v2b, key=lambda r: r.raw)
    assert newest([v2a, v2b]) is small and newest([v2b, v2a]) is small


# -- one catalog node -----------------------------------------------------------------------


async def test_offer_stores_new_and_newer_records_on_disk_first() -> None:
    store = MemoryStore()
    node = catalog(store)
    v1 = record()
    assert await node.offer(v1) == "stored"
    assert store.rows["alice:run1"] == (1, v1.raw)
    assert await node.offer(v1) == "same"
    v2 = add_files(v1, [manifest("a.root")], ALICE, ALICE_CERT)
    assert await node.offer(v2) == "stored"
    assert store.rows["alice:run1"] == (2, v2.raw) and node.get(RUN1) == v2
    assert node.counters["records_stored"] == 2 and node.counters["records_same"] == 1
    assert store.saves == 2


@pytest.mark.parametrize("why", ["older", "same_version", "other_owner", "reopen",
                                 "changed_files"])
async def test_offer_refuses_what_the_replace_rule_forbids(why: str) -> None:
    store = MemoryStore()
    node = catalog(store)
    v1 = record(files=(manifest("a"),))
    v2 = add_files(v1, [manifest("b")], ALICE, ALICE_CERT)
    closed = close_dataset(v2, ALICE, ALICE_CERT)
    held, offered, reason = {
        "older": (v2, v1, "version 1 does not replace version 2"),
        "same_version": (v2, record(files=(manifest("a"), manifest("c")), version=2),
                         "version 2 does not replace version 2"),
        "other_owner": (v1, record(files=(manifest("a"), manifest("b")), key=ROOT,
                                   cert=ADMIN_CERT, version=5), "belongs to alice"),
        "reopen": (closed, record(files=v2.files, version=4), "stays closed"),
        "changed_files": (v2, record(files=(manifest("b"), manifest("a")), version=3),
                          "may only add files"),
    }[why]
    assert await node.offer(held) == "stored"
    answer = await node.offer(offered)
    assert answer.startswith("refused: ") and reason in answer
    assert node.get(RUN1) == held and store.rows["alice:run1"][1] == held.raw
    assert node.counters["records_refused"] == 1


async def test_a_closed_dataset_still_changes_its_policy() -> None:
    node = catalog()
    closed = close_dataset(record(files=(manifest("a"),)), ALICE, ALICE_CERT)
    wider = change_policy(closed, ReplicationPolicy(3, 6), ALICE, ALICE_CERT)
    assert await node.offer(closed) == "stored"
    assert await node.offer(wider) == "stored"
    assert node.get(RUN1) == wider


async def test_offers_for_one_name_are_decided_one_at_a_time() -> None:
    """Two newer versions in flight together: the disk never goes back to the older."""
    store = MemoryStore()
    node = catalog(store)
    v1 = record()
    v2 = add_files(v1, [manifest("a")], ALICE, ALICE_CERT)
    v3 = add_files(v2, [manifest("b")], ALICE, ALICE_CERT)
    assert await node.offer(v1) == "stored"
    store.gate = trio.Event()
    answers: dict[int, str] = {}

    async def offer(rec: DatasetRecord) -> None:
        answers[rec.version] = await node.offer(rec)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(offer, v3)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(offer, v2)
        await trio.testing.wait_all_tasks_blocked()
        store.gate.set()
    assert answers[3] == "stored" and answers[2].startswith("refused: version 2")
    assert store.rows["alice:run1"] == (3, v3.raw) and node.get(RUN1) == v3
    assert not node._locks  # no lock left behind


async def test_a_failed_save_keeps_the_old_record() -> None:
    store = MemoryStore()
    node = catalog(store)
    v1 = record()
    assert await node.offer(v1) == "stored"
    store.broken = True
    with pytest.raises(OSError):
        await node.offer(add_files(v1, [manifest("a")], ALICE, ALICE_CERT))
    assert node.get(RUN1) == v1 and node.counters["records_stored"] == 1


async def test_a_full_catalog_refuses_and_counts() -> None:
    node = catalog(max_bytes=3000)
    small = record()
    assert await node.offer(small) == "stored"
    big = record(DatasetName("alice", "big"), files=tuple(manifest(f"f{i}") for i in range(40)))
    answer = await node.offer(big)
    assert answer.startswith("refused: the catalog on this node is full")
    assert node.get(big.name) is None
    assert node.statistics()["records_refused_full"] == 1
    assert node.statistics()["bytes"] == len(small.raw)


async def test_get_and_list_sorted_by_name_by_scope_with_limit_and_after() -> None:
    node = catalog()
    names = [DatasetName("alice", n) for n in ("zeta", "alpha", "mid")]
    for n in names:
        assert await node.offer(record(n)) == "stored"
    bobs = record(DatasetName("bob", "x"), key=BOB, cert=BOB_CERT)
    assert await node.offer(bobs) == "stored"
    assert node.get(DatasetName("alice", "nope")) is None
    assert [str(r.name) for r in node.list()] == ["alice:alpha", "alice:mid", "alice:zeta",
                                                  "bob:x"]
    assert [str(r.name) for r in node.list("bob")] == ["bob:x"]
    assert [str(r.name) for r in node.list("alice", 2)] == ["alice:alpha", "alice:mid"]
    assert [str(r.name) for r in node.list(None, 10, after=DatasetName("alice", "mid"))] == [
        "alice:zeta", "bob:x"]
    assert node.list("carol") == []


async def test_a_revoked_owner_s_records_are_not_served() -> None:
    revoked: frozenset[bytes] = frozenset()
    node = catalog(revoked=lambda: revoked)
    assert await node.offer(record()) == "stored"
    assert await node.offer(record(DatasetName("bob", "x"), key=BOB, cert=BOB_CERT)) == "stored"
    revoked = frozenset({ALICE_CERT.subject_id})
    assert node.get(RUN1) is None
    assert [str(r.name) for r in node.list()] == ["bob:x"]


async def test_reload_from_the_store_skips_and_counts_what_no_longer_verifies(caplog) -> None:
    store = MemoryStore()
    first = catalog(store)
    v2 = add_files(record(), [manifest("a")], ALICE, ALICE_CERT)
    assert await first.offer(v2) == "stored"
    bobs = record(DatasetName("bob", "x"), key=BOB, cert=BOB_CERT)
    assert await first.offer(bobs) == "stored"
    store.rows["alice:bad"] = (1, forged(record(DatasetName("alice", "bad"))))
    store.rows["alice:junk"] = (1, b"\x93junk")

    again = catalog(store, revoked=lambda: frozenset({BOB_CERT.subject_id}))
    assert await again.load() == 1
    assert again.get(RUN1) == v2 and again.get(bobs.name) is None
    assert again.counters["records_unreadable"] == 3  # forged, junk, revoked owner
    assert again.statistics()["records"] == 1
    assert "catalog.record_unreadable" in caplog.text
    # What it loaded holds: the stored version is the floor for new offers.
    assert (await again.offer(record(files=(manifest("z"),), version=2))).startswith(
        "refused: version 2 does not replace version 2")


# -- its RPC table, called directly ---------------------------------------------------------

NODE_CERT = Certificate.issue(AUTH, kind="node", subject_key=fixed_key(60).public_key,
                              name="site-x", roles=("catalog",), not_before=NOW - 3600,
                              not_after=NOW + 86400 * 3650)
CTX = CallContext(NODE_CERT, "127.0.0.1:1")


async def test_catalog_methods_access_and_answers() -> None:
    node = catalog()
    methods = catalog_methods(node)
    assert {n: m.access for n, m in methods.items()} == {
        "catalog.put": "node", "catalog.get": "member", "catalog.list": "member"}
    v1 = record()
    assert await methods["catalog.put"].fn(CTX, {"record": v1.raw}) == "stored"
    assert await methods["catalog.put"].fn(CTX, {"record": v1.raw}) == "same"
    assert await methods["catalog.get"].fn(CTX, {"name": "alice:run1"}) == v1.raw
    assert await methods["catalog.get"].fn(CTX, {"name": "alice:run2"}) is None
    assert await methods["catalog.list"].fn(CTX, {}) == {"records": [v1.raw],
                                                         "complete": True}


@pytest.mark.parametrize("method, args, why", [
    ("catalog.put", {"record": b"\x93junk"}, "bad record"),
    ("catalog.put", {"record": "text"}, "takes {record: bytes}"),
    ("catalog.put", None, "takes {record: bytes}"),
    ("catalog.get", {"name": "run1"}, "has no scope"),
    ("catalog.get", {"name": "alice:a/b"}, "bad dataset name"),
    ("catalog.get", {"name": 7}, "scope:name"),
    ("catalog.list", {"limit": 10_001}, "limit must be"),
    ("catalog.list", {"limit": -1}, "limit must be"),
    ("catalog.list", {"scope": 3}, "scope must be"),
    ("catalog.list", {"after": "x"}, "has no scope"),
    ("catalog.list", [], "takes"),
])
async def test_catalog_methods_refuse_bad_arguments(method: str, args: Any, why: str) -> None:
    node = catalog()
    with pytest.raises(RpcError, match=why) as err:
        await catalog_methods(node)[method].fn(CTX, args)
    assert err.value.code == "bad_request"


async def test_a_forged_or_revoked_record_is_a_bad_request_and_counted() -> None:
    revoked = frozenset({BOB_CERT.subject_id})
    node = catalog(revoked=lambda: revoked)
    put = catalog_methods(node)["catalog.put"].fn
    for raw in (forged(record(version=7)),
                record(DatasetName("bob", "x"), key=BOB, cert=BOB_CERT).raw):
        with pytest.raises(RpcError, match="bad record") as err:
            await put(CTX, {"record": raw})
        assert err.value.code == "bad_request"
    assert node.counters["records_bad"] == 2 and node.get(RUN1) is None


async def test_catalog_list_answers_fit_a_frame_and_page_with_after() -> None:
    node = catalog()
    # About 200 KiB each: four of them pass the list budget.
    big = [record(DatasetName("alice", f"big{i}"), files=(manifest(f"f{i}", 6400),))
           for i in range(5)]
    for rec in big:
        assert 190_000 < len(rec.raw) < 230_000
        assert await node.offer(rec) == "stored"
    list_ = catalog_methods(node)["catalog.list"].fn
    first = await list_(CTX, {"scope": "alice"})
    assert first["complete"] is False
    assert first["records"] == [r.raw for r in big[:3]]
    assert sum(len(r) for r in first["records"]) <= LIST_BUDGET
    rest = await list_(CTX, {"scope": "alice", "after": "alice:big2"})
    assert rest == {"records": [r.raw for r in big[3:]], "complete": True}
    assert node.counters["lists_truncated"] == 1
    assert await list_(CTX, {"limit": 2}) == {"records": [r.raw for r in big[:2]],
                                              "complete": True}


# -- the catalog over real secure channels ----------------------------------------------------


@dataclass
class Member:
    """One in-process node: its catalog behind a real ChannelServer, and its client."""

    n: int
    creds: Credentials
    node: CatalogNode
    rpc: RpcServer
    pool: RpcPool
    port: int = 0
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    client: CatalogClient | None = None

    @property
    def id(self) -> bytes:
        return self.creds.key.id

    def stop(self) -> None:
        """The node goes down: its server and every channel to it close."""
        self.scope.cancel()

    @property
    def cat(self) -> CatalogClient:
        assert self.client is not None
        return self.client


def node_creds(n: int) -> Credentials:
    key = fixed_key(n)
    cert = Certificate.issue(AUTH, kind="node", subject_key=key.public_key, name=f"site-{n}",
                             roles=("catalog",), not_before=WALL - 3600,
                             not_after=WALL + 86400)
    return Credentials(key, cert, GRID)


async def _serve(member: Member, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    server = ChannelServer(member.creds, member.rpc.serve_channel, counters=member.rpc.counters)
    with member.scope:
        async with trio.open_nursery() as nursery:
            _, port = await nursery.start(server.serve, "127.0.0.1", 0)
            task_status.started(port)
            await trio.sleep_forever()


@asynccontextmanager
async def catalog_grid(count: int, *, methods: dict[int, Any] | None = None,
                       call_timeout: float = 5.0) -> AsyncIterator[list[Member]]:
    """``count`` catalog nodes on 127.0.0.1; ``methods[i]`` replaces node i's RPC table."""
    members = []
    async with trio.open_nursery() as nursery:
        for i in range(count):
            creds = node_creds(70 + i)
            node = CatalogNode(GRID, MemoryStore())
            table = (methods or {}).get(i, catalog_methods)(node)
            pool = RpcPool(creds)
            await nursery.start(pool.run)
            members.append(Member(i, creds, node, RpcServer(table), pool))
        for m in members:
            m.port = await nursery.start(_serve, m)
        every = {m.id: ("127.0.0.1", m.port) for m in members}
        for m in members:
            m.client = CatalogClient(GRID, m.pool, m.id,
                                     lambda me=m.id: {i: a for i, a in every.items() if i != me},
                                     local=m.node, timeout=call_timeout)
        with trio.fail_after(60):
            yield members
        nursery.cancel_scope.cancel()


def by_home(members: list[Member], name: DatasetName) -> list[Member]:
    """The members in the order of ``name``'s home: the home set first."""
    ranked = catalog_home(name, [m.id for m in members], len(members))
    return sorted(members, key=lambda m: ranked.index(m.id))


def holders(members: list[Member], rec: DatasetRecord) -> list[int]:
    return [m.n for m in members if (got := m.node.get(rec.name)) is not None
            and got.raw == rec.raw]


async def test_put_through_one_node_and_get_through_another() -> None:
    async with catalog_grid(4) as members:
        home = by_home(members, RUN1)
        outsider = home[3]  # not a home member: every write goes over the network
        v1 = record(files=(manifest("a"),))
        assert await outsider.cat.put(v1) == 3
        assert sorted(holders(members, v1)) == sorted(m.n for m in home[:3])
        assert outsider.node.get(RUN1) is None
        # A home member reads its own copy directly, and the others' over the wire.
        calls = [m.rpc.counters["calls"] for m in home]
        got = await home[0].cat.get(RUN1)
        assert got == v1 and got is not None and got.raw == v1.raw
        assert [m.rpc.counters["calls"] - c for m, c in zip(home, calls, strict=True)] == [
            0, 1, 1, 0]
        assert await outsider.cat.get(DatasetName("alice", "nothing")) is None
        assert all(m.node.counters["records_stored"] == 1 for m in home[:3])


async def test_a_member_that_is_down_does_not_stop_put_or_get() -> None:
    async with catalog_grid(3) as members:
        home = by_home(members, RUN1)
        home[0].stop()  # the closest member: its server and channels are gone
        writer, reader = home[1], home[2]
        v1 = record()
        assert await writer.cat.put(v1) == 2  # 2 of 3: a majority
        assert sorted(holders(members, v1)) == sorted([home[1].n, home[2].n])
        v2 = add_files(v1, [manifest("a")], ALICE, ALICE_CERT)
        assert await reader.cat.put(v2) == 2
        assert await writer.cat.get(RUN1) == v2
        assert writer.cat.counters["members_failed"] >= 1
        home[1].stop()  # now only one of three is left: no majority
        v3 = add_files(v2, [manifest("b")], ALICE, ALICE_CERT)
        with pytest.raises(CatalogError, match=r"stored on 1 of 3 catalog nodes, 2 needed"):
            await reader.cat.put(v3)
        # Reading still works from what is left.  A failed put is not undone: the
        # member that stored it serves it (docs/datasets.md, "Catalog").
        assert await reader.cat.get(RUN1) == v3
        assert reader.cat.counters["gets_short_of_majority"] == 1


async def test_the_next_closest_node_stands_in_for_a_member_that_is_down() -> None:
    async with catalog_grid(4) as members:
        home = by_home(members, RUN1)
        home[1].stop()
        v1 = record()
        assert await home[3].cat.put(v1) == 3  # the fourth node took the dead one's place
        assert sorted(holders(members, v1)) == sorted([home[0].n, home[2].n, home[3].n])
        # Reads ask it too, while the member is down.
        home[0].node.records.clear()
        home[2].node.records.clear()
        assert await home[0].cat.get(RUN1) == v1


async def test_an_older_version_after_a_newer_is_refused_and_named() -> None:
    async with catalog_grid(3) as members:
        v1 = record()
        v2 = add_files(v1, [manifest("a")], ALICE, ALICE_CERT)
        assert await members[0].cat.put(v2) == 3
        with pytest.raises(CatalogError,
                           match=r"alice:run1 version 1 not published, refused: version 1 "
                                 r"does not replace version 2 \(stored on 0 of 3") as err:
            await members[1].cat.put(v1)
        assert "\n" not in str(err.value)
        assert isinstance(err.value, ValueError)
        assert all(m.node.get(RUN1) == v2 for m in members)
        # A record of another owner for alice's dataset: refused with the reason.
        squat = record(files=v2.files + (manifest("b"),), key=ROOT, cert=ADMIN_CERT,
                       version=3)
        with pytest.raises(CatalogError, match="belongs to alice; root signed"):
            await members[2].cat.put(squat)


async def test_get_ignores_a_forged_record_from_a_malicious_member() -> None:
    v1 = record(files=(manifest("a"),))
    evil = forged(v1, version=99)  # newer than anything: chosen if it were believed
    other = record(DatasetName("alice", "other"), version=50).raw  # valid, wrong name

    def lying(answer: bytes) -> Any:
        def table(node: CatalogNode) -> dict[str, Any]:
            methods = catalog_methods(node)

            async def get(ctx: CallContext, args: Any) -> bytes:
                return answer

            return {**methods, "catalog.get": Method(get)}
        return table

    for answer in (evil, other, b"\x93junk"):
        async with catalog_grid(3, methods={1: lying(answer)}) as members:
            assert await members[0].cat.put(v1) == 3
            for reader in (members[0], members[2]):
                got = await reader.cat.get(RUN1)
                assert got is not None and got.raw == v1.raw and got.version == 1
                assert reader.cat.counters["answers_bad"] == 1


async def test_get_repairs_members_that_hold_an_older_record_or_none() -> None:
    async with catalog_grid(3) as members:
        home = by_home(members, RUN1)
        v1 = record()
        assert await home[0].cat.put(v1) == 3
        v2 = add_files(v1, [manifest("a")], ALICE, ALICE_CERT)
        assert await home[1].node.offer(v2) == "stored"  # only one member saw v2
        home[2].node.records.clear()  # and one lost its copy
        got = await home[0].cat.get(RUN1)
        assert got == v2
        assert sorted(holders(members, v2)) == sorted(m.n for m in members)
        assert home[0].cat.counters["repairs_stored"] == 2
        assert home[0].cat.counters["repairs_offered"] == 2


async def test_get_with_no_member_answering_is_an_error_and_none_when_no_one_has_it() -> None:
    async with catalog_grid(3, call_timeout=2.0) as members:
        members[1].stop()
        members[2].stop()
        assert await members[0].cat.get(RUN1) is None  # its own copy answers
        lone = CatalogClient(GRID, members[0].pool, members[0].id,
                             lambda: {m.id: ("127.0.0.1", m.port) for m in members[1:]})
        with pytest.raises(CatalogError, match="no catalog node answered for alice:run1"):
            await lone.get(RUN1)
        with pytest.raises(CatalogError, match="no catalog node answered"):
            await lone.list()
        empty = CatalogClient(GRID, members[0].pool, members[0].id, dict)
        with pytest.raises(CatalogError, match="no catalog node is known"):
            await empty.put(record())


async def test_list_merges_every_catalog_node_newest_first_sorted_by_name() -> None:
    async with catalog_grid(4) as members:
        names = [DatasetName("alice", n) for n in ("c", "a", "b", "d", "e")]
        recs = [record(n) for n in names]
        for i, rec in enumerate(recs):
            assert await members[i % 4].cat.put(rec) == 3
        v2 = add_files(recs[1], [manifest("x")], ALICE, ALICE_CERT)
        holder = next(m for m in members if m.node.get(v2.name) is not None)
        assert await holder.node.offer(v2) == "stored"  # the others hold version 1
        bobs = record(DatasetName("bob", "y"), key=BOB, cert=BOB_CERT)
        assert await members[0].cat.put(bobs) == 3
        listed = await members[3].cat.list()
        assert [str(r.name) for r in listed] == ["alice:a", "alice:b", "alice:c", "alice:d",
                                                 "alice:e", "bob:y"]
        assert listed[0] == v2
        assert [str(r.name) for r in await members[2].cat.list("bob")] == ["bob:y"]
        assert [str(r.name) for r in await members[1].cat.list("alice", 2)] == ["alice:a",
                                                                                "alice:b"]


async def test_list_pages_through_answers_bigger_than_one_frame() -> None:
    async with catalog_grid(3) as members:
        big = [record(DatasetName("alice", f"big{i}"), files=(manifest(f"f{i}", 6400),))
               for i in range(5)]
        for rec in big:
            assert await members[0].cat.put(rec) == 3
        client = CatalogClient(GRID, members[0].pool, members[0].id,
                               lambda: {members[1].id: ("127.0.0.1", members[1].port)})
        listed = await client.list("alice")
        assert [r.raw for r in listed] == [r.raw for r in big]
        assert members[1].node.counters["lists_truncated"] >= 1


async def test_a_record_too_big_for_one_message_is_refused_before_sending() -> None:
    async with catalog_grid(3) as members, trio.open_nursery() as nursery:
        small = RpcPool(Credentials(members[0].creds.key, members[0].creds.cert, GRID,
                                    max_frame=100_000))
        await nursery.start(small.run)
        client = CatalogClient(GRID, small, members[0].id,
                               lambda: {m.id: ("127.0.0.1", m.port) for m in members[1:]})
        big = record(files=(manifest("f", 6400),))  # about 200 KiB signed
        with pytest.raises(CatalogError, match=r"over the 99744 bytes one message can carry"):
            await client.put(big)
        assert all(m.node.get(RUN1) is None for m in members)
        assert small.statistics()["connections_opened"] == 0
        nursery.cancel_scope.cancel()
