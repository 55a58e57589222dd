"""Structured logs: one ``key=value`` line per event (logfmt) on stderr.

Every daemon action is logged as an event name plus fields, the reason
among them: ``log(logger, "peer.added", node=..., reason=...)``.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from overlay import log_event

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}


def _quote(v: Any) -> str:
    if isinstance(v, bytes):
        v = v.hex()
    s = str(v)
    if not s or any(c in s for c in ' ="\n\t'):
        s = '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return s


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [f"ts={ts}.{int(record.msecs):03d}Z", f"level={record.levelname.lower()}",
                 f"logger={record.name}"]
        fields = getattr(record, "fields", None)
        if fields is not None:
            parts.append(f"event={_quote(record.msg)}")
            parts += [f"{k}={_quote(v)}" for k, v in fields.items()]
        else:
            parts.append(f"msg={_quote(record.getMessage())}")
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


def setup_logging(level: str) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
    # kademlia and rpcudp narrate every RPC at INFO and every timeout at
    # WARNING; that is detail for debugging, not for an admin's log.
    quiet = logging.DEBUG if level == "debug" else logging.CRITICAL
    for name in ("kademlia", "rpcudp", "asyncio", "trio_asyncio", "aiosqlite"):
        logging.getLogger(name).setLevel(quiet)


log = log_event
