"""The secure channel over trio TCP streams (the I/O around ``_handshake``).

``open_channel`` connects and handshakes; ``ChannelServer`` accepts, gives
each handshake a deadline (a slow-loris peer is cut off), refuses and
counts what fails, and hands each established channel to a handler.  A
sender encrypts and queues its frame in one synchronous step and writes
what the socket takes at once; a writer task writes the rest when the
socket is writable.  So messages are encrypted in the order they leave, a
cancelled sender never leaves half a frame on the wire, and a queue of
bounded depth makes a slow reader slow the writers down.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import trio

from ._errors import BadMessage
from ._handshake import (
    ABYTES,
    LENGTH,
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
# A sender whose frames all go straight to the socket yields to the scheduler
# once every this many sends (trio's fairness: every task gets to run).
YIELD_EVERY = 16
# Frames smaller than this are queued as one buffer (header + ciphertext);
# larger ones as two, so that writev sends them without a copy.
COALESCE = 16 * 1024
WRITEV_BUFFERS = 64
# While answers to messages read together are held back to go out together,
# this many queued frames are written anyway.
HOLD_FRAMES = 32


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
    """An established channel: ``send`` msgpack-able objects, ``receive`` them back.

    Sending: ``send`` packs and encrypts in the caller's task and appends the
    frame to the send queue at once, so frames are encrypted in the order they
    are queued, and a message is either queued whole or not at all (a
    cancelled sender leaves nothing behind).  Then the sender writes what the
    socket takes without blocking (no hop to another task: a small answer
    costs one ``writev``); what it does not take the writer task writes once
    the socket is writable, and whoever writes next starts where the last
    write stopped, so frames never interleave.  A sender waits while
    ``SEND_QUEUE`` frames are queued (the peer reads slowly).
    """

    def __init__(self, stream: trio.abc.Stream, session: Session, reader: FrameReader,
                 address: str) -> None:
        self.peer: Certificate = session.peer
        self.address = address
        self._stream = stream
        self._session = session
        self._reader = reader
        self._reader.max_frame = session.max_frame + ABYTES
        # Reads use the trio socket itself (SocketStream.receive_some adds only
        # error translation). Writes go straight to the socket where os.writev
        # takes its file descriptor (POSIX); elsewhere the writer task sends.
        self._socket = stream.socket if isinstance(stream, trio.SocketStream) else None
        self._sock = self._socket if os.name == "posix" else None
        self._queue: deque[tuple[bytes | memoryview, bool]] = deque()  # (bytes, ends a frame)
        self._queued = 0  # frames in the queue, the first maybe partly written
        self._writer_owns = False  # the socket was full: the writer task writes next
        # Set while frames read together are being answered: their answers are
        # queued and go out together (one writev) before the next read, or
        # from the writer task one scheduler round later (see ``receive``).
        self._hold = False
        self._room = trio.lowlevel.ParkingLot()  # senders waiting for queue space
        self._work = trio.lowlevel.ParkingLot()  # the writer task, waiting for frames
        self._ending = False  # the final frame is queued
        self._unyielded = 0
        self.closed = False
        self.bytes_sent = 0
        self.bytes_received = 0
        self._streaming = False

    @property
    def max_frame(self) -> int:
        return self._session.max_frame

    async def send(self, message: Any) -> None:
        """Encrypt and queue a message, and write it if the socket takes it now.

        Waits while the queue is full (the peer reads slowly); cancelled while
        waiting, nothing was sent.  A message bigger than the frame cap raises
        MessageTooLarge, a broken connection ChannelClosed."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self.closed:
            raise ChannelClosed("channel is closed")
        data = packb(message)
        if len(data) > self._session.max_frame:
            raise MessageTooLarge(f"a message of {len(data)} bytes exceeds the frame cap of "
                                  f"{self._session.max_frame}")
        if self._queued >= SEND_QUEUE or self._room:
            self._unyielded = 0
            while True:  # behind the senders already waiting, then until there is room
                await self._room.park()
                if self.closed:
                    raise ChannelClosed("channel is closed")
                if self._queued < SEND_QUEUE:
                    break
        elif self._unyielded >= YIELD_EVERY:
            # A sender whose writes all go straight through would never let other
            # tasks run: a schedule point now and then (before anything is queued).
            self._unyielded = 0
            await trio.lowlevel.checkpoint()
            if self.closed:
                raise ChannelClosed("channel is closed")
        else:
            self._unyielded += 1
        self._queue_frame(data, final=False)

    def _queue_frame(self, data: bytes, *, final: bool) -> None:
        """Encrypt, queue and write what the socket takes (synchronous: never half done)."""
        ciphertext = self._session.encrypt(data, final=final)
        header = LENGTH.pack(len(ciphertext))
        if len(ciphertext) < COALESCE:
            self._queue.append((header + ciphertext, True))
        else:  # writev sends both; no copy of a large frame
            self._queue.append((header, False))
            self._queue.append((ciphertext, True))
        self._queued += 1
        if not self._writer_owns and (not self._hold or final or self._queued >= HOLD_FRAMES):
            self._push()

    def _push(self) -> None:
        """Write what the socket takes now; leave the rest to the writer task."""
        if self._sock is not None:
            try:
                self._flush()
            except OSError as exc:
                self._broken(exc)
                raise ChannelClosed(f"connection broke while sending: {exc}") from None
        if self._queue:
            self._writer_owns = True
            self._work.unpark()

    def _flush(self) -> None:
        """Write as much of the queue as the socket takes without blocking."""
        assert self._sock is not None
        fd = self._sock.fileno()
        if fd < 0:
            raise OSError("socket was closed")
        queue = self._queue
        while queue:
            buffers = [b for b, _ in islice(queue, WRITEV_BUFFERS)]
            try:
                n = os.writev(fd, buffers)
            except (BlockingIOError, InterruptedError):
                return
            self.bytes_sent += n
            while n:
                buf, ends = queue[0]
                if n < len(buf):
                    queue[0] = (memoryview(buf)[n:], ends)
                    break
                n -= len(buf)
                queue.popleft()
                if ends:
                    self._queued -= 1
        if self._room and self._queued < SEND_QUEUE:
            self._room.unpark(count=SEND_QUEUE - self._queued)

    def _broken(self, exc: BaseException) -> None:
        logger.debug("channel to %s broke while sending: %r", self.address, exc)
        self.closed = True
        self._queue.clear()
        self._queued = 0
        self._room.unpark_all()
        self._work.unpark_all()

    async def receive(self) -> Any:
        """The next message; ChannelClosed at the end, BadMessage for bad bytes."""
        while True:
            data = self._reader.next_frame_untrusted()
            if data is not None:
                plaintext = self._session.decrypt_untrusted(data)
                if self._session.finished:
                    raise ChannelClosed("peer closed the channel", clean=True)
                if not self._hold and self._reader.frame_ready():
                    # Several messages came in one read (calls in flight together):
                    # what is sent in answer waits to go out in one write.
                    self._hold = True
                    self._work.unpark()
                return unpackb_untrusted(plaintext, max_size=self._session.max_frame,
                                         max_items=MAX_MESSAGE_ITEMS)
            if self._hold and self._queue and not self._writer_owns:
                self._push()  # the answers to what was read go out before we wait
            # Small reads while idle (a large buffer costs an allocation per read),
            # large ones while a previous read came back full (bulk data flowing).
            size = READ_SIZE if self._streaming else IDLE_READ_SIZE
            try:
                chunk: bytes | bytearray
                if self._socket is not None:
                    chunk = await self._socket.recv(max(size, self._reader.wanted()))
                else:
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
        """Write what senders could not: wait until the socket is writable, then
        flush; and end a hold one scheduler round after it began."""
        try:
            while True:
                if self._hold:
                    # The tasks woken with us (callers answered by the same read)
                    # queue their frames in this round; they go out in the next.
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    self._hold = False
                    if self._queue and not self._writer_owns:
                        self._push()
                    continue
                if not self._queue:
                    self._writer_owns = False
                    if self._ending or self.closed:
                        return
                    await self._work.park()
                    continue
                if self._sock is not None:
                    await trio.lowlevel.wait_writable(self._sock)
                    self._flush()
                else:
                    data = b"".join(b for b, _ in self._queue)
                    self._queue.clear()
                    self._queued = 0
                    self._room.unpark_all()
                    await self._stream.send_all(data)
                    self.bytes_sent += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._broken(exc)
        except ChannelClosed:
            pass  # _push found the connection broken
        finally:
            self.closed = True
            self._room.unpark_all()

    async def aclose(self) -> None:
        """End the stream cleanly: queue the final frame (beyond the queue's cap, at
        once, even when cancelled) and let the writer task finish."""
        if not self.closed:
            self.closed = True
            self._ending = True
            self._room.unpark_all()  # waiting senders: closed
            try:
                self._queue_frame(packb(None), final=True)
            except ChannelClosed:
                pass
            self._work.unpark_all()


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
