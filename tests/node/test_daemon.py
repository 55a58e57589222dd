"""Many real nodes in one process on loopback: discovery, restart, revocation."""

from __future__ import annotations

import msgpack
import trio

from node.daemon import Node, NodeRevoked, run_node
from tests.conftest import cli, make_grid, node_config


class Running:
    """A node started in a test's nursery, and a way to stop it and wait."""

    def __init__(self, node: Node, scope: trio.CancelScope, done: trio.Event) -> None:
        self.node, self._scope, self._done = node, scope, done

    async def stop(self) -> None:
        self._scope.cancel()
        await self._done.wait()


async def start_node(nursery: trio.Nursery, dd, **overrides) -> tuple[Node, Running]:
    scope = trio.CancelScope()
    done = trio.Event()

    async def run(task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            with scope:
                await run_node(node_config(dd, **overrides), dd, task_status=task_status)
        finally:
            done.set()

    node = await nursery.start(run)
    return node, Running(node, scope, done)


def address(node: Node) -> str:
    host, port = node.dht.address
    return f"{host}:{port}"


async def test_twenty_nodes_all_list_each_other(short_tmp):
    dirs = make_grid(short_tmp, 20)
    async with trio.open_nursery() as nursery:
        first, _ = await start_node(nursery, dirs[0])
        nodes = [first]
        for dd in dirs[1:]:
            node, _ = await start_node(nursery, dd, bootstrap=[address(first)])
            nodes.append(node)
        with trio.fail_after(90):
            for node in nodes:
                await node.wait_peers(19)
        ids = {n.key.id for n in nodes}
        for node in nodes:
            assert set(node.peers) == ids - {node.key.id}
            listed = await node.handle_admin("peers", {})
            assert {p["id"] for p in listed} == {i.hex() for i in ids - {node.key.id}}
            status = await node.handle_admin("status", {})
            assert status["peers_known"] == 19
            assert status["refused"]["maintenance_errors"] == 0
            assert status["refused"]["admin_errors"] == 0
            assert status["refused"]["asyncio_errors"] == 0
            assert status["dht"]["datagrams_refused"] == 0
            assert status["dht"]["records_refused"] == 0
        sites = {p["site"] for p in await nodes[5].handle_admin("peers", {})}
        assert sites == {f"site-{i:02d}" for i in range(20)} - {"site-05"}
        nursery.cancel_scope.cancel()


async def test_restarted_node_rejoins_from_stored_peers_with_bootstrap_down(short_tmp):
    a, b, c = make_grid(short_tmp, 3)
    async with trio.open_nursery() as nursery:
        na, scope_a = await start_node(nursery, a)
        nb, _ = await start_node(nursery, b, bootstrap=[address(na)])
        nc, scope_c = await start_node(nursery, c, bootstrap=[address(na)])
        with trio.fail_after(60):
            for n in (na, nb, nc):
                await n.wait_peers(2)
        c_listen = address(nc)
        # Stop C, then the bootstrap node A: C must find B from its state file.
        await scope_c.stop()
        await scope_a.stop()
        nc2, _ = await start_node(nursery, c, listen=c_listen, bootstrap=[])
        assert nc2.cfg.bootstrap == ()
        assert nb.key.id in nc2.peers and na.key.id in nc2.peers  # loaded from state
        with trio.fail_after(60):
            while nb.key.id not in {x.node_id for x in nc2.dht.contacts()}:
                await nc2.wait_round()
            while nc2.key.id not in {x.node_id for x in nb.dht.contacts()}:
                await nb.wait_round()
        nursery.cancel_scope.cancel()


def views(node: Node) -> set[bytes]:
    """Every place a node could still see another: peers and routing table."""
    return set(node.peers) | {c.node_id for c in node.dht.contacts()}


async def test_revoked_node_disappears_from_every_view_within_one_refresh(short_tmp):
    a, b, c = make_grid(short_tmp, 3)
    async with trio.open_nursery() as nursery:
        na, _ = await start_node(nursery, a)
        nb, _ = await start_node(nursery, b, bootstrap=[address(na)])
        ended: dict[str, BaseException] = {}

        async def run_c(task_status=trio.TASK_STATUS_IGNORED) -> None:
            try:
                await run_node(node_config(c, bootstrap=[address(na)]), c,
                               task_status=task_status)
            except NodeRevoked as exc:  # if it hears of its revocation, it stops
                ended["c"] = exc

        nc = await nursery.start(run_c)
        with trio.fail_after(60):
            for n in (na, nb, nc):
                await n.wait_peers(2)
        c_id = nc.key.id
        cli("grid", "revoke", "--data-dir", str(a.root), c_id.hex())
        with trio.fail_after(30):
            # A holds the authority's file: its next round adopts and publishes it.
            while na.revocations.serial < 1:
                await na.wait_round()
            assert c_id not in views(na)
            # B's next full round after that fetches it from the DHT.
            await nb.wait_round()
            await nb.wait_round()
        assert nb.revocations.serial == 1 and c_id in nb.revocations.revoked
        assert c_id not in views(nb)
        if "c" not in ended:
            # C is cut off: what it still sends is refused at the door.
            refused = na.dht.counters["datagrams_refused"] + nb.dht.counters[
                "datagrams_refused"]
            with trio.fail_after(30):
                while na.dht.counters["datagrams_refused"] + nb.dht.counters[
                        "datagrams_refused"] == refused and "c" not in ended:
                    await nb.wait_round()
        await nb.wait_round()
        assert c_id not in views(na) and c_id not in views(nb)
        nursery.cancel_scope.cancel()


async def test_garbage_datagrams_are_counted_and_the_node_keeps_serving(short_tmp):
    a, b = make_grid(short_tmp, 2)
    async with trio.open_nursery() as nursery:
        na, _ = await start_node(nursery, a)
        host, port = na.dht.address
        junk = [
            b"",
            b"\x00" * 5,
            b"\xc1\xc1",                                   # undecodable msgpack
            msgpack.packb(["store", [1]]),                  # not an envelope
            msgpack.packb({"not": "a list"}),
            msgpack.packb([b"gridnode/dht-datagram/v1", b"x" * 64]),  # bad envelope
            b"\x92" + b"\xc4\x01x" + b"\xc4\x40" + b"s" * 64,        # unsigned body
        ]
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        with sock:
            for datagram in junk * 5:
                await sock.sendto(datagram, (host, port))
        # The node still lets another one join and list it.
        nb, _ = await start_node(nursery, b, bootstrap=[address(na)])
        with trio.fail_after(60):
            await na.wait_peers(1)
            await nb.wait_peers(1)
        stats = na.dht.statistics()
        assert stats["datagrams_refused"] == 5 * len(junk)
        assert na.counters["asyncio_errors"] == 0
        assert na.counters["maintenance_errors"] == 0
        nursery.cancel_scope.cancel()
