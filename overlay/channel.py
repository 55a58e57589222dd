"""The secure channel over trio TCP streams (the I/O around ``_handshake``).

``open_channel`` connects and handshakes; ``ChannelServer`` accepts, gives
each handshake a deadline (a slow-loris peer is cut off), refuses and
counts what fails, and hands each established channel to a handler.  A
channel sends from one writer task, so messages are encrypted in the order
they leave, a cancelled sender never leaves half a frame on the wire, and a
queue of bounded depth makes a slow reader slow the writers down.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from ._errors import BadMessage
from ._handshake import (
    ABYTES,
    MAX_FRAME,
    MAX_HANDSHAKE_FRAME,
    ClientHandshake,
    FrameReader,
    HandshakeRefused,
    ServerHandshake,
    Session,
    frame,
)
from ._wire import packb, unpackb_untrusted
from .certs import Certificate, GridInfo
from .identity import KeyPair

logger = logging.getLogger("gridnode.channel")

HANDSHAKE_TIMEOUT = 10.0
SEND_QUEUE = 64
MAX_MESSAGE_ITEMS = 65536
MAX_CONNECTIONS = 1024
READ_SIZE = 256 * 1024
IDLE_READ_SIZE = 64 * 1024


class MessageTooLarge(ValueError):
    """Our message would not fit in one frame (our side's problem, not the peer's)."""


class ChannelClosed(Exception):
    """The connection ended: the peer closed it, it broke, or we closed it.

    ``clean`` is True only when the peer ended its stream with the final tag.
    """

    def __init__(self, message: str, *, clean: bool = False) -> None:
        super().__init__(message)
        self.clean = clean


@dataclass
class Credentials:
    """Who we are in a grid, and whom the grid has revoked."""

    key: KeyPair
    cert: Certificate
    grid: GridInfo
    revoked: frozenset[bytes] = frozenset()
    max_frame: int = MAX_FRAME


class SecureChannel:
    """An established channel: ``send`` msgpack-able objects, ``receive`` them back."""

    def __init__(self, stream: trio.abc.Stream, session: Session, reader: FrameReader,
                 address: str) -> None:
        self.peer: Certificate = session.peer
        self.address = address
        self._stream = stream
        self._session = session
        self._reader = reader
        self._reader.max_frame = session.max_frame + ABYTES
        self._out, self._out_recv = trio.open_memory_channel[tuple[bytes, bool]](SEND_QUEUE)
        self.closed = False
        self.bytes_sent = 0
        self.bytes_received = 0
        self._streaming = False

    @property
    def max_frame(self) -> int:
        return self._session.max_frame

    async def send(self, message: Any) -> None:
        """Queue a message; waits while the queue is full (the peer reads slowly).

        A message bigger than the frame cap raises MessageTooLarge here, in the
        sender's task: the caller splits it or answers with an error."""
        if self.closed:
            raise ChannelClosed("channel is closed")
        data = packb(message)
        if len(data) > self._session.max_frame:
            raise MessageTooLarge(f"a message of {len(data)} bytes exceeds the frame cap of "
                                  f"{self._session.max_frame}")
        try:
            await self._out.send((data, False))
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise ChannelClosed("channel is closed") from None

    async def receive(self) -> Any:
        """The next message; ChannelClosed at the end, BadMessage for bad bytes."""
        while True:
            data = self._reader.next_frame_untrusted()
            if data is not None:
                plaintext = self._session.decrypt_untrusted(data)
                if self._session.finished:
                    raise ChannelClosed("peer closed the channel", clean=True)
                return unpackb_untrusted(plaintext, max_size=self._session.max_frame,
                                         max_items=MAX_MESSAGE_ITEMS)
            # Small reads while idle (a large buffer costs an allocation per read),
            # large ones while a previous read came back full (bulk data flowing).
            size = READ_SIZE if self._streaming else IDLE_READ_SIZE
            try:
                chunk = await self._stream.receive_some(max(size, self._reader.wanted()))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise ChannelClosed(f"connection broke: {exc}") from None
            if not chunk:
                if self._reader.buffered:
                    raise BadMessage(f"connection ended inside a frame "
                                     f"({self._reader.buffered} bytes of it): truncated")
                raise ChannelClosed("peer closed the connection without ending the stream "
                                    "(truncated)")
            self.bytes_received += len(chunk)
            self._streaming = len(chunk) >= size
            self._reader.feed(chunk)

    async def _write(self) -> None:
        try:
            async for message, final in self._out_recv:  # packed bytes
                batch = [frame(self._session.encrypt(message, final=final))]
                while not final and sum(map(len, batch)) < READ_SIZE:
                    try:
                        message, final = self._out_recv.receive_nowait()
                    except trio.WouldBlock:
                        break
                    batch.append(frame(self._session.encrypt(message, final=final)))
                data = b"".join(batch)
                await self._stream.send_all(data)
                self.bytes_sent += len(data)
                if final:
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            logger.debug("channel to %s broke while sending: %r", self.address, exc)
        finally:
            self.closed = True
            self._out_recv.close()

    async def aclose(self) -> None:
        """End the stream cleanly (a final frame), then close the socket."""
        if not self.closed:
            self.closed = True
            with trio.move_on_after(1) as cs:
                cs.shield = True
                try:
                    await self._out.send((packb(None), True))
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    pass
        self._out.close()


@asynccontextmanager
async def _run_channel(stream: trio.abc.Stream, session: Session, reader: FrameReader,
                       address: str) -> AsyncIterator[SecureChannel]:
    channel = SecureChannel(stream, session, reader, address)
    error: Exception | None = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(channel._write)
            try:
                yield channel
            except Exception as exc:
                error = exc  # raised below, outside the nursery: not in a group
            finally:
                await channel.aclose()
                # The writer ends after the final frame; a stuck one gets 1 s.
                nursery.cancel_scope.deadline = min(nursery.cancel_scope.deadline,
                                                    trio.current_time() + 1)
    finally:
        await trio.aclose_forcefully(stream)
    if error is not None:
        raise error


async def _read_handshake_frame(stream: trio.abc.Stream, reader: FrameReader) -> bytes:
    while True:
        data = reader.next_frame_untrusted()
        if data is not None:
            return data
        try:
            chunk = await stream.receive_some(max(4096, reader.wanted()))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise ChannelClosed(f"connection broke during the handshake: {exc}") from None
        if not chunk:
            raise ChannelClosed("peer closed the connection during the handshake")
        reader.feed(chunk)


async def _send(stream: trio.abc.Stream, payload: bytes) -> None:
    try:
        await stream.send_all(frame(payload))
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        raise ChannelClosed(f"connection broke during the handshake: {exc}") from None


@asynccontextmanager
async def open_channel(host: str, port: int, creds: Credentials, *,
                       expect_id: bytes | None = None,
                       handshake_timeout: float = HANDSHAKE_TIMEOUT
                       ) -> AsyncIterator[SecureChannel]:
    """Connect to a node and handshake; raises OSError, ChannelClosed or BadMessage
    (HandshakeRefused when either side refuses the other's certificate)."""
    stream: trio.abc.Stream | None = None
    with trio.fail_after(handshake_timeout):
        stream = await trio.open_tcp_stream(host, port)
        try:
            hs = ClientHandshake(creds.key, creds.cert, creds.grid, max_frame=creds.max_frame,
                                 expect_id=expect_id)
            reader = FrameReader(MAX_HANDSHAKE_FRAME)
            await _send(stream, hs.hello())
            m2 = await _read_handshake_frame(stream, reader)
            await _send(stream, hs.receive_server_untrusted(m2, now=time.time(),
                                                            revoked=creds.revoked))
            session = hs.receive_verdict_untrusted(await _read_handshake_frame(stream, reader))
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
    async with _run_channel(stream, session, reader, f"{host}:{port}") as channel:
        yield channel


Handler = Callable[[SecureChannel], Awaitable[None]]


@dataclass
class ChannelServer:
    """Accept connections, handshake with a deadline, run ``handler`` per channel."""

    creds: Credentials
    handler: Handler
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    max_connections: int = MAX_CONNECTIONS
    counters: dict[str, int] = field(default_factory=dict)
    _live: dict[bytes, set[trio.CancelScope]] = field(default_factory=dict)
    _connections: int = 0
    _listeners: list[trio.SocketListener] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("handshakes_ok", "handshakes_refused", "handshake_timeouts",
                     "connections_refused_busy", "channels_cut_revoked", "frames_refused",
                     "streams_truncated", "channels_closed"):
            self.counters.setdefault(name, 0)

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def set_revoked(self, revoked: frozenset[bytes]) -> None:
        """Adopt a revocation list: cut the channels of members it names."""
        self.creds.revoked = revoked
        for subject in set(self._live) & revoked:
            for scope in self._live.pop(subject):
                scope.cancel()
                self._count("channels_cut_revoked")
            logger.warning("channel.cut peer=%s reason=revoked by the grid authority",
                           subject.hex())

    def statistics(self) -> dict[str, int]:
        return {**self.counters, "channels_open": self._connections}

    async def listen(self, host: str, port: int) -> tuple[str, int]:
        """Bind the listening socket (OSError if it cannot be had); ``serve`` uses it."""
        self._listeners = await trio.open_tcp_listeners(port, host=host)
        bound = self._listeners[0].socket.getsockname()
        return bound[0], bound[1]

    def close_listeners(self) -> None:
        for listener in self._listeners:
            listener.socket.close()
        self._listeners = []

    async def serve(self, host: str | None = None, port: int = 0, *,
                    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Accept until cancelled, on ``listen``'s socket or a new one on host:port."""
        if not self._listeners:
            await self.listen(host or "127.0.0.1", port)
        listeners, self._listeners = self._listeners, []
        bound = listeners[0].socket.getsockname()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self._accept, listeners)
            task_status.started((bound[0], bound[1]))

    async def _accept(self, stream: trio.SocketStream) -> None:
        try:
            peer = stream.socket.getpeername()
            address = f"{peer[0]}:{peer[1]}"
        except OSError:
            address = "?"
        if self._connections >= self.max_connections:
            self._count("connections_refused_busy")
            logger.warning("channel.refused from=%s reason=too many connections (%d)",
                           address, self.max_connections)
            await trio.aclose_forcefully(stream)
            return
        self._connections += 1
        try:
            await self._serve_one(stream, address)
        finally:
            self._connections -= 1

    async def _serve_one(self, stream: trio.SocketStream, address: str) -> None:
        hs = ServerHandshake(self.creds.key, self.creds.cert, self.creds.grid,
                             max_frame=self.creds.max_frame)
        reader = FrameReader(MAX_HANDSHAKE_FRAME)
        with trio.move_on_after(self.handshake_timeout) as deadline:
            try:
                await _send(stream, hs.receive_hello_untrusted(
                    await _read_handshake_frame(stream, reader)))
                session, ok = hs.receive_client_untrusted(
                    await _read_handshake_frame(stream, reader), now=time.time(),
                    revoked=self.creds.revoked)
                await _send(stream, ok)
            except HandshakeRefused as exc:
                self._refuse(address, exc.code, str(exc))
                with trio.move_on_after(1):
                    try:
                        await _send(stream, hs.refusal(exc))
                    except ChannelClosed:
                        pass
                await trio.aclose_forcefully(stream)
                return
            except (BadMessage, ChannelClosed) as exc:
                self._refuse(address, "malformed", str(exc))
                await trio.aclose_forcefully(stream)
                return
        if deadline.cancelled_caught:
            self._count("handshake_timeouts")
            logger.warning("channel.refused from=%s reason=handshake not finished in %.0f s",
                           address, self.handshake_timeout)
            await trio.aclose_forcefully(stream)
            return
        self._count("handshakes_ok")
        subject = session.peer.subject_id
        scope = trio.CancelScope()
        self._live.setdefault(subject, set()).add(scope)
        try:
            with scope:
                async with _run_channel(stream, session, reader, address) as channel:
                    await self.handler(channel)
        except BadMessage as exc:
            self._count("frames_refused")
            logger.warning("channel.closed peer=%s from=%s reason=%s", subject.hex(), address,
                           exc)
        except ChannelClosed as exc:
            if not exc.clean:
                self._count("streams_truncated")
            logger.debug("channel.closed peer=%s from=%s reason=%s", subject.hex(), address,
                         exc)
        finally:
            self._count("channels_closed")
            scopes = self._live.get(subject)
            if scopes is not None:
                scopes.discard(scope)
                if not scopes:
                    del self._live[subject]

    def _refuse(self, address: str, code: str, reason: str) -> None:
        self._count("handshakes_refused")
        self._count(f"refused_{code}")
        logger.warning("channel.refused from=%s code=%s reason=%s", address, code, reason)
