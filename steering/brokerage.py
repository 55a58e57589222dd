"""Brokerage: where a job runs, how much a node takes, what is released, where bytes
come from (pure core, no I/O, no clock).

Every decision here is made by a queue primary or a worker from what the peers
report in their node records — the bottleneck classifier's state (``ok``,
``congested``, ``failing``) with the level and slope of its pressure, free and
total slots, jobs still staging in — never by a central scheduler.  The
rules, each a function:

(a) **Score** (``predicted_finish``, ``rank_workers``, ``choose``): a job's
    predicted finish on a worker is the wait for a slot, plus its stage-in,
    plus its compute.  The stage-in is 0 when the worker holds the input;
    otherwise the transfer's nominal time (bytes over the LAN or WAN rate
    from the source ``pick_source`` chose), stretched to what the pressure
    of a congested worker or source predicts (``prediction * stage_bound``:
    pressure 1 is a stage-in of ``stage_bound`` seconds).  Failing workers
    are never candidates.  A worker that asks for jobs gets, among the
    ``window`` queued jobs it is shown (the caller's window: the first
    ``per_task`` of each task), those with the lowest predicted finish on
    it, less an ``age_credit`` per second waited (so no job waits behind
    better matches forever), less ``lpt_weight`` times its expected compute
    (the longest first, so the last jobs of a busy period are short ones:
    the mean compute of the finished jobs of its task; a job whose task has
    none finished counts as the mean of those in the window that have, or as
    long as its task's job that has computed longest so far, if longer);
    scouts (the first ``scouts`` jobs to start of a task with none finished,
    marked by the caller) go before any other, so that every task's length
    is soon known; ties go to the older job.
(b) **Claim** (``claim``): an ``ok`` node claims as many jobs as it has free
    slots.  A ``congested`` node claims fewer of the jobs that load its links:
    it keeps at most ``congested_share`` of its slots staging in at once
    (times ``rising_factor`` while its pressure still rises); jobs whose
    input it holds need no transfer and still fill its free slots.  So it
    never claims more jobs, nor more stage-ins, than an ``ok`` node with the
    same free slots.  A ``failing`` node claims no job; every
    ``probe_every`` seconds it runs one probe (a short test job), and the
    classifier lets it back after ``recover_after`` probes pass.
(c) **Release** (``should_release``): a job whose stage-in or queue wait at
    a node that is not ``ok`` has lasted ``release_after`` seconds is
    released, to be matched elsewhere, when what is predicted to be left of
    it there is itself longer than ``release_after`` and more than
    ``release_gain`` times what the whole of it would take elsewhere.  At an
    ok node the wait comes from elsewhere (a hot source) and would follow the
    job; a job nearly through is never released: on a saturated link,
    releasing transfers near their end would burn the link on transfers that
    never finish.
(d) **Source** (``pick_source``): the replica on the node itself; else
    sources whose node is not ``congested`` before congested ones; within a
    class one at the reader's site, then the best rate, then the fewest
    readers.  ``failing`` says the jobs a node runs fail, not that the bytes
    it serves are slow: a black-hole site's disks are idle and fast.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "BrokerError",
    "BrokerParams",
    "STATE_RANK",
    "source_rank",
    "Claim",
    "Match",
    "NodeView",
    "Option",
    "Source",
    "choose",
    "claim",
    "match",
    "order_sources",
    "pick_source",
    "predicted_finish",
    "rank_workers",
    "should_release",
    "stage_estimate",
]

STATE_RANK = {"ok": 0, "congested": 1, "failing": 2}


def source_rank(state: str) -> int:
    """(d) The class of a source by its node's state: 1 congested, 0 otherwise."""
    return 1 if state == "congested" else 0


class BrokerError(ValueError):
    """A brokerage parameter or view out of range (the message names it)."""


@dataclass(frozen=True)
class BrokerParams:
    stage_bound: float = 300.0      # s: a stage-in this long is pressure 1
    congested_share: float = 0.25   # of its slots a congested node keeps staging in
    rising_factor: float = 0.5      # ... times this while its pressure still rises
    probe_every: float = 300.0      # s between a failing node's probes
    release_after: float = 600.0    # s of stage-in or queue wait before a release is weighed
    release_gain: float = 2.0       # release when what is left there > this x elsewhere
    window: int = 4096              # queued jobs a claim looks at, at most
    per_task: int = 8               # ... the first this many of each task (0: of the queue)
    age_credit: float = 0.1         # s of predicted finish forgiven per s waited
    lpt_weight: float = 3.0         # s of predicted finish forgiven per s of expected compute
    scouts: int = 10                # jobs of a task with none finished yet taken first

    def __post_init__(self) -> None:
        for name in ("stage_bound", "probe_every", "release_after"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise BrokerError(f"{name} must be > 0 seconds, got {value}")
        for name in ("congested_share", "rising_factor"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 < value <= 1):
                raise BrokerError(f"{name} must be in (0, 1], got {value}")
        if not (math.isfinite(self.release_gain) and self.release_gain >= 1):
            raise BrokerError(f"release_gain must be >= 1, got {self.release_gain}")
        if not (math.isfinite(self.age_credit) and 0 <= self.age_credit < 1):
            raise BrokerError(f"age_credit must be in [0, 1), got {self.age_credit}")
        if not (math.isfinite(self.lpt_weight) and self.lpt_weight >= 0):
            raise BrokerError(f"lpt_weight must be >= 0, got {self.lpt_weight}")
        for name in ("scouts", "per_task"):
            value = getattr(self, name)
            if not (type(value) is int and 0 <= value <= 10_000):
                raise BrokerError(f"{name} must be 0-10000, got {value}")
        if not (type(self.window) is int and 1 <= self.window <= 10_000):
            raise BrokerError(f"window must be 1-10000, got {self.window}")


@dataclass(frozen=True)
class NodeView:
    """A node as its peers see it (its record's steering summary)."""

    state: str = "ok"
    prediction: float = 0.0     # the classifier's pressure, ``horizon`` samples ahead
    slope: float = 0.0          # of the pressure, per sample
    free_slots: int = 0
    slots: int = 1
    staging: int = 0            # its jobs still staging their input in

    def __post_init__(self) -> None:
        if self.state not in STATE_RANK:
            raise BrokerError(f"state must be one of {', '.join(STATE_RANK)}, got "
                              f"{self.state!r}")
        if not (0 <= self.free_slots <= self.slots and self.slots >= 1 and self.staging >= 0):
            raise BrokerError(f"slots {self.free_slots} free of {self.slots}, {self.staging} "
                              f"staging: out of range")
        if not (math.isfinite(self.prediction) and math.isfinite(self.slope)):
            raise BrokerError("prediction and slope must be finite")


@dataclass(frozen=True)
class Claim:
    jobs: int          # queued jobs the node takes now
    stage_ins: int     # of which at most this many need their input moved to it
    probe: bool        # and whether it runs a probe (failing nodes only)


def claim(view: NodeView, p: BrokerParams, probe_due: bool = False) -> Claim:
    """(b) How many jobs ``view``'s node claims now; ``probe_due``: a probe is due."""
    free = view.free_slots
    if view.state == "failing":
        return Claim(0, 0, probe_due and free > 0)
    if view.state == "ok":
        return Claim(free, free, False)
    share = p.congested_share * (p.rising_factor if view.slope > 0 else 1.0)
    cap = math.ceil(view.slots * share)
    return Claim(free, max(0, min(free, cap - view.staging)), False)


def stage_estimate(nominal_s: float, worker: NodeView, source: NodeView | None,
                   p: BrokerParams) -> float:
    """(a) Predicted stage-in seconds: ``nominal_s`` (bytes over the nominal rate; 0 when
    the input is on the worker, ``source`` None) stretched to the pressure a congested
    worker or source predicts."""
    if source is None:
        return 0.0
    t = nominal_s
    for v in (worker, source):
        if v.state == "congested":
            t = max(t, v.prediction * p.stage_bound)
    return t


def predicted_finish(stage_s: float, compute_s: float, slot_wait_s: float = 0.0) -> float:
    """(a) Seconds from now until the job would be done on a worker."""
    return slot_wait_s + stage_s + compute_s


def rank_workers(candidates: Sequence[tuple[NodeView, float, float]],
                 compute_s: float) -> list[int]:
    """(a) Indexes of ``candidates`` (worker, stage-in s, slot wait s) best first by
    predicted finish; failing workers left out, ties to the earlier candidate."""
    keep = [i for i, (v, _, _) in enumerate(candidates) if v.state != "failing"]
    return sorted(keep, key=lambda i: (predicted_finish(candidates[i][1], compute_s,
                                                        candidates[i][2]),
                                       STATE_RANK[candidates[i][0].state], i))


@dataclass(frozen=True)
class Option:
    """A queued job as the worker asking would run it."""

    stage_s: float              # predicted stage-in on this worker
    age_s: float = 0.0          # since it was submitted
    local: bool = False         # its input is on this worker: no transfer
    excluded: bool = False      # this worker released it before: not for it again
    compute_s: float | None = None  # expected compute (its task's finished jobs); None: unknown
    scout: bool = False         # one of the first ``scouts`` jobs of a task none of whose
                                # jobs has finished: taken before the others
    running_s: float = 0.0      # compute unknown: the longest one of its task's jobs has
                                # been computing (its compute is at least about that)


def choose(options: Sequence[Option], c: Claim, p: BrokerParams) -> list[int]:
    """(a) Indexes of the best of ``options`` (queue order, oldest first) for a claim
    ``c``, best first: at most ``c.jobs``, of which at most ``c.stage_ins`` not local;
    only the first ``window`` options are looked at."""
    if c.jobs <= 0:
        return []
    window = options[:p.window]
    w = p.lpt_weight
    unknown = 0.0                       # the expected compute of a job whose task has none
    if w:
        known = [o.compute_s for o in window if o.compute_s is not None]
        unknown = sum(known) / len(known) if known else 0.0
    # Scouts first; then by stage-in less the age credit less the weighted compute.
    seen = sorted((not o.scout, (0.0 if o.local else o.stage_s) - p.age_credit * o.age_s
                   - (w * (max(unknown, o.running_s) if o.compute_s is None else o.compute_s)
                      if w else 0.0), i)
                  for i, o in enumerate(window) if not o.excluded)
    out: list[int] = []
    moves = c.stage_ins
    for _, _, i in seen:
        if options[i].local:
            out.append(i)
        elif moves > 0:
            out.append(i)
            moves -= 1
        if len(out) >= c.jobs:
            break
    return out


@dataclass(frozen=True)
class Match:
    jobs: list[int]        # indexes into the options, best first
    probe: bool


def match(view: NodeView, options: Sequence[Option], p: BrokerParams,
          probe_due: bool = False) -> Match:
    """(a)+(b) What a worker that asks gets: ``claim`` then ``choose``."""
    c = claim(view, p, probe_due)
    return Match(choose(options, c, p), c.probe)


def should_release(waited_s: float, left_s: float, elsewhere_s: float, here: NodeView,
                   p: BrokerParams) -> bool:
    """(c) Release a job that has waited ``waited_s`` (stage-in or queue) at the node
    ``here`` where ``left_s`` more is predicted, when the whole of it would take
    ``elsewhere_s``?  Only from a node that is not ok: at an ok node the wait comes
    from elsewhere (a hot source), and would follow the job."""
    return (here.state != "ok" and waited_s >= p.release_after
            and left_s > max(p.release_after, p.release_gain * max(elsewhere_s, 0.0)))


@dataclass(frozen=True)
class Source:
    """A complete replica a job's input could be read from."""

    state: str                  # of the node holding it
    on_node: bool = False       # on the reader itself
    same_site: bool = False     # at the reader's site (LAN)
    rate: float = 0.0           # bytes/s a transfer from it is expected to get
    readers: int = 0            # transfers reading from it now


def _source_key(i: int, s: Source) -> tuple[float, ...]:
    if s.on_node:
        return (0, i)
    return (1, source_rank(s.state), not s.same_site, -s.rate, s.readers, i)


def pick_source(sources: Sequence[Source]) -> int | None:
    """(d) Index of the source to read from, None if there is none."""
    best: int | None = None
    best_key: tuple[float, ...] = ()
    for i, s in enumerate(sources):
        if s.on_node:
            return i
        key = _source_key(i, s)
        if best is None or key < best_key:
            best, best_key = i, key
    return best


def order_sources(sources: Sequence[Source]) -> list[int]:
    """(d) Indexes of every source, best first: ``pick_source`` of those not yet taken,
    again and again (for a fetcher that reads from several sources at once)."""
    return sorted(range(len(sources)), key=lambda i: _source_key(i, sources[i]))
