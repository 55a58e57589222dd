"""Structured logs: one ``key=value`` line per event (logfmt) on stderr.

Every daemon action is logged as an event name plus fields, the reason
among them: ``log(logger, "peer.added", node=..., reason=...)``.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections import deque
from typing import Any

from overlay import log_event

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}


_NEEDS_QUOTES = re.compile(r'[ ="\n\t]')


def _quote(v: Any) -> str:
    if isinstance(v, bytes):
        v = v.hex()
    s = str(v)
    if not s or _NEEDS_QUOTES.search(s):
        s = '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return s


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        # The node's handlers (stderr, the recent lines) each format every record:
        # the line is made once and kept on the record.
        line = record.__dict__.get("_logfmt")
        if line is None:
            line = record.__dict__["_logfmt"] = self._format(record)
        return line

    def _format(self, record: logging.LogRecord) -> str:
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


class RecentLogs(logging.Handler):
    """The node's last ``size`` log lines in memory, for the admin console."""

    def __init__(self, size: int = 1000) -> None:
        super().__init__(logging.DEBUG)
        self.lines: deque[tuple[float, int, str]] = deque(maxlen=size)
        self.setFormatter(LogfmtFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append((record.created, record.levelno, self.format(record)))
        except Exception:  # a log line must never break the node
            self.handleError(record)

    def tail(self, min_level: int = logging.DEBUG, limit: int = 200) -> list[dict[str, Any]]:
        """The newest ``limit`` lines at ``min_level`` or above, oldest first."""
        found = [(t, lvl, text) for t, lvl, text in self.lines if lvl >= min_level]
        return [{"time": t, "level": logging.getLevelName(lvl).lower(), "line": text}
                for t, lvl, text in found[-limit:]]


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
    for name in ("kademlia", "rpcudp", "asyncio", "trio_asyncio"):
        logging.getLogger(name).setLevel(quiet)


log = log_event
