"""Users reach nodes over the secure channel: the Python client and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from node.client import Client
from overlay import HandshakeRefused, RpcError, Unavailable
from tests.conftest import cli, make_grid
from tests.node.test_daemon import address, start_node


async def gridnode(*args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """The real CLI in a subprocess (the test's trio loop runs the nodes)."""
    proc = await trio.run_process([sys.executable, "-m", "node", *args], capture_stdout=True,
                                  capture_stderr=True, check=False)
    out = proc.stdout.decode() + proc.stderr.decode()
    assert "Traceback" not in out, out
    if check:
        assert proc.returncode == 0, (args, out)
    else:
        assert proc.returncode != 0, (args, out)
        errors = [line for line in proc.stderr.decode().splitlines() if line]
        assert len(errors) == 1 and errors[0].startswith("gridnode: error: "), errors
    return proc


def error(proc: subprocess.CompletedProcess[bytes]) -> str:
    return proc.stderr.decode().strip()


async def test_admin_user_of_init_reaches_any_node_and_pings_through_it(short_tmp):
    dirs = make_grid(short_tmp, 3)
    async with trio.open_nursery() as nursery:
        first, _ = await start_node(nursery, dirs[0])
        others = [(await start_node(nursery, dd, bootstrap=[address(first)]))[0]
                  for dd in dirs[1:]]
        with trio.fail_after(60):
            await first.wait_peers(2)
        # The creator of the grid is its admin user: no ceremony.
        async with Client.connect(address(others[0])) as client:
            me = await client.whoami()
            assert (me["kind"], me["roles"]) == ("user", ["admin"])
            assert me["access"] == ["member", "user", "admin"]
            assert client.node.subject_id == others[0].key.id
            pong = await client.ping()
            assert pong["id"] == others[0].key.id
            # Through the node we reached to another, found by id.
            far = await client.ping(others[1].key.id)
            assert far["id"] == others[1].key.id and far["rtt_ms"] > 0
            with pytest.raises(RpcError) as err:
                await client.ping(b"\x01" * 20)
            assert err.value.code == "not_found"
            status = await client.status()
            assert status["id"] == others[0].key.id.hex()
            assert status["channel"]["handshakes_ok"] >= 1
            assert {p["id"] for p in await client.peers()} >= {first.key.id.hex()}
        # The node of a data dir, found through its admin socket.
        async with Client.connect(data_dir=dirs[0].root) as client:
            assert (await client.ping())["id"] == first.key.id
        nursery.cancel_scope.cancel()


async def test_user_joins_with_user_init_admit_install_and_uses_the_cli(short_tmp, tmp_path):
    dirs = make_grid(short_tmp, 1)
    alice = tmp_path / "alice"
    await gridnode("user", "init", "--user-dir", str(alice), "--grid",
                   str(dirs[0].grid_info), "--name", "alice")
    [req] = alice.glob("*/join-request")
    listed = json.loads((await gridnode("user", "list", "--user-dir", str(alice),
                                        "--json")).stdout)
    assert [r["state"] for r in listed] == ["waiting for a certificate"]
    cert = tmp_path / "alice.cert"
    out = await gridnode("grid", "admit", "--data-dir", str(dirs[0].root), str(req),
                         "--out", str(cert))
    assert b"admitted user" in out.stdout
    await gridnode("user", "install", "--user-dir", str(alice), str(cert))
    listed = json.loads((await gridnode("user", "list", "--user-dir", str(alice),
                                        "--json")).stdout)
    assert [(r["user"], r["roles"], r["state"]) for r in listed] == [("alice", [], "admitted")]
    async with trio.open_nursery() as nursery:
        node, _ = await start_node(nursery, dirs[0])
        via = address(node)
        who = json.loads((await gridnode("whoami", "--via", via, "--user-dir", str(alice),
                                         "--json")).stdout)
        assert (who["kind"], who["name"], who["access"]) == ("user", "alice",
                                                             ["member", "user"])
        pong = json.loads((await gridnode("ping", "--via", via, "--user-dir", str(alice),
                                          "--json", "--count", "3")).stdout)
        assert [p["id"] for p in pong] == [node.key.id.hex()] * 3
        status = json.loads((await gridnode("status", "--via", via, "--user-dir",
                                            str(alice), "--json")).stdout)
        assert status["id"] == node.key.id.hex()

        # Revoked: refused at the next handshake, with the reason.
        await trio.to_thread.run_sync(cli, "grid", "revoke", "--data-dir",
                                      str(dirs[0].root), who["id"])
        with trio.fail_after(30):
            while node.revocations.serial < 1:
                await node.wait_round()
        refused = await gridnode("whoami", "--via", via, "--user-dir", str(alice),
                                 check=False)
        assert "revoked" in error(refused)
        assert node.channel_counters["refused_revoked"] == 1
        nursery.cancel_scope.cancel()


async def test_cli_refusals_are_one_line(short_tmp, tmp_path, user_dir):
    dirs = make_grid(short_tmp, 1)
    other = make_grid(short_tmp / "other", 1)  # a second grid: its admin is in user_dir too
    async with trio.open_nursery() as nursery:
        node, _ = await start_node(nursery, dirs[0])
        via = address(node)
        # Two grids in the user dir: which one?
        assert "several grids" in error(await gridnode("whoami", "--via", via, check=False))
        # The other grid's user knocks: refused, and told why.
        other_id = other[0].load_grid().grid_id.hex()[:12]
        wrong = await gridnode("whoami", "--via", via, "--grid", other_id, check=False)
        assert "refused" in error(wrong) and "grid" in error(wrong)
        mine = dirs[0].load_grid().grid_id.hex()[:12]
        ok = await gridnode("whoami", "--via", via, "--grid", mine, "--json")
        assert json.loads(ok.stdout)["kind"] == "user"
        # Nobody listening.
        dead = await gridnode("ping", "--via", "127.0.0.1:1", "--grid", mine, check=False)
        assert "cannot reach" in error(dead)
        bad = await gridnode("ping", "--via", via, "--grid", mine, "zz", check=False)
        assert "not a node id" in error(bad)
        empty = tmp_path / "empty"
        none = await gridnode("whoami", "--via", via, "--user-dir", str(empty), check=False)
        assert "no membership" in error(none)
        assert node.channel_counters["refused_wrong_grid"] == 1
        nursery.cancel_scope.cancel()


async def test_client_errors_are_typed(short_tmp):
    dirs = make_grid(short_tmp, 2)
    async with trio.open_nursery() as nursery:
        node, _ = await start_node(nursery, dirs[0])
        with pytest.raises(Unavailable):
            async with Client.connect("127.0.0.1:1"):
                pass
        with pytest.raises(HandshakeRefused) as err:
            async with Client.connect(address(node), node_id=b"\x02" * 20):
                pass
        assert err.value.code == "wrong_peer"
        nursery.cancel_scope.cancel()


def test_user_init_refuses_a_second_key_for_the_same_grid(tmp_path: Path) -> None:
    cli("init", "--data-dir", str(tmp_path / "a"))
    ud = tmp_path / "u"
    args = ["user", "init", "--user-dir", str(ud), "--grid", str(tmp_path / "a" / "grid.info")]
    cli(*args)
    from node.cli import main

    assert main(args) == 1
    assert len(list(ud.glob("*/user.key"))) == 1
