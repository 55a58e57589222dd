"""Daemon events for the logs: an event name and its fields.

Every layer logs what it does as ``log_event(logger, "peer.added", node=...,
reason=...)``; the node's formatter (``node.logs``) writes one logfmt line
per event (``event=peer.added node=... reason=...``, bytes in hex).
"""

from __future__ import annotations

import logging
from typing import Any


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO,
              **fields: Any) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"fields": fields})
