"""The replica policy: from predicted demand and the holders, what to do now.

Pure and I/O-free, after h11: a dataset's custodian (in the daemon or in the
grid simulator) gathers the facts — the dataset's size and [min, max], its
holders and when each was last seen, the storage nodes with their site, free
disk and load, the trend — and :func:`decide` answers with a
:class:`Decision`: the target count and the actions that move the replicas
toward it.  The caller carries the actions out and asks again next round.

The rules, each of which a test holds:

- **Targets, not increments.**  The target is ``ceil(prediction /
  reads_per_replica)`` clamped to [min, max] (and never below one).  Replicas
  asked for and not yet held count toward it for ``add_timeout`` seconds, and
  the placement is a deterministic function of the facts, so two custodians
  deciding from the same facts ask the same nodes: the copies converge
  instead of doubling.
- **Repair.**  A holder not seen for ``grace`` seconds no longer counts; the
  count falls below the target and new replicas are placed.  Blips shorter
  than the grace change nothing.
- **Placement near demand.**  Each new replica goes to the site with the most
  predicted reads per replica already there, on its node with the lowest load
  and the most free disk; nodes over ``max_load`` or without room for the
  dataset plus ``headroom`` of their free disk get none.  With no demand
  (repair of a cold dataset) a site without a replica is preferred.
- **Trim after cool-down, two-phase.**  When the count has stayed above the
  target for ``cooldown`` seconds, one replica — where demand per replica is
  lowest — is announced as leaving (``announce_drop``: it still serves
  reads but no longer counts).  At a later decision, once the others have
  been seen since the announcement and make the target, it is deleted
  (``drop``); if they no longer make the target, the announcement is
  withdrawn (``cancel_drop``); while a holder that would make it is unseen
  since (perhaps dead, still within the grace), it waits, at most for the
  grace.  The last replica is never deleted: a drop needs the target (at
  least one) met without it by holders seen after the announcement.  One
  replica is trimmed at a time.
- **Announced elsewhere.**  A replica another custodian announced as leaving
  does not count, but it still holds the data: when the count is short of
  the target it is taken back (``cancel_drop``) before new copies are
  asked for, so the announcer's own withdrawal and our adds cannot together
  exceed ``max_replicas``; otherwise its phase two is taken over as if it
  were ours, so an announcement whose custodian went away is not left
  standing.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from .trends import Trend

__all__ = ["Action", "DatasetState", "Decision", "Holder", "Memory", "NodeInfo",
           "PolicyError", "PolicyParams", "RateLimit", "decide", "target_count"]

HISTORY = 20  # actions each dataset's memory keeps for explain


class PolicyError(ValueError):
    """A policy parameter out of range."""


@dataclass(frozen=True)
class PolicyParams:
    # Predicted reads per bucket one replica serves before another is worth its copy.
    reads_per_replica: float = 4.0
    # Seconds the count must stay above the target before a replica is trimmed.
    cooldown: float = 1800.0
    # Seconds a holder may stay unseen and still count.
    grace: float = 600.0
    # Seconds a requested copy counts toward the target before it is asked again.
    add_timeout: float = 1800.0
    # New replicas one decision asks for.
    max_adds: int = 2
    # Nodes at or above this load (0-1) get no new replica.
    max_load: float = 0.9
    # Part of a node's free disk that a new replica must leave free.
    headroom: float = 0.1

    def __post_init__(self) -> None:
        checks = [
            ("reads_per_replica", self.reads_per_replica > 0, "must be > 0"),
            ("cooldown", self.cooldown >= 0, "must be >= 0 seconds"),
            ("grace", self.grace >= 0, "must be >= 0 seconds"),
            ("add_timeout", self.add_timeout > 0, "must be > 0 seconds"),
            ("max_load", 0 < self.max_load <= 1, "must be in (0, 1]"),
            ("headroom", 0 <= self.headroom < 1, "must be in [0, 1)"),
        ]
        for name, ok, why in checks:
            value = getattr(self, name)
            if not (math.isfinite(value) and ok):
                raise PolicyError(f"{name} {why}, got {value}")
        if not (type(self.max_adds) is int and 1 <= self.max_adds <= 100):
            raise PolicyError(f"max_adds must be 1-100, got {self.max_adds}")


@dataclass(frozen=True)
class NodeInfo:
    """A storage node as the custodian sees it."""

    id: bytes
    site: str
    free_bytes: int
    load: float = 0.0  # 0 idle .. 1 full


@dataclass(frozen=True)
class Holder:
    node: bytes
    last_seen: float  # when it last announced or answered
    leaving: bool = False  # announced by some custodian as about to drop


@dataclass(frozen=True)
class DatasetState:
    name: str
    size: int
    min_replicas: int
    max_replicas: int
    holders: tuple[Holder, ...]

    def __post_init__(self) -> None:
        if not (type(self.size) is int and self.size >= 0):
            raise PolicyError(f"size must be >= 0 bytes, got {self.size!r}")
        lo, hi = self.min_replicas, self.max_replicas
        if not (type(lo) is int and lo >= 1):
            raise PolicyError(f"min_replicas must be >= 1, got {lo!r}")
        if not (type(hi) is int and hi >= lo):
            raise PolicyError(f"max_replicas must be >= min_replicas ({lo}), got {hi!r}")


@dataclass(frozen=True)
class Action:
    kind: str  # "add" | "announce_drop" | "drop" | "cancel_drop"
    node: bytes
    reason: str
    t: float = 0.0


@dataclass(frozen=True)
class Decision:
    target: int
    counted: tuple[bytes, ...]  # holders that count toward the target
    lost: tuple[bytes, ...]  # holders unseen past the grace
    actions: tuple[Action, ...]
    reason: str


@dataclass
class Memory:
    """What a custodian remembers of one dataset between decisions."""

    above_since: float | None = None  # since when the count has exceeded the target
    adding: dict[bytes, float] = field(default_factory=dict)  # copies asked for -> when
    leaving: dict[bytes, float] = field(default_factory=dict)  # drops announced -> when
    history: deque[Action] = field(default_factory=lambda: deque(maxlen=HISTORY))
    last: Decision | None = None


def target_count(prediction: float, min_replicas: int, max_replicas: int,
                 p: PolicyParams) -> int:
    want = math.ceil(prediction / p.reads_per_replica) if prediction > 0 else 0
    return max(1, min_replicas, min(max_replicas, want))


def _distance(node: bytes, key: bytes) -> int:
    return int.from_bytes(node, "big") ^ int.from_bytes(key[:len(node)], "big")


def decide(ds: DatasetState, trend: Trend, by_site: Mapping[str, float],
           nodes: Mapping[bytes, NodeInfo], memory: Memory, p: PolicyParams,
           now: float) -> Decision:
    """What to do with ``ds`` now; ``memory`` is updated with the outcome."""
    key = hashlib.blake2b(ds.name.encode(), digest_size=32).digest()
    target = target_count(trend.prediction, ds.min_replicas, ds.max_replicas, p)
    holders = {h.node: h for h in ds.holders}
    alive = {n for n, h in holders.items() if now - h.last_seen <= p.grace}
    lost = tuple(sorted(set(holders) - alive))
    for n in list(memory.adding):  # arrived, or asked too long ago
        if n in holders or now - memory.adding[n] > p.add_timeout:
            del memory.adding[n]
    for n in list(memory.leaving):
        if n not in alive:
            del memory.leaving[n]
    counted = sorted(n for n in alive if not holders[n].leaving and n not in memory.leaving)
    actions: list[Action] = []

    # Phase two of the drops announced earlier: delete once the others are seen to
    # make the target, take back if they no longer can, else wait.
    mine = set(memory.leaving)
    for n in sorted(mine):
        since = memory.leaving[n]
        # Seen since the announcement: a holder unseen since may be dead already
        # (it still counts within the grace), and deleting on its word could delete
        # the last live copy.
        confirmed = sum(1 for m in counted if holders[m].last_seen > since)
        if confirmed >= target:
            del memory.leaving[n]
            actions.append(Action("drop", n, f"{confirmed} other replicas seen since "
                                  f"the announcement meet the target of {target}", now))
        elif len(counted) < target:
            del memory.leaving[n]
            counted.append(n)
            actions.append(Action("cancel_drop", n, f"without it only {len(counted) - 1} "
                                  f"replicas for a target of {target}", now))
    # Replicas another custodian announced still hold the data: short of the target,
    # take them back before asking for new copies (else its cancel_drop and our adds
    # together overshoot max_replicas); else finish their phase two as if ours (else
    # one whose custodian went away would stay announced, uncounted, for ever).
    for n in sorted(n for n in alive if holders[n].leaving and n not in mine):
        if len(counted) + len(memory.adding) < target:
            counted.append(n)
            actions.append(Action("cancel_drop", n, f"announced elsewhere, but only "
                                  f"{len(counted) - 1} other replicas for a target of "
                                  f"{target}", now))
        else:
            memory.leaving[n] = now
    counted.sort()

    coming = len(counted) + len(memory.adding)
    if coming < target:
        memory.above_since = None
        why = (f"{len(lost)} holder(s) unseen for over {p.grace:g}s; "
               if lost and len(counted) < ds.min_replicas else "")
        why += (f"predicted {trend.prediction:.1f} reads/bucket needs {target} replicas, "
                f"{len(counted)} held" + (f" and {len(memory.adding)} coming"
                                          if memory.adding else ""))
        for node in _place(ds, target - coming, len(counted), by_site, nodes, holders,
                           memory, p, key):
            memory.adding[node.id] = now
            actions.append(Action("add", node.id, f"{why}; site {node.site}", now))
        reason = why
    elif len(counted) > target:
        if memory.above_since is None:
            memory.above_since = now
        waited = now - memory.above_since
        reason = (f"{len(counted)} replicas for a target of {target} "
                  f"(predicted {trend.prediction:.1f} reads/bucket)")
        if memory.leaving:
            pass  # one trim at a time
        elif waited >= p.cooldown and not any(a.kind == "drop" for a in actions):
            node_id = _pick_drop(counted, by_site, nodes, key)
            memory.leaving[node_id] = now
            actions.append(Action("announce_drop", node_id, f"{reason} for {waited:.0f}s "
                                  f"(cool-down {p.cooldown:g}s)", now))
        else:
            reason += f"; cooling down {waited:.0f}/{p.cooldown:g}s"
    else:
        memory.above_since = None
        reason = (f"{len(counted)} replicas meet the target of {target} "
                  f"(predicted {trend.prediction:.1f} reads/bucket)")
    announced = {a.node for a in actions if a.kind == "announce_drop"}
    waiting = sorted(n for n in memory.leaving if n not in announced)
    if waiting:
        reason += (f"; dropping {', '.join(n.hex()[:8] for n in waiting)} waits for "
                   f"{target} other replicas to be seen since its announcement")
    decision = Decision(target, tuple(counted), lost, tuple(actions), reason)
    memory.history.extend(actions)
    memory.last = decision
    return decision


def _place(ds: DatasetState, want: int, held: int, by_site: Mapping[str, float],
           nodes: Mapping[bytes, NodeInfo], holders: Mapping[bytes, Holder],
           memory: Memory, p: PolicyParams, key: bytes) -> list[NodeInfo]:
    """Up to ``min(want, max_adds)`` nodes for new replicas, best first."""
    taken = set(holders) | set(memory.adding)
    per_site: Counter[str] = Counter(nodes[n].site for n in taken if n in nodes)
    free: dict[str, list[NodeInfo]] = {}
    for node in nodes.values():
        if (node.id not in taken and node.load < p.max_load
                and ds.size <= (1 - p.headroom) * node.free_bytes):
            free.setdefault(node.site, []).append(node)
    chosen: list[NodeInfo] = []
    room = ds.max_replicas - held - len(memory.adding)
    for _ in range(max(0, min(want, p.max_adds, room))):
        if not free:
            break
        site = max(free, key=lambda s: (by_site.get(s, 0.0) / (1 + per_site[s]),
                                        -per_site[s], s))
        best = min(free[site], key=lambda n: (round(n.load, 2), -n.free_bytes,
                                              _distance(n.id, key)))
        chosen.append(best)
        per_site[site] += 1
        free[site].remove(best)
        if not free[site]:
            del free[site]
    return chosen


def _pick_drop(counted: list[bytes], by_site: Mapping[str, float],
               nodes: Mapping[bytes, NodeInfo], key: bytes) -> bytes:
    """The replica whose site has the least demand per replica; then the busiest."""
    sites = {n: nodes[n].site if n in nodes else "" for n in counted}
    per_site = Counter(sites.values())

    def worth(n: bytes) -> tuple[float, int, float, int]:
        site = sites[n]
        return (by_site.get(site, 0.0) / per_site[site], -per_site[site],
                -(nodes[n].load if n in nodes else 0.0), -_distance(n, key))

    return min(counted, key=worth)


class RateLimit:
    """A token bucket of bytes: ``rate`` per second, at most ``burst`` saved up.

    ``take`` answers how long to wait before sending ``n`` bytes and books
    them, so callers that each wait their answer share the rate."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if not (math.isfinite(rate) and rate > 0 and math.isfinite(burst) and burst > 0):
            raise PolicyError(f"a rate limit needs rate > 0 and burst > 0, got {rate}, {burst}")
        self.rate, self.burst = rate, burst
        self.tokens, self.t = burst, now

    def take(self, n: int, now: float) -> float:
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = max(self.t, now)
        self.tokens -= n
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate
