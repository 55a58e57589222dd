"""``gridnode explain JOB``: where a job went and why, from its record's placement notes.

The queue primary writes one note per attempt when it leases the job
(``steering.placement``); the record is replicated to the job's home set,
so any node finds it the way ``gridnode status JOB`` does.  This module only
turns a record into a view (a dict, for ``--json`` and the Python client)
and the view into text.
"""

from __future__ import annotations

import time
from typing import Any

from steering import JobRecord, Placement


def _outcome(rec: JobRecord, p: Placement) -> dict[str, Any] | None:
    """What became of the attempt ``p`` placed: the first event after its lease."""
    events = rec.history
    for i, e in enumerate(events):
        if e.state == "running" and e.node == p.worker and abs(e.time - p.time) < 1e-6:
            if i + 1 < len(events):
                nxt = events[i + 1]
                return {"state": nxt.state, "reason": nxt.reason, "time": nxt.time}
            return {"state": rec.state, "reason": "still " + rec.state, "time": None}
    return None


def explain_view(rec: JobRecord) -> dict[str, Any]:
    attempts = []
    for p in rec.placements:
        attempts.append({
            "attempt": p.attempt, "time": p.time, "worker": p.worker.hex(),
            "worker_state": p.state or None, "cores_free": p.cores_free,
            "claim": {"max_jobs": p.max_jobs, "max_stage_ins": p.max_stage_ins,
                      "why": p.worker_why or None},
            "rule": p.rule, "queued": p.queued,
            "passed": [{"job": x.job_id.hex(), "priority": x.priority,
                        "user_running": x.user_running, "age_s": round(x.age_s, 1)}
                       for x in p.passed],
            "nodes": [{"id": n.node_id.hex(), "state": n.state or None,
                       "slots_free": None if n.slots_free < 0 else n.slots_free}
                      for n in p.nodes],
            "outcome": _outcome(rec, p),
        })
    noted = {p.attempt for p in rec.placements}
    return {"id": rec.job.hex_id, "state": rec.state, "attempt": rec.attempt,
            "max_attempts": rec.job.spec.max_attempts, "attempts": attempts,
            "unexplained_attempts": [a for a in range(1, rec.attempt + 1) if a not in noted]}


def _n(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def explain_text(v: dict[str, Any]) -> str:
    lines = [f"job {v['id']}: {v['state']} (attempt {v['attempt']} of {v['max_attempts']})"]
    if not v["attempts"]:
        lines.append("  not placed yet" if v["attempt"] == 0 else
                     "  no placement notes (placed by a node that does not record them)")
    for a in v["attempts"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(a["time"]))
        state = a["worker_state"] or "state not reported"
        lines.append(f"attempt {a['attempt']}  {when}  -> worker {a['worker'][:12]} "
                     f"({state}, {_n(a['cores_free'], 'core')} free)")
        c = a["claim"]
        lines.append(f"  worker:  claimed at most {_n(c['max_jobs'], 'job')}, "
                     f"{c['max_stage_ins']} with inputs" + (f": {c['why']}" if c["why"] else ""))
        lines.append(f"  primary: {a['rule']}")
        if a["passed"]:
            lines.append("  preferred over: " + "; ".join(
                f"{x['job'][:12]} (priority {x['priority']}, its user had "
                f"{x['user_running']} running, age {x['age_s']:.0f} s)" for x in a["passed"]))
        if a["nodes"]:
            lines.append("  other nodes: " + "; ".join(
                f"{n['id'][:12]} {n['state'] or '?'}"
                + ("" if n["slots_free"] is None else f", {n['slots_free']} free")
                for n in a["nodes"]))
        o = a["outcome"]
        if o is not None:
            lines.append(f"  outcome: {o['state']}: {o['reason']}")
    if v["unexplained_attempts"] and v["attempts"]:
        lines.append("attempts without a note (older ones dropped, or placed by an older "
                     "node): " + ", ".join(map(str, v["unexplained_attempts"])))
    return "\n".join(lines)
