"""The replica policy: from predicted demand and the holders, what to do now.

Pure and I/O-free, after h11: a dataset's custodian (in the daemon or in the
grid simulator) gathers the facts — the dataset's size and [min, max], its
holders and when each was last seen, the storage nodes with their site, free
disk and load, the trend — and :func:`decide` answers with a
:class:`Decision`: the target count and the actions that move the replicas
toward it.  The caller carries the actions out and asks again next round.

The rules, each of which a test holds:

- **Sites that want a replica.**  ``by_site`` counts each site's reads of the
  dataset within the window.  A site that holds a (counted) replica wants it
  while it reads at least ``site_keep_reads``; a site without one wants one
  once it reads ``site_add_reads`` (more: the gap, and the cool-down below,
  keep a site near a threshold from flapping).  A site without a replica
  counts only if one of its nodes can take the copy (or a leaving replica
  there can stay): else the target would rise for a site no copy can reach
  and the copy go where nobody reads.
- **Targets, not increments.**  The target is the larger of ``ceil(prediction
  / reads_per_replica)`` and the number of sites that want a replica,
  clamped to [min, max] (and never below one).  Replicas asked for and not
  yet held count toward it for ``add_timeout`` seconds, and the placement is
  a deterministic function of the facts, so two custodians deciding from the
  same facts ask the same nodes: the copies converge instead of doubling.
- **Replicas follow the reads.**  A site that wants a replica and neither
  holds one nor has one coming gets one even when the count meets the
  target (within ``max_replicas``); the count then exceeds the target, and
  the trim below takes the replica where nobody reads any more: the replica
  has moved, one copy later, without the count ever going below the target.
  A replica announced as leaving whose site wants it again is taken back
  rather than copied anew.
- **Repair.**  A holder not seen for ``grace`` seconds no longer counts; the
  count falls below the target and new replicas are placed.  Blips shorter
  than the grace change nothing.
- **Placement near demand.**  Each new replica goes first to a site that
  wants one and has none (most reads first), then to the site with the most
  reads per replica already there, then to one with the fewest replicas;
  ties between sites break on a hash of the site and the dataset, the same
  for every custodian but different for each dataset, so the repairs of cold
  datasets spread over the sites.  On the site, the node closest to the
  dataset's hash, as in the DHT: datasets, and the copies of a burst of
  repairs, spread evenly over its nodes (preferring the emptiest, idlest node
  sent every repair after a death to the one node that had come back empty).
  Nodes over ``max_load`` or without room for the dataset plus ``headroom``
  of their free disk get none.
- **Trim after cool-down, two-phase.**  When the count has stayed above the
  target for ``cooldown`` seconds, one replica is announced as leaving
  (``announce_drop``: it still serves reads but no longer counts): never the
  only one at a site that wants one, then where the reads per replica are
  fewest.  At a later decision, once the others have been seen since the
  announcement and make the target, it is deleted (``drop``); if they no
  longer make the target, the announcement is withdrawn (``cancel_drop``);
  while a holder that would make it is unseen since (perhaps dead, still
  within the grace), it waits, at most for the grace.  The last replica is
  never deleted: a drop needs the target (at least one) met without it by
  holders seen after the announcement.  One replica is trimmed at a time.
- **Announced elsewhere.**  A replica another custodian announced as leaving
  does not count, but it still holds the data: when the count is short of
  the target it is taken back (``cancel_drop``) before new copies are
  asked for, so the announcer's own withdrawal and our adds cannot together
  exceed ``max_replicas``; otherwise its phase two is taken over as if it
  were ours, so an announcement whose custodian went away is not left
  standing.
- **At the maximum, replicas stay put.**  No copy goes beyond
  ``max_replicas``, not even to follow the reads, and replicas announced as
  leaving count until dropped (one may yet be taken back, by us or by
  another custodian): a site that wants a replica then waits until a trim
  (the count above the target) has made room.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from .trends import Trend

__all__ = ["Action", "DatasetState", "Decision", "Holder", "Memory", "NodeInfo",
           "PolicyError", "PolicyParams", "RateLimit", "decide", "target_count",
           "wanted_sites"]

HISTORY = 20  # actions each dataset's memory keeps for explain


class PolicyError(ValueError):
    """A policy parameter out of range."""


@dataclass(frozen=True)
class PolicyParams:
    # Predicted reads per bucket (all sites) one replica serves before another is
    # worth its copy.
    reads_per_replica: float = 4.0
    # Reads within the window from a site without a replica that earn it one.
    site_add_reads: float = 2.0
    # Reads within the window that keep a site's replica wanted (below site_add_reads:
    # the gap is the hysteresis that keeps a site near the threshold from flapping).
    site_keep_reads: float = 1.0
    # Seconds the count must stay above the target before a replica is trimmed.
    cooldown: float = 43200.0
    # Seconds a holder may stay unseen and still count.
    grace: float = 120.0
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
            ("site_add_reads", self.site_add_reads > 0, "must be > 0"),
            ("site_keep_reads", 0 < self.site_keep_reads < self.site_add_reads,
             f"must be > 0 and below site_add_reads ({self.site_add_reads})"),
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
                 p: PolicyParams, sites: int = 0) -> int:
    """The replicas wanted: one per reads_per_replica predicted, or one per wanted
    site (``sites``), whichever is more; within [min, max] and never below one."""
    want = math.ceil(prediction / p.reads_per_replica) if prediction > 0 else 0
    return max(1, min_replicas, min(max_replicas, max(want, sites)))


def wanted_sites(by_site: Mapping[str, float], held: Collection[str],
                 p: PolicyParams) -> set[str]:
    """Sites that want a replica: one that holds a replica and still reads at least
    ``site_keep_reads`` within the window, one without that reads at least ``site_add_reads``
    (the gap between the two keeps a site near a threshold from flapping)."""
    return {s for s, reads in by_site.items()
            if reads >= (p.site_keep_reads if s in held else p.site_add_reads)}


def _distance(node: bytes, key: bytes) -> int:
    return int.from_bytes(node, "big") ^ int.from_bytes(key[:len(node)], "big")


def _site_rank(site: str, key: bytes) -> bytes:
    """The tie-break between sites: the same for every custodian, but a different
    order for each dataset, so the copies of cold datasets spread over the sites."""
    return hashlib.blake2b(site.encode(), key=key, digest_size=8).digest()


def _fits(node: NodeInfo, size: int, p: PolicyParams) -> bool:
    return node.load < p.max_load and size <= (1 - p.headroom) * node.free_bytes


def decide(ds: DatasetState, trend: Trend, by_site: Mapping[str, float],
           nodes: Mapping[bytes, NodeInfo], memory: Memory, p: PolicyParams,
           now: float) -> Decision:
    """What to do with ``ds`` now; ``memory`` is updated with the outcome."""
    key = hashlib.blake2b(ds.name.encode(), digest_size=32).digest()
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

    def site(n: bytes) -> str | None:
        info = nodes.get(n)
        return None if info is None else info.site

    held = {s for s in map(site, counted) if s is not None}
    coming = {s for s in map(site, memory.adding) if s is not None}
    parked = {s for s in map(site, alive) if s is not None} - held  # only leaving ones
    wanted = wanted_sites(by_site, held, p)
    # A site that wants a replica it neither holds nor has coming counts only where
    # a copy can go (or a leaving one can stay): else the target would rise for a
    # site no copy can reach, and the copy go where nobody reads.
    short = wanted - held - coming - parked
    if short:
        reachable = {n.site for n in nodes.values() if n.site in short
                     and n.id not in holders and n.id not in memory.adding
                     and _fits(n, ds.size, p)}
        wanted -= short - reachable
    target = target_count(trend.prediction, ds.min_replicas, ds.max_replicas, p, len(wanted))
    actions: list[Action] = []

    def take_back(n: bytes, why: str) -> None:
        memory.leaving.pop(n, None)
        counted.append(n)
        s = site(n)
        if s is not None:
            held.add(s)
        actions.append(Action("cancel_drop", n, why, now))

    def read_again(n: bytes) -> bool:
        """Its site wants a replica again and holds no other: keep this one rather
        than copy the dataset there anew."""
        s = site(n)
        return s in wanted and s not in held and len(counted) < ds.max_replicas

    # Phase two of the drops announced earlier: delete once the others are seen to
    # make the target, take back if they no longer can, else wait.
    mine = set(memory.leaving)
    others = list(counted)
    for n in sorted(mine):
        since = memory.leaving[n]
        # Seen since the announcement: a holder unseen since may be dead already
        # (it still counts within the grace), and deleting on its word could delete
        # the last live copy.
        confirmed = sum(1 for m in others if holders[m].last_seen > since)
        if read_again(n):
            take_back(n, f"site {site(n)} reads it again "
                         f"({by_site.get(site(n) or '', 0.0):g} reads in the window)")
        elif confirmed >= target:
            del memory.leaving[n]
            actions.append(Action("drop", n, f"{confirmed} other replicas seen since "
                                  f"the announcement meet the target of {target}", now))
        elif len(counted) < target:
            take_back(n, f"without it only {len(counted)} replicas for a target of {target}")
    # Replicas another custodian announced still hold the data: short of the target,
    # take them back before asking for new copies (else its cancel_drop and our adds
    # together overshoot max_replicas); else finish their phase two as if ours (else
    # one whose custodian went away would stay announced, uncounted, for ever).
    for n in sorted(n for n in alive if holders[n].leaving and n not in mine):
        if len(counted) + len(memory.adding) < target:
            take_back(n, f"announced elsewhere, but only {len(counted)} other replicas "
                         f"for a target of {target}")
        elif read_again(n):
            take_back(n, f"announced elsewhere, but site {site(n)} reads it again")
        else:
            memory.leaving[n] = now
    counted.sort()

    # Every site that wants a replica and has none, here or coming, gets one, even
    # when the count meets the target: the replicas follow the reads, and the one
    # left where nobody reads any more is the surplus the cool-down trims.
    uncovered = sorted(wanted - held - coming)
    total = len(counted) + len(memory.adding)
    demand = f"predicted {trend.prediction:.1f} reads/bucket"
    if wanted:
        demand += f"; reads in the window at {_sites(wanted, by_site)}"
    reasons = []
    if total < target or uncovered:
        why = (f"{len(lost)} holder(s) unseen for over {p.grace:g}s; "
               if lost and len(counted) < ds.min_replicas else "")
        why += f"{demand}: target {target}, {len(counted)} held" + (
            f" and {len(memory.adding)} coming" if memory.adding else "")
        if total >= target:
            why = f"no replica at {_sites(uncovered, by_site)}; " + why
        # Room under max_replicas counts the leaving replicas too: one may yet be
        # taken back (by us or by another custodian), and with our copy on top of
        # it the count would exceed the maximum.
        dropped = sum(1 for a in actions if a.kind == "drop")
        room = ds.max_replicas - (len(alive) - dropped) - len(memory.adding)
        for node in _place(ds, min(room, max(target - total, len(uncovered))), counted,
                           set(uncovered), by_site, nodes, holders, memory, p, key):
            memory.adding[node.id] = now
            actions.append(Action("add", node.id, f"{why}; site {node.site}", now))
        reasons.append(why)
    if len(counted) > target:
        if memory.above_since is None:
            memory.above_since = now
        waited = now - memory.above_since
        why = f"{len(counted)} replicas for a target of {target} ({demand})"
        if memory.leaving:
            pass  # one trim at a time
        elif waited >= p.cooldown and not any(a.kind in ("drop", "cancel_drop")
                                              for a in actions):
            node_id = _pick_drop(counted, by_site, nodes, key, wanted)
            memory.leaving[node_id] = now
            actions.append(Action("announce_drop", node_id, f"{why} for {waited:.0f}s "
                                  f"(cool-down {p.cooldown:g}s)", now))
        else:
            why += f"; cooling down {waited:.0f}/{p.cooldown:g}s"
        reasons.append(why)
    else:
        memory.above_since = None
        if not reasons:
            reasons.append(f"{len(counted)} replicas meet the target of {target} ({demand})")
    reason = "; ".join(reasons)
    announced = {a.node for a in actions if a.kind == "announce_drop"}
    waiting = sorted(n for n in memory.leaving if n not in announced)
    if waiting:
        reason += (f"; dropping {', '.join(n.hex()[:8] for n in waiting)} waits for "
                   f"{target} other replicas to be seen since its announcement")
    decision = Decision(target, tuple(counted), lost, tuple(actions), reason)
    memory.history.extend(actions)
    memory.last = decision
    return decision


def _sites(sites: Collection[str], by_site: Mapping[str, float]) -> str:
    return ", ".join(f"{s} ({by_site.get(s, 0.0):g})" for s in sorted(sites))


def _place(ds: DatasetState, want: int, counted: list[bytes], uncovered: set[str],
           by_site: Mapping[str, float], nodes: Mapping[bytes, NodeInfo],
           holders: Mapping[bytes, Holder], memory: Memory, p: PolicyParams,
           key: bytes) -> list[NodeInfo]:
    """Up to ``min(want, max_adds)`` nodes for new replicas, best first: a site in
    ``uncovered`` (most reads first), then the site with the most reads per replica
    there, then one with the fewest replicas; ties by a hash of site and dataset.
    On the site, the node that fits closest to the dataset's hash."""
    taken = set(holders) | set(memory.adding)
    per_site: Counter[str] = Counter(nodes[n].site for n in (*counted, *memory.adding)
                                     if n in nodes)
    free: dict[str, list[NodeInfo]] = {}
    for node in nodes.values():
        if node.id not in taken and _fits(node, ds.size, p):
            free.setdefault(node.site, []).append(node)
    uncovered = set(uncovered)
    chosen: list[NodeInfo] = []
    room = ds.max_replicas - len(counted) - len(memory.adding)
    for _ in range(max(0, min(want, p.max_adds, room))):
        if not free:
            break
        site = max(free, key=lambda s: (s in uncovered, by_site.get(s, 0.0) / (1 + per_site[s]),
                                        -per_site[s], _site_rank(s, key)))
        best = min(free[site], key=lambda n: _distance(n.id, key))
        chosen.append(best)
        per_site[site] += 1
        uncovered.discard(site)
        free[site].remove(best)
        if not free[site]:
            del free[site]
    return chosen


def _pick_drop(counted: list[bytes], by_site: Mapping[str, float],
               nodes: Mapping[bytes, NodeInfo], key: bytes, wanted: Collection[str]) -> bytes:
    """The replica to trim: not the only one at a site that wants one (while another
    will do), then where the reads per replica are fewest, then the busiest node."""
    sites = {n: nodes[n].site if n in nodes else "" for n in counted}
    per_site = Counter(sites.values())

    def worth(n: bytes) -> tuple[bool, float, int, float, int]:
        site = sites[n]
        return (site in wanted and per_site[site] == 1,
                by_site.get(site, 0.0) / per_site[site], -per_site[site],
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
