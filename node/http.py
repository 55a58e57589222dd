"""One HTTP server inside the daemon's nursery: Starlette apps on Hypercorn's trio
worker (the monitor's /metrics and the admin console each run one)."""

from __future__ import annotations

import logging
import socket
from typing import Any

import trio

from .config import parse_hostport
from .logs import log

logger = logging.getLogger("gridnode.http")


async def serve_http(app: Any, address: str, what: str, *,
                     task_status: trio.TaskStatus[str | None] = trio.TASK_STATUS_IGNORED
                     ) -> None:
    """Serve ``app`` at ``address`` until cancelled; started with its base URL, or
    with None (logged) when the address cannot be listened on: the node serves on
    without it."""
    from hypercorn.config import Config as HttpConfig
    from hypercorn.trio import serve

    config = HttpConfig()
    config.bind = [address]
    config.accesslog = None
    config.errorlog = logging.getLogger("gridnode.http")
    try:
        _check_free(address)  # Hypercorn would leak its socket on a taken port
    except OSError as exc:
        log(logger, "http.unavailable", logging.WARNING, what=what, address=address,
            reason=str(exc))
        task_status.started(None)
        return
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(serve, app, config)
        url = str(urls[0]) if urls else None
        log(logger, "http.serving", what=what, url=url, reason="configured to serve")
        task_status.started(url)


def _check_free(address: str) -> None:
    """Raise OSError if ``address`` cannot be listened on now."""
    host, port = parse_hostport(address, "address")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
