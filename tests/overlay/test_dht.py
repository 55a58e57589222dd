"""Real DHT nodes on loopback: lookups, provider sets, and a grid under attack."""

from __future__ import annotations

import random
import time
from typing import Any

import trio

from overlay import (
    GridDht,
    NodeRecord,
    RecordStore,
    SignedRecord,
    node_record_key,
    provider_key,
)
from overlay._dgram import (
    DatagramChecker,
    Request,
    Response,
    Retry,
    encode_request,
    encode_response,
)
from overlay._wire import seal
from overlay.certs import VERSION
from overlay.records import MAX_RECORD, RECORD_TAG
from tests.overlay.dhtgrid import Grid, new_grid


def provider(grid: Grid, member: tuple, key: bytes, seq: int, value: bytes = b"") -> SignedRecord:
    return SignedRecord.create(*member, key=key, kind="provider", seq=seq,
                               expires=int(time.time()) + 600, value=value)


async def lookups_succeed(grid: Grid, rng: random.Random, count: int) -> float:
    ok = 0
    for _ in range(count):
        source, target = rng.sample(grid.nodes, 2)
        result = await source.lookup(target.node_id)
        ok += target.node_id in {n.id for n in result.nodes}
    return ok / count


async def test_every_node_is_found_in_a_small_grid():
    rng = random.Random(1)
    async with trio.open_nursery() as nursery:
        grid = new_grid(nursery)
        await grid.grow(12, rng)
        assert await lookups_succeed(grid, rng, 30) == 1.0
        for node in grid.nodes:
            assert node.counters["datagrams_refused"] == 0
        nursery.cancel_scope.cancel()


async def test_provider_set_is_the_union_of_many_signers_across_pages():
    rng = random.Random(2)
    async with trio.open_nursery() as nursery:
        grid = new_grid(nursery)
        await grid.grow(8, rng)
        key = provider_key("role", "queue")
        members = [grid.member(f"prov-{i}") for i in range(30)]
        publisher = grid.nodes[0]
        # 30 entries of ~700 bytes cannot travel in one datagram: paging is needed.
        for m in members:
            assert await publisher.put(provider(grid, m, key, 1, b"x" * 300)) > 0
        got = await grid.nodes[-1].get(key)
        assert {r.signer for r in got} == {m[0].id for m in members}
        assert sum(len(r.raw) for r in got) > 8192
        nursery.cancel_scope.cancel()


async def test_a_rolled_back_record_is_refused_and_never_returned():
    rng = random.Random(3)
    async with trio.open_nursery() as nursery:
        grid = new_grid(nursery)
        await grid.grow(6, rng)
        owner = grid.member("owner")
        key = provider_key("dataset", "higgs")
        old, new = provider(grid, owner, key, 1), provider(grid, owner, key, 2)
        writer = grid.nodes[0]
        await writer.put(new)
        # Someone replays the old copy straight into every node's store.
        outcomes = set()
        for node in grid.nodes[1:]:
            assert node.address is not None
            reply = await writer.call(node.address, "store", [old.raw])
            assert reply is not None
            outcomes.add(reply[1])
        assert outcomes == {"stale"}
        got = await grid.nodes[-1].get(key)
        assert [r.seq for r in got] == [2]
        nursery.cancel_scope.cancel()


class LyingNode(GridDht):
    """A real member that answers find_value with forgeries."""

    forgeries: list[Any] = []

    def _rpc_find_value(self, req: Request, addr: Any) -> dict[str, Any]:
        answer = super()._rpc_find_value(req, addr)
        answer["records"] = list(self.forgeries) + answer["records"]
        return answer


async def test_a_lying_member_cannot_make_get_return_forged_records():
    rng = random.Random(4)
    async with trio.open_nursery() as nursery:
        grid = new_grid(nursery)
        await grid.grow(6, rng)
        victim = grid.nodes[1]
        now = int(time.time())
        real = NodeRecord.create(victim.key, victim.cert, addresses=("127.0.0.1:1",),
                                 roles=("queue",), capacity={}, seq=10, expires=now + 600)
        assert real.signed is not None
        assert await victim.put(real.signed) > 0
        older = NodeRecord.create(victim.key, victim.cert, addresses=("127.0.0.1:9",),
                                  roles=("queue",), capacity={}, seq=5, expires=now + 600)
        liar_key, liar_cert = grid.member("liar")
        key = node_record_key(victim.node_id)
        flipped = bytearray(real.raw)
        flipped[len(flipped) // 2] ^= 0x40
        LyingNode.forgeries = [
            b"not a record at all",
            bytes(flipped),
            older.raw,                                               # rollback
            # The liar's own record under the victim's key.
            seal(RECORD_TAG, [VERSION, key, "node", liar_cert.raw, 99, now + 600,
                              b"\x93\x90\x91\xa5queue\x80"], liar_key.signing_key),
            # Expired, and oversized: both signed by the liar.
            seal(RECORD_TAG, [VERSION, key, "provider", liar_cert.raw, 1, now - 10, b""],
                 liar_key.signing_key),
            seal(RECORD_TAG, [VERSION, key, "provider", liar_cert.raw, 1, now + 60,
                              b"x" * MAX_RECORD], liar_key.signing_key),
            12345,
        ]
        liar = LyingNode(liar_key, liar_cert, grid.info)
        await grid.start(liar, bootstrap=grid.nodes[0])
        reader = grid.nodes[-2]
        got = await reader.get(key)
        assert [(r.signer, r.seq) for r in got] == [(victim.node_id, 10)]
        assert reader.counters["records_refused"] >= 5
        nursery.cancel_scope.cancel()


async def test_an_outsider_never_enters_a_routing_table():
    rng = random.Random(5)
    async with trio.open_nursery() as nursery:
        grid = new_grid(nursery)
        await grid.grow(5, rng)
        other = new_grid(nursery, "other-grid")
        outsider = await other.start()
        for node in grid.nodes:
            assert node.address is not None
            assert await outsider.bootstrap([node.address]) == 0
        await outsider.lookup(grid.nodes[0].node_id)
        for node in grid.nodes:
            assert outsider.node_id not in {c.node_id for c in node.contacts()}
            assert node.counters["datagrams_refused"] >= 1
        assert len(outsider.router) == 0
        nursery.cancel_scope.cancel()


async def test_a_reply_from_another_address_is_ignored():
    rng = random.Random(6)
    async with trio.open_nursery() as nursery:
        grid = new_grid(nursery)
        (asker,) = await grid.grow(1, rng)
        key, cert = grid.member("spoofer")
        checker = DatagramChecker(grid.info)
        silent = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        spoofer = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        with silent, spoofer:
            await silent.bind(("127.0.0.1", 0))
            await spoofer.bind(("127.0.0.1", 0))
            outcome: dict[str, Any] = {}
            answered = trio.Event()

            async def ask() -> None:
                outcome["reply"] = await asker.call(silent.getsockname(), "ping", [])
                answered.set()

            nursery.start_soon(ask)
            data, _ = await silent.recvfrom(65536)
            request = checker.decode_untrusted(data, int(time.time() * 1000))
            assert isinstance(request, Request)
            forged = encode_response(key.signing_key, cert, request.msg_id,
                                     int(time.time() * 1000), [])
            assert asker.address is not None
            await spoofer.sendto(forged, asker.address)
            with trio.fail_after(10):
                await answered.wait()
        assert outcome["reply"] is None
        assert asker.counters["replies_from_wrong_address"] == 1
        nursery.cancel_scope.cancel()


async def test_an_unproved_address_never_gets_more_bytes_than_it_sent():
    rng = random.Random(7)
    async with trio.open_nursery() as nursery:
        grid = new_grid(nursery)
        await grid.grow(6, rng)
        target = grid.nodes[0]
        big = provider_key("role", "storage")
        for i in range(10):
            await target.put(provider(grid, grid.member(f"p{i}"), big, 1, b"y" * 400))
        key, cert = grid.member("stranger")
        checker = DatagramChecker(grid.info)
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        sent = received = 0
        kinds: list[str] = []
        assert target.address is not None
        with sock:
            await sock.bind(("127.0.0.1", 0))
            for method, args in [("find_node", [target.node_id]), ("find_value", [big, b""]),
                                 ("ping", []), ("store", [b"junk"])]:
                request = encode_request(key.signing_key, cert, bytes(16 - len(method))
                                         + method.encode()[:16], int(time.time() * 1000),
                                         method, args)
                await sock.sendto(request, target.address)
                sent += len(request)
                with trio.fail_after(5):
                    data, _ = await sock.recvfrom(65536)
                received += len(data)
                reply = checker.decode_untrusted(data, int(time.time() * 1000))
                assert isinstance(reply, Retry | Response) and reply.cookie
                assert len(data) <= len(request)
                kinds.append(type(reply).__name__)
            assert received <= sent
            # The big answers were withheld; small ones (ping, store) may come at once.
            assert kinds[:2] == ["Retry", "Retry"]
            assert len(target.store.get(big, time.time())) == 10
            assert target.node_id not in {c.node_id for c in target.contacts()}
            assert key.id not in {c.node_id for c in target.contacts()}
            # With the cookie it proves the address and gets the full answer.
            request = encode_request(key.signing_key, cert, b"\x01" * 16,
                                     int(time.time() * 1000), "find_value", [big, b""],
                                     reply.cookie)
            await sock.sendto(request, target.address)
            with trio.fail_after(5):
                data, _ = await sock.recvfrom(65536)
            answer = checker.decode_untrusted(data, int(time.time() * 1000))
            assert not isinstance(answer, Retry | Request)
            page = answer.result
            assert page["records"] and (len(page["records"]) == 10 or page["more"] is True)
            assert len(data) > len(request)
        nursery.cancel_scope.cancel()


async def test_one_member_flooding_stores_hits_its_quota_and_others_still_store():
    rng = random.Random(8)
    async with trio.open_nursery() as nursery:
        grid = new_grid(nursery)
        key, cert = grid.member("keeper")
        keeper = GridDht(key, cert, grid.info, store=RecordStore(grid.info, max_per_signer=10))
        await grid.start(keeper)
        (writer,) = await grid.grow(1, rng)
        await writer.bootstrap([keeper.address])
        flooder = grid.member("flooder")
        outcomes = []
        for i in range(25):
            rec = provider(grid, flooder, provider_key("dataset", f"d{i}"), 1)
            reply = await writer.call(keeper.address, "store", [rec.raw])
            outcomes.append(reply[1] if reply else None)
        assert outcomes.count("stored") == 10 and outcomes.count("quota") == 15
        honest = provider(grid, grid.member("honest"), provider_key("dataset", "d0"), 1)
        reply = await writer.call(keeper.address, "store", [honest.raw])
        assert reply is not None and reply[1] == "stored"
        nursery.cancel_scope.cancel()


async def test_a_new_id_at_an_old_address_replaces_the_old_entry():
    rng = random.Random(9)
    async with trio.open_nursery() as nursery:
        grid = new_grid(nursery)
        hub, old = await grid.grow(2, rng)
        assert old.address is not None
        port = old.address[1]
        assert old.node_id in {c.node_id for c in hub.contacts()}
        await grid.stop(old).wait()  # its socket is closed: the port is free
        new = await grid.start(port=port, bootstrap=hub)
        ids = {c.node_id for c in hub.contacts()}
        assert new.node_id in ids and old.node_id not in ids
        nursery.cancel_scope.cancel()


async def test_a_revoked_member_is_dropped_and_refused():
    rng = random.Random(10)
    async with trio.open_nursery() as nursery:
        grid = new_grid(nursery)
        await grid.grow(6, rng)
        bad = grid.nodes[2]
        for node in grid.nodes:
            if node is not bad:
                node.set_revoked(frozenset({bad.node_id}))
        others = [n for n in grid.nodes if n is not bad]
        for node in others:
            assert bad.node_id not in {c.node_id for c in node.contacts()}
        before = sum(n.counters["datagrams_refused"] for n in others)
        result = await bad.lookup(others[0].node_id)
        assert result.nodes == []
        assert sum(n.counters["datagrams_refused"] for n in others) > before
        for node in others:
            assert bad.node_id not in {c.node_id for c in node.contacts()}
        nursery.cancel_scope.cancel()


async def test_churn_in_waves_keeps_lookups_working_and_tables_full():
    """60 nodes; three waves each stop a third without warning and add as many."""
    rng = random.Random(11)
    async with trio.open_nursery() as nursery:
        grid = new_grid(nursery)
        await grid.grow(60, rng)
        await grid.refresh_all()
        assert await lookups_succeed(grid, rng, 30) == 1.0
        for _wave in range(3):
            for node in rng.sample(grid.nodes, 20):
                grid.stop(node)
            await grid.grow(20, rng)
            # Right after the wave, before any repair, lookups route around the dead.
            assert await lookups_succeed(grid, rng, 30) >= 0.95
            await grid.refresh_all()
            assert await lookups_succeed(grid, rng, 30) == 1.0
            sizes = [len(n.router) for n in grid.nodes]
            assert min(sizes) >= 10, sizes
        nursery.cancel_scope.cancel()


async def test_a_member_cannot_replay_another_nodes_request_from_its_own_address():
    rng = random.Random(12)
    async with trio.open_nursery() as nursery:
        grid = new_grid(nursery)
        (target,) = await grid.grow(1, rng)
        assert target.address is not None
        mallory = grid.member("mallory")
        alice = grid.member("alice")
        checker = DatagramChecker(grid.info)

        def request(member: tuple, msg_id: bytes, cookie: bytes = b"") -> bytes:
            return encode_request(member[0].signing_key, member[1], msg_id,
                                  int(time.time() * 1000), "find_node", [target.node_id],
                                  cookie)

        async def ask(sock: Any, data: bytes) -> Any:
            await sock.sendto(data, target.address)
            with trio.fail_after(5):
                reply, _ = await sock.recvfrom(65536)
            return checker.decode_untrusted(reply, int(time.time() * 1000))

        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        with sock:
            await sock.bind(("127.0.0.1", 0))
            first = await ask(sock, request(mallory, b"m" * 16))
            assert first.cookie  # not proved yet: the answer brings a cookie
            answer = await ask(sock, request(mallory, b"n" * 16, first.cookie))
            assert isinstance(answer, Response) and not answer.cookie  # proved, for mallory
            assert mallory[0].id in {c.node_id for c in target.contacts()}
            # A request alice signed (captured on the wire), sent from mallory's
            # address: alice has proved nothing there.
            replayed = await ask(sock, request(alice, b"a" * 16))
            assert replayed.cookie
        assert alice[0].id not in {c.node_id for c in target.contacts()}
        nursery.cancel_scope.cancel()


class GarbageNode(GridDht):
    """A real member whose answers have every wrong shape."""

    shapes: list[Any] = [None, 7, "nodes", b"\x00" * 20, {"a": 1}, [[1, 2]], [[b"x", "h", 1]],
                         [[b"\x01" * 20, "127.0.0.1", 0]], [[b"\x01" * 20, 5, 7400]],
                         [[b"\x01" * 20, "127.0.0.1", 70000, 9]], [["id", "127.0.0.1", 1]]]
    turn = 0

    def _next(self) -> Any:
        GarbageNode.turn += 1
        return self.shapes[self.turn % len(self.shapes)]

    def _rpc_find_node(self, req: Request, addr: Any) -> Any:
        return self._next()

    def _rpc_find_value(self, req: Request, addr: Any) -> Any:
        shape = self._next()
        return {"records": shape, "more": True, "nodes": shape} if self.turn % 2 else shape


async def test_malformed_answers_never_break_a_lookup():
    rng = random.Random(13)
    async with trio.open_nursery() as nursery:
        grid = new_grid(nursery)
        await grid.grow(8, rng)
        for i in range(3):
            key, cert = grid.member(f"garbage-{i}")
            await grid.start(GarbageNode(key, cert, grid.info), bootstrap=grid.nodes[0])
        honest = [n for n in grid.nodes if not isinstance(n, GarbageNode)]
        for _ in range(3):
            await grid.refresh_all()
        for source in honest:
            for target in honest:
                if source is not target:
                    result = await source.lookup(target.node_id)
                    assert target.node_id in {n.id for n in result.nodes}
            await source.get(provider_key("role", "queue"))
        assert sum(n.counters["contacts_refused"] for n in honest) > 0
        nursery.cancel_scope.cancel()
