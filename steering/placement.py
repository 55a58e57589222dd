"""Placement notes: why a job went where it went (pure core, no I/O, no clock).

When a queue primary leases a job to a worker that claimed, it writes one
:class:`Placement` into the job's record (replicated with it, so any home
member can tell ``gridnode explain``).  A note holds

- the worker's own claim decision, as its offer carried it: its health state,
  the free cores it offered, the jobs and stage-ins it asked for at most
  (``steering.brokerage.claim`` fed with its monitor) and why;
- the primary's rule that picked this job for it (requirements met, priority,
  the user's running jobs for fair share, the job's age) and how many jobs
  were still queued;
- the next queued jobs the same offer would have got (the ones this job was
  preferred over), at most ``MAX_NEXT``, each with its matching key;
- what the primary knew of the other compute nodes at that moment (state and
  free slots from their node records), at most ``MAX_NODES``.

Everything is bounded: texts are cut, lists capped, and a record keeps the
last ``MAX_PLACEMENTS`` notes (one per attempt).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from overlay import expect

MAX_PLACEMENTS = 4  # about 500 bytes each: a record grows by 2 KB at most
MAX_NEXT = 3
MAX_NODES = 4
MAX_WHY = 200
MAX_RULE = 300
HEALTH_STATES = ("ok", "congested", "failing", "")  # "": the worker did not say


@dataclass(frozen=True)
class Passed:
    """A queued job the placed one was preferred over, with its matching key."""

    job_id: bytes
    priority: int
    user_running: int   # its user's running jobs (fair share: fewer goes first)
    age_s: float


@dataclass(frozen=True)
class NodeSeen:
    """Another compute node as the primary saw it (its newest record)."""

    node_id: bytes
    state: str          # ok, congested, failing, or "" when its record did not say
    slots_free: int     # -1: not known


@dataclass(frozen=True)
class Placement:
    attempt: int
    time: float
    worker: bytes
    state: str          # the worker's health when it claimed
    cores_free: int     # the free cores it offered
    max_jobs: int       # the jobs it asked for at most
    max_stage_ins: int  # of which at most this many with input datasets
    worker_why: str     # the worker's reason for its claim size
    rule: str           # the primary's reason for giving it this job
    queued: int         # jobs still queued at this primary after the claim
    passed: tuple[Passed, ...] = ()
    nodes: tuple[NodeSeen, ...] = ()

    def to_wire(self) -> list[Any]:
        return [self.attempt, self.time, self.worker, self.state, self.cores_free,
                self.max_jobs, self.max_stage_ins, self.worker_why, self.rule, self.queued,
                [[p.job_id, p.priority, p.user_running, p.age_s] for p in self.passed],
                [[n.node_id, n.state, n.slots_free] for n in self.nodes]]

    @classmethod
    def from_wire_untrusted(cls, data: Any) -> Placement:
        """A checked note, or BadMessage."""
        expect(isinstance(data, list) and len(data) == 12, "bad placement")
        (attempt, t, worker, state, cores, jobs, stage_ins, why, rule, queued, passed,
         nodes) = data
        expect(_uint(attempt) and _num(t) and _id(worker) and state in HEALTH_STATES
               and _uint(cores) and _uint(jobs) and _uint(stage_ins) and _uint(queued)
               and isinstance(why, str) and len(why) <= MAX_WHY
               and isinstance(rule, str) and len(rule) <= MAX_RULE, "bad placement fields")
        expect(isinstance(passed, list) and len(passed) <= MAX_NEXT
               and isinstance(nodes, list) and len(nodes) <= MAX_NODES, "bad placement lists")
        ps = []
        for p in passed:
            expect(isinstance(p, list) and len(p) == 4 and _id(p[0]) and type(p[1]) is int
                   and abs(p[1]) < 2**31 and _uint(p[2]) and _num(p[3]), "bad passed job")
            ps.append(Passed(p[0], p[1], p[2], float(p[3])))
        ns = []
        for n in nodes:
            expect(isinstance(n, list) and len(n) == 3 and _id(n[0])
                   and n[1] in HEALTH_STATES and type(n[2]) is int and -1 <= n[2] < 2**31,
                   "bad node seen")
            ns.append(NodeSeen(n[0], n[1], n[2]))
        return cls(attempt, float(t), worker, state, cores, jobs, stage_ins, why, rule,
                   queued, tuple(ps), tuple(ns))


def placed(notes: tuple[Placement, ...], note: Placement) -> tuple[Placement, ...]:
    """The notes of a record after one more placement: the last MAX_PLACEMENTS."""
    return (notes + (note,))[-MAX_PLACEMENTS:]


def rule_text(*, priority: int, user: str, user_running: int, age_s: float,
              queued: int, local: bool = False, scout: bool = False,
              expected_s: float | None = None) -> str:
    """The primary's reason for a pick, as the matcher ordered it (steering.matching)."""
    return (f"matched: requirements ok, priority {priority}, fair share: user {user[:40]} had "
            f"{user_running} running, "
            + ("a scout of its task, " if scout else "")
            + (f"its task's jobs took {expected_s:.0f} s (longest first), "
               if expected_s is not None else "")
            + ("its inputs are on the worker, " if local else "")
            + f"age {age_s:.0f} s, {queued} still queued")[:MAX_RULE]


def node_state(health: Any) -> tuple[str, int]:
    """(state, free slots) from a node record's health summary (untrusted dict)."""
    if not isinstance(health, dict):
        return "", -1
    state = health.get("state")
    free = health.get("slots_free")
    return (state if state in HEALTH_STATES else "",
            free if type(free) is int and 0 <= free < 2**31 else -1)


def _id(x: Any) -> bool:
    return isinstance(x, bytes) and len(x) == 20


def _uint(x: Any) -> bool:
    return type(x) is int and 0 <= x < 2**63


def _num(x: Any) -> bool:
    return (type(x) is int or type(x) is float) and x == x and abs(x) < 1e15
