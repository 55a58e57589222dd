"""The secure channel and RPC over real loopback TCP (one channel over an in-memory stream)."""

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from trio.testing import memory_stream_pair

from overlay import Certificate, GridInfo, KeyPair
from overlay._handshake import (
    HELLO_TAG,
    VERSION,
    ClientHandshake,
    FrameReader,
    HandshakeRefused,
    ServerHandshake,
    frame,
)
from overlay._wire import packb
from overlay.channel import (
    SEND_QUEUE,
    ChannelClosed,
    ChannelServer,
    Credentials,
    SecureChannel,
    _run_channel,
    open_channel,
)
from overlay.pool import RpcPool
from overlay.rpc import (
    CallContext,
    CallTimeout,
    Method,
    RpcError,
    RpcServer,
    Unavailable,
    open_rpc,
)

from .common import fixed_key

AUTH = fixed_key(1)
NOW = int(time.time())
GRID = GridInfo.create(AUTH, "grid", NOW)


def creds(n: int, *, kind: str = "node", roles: tuple[str, ...] = (),
          auth: KeyPair = AUTH, grid: GridInfo = GRID, not_after: int = NOW + 86400,
          max_frame: int = 1024 * 1024) -> Credentials:
    key = fixed_key(n)
    cert = Certificate.issue(auth, kind=kind, subject_key=key.public_key, name=f"k{n}",
                             roles=roles, not_before=NOW - 86400 * 10, not_after=not_after)
    return Credentials(key, cert, grid, max_frame=max_frame)


async def echo(ctx: CallContext, args: Any) -> Any:
    return args


async def whoami(ctx: CallContext, args: Any) -> Any:
    return [ctx.peer.kind, ctx.peer.name]


async def slow(ctx: CallContext, args: Any) -> Any:
    await trio.sleep(args)
    return "done"


async def fail(ctx: CallContext, args: Any) -> Any:
    raise RpcError("not_found", f"no job {args}")


async def bug(ctx: CallContext, args: Any) -> Any:
    return 1 / 0


async def big(ctx: CallContext, args: Any) -> Any:
    return b"x" * args


class Counting:
    """A stream whose progress the test can watch."""

    def __init__(self) -> None:
        self.produced = 0
        self.closed = trio.Event()

    async def __call__(self, ctx: CallContext, args: Any) -> AsyncIterator[Any]:
        try:
            for i in range(args["n"]):
                if args.get("fail_at") == i:
                    raise RpcError("cancelled", "the node stopped this stream")
                self.produced += 1
                yield i
        finally:
            self.closed.set()


COUNTING = Counting()
METHODS = {
    "echo": Method(echo, inline=True),
    "whoami": Method(whoami),
    "slow": Method(slow),
    "fail": Method(fail),
    "bug": Method(bug),
    "big": Method(big),
    "act": Method(echo, access="user"),
    "admin": Method(echo, access="admin"),
    "count": Method(COUNTING, streaming=True),
}


@asynccontextmanager
async def serving(server_creds: Credentials | None = None, *, handshake_timeout: float = 10,
                  max_in_flight: int = 1024) -> AsyncIterator[tuple[ChannelServer, int]]:
    rpc = RpcServer(METHODS, max_in_flight=max_in_flight)
    server = ChannelServer(server_creds or creds(3), rpc.serve_channel,
                           handshake_timeout=handshake_timeout, counters=rpc.counters)
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(server.serve, "127.0.0.1", 0)
        yield server, port
        nursery.cancel_scope.cancel()


async def test_calls_results_and_typed_errors() -> None:
    async with serving() as (server, port), open_rpc("127.0.0.1", port,
                                                     creds(4, kind="user")) as c:
        assert await c.call("echo", {"a": [1, b"x"]}) == {"a": [1, b"x"]}
        assert await c.call("whoami") == ["user", "k4"]
        with pytest.raises(RpcError) as err:
            await c.call("fail", 7)
        assert (err.value.code, err.value.args[0]) == ("not_found", "no job 7")
        with pytest.raises(RpcError) as err:
            await c.call("nope")
        assert err.value.code == "not_found"
        with pytest.raises(RpcError) as err:
            await c.call("bug")
        assert err.value.code == "internal" and "Division" not in str(err.value)
        assert await c.call("echo", "still serving") == "still serving"
    assert server.counters["calls_internal_error"] == 1
    assert server.counters["handshakes_ok"] == 1


async def test_access_levels() -> None:
    async with serving() as (_, port):
        async with open_rpc("127.0.0.1", port, creds(5)) as node:
            assert await node.call("echo", 1) == 1
            with pytest.raises(RpcError, match="needs user access") as err:
                await node.call("act", 1)
            assert err.value.code == "forbidden"
        async with open_rpc("127.0.0.1", port, creds(6, kind="user")) as user:
            assert await user.call("act", 1) == 1
            with pytest.raises(RpcError, match="needs admin access"):
                await user.call("admin", 1)
        async with open_rpc("127.0.0.1", port, creds(7, kind="user", roles=("admin",))) as a:
            assert await a.call("admin", 2) == 2


@pytest.mark.parametrize("who, code", [
    (lambda: creds(4, auth=fixed_key(2)), "wrong_grid"),
    (lambda: creds(4, not_after=NOW - 86400), "expired"),
])
async def test_refused_clients_are_told_and_counted(who: Any, code: str) -> None:
    async with serving() as (server, port):
        with pytest.raises(HandshakeRefused) as err:
            async with open_rpc("127.0.0.1", port, who()):
                pass
        assert err.value.code == code
        async with open_rpc("127.0.0.1", port, creds(5)) as ok:  # others still served
            assert await ok.call("echo", 1) == 1
    assert server.counters["handshakes_refused"] == 1
    assert server.counters[f"refused_{code}"] == 1


async def test_revoked_member_is_refused_and_its_open_channels_cut() -> None:
    async with serving() as (server, port):
        async with open_rpc("127.0.0.1", port, creds(4)) as c:
            assert await c.call("echo", 1) == 1
            server.set_revoked(frozenset({fixed_key(4).id}))
            with pytest.raises(Unavailable):
                await c.call("slow", 5)
        with pytest.raises(HandshakeRefused, match="revoked"):
            async with open_rpc("127.0.0.1", port, creds(4)):
                pass
    assert server.counters["channels_cut_revoked"] == 1
    assert server.counters["refused_revoked"] == 1


async def _raw(port: int, data: bytes) -> bytes:
    """Send raw bytes, return whatever comes back until the server closes."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        got = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(65536):
                got += chunk
        return got


async def test_garbage_oversized_and_other_grid_hellos_are_refused() -> None:
    other = GridInfo.create(fixed_key(2), "other", NOW)
    async with serving() as (server, port):
        assert await _raw(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 3) == b""
        assert await _raw(port, b"\xff\xff\xff\xff" + b"x" * 1000) == b""
        told = await _raw(port, frame(packb([HELLO_TAG, VERSION, other.grid_id, b"k" * 32])))
        assert b"refused" in told and b"wrong_grid" in told and len(told) < 512
        async with open_rpc("127.0.0.1", port, creds(5)) as ok:
            assert await ok.call("echo", 1) == 1
    assert server.counters["refused_malformed"] == 2
    assert server.counters["refused_wrong_grid"] == 1


async def test_slow_loris_is_cut_off_at_the_handshake_deadline() -> None:
    async with serving(handshake_timeout=0.3) as (server, port):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"\x00\x00")  # half a length prefix, then nothing
        with trio.fail_after(5):
            assert await stream.receive_some(100) == b""
        await stream.aclose()
    assert server.counters["handshake_timeouts"] == 1


async def test_tampered_frame_after_the_handshake_closes_only_that_channel() -> None:
    async with serving() as (server, port), open_channel("127.0.0.1", port, creds(4)) as ch:
        # Write a forged ciphertext directly on the socket, bypassing the session.
        await ch._stream.send_all(frame(b"\x00" * 40))
        with trio.fail_after(5):
            with pytest.raises(Exception):  # noqa: B017 - closed by the server
                await ch.receive()
        async with open_rpc("127.0.0.1", port, creds(5)) as ok:
            assert await ok.call("echo", 1) == 1
    assert server.counters["frames_refused"] == 1


async def test_frame_over_the_session_cap_is_refused() -> None:
    small = creds(3, max_frame=1000)
    async with serving(small) as (server, port), open_channel("127.0.0.1", port,
                                                              creds(4)) as ch:
        await ch.send([0, 1, "echo", b"x" * 5000])
        with trio.fail_after(5), pytest.raises(Exception):  # noqa: B017
            await ch.receive()
    assert server.counters["frames_refused"] == 1


async def test_thousand_concurrent_calls_over_one_connection() -> None:
    results: dict[int, Any] = {}
    async with serving() as (_, port), open_rpc("127.0.0.1", port, creds(4)) as c:
        async def one(i: int) -> None:
            results[i] = await c.call("echo", i)

        async with trio.open_nursery() as nursery:
            for i in range(1000):
                nursery.start_soon(one, i)
    assert results == {i: i for i in range(1000)}


async def test_server_refuses_calls_beyond_its_in_flight_limit() -> None:
    async with serving(max_in_flight=5) as (server, port), open_rpc("127.0.0.1", port,
                                                                     creds(4)) as c:
        codes: list[str] = []

        async def one() -> None:
            try:
                await c.call("slow", 0.5)
                codes.append("ok")
            except RpcError as exc:
                codes.append(exc.code)

        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(one)
    assert sorted(codes) == ["ok"] * 5 + ["overloaded"] * 3


async def test_timeout_and_cancellation_cancel_the_call_on_the_node() -> None:
    async with serving() as (server, port), open_rpc("127.0.0.1", port, creds(4)) as c:
        with pytest.raises(CallTimeout):
            await c.call("slow", 30, timeout=0.1)
        with trio.move_on_after(0.1):
            await c.call("slow", 30)
        with trio.fail_after(5):
            while server.counters["calls_cancelled"] < 2:  # noqa: ASYNC110 - a counter, not an event
                await trio.sleep(0.01)
        assert await c.call("echo", "after") == "after"


async def test_stream_with_credit_holds_a_slow_reader_to_its_window() -> None:
    counting = METHODS["count"].fn
    assert isinstance(counting, Counting)
    counting.produced = 0
    async with serving() as (_, port), open_rpc("127.0.0.1", port, creds(4)) as c:
        async with c.stream("count", {"n": 10_000}, window=8) as items:
            got = [await items.__anext__() for _ in range(3)]
            await trio.sleep(0.2)  # a slow reader
            assert counting.produced <= 8 + 4  # the window, plus credit returned so far
            got += [x async for x in items]
    assert got == list(range(10_000))


async def test_stream_cancelled_by_the_caller_stops_the_generator() -> None:
    counting = METHODS["count"].fn
    assert isinstance(counting, Counting)
    counting.closed = trio.Event()
    async with serving() as (_, port), open_rpc("127.0.0.1", port, creds(4)) as c:
        async with c.stream("count", {"n": 10**9}, window=4) as items:
            async for i in items:
                if i == 10:
                    break
        with trio.fail_after(5):
            await counting.closed.wait()
        assert await c.call("echo", 1) == 1


async def test_stream_cancelled_by_the_node_gives_a_typed_error() -> None:
    async with serving() as (_, port), open_rpc("127.0.0.1", port, creds(4)) as c:
        got: list[int] = []
        with pytest.raises(RpcError) as err:
            async with c.stream("count", {"n": 100, "fail_at": 50}) as items:
                async for i in items:
                    got.append(i)
        assert err.value.code == "cancelled" and got == list(range(50))


async def test_peer_dying_mid_call_gives_unavailable_not_a_hang() -> None:
    async with trio.open_nursery() as outer:
        server_scope = trio.CancelScope()

        async def run_server(task_status: trio.TaskStatus[int]) -> None:
            with server_scope:
                async with serving() as (_, port):
                    task_status.started(port)
                    await trio.sleep_forever()

        port = await outer.start(run_server)
        async with open_rpc("127.0.0.1", port, creds(4)) as c:
            async def kill_soon() -> None:
                await trio.sleep(0.1)
                server_scope.cancel()

            outer.start_soon(kill_soon)
            with trio.fail_after(5), pytest.raises(Unavailable):
                await c.call("slow", 30)
            with pytest.raises(Unavailable):
                await c.call("echo", 1)


async def test_pool_reuses_one_connection_and_reopens_after_failure() -> None:
    pool = RpcPool(creds(4))
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        async with serving() as (server, port):
            for i in range(5):
                assert await pool.call("127.0.0.1", port, "echo", i) == i
            assert server.counters["handshakes_ok"] == 1
            client = await pool.client("127.0.0.1", port)
            await client.channel.aclose()  # the connection dies
            with trio.fail_after(5):
                await client.closed_event.wait()
            assert await pool.call("127.0.0.1", port, "echo", "again") == "again"
            assert server.counters["handshakes_ok"] == 2
        with pytest.raises(Unavailable, match="cannot reach"):
            await pool.call("127.0.0.1", port, "echo", 1)
        assert pool.statistics()["connections_failed"] == 1
        nursery.cancel_scope.cancel()


async def test_pool_checks_the_node_id_it_was_given() -> None:
    pool = RpcPool(creds(4))
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        async with serving() as (_, port):
            assert await pool.call("127.0.0.1", port, "echo", 1, expect_id=fixed_key(3).id) == 1
            with pytest.raises(Unavailable, match="not the expected"):
                await pool.call("127.0.0.1", port, "echo", 1, expect_id=fixed_key(8).id)
        nursery.cancel_scope.cancel()


def test_frame_reader_wants_the_rest_of_a_frame() -> None:
    r = FrameReader(100)
    assert r.wanted() == 4
    r.feed(frame(b"x" * 50)[:10])
    assert r.wanted() == 44


async def test_truncated_frames_and_streams_are_counted() -> None:
    async with serving() as (server, port):
        async with open_channel("127.0.0.1", port, creds(4)) as ch:
            await ch._stream.send_all(b"\x00\x00\x01\x00" + b"x" * 10)  # 10 of 256 bytes
            await ch._stream.send_eof()
            with trio.fail_after(5), pytest.raises(Exception):  # noqa: B017
                await ch.receive()
        async with open_channel("127.0.0.1", port, creds(4)) as ch:
            await ch._stream.send_eof()  # no final frame: the stream was cut short
            with trio.fail_after(5), pytest.raises(Exception):  # noqa: B017
                await ch.receive()
        async with open_rpc("127.0.0.1", port, creds(5)) as ok:  # a clean close
            assert await ok.call("echo", 1) == 1
        with trio.fail_after(5):
            while server.counters["channels_closed"] < 3:  # noqa: ASYNC110 - a counter
                await trio.sleep(0.01)
    assert server.counters["frames_refused"] == 1
    assert server.counters["streams_truncated"] == 1


async def test_answers_and_requests_over_the_frame_cap_are_typed_errors() -> None:
    async with serving() as (server, port), open_rpc("127.0.0.1", port, creds(4)) as c:
        with pytest.raises(RpcError) as err:
            await c.call("big", 2 * 1024 * 1024)
        assert err.value.code == "too_large"
        with pytest.raises(RpcError) as err:
            await c.call("echo", b"y" * (2 * 1024 * 1024))
        assert err.value.code == "too_large"
        assert len(await c.call("big", 1000)) == 1000  # both ends still fine
    assert server.counters["calls_failed"] == 1


async def test_sender_cancelled_on_a_full_queue_leaves_no_partial_frame() -> None:
    """Big frames fill the socket and the queue while the peer does not read: the
    socket takes frames in part, the writer task finishes them, a sender that
    gives up waiting for room sends nothing, and the peer gets every sent frame
    whole and in order."""
    got: list[Any] = []
    release, done = trio.Event(), trio.Event()

    async def slow_reader(channel: SecureChannel) -> None:
        await release.wait()
        while (msg := await channel.receive()) != "last":
            got.append(msg)
        done.set()

    big = b"x" * 200_000
    server = ChannelServer(creds(3), slow_reader)
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(server.serve, "127.0.0.1", 0)
        async with open_channel("127.0.0.1", port, creds(4)) as ch:
            sent = 0
            while True:
                with trio.move_on_after(0.5) as waited:
                    await ch.send([sent, big])
                if waited.cancelled_caught:
                    break  # the queue is full: this one was not sent
                sent += 1
            assert sent >= SEND_QUEUE
            release.set()
            await ch.send("last")
            with trio.fail_after(10):
                await done.wait()
        nursery.cancel_scope.cancel()
    assert [m[0] for m in got] == list(range(sent))
    assert all(m[1] == big for m in got)


async def test_sends_that_go_straight_through_still_let_other_tasks_run() -> None:
    async with serving() as (_, port), open_channel("127.0.0.1", port, creds(4)) as ch:
        ran = trio.Event()

        async def other() -> None:
            ran.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(other)
            for i in range(100):  # nothing else here is a schedule point
                await ch.send([0, i, "echo", i])
            assert ran.is_set()


async def test_answer_to_one_of_several_messages_read_together_is_not_held_back() -> None:
    """Messages read together make their answers wait to go out in one write, but
    no longer than one scheduler round: a handler that answers the first and
    never reads again still gets its answer out."""
    async def answer_two(channel: SecureChannel) -> None:
        for _ in range(2):
            await channel.send(["re", await channel.receive()])
        await trio.sleep_forever()

    server = ChannelServer(creds(3), answer_two)
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(server.serve, "127.0.0.1", 0)
        async with open_channel("127.0.0.1", port, creds(4)) as ch:
            await ch.send(0)  # one round trip first: the server's writer task is idle
            assert await ch.receive() == ["re", 0]
            both = b"".join(frame(ch._session.encrypt(packb(i))) for i in (1, 2))
            await ch._stream.send_all(both)  # one write: the server reads both at once
            with trio.fail_after(5):
                assert await ch.receive() == ["re", 1]
        nursery.cancel_scope.cancel()


async def test_channel_over_a_stream_that_is_not_a_socket() -> None:
    """Without a socket to write to directly, the writer task sends everything:
    frames keep their order and the stream ends cleanly all the same."""
    a, b = creds(4), creds(3)
    client = ClientHandshake(a.key, a.cert, a.grid)
    server = ServerHandshake(b.key, b.cert, b.grid)
    m3 = client.receive_server_untrusted(server.receive_hello_untrusted(client.hello()),
                                         now=time.time(), revoked=frozenset())
    server_session, m4 = server.receive_client_untrusted(m3, now=time.time(),
                                                         revoked=frozenset())
    client_session = client.receive_verdict_untrusted(m4)
    left, right = memory_stream_pair()
    big = b"y" * 100_000
    got: list[Any] = []
    async with trio.open_nursery() as nursery:
        async def read_all() -> None:
            async with _run_channel(right, server_session, FrameReader(1 << 20), "b") as ch:
                try:
                    while True:
                        got.append(await ch.receive())
                except ChannelClosed as exc:
                    assert exc.clean

        nursery.start_soon(read_all)
        async with _run_channel(left, client_session, FrameReader(1 << 20), "a") as ch:
            for i in range(3 * SEND_QUEUE):
                await ch.send([i, big])
    assert [m[0] for m in got] == list(range(3 * SEND_QUEUE))
