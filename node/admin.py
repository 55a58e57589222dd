"""The local admin interface: a Unix socket in the data dir, mode 0600.

Each connection carries requests and responses framed as a 4-byte
big-endian length and a msgpack map.  A request is ``{"op": NAME,
"args": {...}}``; a response is ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": "one line"}``.  Operations are an explicit table
(see ``Node.admin_ops``), never looked up by attribute name.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from overlay import BadMessage, packb, unpackb_untrusted

from .errors import UserError
from .logs import log

logger = logging.getLogger("gridnode.admin")

MAX_REQUEST = 64 * 1024
MAX_RESPONSE = 64 * 1024 * 1024
_LEN = struct.Struct(">I")

Handler = Callable[[str, dict[str, Any]], Awaitable[Any]]


class AdminError(Exception):
    """An admin request that the node refuses; its message goes back to the caller."""


def claim_socket_path(path: Path) -> None:
    """Remove a stale socket; refuse if a live daemon answers on it."""
    if not path.exists():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)  # noqa: ASYNC240 - one local unlink at shutdown
        return
    finally:
        probe.close()
    raise UserError(f"another gridnode is already running on {path.parent} "
                    f"(its admin socket answers); stop it first")


async def _receive_exactly(stream: trio.SocketStream, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.receive_some(n - len(buf))
        if not chunk:
            return None if not buf else bytes(buf)
        buf += chunk
    return bytes(buf)


async def _serve_connection(stream: trio.SocketStream, handler: Handler,
                            counters: dict[str, int]) -> None:
    """Serve one admin client; a client that goes away mid-request (a killed CLI, a
    script stopped with Ctrl-C) ends only its own connection."""
    try:
        await _serve_requests(stream, handler, counters)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        log(logger, "admin.client_gone", logging.DEBUG, reason=str(exc))


async def _serve_requests(stream: trio.SocketStream, handler: Handler,
                          counters: dict[str, int]) -> None:
    async with stream:
        while True:
            header = await _receive_exactly(stream, _LEN.size)
            if header is None:
                return
            if len(header) < _LEN.size:
                counters["admin_refused"] += 1
                return
            (size,) = _LEN.unpack(header)
            if size > MAX_REQUEST:
                counters["admin_refused"] += 1
                log(logger, "admin.refused", logging.WARNING, reason="request too large",
                    size=size)
                await _send(stream, {"ok": False, "error": f"request of {size} bytes is too "
                                                           f"large (cap {MAX_REQUEST})"})
                return
            body = await _receive_exactly(stream, size)
            if body is None or len(body) < size:
                counters["admin_refused"] += 1
                return
            await _send(stream, await _dispatch(body, handler, counters))


async def _dispatch(body: bytes, handler: Handler, counters: dict[str, int]) -> dict[str, Any]:
    try:
        req = unpackb_untrusted(body, max_size=MAX_REQUEST)
        if not (isinstance(req, dict) and isinstance(req.get("op"), str)
                and isinstance(req.get("args", {}), dict)):
            raise BadMessage("request must be a map with 'op' and 'args'")
    except BadMessage as exc:
        counters["admin_refused"] += 1
        log(logger, "admin.refused", logging.WARNING, reason=str(exc))
        return {"ok": False, "error": f"bad request: {exc}"}
    try:
        return {"ok": True, "result": await handler(req["op"], req.get("args", {}))}
    except AdminError as exc:
        return {"ok": False, "error": str(exc)}
    except Exception:
        # Our bug, not the caller's: log it loudly and count it, but one bad
        # handler must not take the node down with it.
        counters["admin_errors"] = counters.get("admin_errors", 0) + 1
        logger.exception("admin operation %r failed", req["op"])
        return {"ok": False, "error": f"internal error in {req['op']!r}; see the node's log"}


async def _send(stream: trio.SocketStream, msg: dict[str, Any]) -> None:
    data = packb(msg)
    await stream.send_all(_LEN.pack(len(data)) + data)


async def serve_admin(path: Path, handler: Handler, counters: dict[str, int], *,
                      task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve admin requests on a Unix socket at ``path`` until cancelled."""
    claim_socket_path(path)
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the socket is born 0600: no window for others
    try:
        await sock.bind(str(path))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.ENAMETOOLONG or "too long" in str(exc):
            raise UserError(f"admin socket path {path} is too long for a Unix socket; "
                            f"use a shorter --data-dir") from None
        raise UserError(f"cannot create admin socket {path}: {exc.strerror}") from None
    finally:
        os.umask(old_umask)
    sock.listen(16)
    listener = trio.SocketListener(sock)
    try:
        async with trio.open_nursery() as nursery:
            task_status.started(path)
            async with listener:
                while True:
                    stream = await listener.accept()
                    nursery.start_soon(_serve_connection, stream, handler, counters)
    finally:
        path.unlink(missing_ok=True)  # noqa: ASYNC240 - one local unlink at shutdown


def admin_call(path: Path, op: str, timeout: float = 30.0, **args: Any) -> Any:
    """Call the daemon behind ``path`` (blocking; for the CLI and scripts)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise UserError(f"no gridnode is running on {path.parent} "
                            f"(start it with 'gridnode run --data-dir {path.parent}')") from None
        except OSError as exc:
            raise UserError(f"cannot reach the admin socket {path}: {exc.strerror}") from None
        data = packb({"op": op, "args": args})
        sock.sendall(_LEN.pack(len(data)) + data)
        header = _recv_exactly(sock, _LEN.size)
        (size,) = _LEN.unpack(header)
        if size > MAX_RESPONSE:
            raise UserError(f"admin response of {size} bytes is too large")
        reply = unpackb_untrusted(_recv_exactly(sock, size), max_size=MAX_RESPONSE,
                                  max_items=1 << 20)
    except (TimeoutError, ConnectionError, BadMessage) as exc:
        raise UserError(f"the daemon on {path.parent} did not answer properly: {exc}") from None
    finally:
        sock.close()
    if not isinstance(reply, dict) or "ok" not in reply:
        raise UserError("the daemon sent a malformed admin reply")
    if not reply["ok"]:
        raise UserError(str(reply.get("error")))
    return reply.get("result")


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed early")
        buf += chunk
    return bytes(buf)
