"""RPC over a secure channel: many calls in flight, streams with credit.

Messages are msgpack lists, the first item a kind:

=========  ========  ==========================================
kind       from      fields
=========  ========  ==========================================
REQUEST    caller    call id, method, args
STREAM     caller    call id, method, args, window
RESULT     callee    call id, value
ERROR      callee    call id, code, message
ITEM       callee    call id, value        (streams; one credit each)
END        callee    call id               (streams)
CANCEL     caller    call id
CREDIT     caller    call id, n            (streams: n more items)
=========  ========  ==========================================

A stream's callee sends an item only against credit the caller granted,
so a slow reader slows the writer and the caller buffers at most
``window`` items.  The callee refuses calls beyond ``max_in_flight`` per
connection with ``overloaded``; callers queue instead of sending more.
Errors cross the wire as a code and a one-line message; a callee's own
bug is logged there and reaches the caller as ``internal``.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from ._errors import BadMessage
from ._wire import expect
from .certs import Certificate
from .channel import ChannelClosed, Credentials, MessageTooLarge, SecureChannel, open_channel

logger = logging.getLogger("gridnode.rpc")

REQUEST, STREAM, RESULT, ERROR, ITEM, END, CANCEL, CREDIT = range(8)
MAX_IN_FLIGHT = 1024
RTT_WINDOW = 16  # round trips a client keeps
MAX_WINDOW = 1024
MAX_METHOD = 64
ACCESS = ("member", "node", "user", "admin")


class RpcError(Exception):
    """A call failed; ``code`` is one word that crossed the wire (or was made here)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    def __str__(self) -> str:
        return f"{self.args[0]} ({self.code})"


class CallTimeout(RpcError):
    def __init__(self, message: str) -> None:
        super().__init__("timeout", message)


class Unavailable(RpcError):
    """The peer could not be reached, or the connection died mid-call."""

    def __init__(self, message: str) -> None:
        super().__init__("unavailable", message)


def bad_request(message: str) -> RpcError:
    return RpcError("bad_request", message)


@dataclass(frozen=True)
class CallContext:
    """What a handler knows about its caller: a checked certificate."""

    peer: Certificate
    address: str

    @property
    def peer_id(self) -> bytes:
        return self.peer.subject_id


@dataclass(frozen=True)
class Method:
    """One entry of a node's RPC table: who may call it and how it answers."""

    fn: Callable[[CallContext, Any], Any]
    access: str = "member"
    streaming: bool = False
    # Run by the connection's reader itself: only for handlers that answer at
    # once without I/O (they hold up the connection's other messages meanwhile).
    inline: bool = False

    def __post_init__(self) -> None:
        if self.access not in ACCESS:
            raise ValueError(f"unknown access level {self.access!r}")


def allowed(access: str, cert: Certificate) -> bool:
    """Reading is for members; acting needs a user cert, admin actions its admin role."""
    if access == "member":
        return True
    if access == "node":
        return cert.kind == "node"
    if access == "user":
        return cert.kind == "user"
    return cert.kind == "user" and "admin" in cert.roles


_SIZES = {REQUEST: 4, STREAM: 5, RESULT: 3, ERROR: 4, ITEM: 3, END: 2, CANCEL: 2, CREDIT: 3}


def _check_message_untrusted(msg: Any) -> tuple[int, int]:
    expect(isinstance(msg, list) and len(msg) >= 2, "RPC message is not a list")
    kind, call_id = msg[0], msg[1]
    expect(type(kind) is int and REQUEST <= kind <= CREDIT, f"unknown RPC kind {kind!r}")
    expect(type(call_id) is int and 0 <= call_id < 2**63, "bad call id")
    expect(len(msg) == _SIZES[kind], f"RPC message of kind {kind} has {len(msg)} fields")
    return kind, call_id


# -- the callee --------------------------------------------------------------


@dataclass
class RpcServer:
    """Serves a closed table of methods on each channel it is given."""

    methods: dict[str, Method]
    max_in_flight: int = MAX_IN_FLIGHT
    counters: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("calls", "calls_refused", "calls_failed", "calls_internal_error",
                     "calls_cancelled", "rpc_protocol_errors"):
            self.counters.setdefault(name, 0)

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    async def serve_channel(self, channel: SecureChannel) -> None:
        """Run calls from one channel until it closes.

        Bad messages raise BadMessage, a stream cut short ChannelClosed.
        """
        calls: dict[int, trio.CancelScope] = {}
        credits: dict[int, trio.Semaphore] = {}
        ctx = CallContext(channel.peer, channel.address)
        error: BadMessage | ChannelClosed | None = None
        async with trio.open_nursery() as nursery:
            try:
                while True:
                    msg = await channel.receive()
                    inline = self._dispatch_untrusted(msg, channel, ctx, calls, credits,
                                                      nursery)
                    if inline is not None:  # answered here: no task, no cancel scope
                        await self._answer(channel, ctx, *inline)
            except ChannelClosed as exc:
                if not exc.clean:
                    error = exc  # the server counts streams cut short
            except BadMessage as exc:
                self._count("rpc_protocol_errors")
                error = exc
            finally:
                nursery.cancel_scope.cancel()
        if error is not None:
            raise error

    def _dispatch_untrusted(self, msg: Any, channel: SecureChannel, ctx: CallContext,
                            calls: dict[int, trio.CancelScope],
                            credits: dict[int, trio.Semaphore], nursery: trio.Nursery
                            ) -> tuple[int, str, Method, Any] | None:
        """Start a call, or return what the reader needs to answer an inline one.

        An inline call is answered by the connection's reader before it reads
        on: it holds no slot among ``calls`` and needs no cancel scope, since
        no CANCEL for it can be read before its answer is sent."""
        kind, call_id = _check_message_untrusted(msg)
        if kind == CANCEL:
            scope = calls.get(call_id)
            if scope is not None:
                scope.cancel()
            return None
        if kind == CREDIT:
            n = msg[2]
            expect(type(n) is int and 0 < n <= MAX_WINDOW, "bad credit")
            sem = credits.get(call_id)
            if sem is not None:
                try:
                    for _ in range(n):
                        sem.release()
                except ValueError:
                    raise BadMessage(f"credit for call {call_id} beyond the window") from None
            return None
        expect(kind in (REQUEST, STREAM), f"a caller sent a callee's message (kind {kind})")
        expect(call_id not in calls, f"call id {call_id} is already in flight")
        method_name = msg[2]
        expect(isinstance(method_name, str) and len(method_name) <= MAX_METHOD, "bad method")
        self._count("calls")
        method = self.methods.get(method_name)
        refusal: RpcError | None = None
        if method is None:
            refusal = RpcError("not_found", f"no method {method_name!r}")
        elif method.streaming != (kind == STREAM):
            refusal = bad_request(f"{method_name!r} is {'' if method.streaming else 'not '}"
                                  f"a streaming call")
        elif not allowed(method.access, ctx.peer):
            refusal = RpcError("forbidden", f"{method_name!r} needs {method.access} access; "
                               f"you hold a {ctx.peer.kind} certificate with roles "
                               f"{','.join(ctx.peer.roles) or 'none'}")
        elif len(calls) >= self.max_in_flight:
            refusal = RpcError("overloaded", f"more than {self.max_in_flight} calls in flight "
                               f"on this connection")
        if refusal is not None:
            self._count("calls_refused")
            logger.info("rpc.refused peer=%s method=%s code=%s reason=%s",
                        ctx.peer_id.hex(), method_name, refusal.code, refusal.args[0])
            nursery.start_soon(_send_quietly, channel, [ERROR, call_id, refusal.code,
                                                        refusal.args[0]])
            return None
        assert method is not None
        if method.inline and kind == REQUEST:
            return call_id, method_name, method, msg[3]
        scope = trio.CancelScope()
        calls[call_id] = scope
        sem = None
        if kind == STREAM:
            window = msg[4]
            expect(type(window) is int and 0 < window <= MAX_WINDOW, "bad window")
            sem = credits[call_id] = trio.Semaphore(window, max_value=MAX_WINDOW)
        nursery.start_soon(self._run, channel, ctx, call_id, method_name, method, msg[3], scope,
                           sem, calls, credits)
        return None

    async def _run(self, channel: SecureChannel, ctx: CallContext, call_id: int, name: str,
                   method: Method, args: Any, scope: trio.CancelScope,
                   credit: trio.Semaphore | None, calls: dict[int, trio.CancelScope],
                   credits: dict[int, trio.Semaphore]) -> None:
        """A call in its own task, which CANCEL cancels."""
        try:
            with scope:
                await self._answer(channel, ctx, call_id, name, method, args, credit)
            if scope.cancelled_caught:
                self._count("calls_cancelled")
        except ChannelClosed:
            pass
        finally:
            calls.pop(call_id, None)
            credits.pop(call_id, None)

    async def _answer(self, channel: SecureChannel, ctx: CallContext, call_id: int, name: str,
                      method: Method, args: Any, credit: trio.Semaphore | None = None) -> None:
        """Run the handler and send its answer: the result, the items, or a typed error."""
        try:
            if credit is not None:
                async with aclosing(method.fn(ctx, args)) as items:
                    async for item in items:
                        await credit.acquire()
                        await channel.send([ITEM, call_id, item])
                await channel.send([END, call_id])
            else:
                result = await method.fn(ctx, args)
                await channel.send([RESULT, call_id, result])
        except RpcError as exc:
            self._count("calls_failed")
            await channel.send([ERROR, call_id, exc.code, str(exc.args[0])])
        except MessageTooLarge as exc:
            self._count("calls_failed")
            await channel.send([ERROR, call_id, "too_large",
                                f"the answer to {name} is too large ({exc}); ask for less"])
        except ChannelClosed:
            pass
        except Exception:
            self._count("calls_internal_error")
            logger.exception("rpc.internal_error method=%s peer=%s", name, ctx.peer_id.hex())
            await channel.send([ERROR, call_id, "internal",
                                f"{name} failed on the node; its log says why"])


async def _send_quietly(channel: SecureChannel, msg: list[Any]) -> None:
    try:
        await channel.send(msg)
    except ChannelClosed:
        pass


# -- the caller ---------------------------------------------------------------


@dataclass
class _Call:
    done: trio.Event = field(default_factory=trio.Event)
    outcome: tuple[bool, Any] = (False, None)
    items: trio.MemorySendChannel[tuple[int, Any]] | None = None


class RpcClient:
    """Calls over one channel; ``run`` (the reader) must be running."""

    def __init__(self, channel: SecureChannel, *, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self.channel = channel
        self.peer = channel.peer
        self._next_id = 0
        self._calls: dict[int, _Call] = {}
        self._slots = trio.Semaphore(max_in_flight)
        self.closed: str | None = None  # why, once the connection is gone
        self.closed_event = trio.Event()
        self.last_used = trio.current_time()
        # Round trips of the last calls answered (seconds): their minimum is the
        # latency to the peer with the least of its processing time in it.
        self.round_trips: deque[float] = deque(maxlen=RTT_WINDOW)

    @property
    def rtt(self) -> float | None:
        return min(self.round_trips) if self.round_trips else None

    @property
    def busy(self) -> bool:
        return bool(self._calls)

    async def run(self) -> None:
        try:
            while True:
                self._deliver_untrusted(await self.channel.receive())
        except ChannelClosed as exc:
            self._close(f"connection to {self.channel.address} lost: {exc}")
        except BadMessage as exc:
            logger.warning("rpc.bad_reply from=%s reason=%s", self.channel.address, exc)
            self._close(f"node at {self.channel.address} sent a bad message: {exc}")
        finally:
            self._close(f"connection to {self.channel.address} closed")

    def _close(self, why: str) -> None:
        if self.closed is not None:
            return
        self.closed = why
        for call in self._calls.values():
            if call.items is not None:
                try:
                    call.items.send_nowait((ERROR, Unavailable(why)))
                except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                call.items.close()
            call.outcome = (False, Unavailable(why))
            call.done.set()
        self.closed_event.set()

    def _deliver_untrusted(self, msg: Any) -> None:
        kind, call_id = _check_message_untrusted(msg)
        call = self._calls.get(call_id)
        if call is None:
            return  # an answer to a call we gave up on
        if kind == ERROR:
            code, text = msg[2], msg[3]
            expect(isinstance(code, str) and isinstance(text, str), "bad error")
            err = RpcError(code[:64], text[:1000])
            if call.items is not None:
                self._push(call, (ERROR, err))
                call.items.close()
            call.outcome = (False, err)
            call.done.set()
        elif kind == RESULT:
            expect(call.items is None, "a result for a stream")
            call.outcome = (True, msg[2])
            call.done.set()
        elif kind in (ITEM, END):
            expect(call.items is not None, "an item for a plain call")
            assert call.items is not None
            self._push(call, (kind, msg[2] if kind == ITEM else None))
            if kind == END:
                call.items.close()
                call.done.set()
        else:
            raise BadMessage(f"a callee sent a caller's message (kind {kind})")

    @staticmethod
    def _push(call: _Call, item: tuple[int, Any]) -> None:
        assert call.items is not None
        try:
            call.items.send_nowait(item)
        except trio.WouldBlock:
            raise BadMessage("stream item beyond the granted credit") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the caller stopped reading

    def _start(self) -> tuple[int, _Call]:
        if self.closed is not None:
            raise Unavailable(self.closed)
        self._next_id += 1
        call = self._calls[self._next_id] = _Call()
        self.last_used = trio.current_time()
        return self._next_id, call

    async def _cancel(self, call_id: int) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            try:
                await self.channel.send([CANCEL, call_id])
            except ChannelClosed:
                pass

    async def call(self, method: str, args: Any = None, *,
                   timeout: float | None = None) -> Any:  # noqa: ASYNC109 (per-call timeout)
        """Call ``method``; its result, or RpcError (CallTimeout, Unavailable, ...)."""
        try:
            self._slots.acquire_nowait()  # the common case, without a trip to the scheduler
        except trio.WouldBlock:
            await self._slots.acquire()
        try:
            call_id, call = self._start()
            started = self.last_used
            completed = False
            try:
                if timeout is None:  # no cancel scope: it costs more than the rest of a call
                    await self.channel.send([REQUEST, call_id, method, args])
                    await call.done.wait()
                    completed = True
                else:
                    with trio.move_on_after(timeout):
                        await self.channel.send([REQUEST, call_id, method, args])
                        await call.done.wait()
                        completed = True
                    if not completed:
                        raise CallTimeout(f"{method} to {self.channel.address} took longer "
                                          f"than {timeout} s")
            except ChannelClosed:
                raise Unavailable(self.closed or "connection closed") from None
            except MessageTooLarge as exc:
                completed = True  # nothing was sent
                raise RpcError("too_large", f"the request for {method} is too large: {exc}"
                               ) from None
            finally:
                self._calls.pop(call_id, None)
                if not completed and self.closed is None:
                    await self._cancel(call_id)
        finally:
            self._slots.release()
        self.round_trips.append(trio.current_time() - started)
        ok, value = call.outcome
        if not ok:
            raise value
        return value

    @asynccontextmanager
    async def stream(self, method: str, args: Any = None, *,
                     window: int = 16) -> AsyncIterator[AsyncIterator[Any]]:
        """A server-streaming call: ``async with c.stream(m, a) as items: async for ...``."""
        if not 0 < window <= MAX_WINDOW:
            raise ValueError(f"window must be 1-{MAX_WINDOW}")
        async with self._slots:
            call_id, call = self._start()
            send, recv = trio.open_memory_channel[tuple[int, Any]](window + 2)
            call.items = send
            try:
                await self.channel.send([STREAM, call_id, method, args, window])
            except ChannelClosed:
                self._calls.pop(call_id, None)
                raise Unavailable(self.closed or "connection closed") from None

            try:
                yield _Items(self, call_id, recv, window)
            finally:
                recv.close()
                self._calls.pop(call_id, None)
                if not call.done.is_set() and self.closed is None:
                    await self._cancel(call_id)


class _Items:
    """The items of one stream; returns credit as the caller reads."""

    def __init__(self, client: RpcClient, call_id: int,
                 recv: trio.MemoryReceiveChannel[tuple[int, Any]], window: int) -> None:
        self._client, self._call_id, self._recv, self._window = client, call_id, recv, window
        self._consumed = 0
        self._done = False

    def __aiter__(self) -> _Items:
        return self

    async def __anext__(self) -> Any:
        if self._done:
            raise StopAsyncIteration
        try:
            kind, value = await self._recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            self._done = True
            raise Unavailable(self._client.closed or "stream ended without its end") from None
        if kind != ITEM:
            self._done = True
            if kind == ERROR:
                raise value
            raise StopAsyncIteration
        self._consumed += 1
        if self._consumed * 2 >= self._window:
            try:
                await self._client.channel.send([CREDIT, self._call_id, self._consumed])
            except ChannelClosed:
                raise Unavailable(self._client.closed or "connection closed") from None
            self._consumed = 0
        return value


@asynccontextmanager
async def open_rpc(host: str, port: int, creds: Credentials, *,
                   expect_id: bytes | None = None) -> AsyncIterator[RpcClient]:
    """Connect, handshake and run the reader; yields a client for calls."""
    async with open_channel(host, port, creds, expect_id=expect_id) as channel:
        client = RpcClient(channel)
        error: Exception | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.run)
            try:
                yield client
            except Exception as exc:
                error = exc  # raised below, outside the nursery: not in a group
            finally:
                nursery.cancel_scope.cancel()
        if error is not None:
            raise error
