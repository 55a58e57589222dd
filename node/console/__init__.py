"""The local admin console: web pages and their JSON API, served by the daemon.

See docs/console.md. ``serve_console`` runs inside the daemon's nursery on
``console.listen`` (loopback by default); ``gridnode console`` prints the
login link from the token in the data dir.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from ..http import serve_http
from ..logs import log
from .app import Console
from .auth import Keys, load_or_create_token, read_token

if TYPE_CHECKING:
    from ..daemon import Node

__all__ = ["Console", "read_token", "serve_console"]

logger = logging.getLogger("gridnode.console")


async def serve_console(node: Node, *,
                        task_status: trio.TaskStatus[Console | None] = trio.TASK_STATUS_IGNORED
                        ) -> None:
    cfg = node.cfg.console
    address = node.cfg.console_address(node.bound[1] if node.bound else 0)
    token = await trio.to_thread.run_sync(load_or_create_token, node.datadir.root)
    console = Console(node, Keys(token), allow_remote=cfg.allow_remote)
    host = address.rsplit(":", 1)[0].strip("[]")
    if host not in ("127.0.0.1", "::1", "localhost"):
        log(logger, "console.remote", logging.WARNING, address=address,
            reason="console.allow_remote is on: other hosts can reach the console; "
                   "anyone with the token can drain the node and cancel its jobs")
    async with trio.open_nursery() as nursery:
        console.url = await nursery.start(serve_http, console.app(), address, "console")
        task_status.started(console if console.url else None)
