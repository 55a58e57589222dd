"""The admin socket of a real in-process node: permissions, calls, hostile input."""

from __future__ import annotations

import functools
import os
import socket
import stat
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import msgpack
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import node.admin
from node.admin import MAX_REQUEST, AdminError, _dispatch, admin_call, serve_admin
from node.daemon import Node, run_node
from node.errors import UserError
from overlay import BadMessage, packb, unpackb_untrusted
from tests.conftest import make_grid, node_config

LEN = struct.Struct(">I")
STATUS_KEYS = {"id", "grid", "grid_name", "site", "roles", "addresses", "uptime", "peers_known",
               "dht", "refused", "cert_expires", "revocation_serial", "rounds", "version", "pid"}


@asynccontextmanager
async def running_node(root) -> AsyncIterator[Node]:
    (dd,) = make_grid(root, 1)
    async with trio.open_nursery() as nursery:
        node_ = await nursery.start(functools.partial(run_node, node_config(dd), dd))
        yield node_
        nursery.cancel_scope.cancel()


async def call(path, op: str, **args: Any) -> Any:
    return await trio.to_thread.run_sync(functools.partial(admin_call, path, op, 10.0, **args))


async def receive_exactly(stream: trio.SocketStream, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = await stream.receive_some(n - len(buf))
        assert chunk, f"connection closed after {len(buf)} of {n} bytes"
        buf += chunk
    return buf


async def receive_reply(stream: trio.SocketStream) -> Any:
    (size,) = LEN.unpack(await receive_exactly(stream, LEN.size))
    return msgpack.unpackb(await receive_exactly(stream, size), raw=False)


async def roundtrip(path, body: bytes) -> Any:
    """Send one framed body on a fresh connection; return the reply."""
    stream = await trio.open_unix_socket(str(path))
    async with stream:
        await stream.send_all(LEN.pack(len(body)) + body)
        return await receive_reply(stream)


async def test_socket_mode_status_and_peers(short_tmp):
    with trio.fail_after(20):
        async with running_node(short_tmp) as n:
            path = n.datadir.admin_socket
            st_ = path.stat()
            assert stat.S_ISSOCK(st_.st_mode)
            assert stat.S_IMODE(st_.st_mode) == 0o600
            status = await call(path, "status")
            assert STATUS_KEYS <= set(status)
            assert status["id"] == n.key.id.hex()
            assert status["site"] == "site-00"
            assert status["pid"] == os.getpid()
            assert status["peers_known"] == 0
            assert status["refused"]["admin_refused"] == 0
            assert await call(path, "peers") == []


async def test_unknown_operation_is_refused_and_counted(short_tmp):
    with trio.fail_after(20):
        async with running_node(short_tmp) as n:
            path = n.datadir.admin_socket
            with pytest.raises(UserError, match="unknown operation 'reboot'"):
                await call(path, "reboot")
            assert n.counters["admin_refused"] == 1
            assert (await call(path, "status"))["refused"]["admin_refused"] == 1


async def test_hostile_input_is_refused_and_node_keeps_serving(short_tmp):
    with trio.fail_after(20):
        async with running_node(short_tmp) as n:
            path = n.datadir.admin_socket
            refused = n.counters["admin_refused"]

            def grew() -> bool:
                nonlocal refused
                now = n.counters["admin_refused"]
                ok, refused = now > refused, now
                return ok

            # Garbage body with a valid length prefix: refused, connection kept.
            stream = await trio.open_unix_socket(str(path))
            async with stream:
                await stream.send_all(LEN.pack(3) + b"\xc1\xc1\xc1")
                reply = await receive_reply(stream)
                assert reply["ok"] is False and "bad request" in reply["error"]
                assert grew()
                await stream.send_all(LEN.pack(len(packb({"op": "peers"})))
                                      + packb({"op": "peers"}))
                assert await receive_reply(stream) == {"ok": True, "result": []}
            # ... and a new connection works too.
            assert (await roundtrip(path, packb({"op": "status", "args": {}})))["ok"] is True

            # A length prefix over the cap: refused, then the connection is closed.
            stream = await trio.open_unix_socket(str(path))
            async with stream:
                await stream.send_all(LEN.pack(MAX_REQUEST + 1))
                reply = await receive_reply(stream)
                assert reply["ok"] is False and "too large" in reply["error"]
                assert await stream.receive_some() == b""
            assert grew()

            # A truncated frame: 10 of 100 bytes, then EOF.  The server counts it
            # and closes without a reply (its close is what we wait for).
            stream = await trio.open_unix_socket(str(path))
            async with stream:
                await stream.send_all(LEN.pack(100) + b"0123456789")
                await stream.send_eof()
                assert await stream.receive_some() == b""
            assert grew()

            # A truncated header: 2 bytes of the 4-byte prefix.
            stream = await trio.open_unix_socket(str(path))
            async with stream:
                await stream.send_all(b"\x00\x00")
                await stream.send_eof()
                assert await stream.receive_some() == b""
            assert grew()

            # Well-formed msgpack, wrong shape.
            for bad in ({"args": {}}, {"op": 7}, [1, 2], "status",
                        {"op": "status", "args": [1]}, {"op": "status", "args": "x"}):
                reply = await roundtrip(path, packb(bad))
                assert reply["ok"] is False and "bad request" in reply["error"], bad
                assert grew(), bad

            # Arguments the operation does not take: refused, not a crash.
            for args in ({"x": 1}, {b"x": 1}, {"verbose": True}):
                reply = await roundtrip(path, packb({"op": "status", "args": args}))
                assert reply["ok"] is False, args
                assert "status" in reply["error"] and "argument" in reply["error"], reply
                assert grew(), args
            with pytest.raises(UserError, match="argument"):
                await call(path, "peers", limit=3)
            assert grew()

            # Still running, still serving, no maintenance step broke.
            status = await call(path, "status")
            assert status["refused"]["admin_refused"] == refused
            assert await call(path, "peers") == []
            assert n.counters["maintenance_errors"] == 0
            assert n.counters["admin_errors"] == 0
            assert n.counters.get("asyncio_errors", 0) == 0


async def test_second_daemon_on_same_socket_is_refused(short_tmp):
    with trio.fail_after(20):
        async with running_node(short_tmp) as n:
            path = n.datadir.admin_socket
            with pytest.raises(UserError, match="already running"):
                await serve_admin(path, n.handle_admin, {"admin_refused": 0})
            # The refused second daemon left the first one's socket alone.
            assert stat.S_ISSOCK(path.stat().st_mode)
            assert (await call(path, "status"))["id"] == n.key.id.hex()


async def test_stale_socket_is_cleaned_up_and_served_over(short_tmp):
    path = short_tmp / "admin.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # no unlink: a daemon that died hard leaves this behind
    assert stat.S_ISSOCK(path.stat().st_mode)

    async def handler(op: str, args: dict[str, Any]) -> Any:
        if op != "ping":
            raise AdminError(f"unknown operation {op!r}")
        return {"pong": True, **args}

    counters = {"admin_refused": 0}
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            assert await nursery.start(serve_admin, path, handler, counters) == path
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            assert await call(path, "ping", n=1) == {"pong": True, "n": 1}
            nursery.cancel_scope.cancel()
    assert not path.exists()  # unlinked at shutdown
    with pytest.raises(UserError, match="no gridnode is running"):
        admin_call(path, "ping")


# -- request decoding, without sockets ---------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=256))
def test_untrusted_decoding_raises_only_badmessage(data):
    try:
        unpackb_untrusted(data, max_size=node.admin.MAX_REQUEST)
    except BadMessage:
        pass


def fake_node() -> SimpleNamespace:
    """Just enough of a Node for the real Node.handle_admin."""

    async def status() -> dict[str, Any]:
        return {"fine": True}

    async def peers() -> list[Any]:
        return []

    fake = SimpleNamespace(counters={"admin_refused": 0})
    fake.admin_ops = {"status": status, "peers": peers}
    return fake


def check_dispatch(body: bytes) -> None:
    fake = fake_node()
    handler = functools.partial(Node.handle_admin, fake)
    reply = trio.run(_dispatch, body, handler, fake.counters)
    assert isinstance(reply, dict) and isinstance(reply["ok"], bool)
    if reply["ok"]:
        assert set(reply) == {"ok", "result"} and fake.counters["admin_refused"] == 0
    else:
        assert set(reply) == {"ok", "error"} and isinstance(reply["error"], str)
        assert fake.counters["admin_refused"] == 1
    packb(reply)  # the reply can always be sent


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=256))
def test_dispatch_of_arbitrary_bytes_always_replies(data):
    check_dispatch(data)


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=8) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=5) | st.binary(max_size=5), inner, max_size=3),
    max_leaves=8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.fixed_dictionaries(
    {"op": st.sampled_from(["status", "peers", "nope", ""]) | msgpack_values},
    optional={"args": st.dictionaries(st.text(max_size=5) | st.binary(max_size=5),
                                      msgpack_values, max_size=3) | msgpack_values,
              "extra": msgpack_values}))
def test_dispatch_of_request_shaped_maps_always_replies(req):
    check_dispatch(packb(req))


async def test_a_failing_handler_is_counted_and_the_node_keeps_serving(short_tmp):
    with trio.fail_after(20):
        async with running_node(short_tmp) as n:
            path = n.datadir.admin_socket

            async def broken() -> None:
                raise RuntimeError("bug in a handler")

            n.admin_ops["status"] = broken
            with pytest.raises(UserError, match="internal error in 'status'"):
                await call(path, "status")
            assert n.counters["admin_errors"] == 1
            assert await call(path, "peers") == []


async def test_a_client_gone_before_its_answer_does_not_stop_the_server(short_tmp):
    path = short_tmp / "admin.sock"
    answered = trio.Event()

    async def handler(op: str, args: dict[str, Any]) -> Any:
        if op == "slow":
            await trio.sleep(0.3)  # the client hangs up meanwhile
            answered.set()
            return {"big": "x" * 300_000}  # more than a socket buffer takes
        return {"pong": True, **args}

    counters = {"admin_refused": 0}
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_admin, path, handler, counters)
            body = packb({"op": "slow", "args": {}})
            for _ in range(3):
                stream = await trio.open_unix_socket(str(path))
                await stream.send_all(LEN.pack(len(body)) + body)
                await stream.aclose()  # gone before the answer
                await answered.wait()
                answered = trio.Event()
            assert await call(path, "ping", n=2) == {"pong": True, "n": 2}
            nursery.cancel_scope.cancel()
