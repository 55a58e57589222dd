"""What the console shows, as plain dicts: the JSON API, and what the pages render.

Each function reads the running node (and, through it, the grid: the job
home sets, the catalog, the custodians, the peers' health) and returns data
that msgpack and JSON can both carry. Nothing here changes state; the
actions are in ``actions.py``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from overlay import RpcError
from replication import DatasetName, DatasetNameError
from steering import STATES as JOB_STATES
from steering import JobRecord, parse_job_id

from ..explain import explain_view
from ..jobs import record_view
from ..monitor import SAMPLES
from ..replicas import parse_name

if TYPE_CHECKING:
    from ..daemon import Node

LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
              "error": logging.ERROR}
JOB_LIST_LIMIT = 500
LOG_TAIL_BYTES = 64 * 1024


class NotFound(LookupError):
    """The thing asked for does not exist (HTTP 404)."""


class BadParameter(ValueError):
    """A malformed query parameter (HTTP 400)."""


async def node_view(node: Node, level: str = "info") -> dict[str, Any]:
    if level not in LOG_LEVELS:
        raise BadParameter(f"level must be one of {', '.join(LOG_LEVELS)}")
    ex = node.executor.statistics()
    store = node.data.store
    return {
        "id": node.key.id.hex(), "site": node.cert.name, "grid": node.grid.name,
        "roles": list(node.roles), "addresses": list(node.addresses),
        "uptime": round(time.monotonic() - node.started, 1),
        "cert_expires": node.cert.not_after,
        "slots": {"offered": ex["cores"], "used": ex["cores"] - ex["cores_free"],
                  "memory_mb": ex["memory_mb"], "memory_mb_used": ex["memory_mb"]
                  - ex["memory_mb_free"], "running": ex["running"]},
        "disk": {"used_bytes": store.used_bytes, "quota_bytes": store.quota_bytes},
        "dht": {"records_held": node.dht.statistics()["records_held"],
                "contacts": node.dht.statistics()["contacts"]},
        "peers_known": len(node.peers),
        "health": {"state": node.monitor.health.state,
                   "reason": node.monitor.health.current_reason()},
        "site_controls": node.site.view(),
        "refused": refused_counters(node),
        "logs": node.recent_logs.tail(LOG_LEVELS[level]),
        "log_level": level,
    }


def refused_counters(node: Node) -> dict[str, int]:
    """Every counter of refused or invalid input the node keeps, by where it was seen."""
    out: dict[str, int] = {}
    sources: dict[str, dict[str, Any]] = {
        "admin": node.counters, "channel": node.channel_counters,
        "dht": node.dht.statistics(), "data": dict(node.data.counters),
        "replication": dict(node.data.replicas.counters), "queue": node.queue.counters,
        "worker": node.worker.counters}
    words = ("refused", "invalid", "bad", "rejected", "malformed", "forged", "errors")
    for where, counters in sources.items():
        for k, v in counters.items():
            if any(w in k for w in words) and isinstance(v, int):
                out[f"{where}.{k}"] = v
    return dict(sorted(out.items()))


async def grid_view(node: Node) -> dict[str, Any]:
    """Every known node with its state, cores, jobs, storage and last sighting."""
    health = await node._op_health()
    rows = []
    for h in health["nodes"]:
        node_id = bytes.fromhex(h["id"])
        peer = node.peers.get(node_id)
        site, cap = node.capacities.get(node_id, (h.get("site", "?"), {}))
        rows.append({
            "id": h["id"], "site": h.get("site") or site, "self": h.get("self", False),
            "state": h.get("state", "unknown"), "reason": h.get("reason", ""),
            "roles": list(peer.roles) if peer else list(node.roles),
            "cores": cap.get("cores", h.get("cores", 0)),
            "running": h.get("jobs_running"), "waiting": h.get("jobs_waiting"),
            "storage_used_bytes": h.get("store_used_bytes"),
            "storage_total_bytes": h.get("store_quota_bytes"),
            "last_seen": h.get("last_seen"), "source": h.get("source", ""),
            "rtt_ms": h.get("rtt_ms"),
        })
    states = Counter(r["state"] for r in rows)
    return {"nodes": rows, "states": dict(states), "links": health["links"]}


async def jobs_view(node: Node, state: str | None, user: str | None,
                    limit: int = JOB_LIST_LIMIT) -> dict[str, Any]:
    if state is not None and state not in JOB_STATES:
        raise BadParameter(f"state must be one of {', '.join(JOB_STATES)}")
    if user is not None and not 0 < len(user) <= 128:
        raise BadParameter("user must be 1-128 characters")
    everything = await node.job_service.list_jobs(limit=100_000)
    counts = Counter(r.state for r in everything)
    shown = [r for r in everything if (state is None or r.state == state)
             and (user is None or r.job.user.name == user)]
    rows = [_job_row(r) for r in shown[-limit:]][::-1]  # newest first
    return {"counts": {s: counts.get(s, 0) for s in JOB_STATES}, "total": len(everything),
            "matching": len(shown), "jobs": rows, "state": state, "user": user}


def _job_row(rec: Any) -> dict[str, Any]:
    v = record_view(rec)
    return {k: v[k] for k in ("id", "name", "user", "state", "attempt", "max_attempts",
                              "submitted", "worker")} | {"command": " ".join(v["argv"])}


async def find_job(node: Node, ident: str) -> JobRecord:
    """The record of the job ``ident`` names (hex id): BadParameter or NotFound."""
    try:
        job_id = parse_job_id(ident)
    except ValueError as exc:
        raise BadParameter(str(exc)) from None
    rec = await node.job_service.find(job_id)
    if rec is None:
        raise NotFound(f"no job {job_id.hex()} in this grid")
    return rec


async def job_view(node: Node, ident: str) -> dict[str, Any]:
    rec = await find_job(node, ident)
    job_id = rec.job_id
    view = record_view(rec)
    sites = {p.node_id.hex(): p.site for p in node.peers.values()}
    sites[node.key.id.hex()] = node.cert.name
    view["sites"] = {n: sites.get(n, "?") for n in
                     {e["node"] for e in view["history"] if e["node"]}
                     | ({view["worker"]} if view["worker"] else set())}
    view["explain"] = explain_view(rec)
    view["sites"].update({n: sites.get(n, "?") for a in view["explain"]["attempts"]
                          for n in [a["worker"]] + [o["id"] for o in a["nodes"]]})
    view["runs_here"] = job_id in node.worker.held
    view["stdout"] = await _log_tail(node, job_id, "stdout")
    view["stderr"] = await _log_tail(node, job_id, "stderr")
    return view


async def _log_tail(node: Node, job_id: bytes, stream: str) -> str | None:
    """The last LOG_TAIL_BYTES of a job's stream, from whichever node ran it."""
    method = node.rpc.methods["job.logs"]
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in method.fn(node.local_context(), {
                "job": job_id, "stream": stream, "follow": False, "attempt": 0}):
            chunks.append(chunk)
            size += len(chunk)
            while size - len(chunks[0]) > LOG_TAIL_BYTES:
                size -= len(chunks.pop(0))
    except RpcError:
        return None
    return b"".join(chunks)[-LOG_TAIL_BYTES:].decode("utf-8", "replace")


async def datasets_view(node: Node, scope: str | None) -> dict[str, Any]:
    if scope is not None and not 0 < len(scope) <= 128:
        raise BadParameter("scope must be 1-128 characters")
    records = await node.data.catalog.list(scope=scope, limit=1000)
    return {"scope": scope, "datasets": [{
        "name": str(r.name), "owner": r.owner.name, "version": r.version,
        "files": len(r.files), "size": r.size, "closed": r.closed,
        "min_replicas": r.policy.min_replicas, "max_replicas": r.policy.max_replicas,
        "held_here": str(r.name) in node.data.holdings} for r in records]}


def parse_dataset(text: str) -> DatasetName:
    try:
        return parse_name(text)
    except DatasetNameError as exc:
        raise BadParameter(str(exc)) from None


async def dataset_view(node: Node, text: str) -> dict[str, Any]:
    name = parse_dataset(text)
    try:
        rec = await node.data.record(name)
        replicas = await node._call_local("dataset.replicas", {"name": str(name)})
    except RpcError as exc:
        if exc.code == "not_found":
            raise NotFound(str(exc)) from None
        raise
    explain: dict[str, Any] | None = None
    explain_error = None
    try:
        explain = await node._call_local("replica.explain", {"name": str(name)})
    except RpcError as exc:
        explain_error = str(exc)
    points: list[tuple[float, float]] = []
    marks: list[tuple[float, str, str]] = []
    if explain and "trend" in explain:
        step, now = explain["bucket_seconds"], time.time()
        counts = list(explain["trend"]["series"])
        points = [(now - (len(counts) - 1 - i) * step, float(c)) for i, c in enumerate(counts)]
        marks = [(a["t"], f"{a['kind']} {a['site']}: {a['reason']}", a["kind"])
                 for a in explain["decisions"] if not points or a["t"] >= points[0][0]]
    return {"trend_points": points, "trend_marks": marks, "explain_error": explain_error,
            "name": str(name), "owner": rec.owner.name, "version": rec.version,
            "created": rec.created, "closed": rec.closed, "size": rec.size,
            "policy": {"min_replicas": rec.policy.min_replicas,
                       "max_replicas": rec.policy.max_replicas},
            "files": [{"name": f.name, "size": f.size, "hash": f.hash.hex(),
                       "chunks": len(f.chunks)} for f in rec.files],
            "holders": replicas["holders"], "explain": explain}


async def health_view(node: Node, hours: float) -> dict[str, Any]:
    """This node's samples over time: the history in the state file (means of
    ``monitor.history_every`` samples) until the samples still in memory begin,
    then those."""
    if not 0 < hours <= 24 * 31:
        raise BadParameter("hours must be more than 0 and at most 744")
    since = time.time() - hours * 3600
    series: dict[str, list[tuple[float, float]]] = {name: [] for name in SAMPLES}
    recent = {name: [(t, v) for t, v in s if t >= since]
              for name, s in node.monitor.series.items()}
    for t, name, value in await node.state.metrics(since):
        # The history's coarse rows up to where the samples in memory begin.
        if name in series and not (recent.get(name) and t >= recent[name][0][0]):
            series[name].append((t, value))
    for name, samples in recent.items():
        series[name] += samples
    return {"hours": hours, "state": node.monitor.health.state,
            "reason": node.monitor.health.current_reason(),
            "evidence": node.monitor.health.evidence(), "series": series}
