"""What a site admin sets on a running node: drain, and the slots it offers.

Both survive a restart (``meta`` rows of the state file): a node drained for
maintenance stays drained when it comes back until the admin resumes it.

* **Drain**: the node claims no new jobs; jobs already running finish and are
  reported as usual; its data and queue roles carry on.
* **Offered slots**: the cores the executor lends to jobs, from 0 up to
  ``capacity.cores`` of the config (the machine's size as the admin declared
  it; to offer more, change the config). Lowering it below what runs now
  stops new claims until enough jobs end; nothing is killed. The node record
  keeps advertising the configured capacity: it says what the node can run,
  and the unschedulable check of the queue relies on it.

Every change is logged with who asked and why.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from overlay import BadMessage, packb, unpackb_untrusted
from steering import ClaimPlan

from .errors import UserError
from .logs import log

if TYPE_CHECKING:
    from .daemon import Node

logger = logging.getLogger("gridnode.site")

DRAIN_META = "site.drain"
SLOTS_META = "site.offered_cores"
MAX_REASON = 500


class SiteError(UserError):
    """A site admin's request the node refuses (bad value): nothing changed."""


@dataclass(frozen=True)
class Drain:
    since: float
    who: str
    reason: str


class SiteControls:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.drain: Drain | None = None

    async def load(self) -> None:
        """Take back what the admin set before the node last stopped."""
        state = self.node.state
        raw = await state.get_meta(DRAIN_META)
        if raw:
            try:
                since, who, reason = unpackb_untrusted(raw)
                self.drain = Drain(float(since), str(who), str(reason))
            except (BadMessage, TypeError, ValueError):
                log(logger, "site.drain_unreadable", logging.WARNING,
                    reason="the stored drain state does not parse; the node is not drained")
            else:
                log(logger, "site.drained", who=self.drain.who,
                    reason=f"still drained since before the restart: {self.drain.reason}")
        raw = await state.get_meta(SLOTS_META)
        if raw:
            try:
                cores = int(unpackb_untrusted(raw))
            except (BadMessage, TypeError, ValueError):
                cores = self.node.cfg.capacity.cores
            self._apply_cores(min(max(cores, 0), self.node.cfg.capacity.cores))

    @property
    def offered_cores(self) -> int:
        return self.node.executor.cores

    def claim_plan(self, free_cores: int) -> ClaimPlan:
        """What to claim: nothing while drained, else what the monitor's rule allows."""
        if self.drain is not None:
            return ClaimPlan(0, 0, self.node.monitor.health.state,
                             f"drained by {self.drain.who}: {self.drain.reason}"[:200])
        return self.node.monitor.claim_plan(free_cores)

    async def set_drain(self, drained: bool, who: str, reason: str) -> dict[str, Any]:
        reason = check_reason(reason)
        if drained:
            self.drain = Drain(time.time(), who, reason)
            await self.node.state.set_meta(DRAIN_META, packb(
                [self.drain.since, self.drain.who, self.drain.reason]))
            log(logger, "site.drained", logging.WARNING, who=who, running=len(
                self.node.executor.running()), reason=reason)
        else:
            self.drain = None
            await self.node.state.set_meta(DRAIN_META, b"")
            log(logger, "site.resumed", who=who, reason=reason)
            self.node.worker.wake()
        return self.view()

    async def set_offered_cores(self, cores: Any, who: str, reason: str) -> dict[str, Any]:
        reason = check_reason(reason)
        ceiling = self.node.cfg.capacity.cores
        if type(cores) is not int or not 0 <= cores <= ceiling:
            raise SiteError(f"offered cores must be a whole number from 0 to {ceiling} "
                            f"(capacity.cores of the config)")
        before = self.offered_cores
        await self.node.state.set_meta(SLOTS_META, packb(cores))
        self._apply_cores(cores)
        log(logger, "site.slots", logging.WARNING if cores < before else logging.INFO,
            who=who, cores=cores, was=before, reason=reason)
        self.node.worker.wake()
        return self.view()

    def _apply_cores(self, cores: int) -> None:
        self.node.executor.cores = cores

    def view(self) -> dict[str, Any]:
        d = self.drain
        return {"drained": d is not None, "drained_since": d.since if d else None,
                "drained_by": d.who if d else None, "drain_reason": d.reason if d else None,
                "offered_cores": self.offered_cores,
                "configured_cores": self.node.cfg.capacity.cores}


def check_reason(reason: Any) -> str:
    if not isinstance(reason, str) or not reason.strip():
        raise SiteError("say why (a reason of 1-500 characters): it goes into the log")
    reason = " ".join(reason.split())
    if len(reason) > MAX_REASON:
        raise SiteError(f"the reason is longer than {MAX_REASON} characters")
    return reason
