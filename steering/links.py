"""The links this node moved bytes over, each with its own classifier (pure core).

A link is this node and a peer it fetched chunks from. What the transfers
said is folded into one pressure sample per monitor interval:

- **Throughput lost against the link's best**: ``1 - rate / best``, where
  ``rate`` is the mean rate of the transfers of at least ``min_bytes`` in the
  interval and ``best`` the highest such rate among the last ``memory``
  intervals with traffic. A link at a tenth of what it did before is at 0.9
  (congested after ``hold`` samples); a link that has always been slow is
  not congested, only slow — where bytes come from is ``pick_source``'s
  choice, with the rates at hand.
- **Outcomes**: every fetch from the peer that brought bytes counts as one
  success, every failed attempt (timeout, refusal, wrong bytes) as one
  failure; most recent ones failing make the link ``failing``.

An interval without traffic adds no sample: the state stays what the last
evidence said, and the link is forgotten after ``forget_after`` seconds
without traffic.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .health import Classifier, HealthParams

__all__ = ["Link", "LinkBook"]


@dataclass
class Link:
    peer: bytes
    classifier: Classifier
    rates: deque[float]  # one per interval with traffic: the mean rate, bytes/s
    last_traffic: float
    pending: list[float] = field(default_factory=list)  # rates of this interval's transfers
    bytes: int = 0
    transfers: int = 0
    failures: int = 0

    def view(self) -> dict[str, Any]:
        c = self.classifier
        reason = c.reason
        if c.state == "ok":  # the reason of the last change may be old: say what is now
            reason = (f"last rate {self.rates[-1] / max(self.rates):.0%} of its best"
                      if self.rates else f"{self.transfers} transfers, no rate measured")
            if self.failures:
                reason += f"; {self.failures} failed attempts"
        return {"peer": self.peer.hex(), "state": c.state, "reason": reason,
                "since": c.since, "rate": self.rates[-1] if self.rates else None,
                "best": max(self.rates) if self.rates else None, "bytes": self.bytes,
                "transfers": self.transfers, "failures": self.failures,
                "last_traffic": self.last_traffic, "evidence": c.evidence()}


class LinkBook:
    def __init__(self, p: HealthParams | None = None, *, min_bytes: int = 1 << 20,
                 memory: int = 60, forget_after: float = 3600.0) -> None:
        self.p = p or HealthParams()
        self.min_bytes = min_bytes
        self.memory = memory
        self.forget_after = forget_after
        self.links: dict[bytes, Link] = {}

    def _link(self, peer: bytes, now: float) -> Link:
        link = self.links.get(peer)
        if link is None:
            link = self.links[peer] = Link(peer, Classifier(self.p, now),
                                           deque(maxlen=self.memory), now)
        return link

    def observe(self, now: float, peer: bytes, nbytes: int, seconds: float,
                failures: int = 0) -> None:
        """What one fetch got from ``peer``: bytes in so many seconds, failed attempts."""
        link = self._link(peer, now)
        link.last_traffic = now
        link.failures += failures
        for _ in range(min(failures, self.p.outcomes)):
            link.classifier.outcome(now, False)
        if nbytes > 0:
            link.bytes += nbytes
            link.transfers += 1
            link.classifier.outcome(now, True)
            if nbytes >= self.min_bytes and seconds > 0:
                link.pending.append(nbytes / seconds)

    def sample(self, now: float) -> list[tuple[bytes, str, str]]:
        """Close an interval: one pressure sample per link with traffic in it.
        Returns the links whose state changed: (peer, before, after)."""
        changed = []
        for peer, link in list(self.links.items()):
            before = link.classifier.state
            if link.pending:
                rate = sum(link.pending) / len(link.pending)
                link.pending.clear()
                link.rates.append(rate)
                link.classifier.sample(now, 1.0 - rate / max(link.rates))
            elif now - link.last_traffic > self.forget_after:
                del self.links[peer]
                continue
            if link.classifier.state != before:
                changed.append((peer, before, link.classifier.state))
        return changed

    def inbound(self, now: float, within: float) -> tuple[int, int, float, float]:
        """Of the links with traffic in the last ``within`` seconds: (how many,
        how many congested, the highest pressure predicted among those, its slope)."""
        recent = [link for link in self.links.values() if now - link.last_traffic <= within]
        hot = [link.classifier.trend for link in recent
               if link.classifier.state == "congested"]
        worst = max(hot, key=lambda t: t.prediction, default=None)
        return (len(recent), len(hot), worst.prediction if worst else 0.0,
                worst.slope if worst else 0.0)

    def state(self, peer: bytes) -> str:
        link = self.links.get(peer)
        return link.classifier.state if link else "ok"

    def view(self) -> list[dict[str, Any]]:
        return [link.view() for _, link in sorted(self.links.items())]
