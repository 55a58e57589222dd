"""The node's side of jobs: what steering needs from it, and job logs.

- :class:`NodeMembership`: the queue nodes and capacities this node knows
  (from the DHT's node records), and which of them seem dead;
- :class:`SlotStore`: steering's home-set slots in the SQLite file;
- :class:`JobRunner`: a leased job run by the local executor, its result
  turned into a job outcome;
- ``job.logs``/``worker.logs``: a job's stdout or stderr, streamed from the
  node that ran it, through whichever node the user asked.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from overlay import BadMessage, CallContext, GridInfo, Method, RpcError, bad_request, packb
from overlay import unpackb_untrusted as unpack
from steering import Capacity, Failure, JobRecord, NodeSeen, Slot, dataset_names, node_state

from .executor import Executor, RunSpec, StageOutError
from .logs import log

if TYPE_CHECKING:
    from .daemon import Node
    from .data import DataService

logger = logging.getLogger("gridnode.jobs")

# A member that failed to answer stays suspect this long after its last failure
# unless it answers again meanwhile.
SUSPECT_FOR = 30.0


@dataclass
class NodeMembership:
    node: Node
    _last_ok: dict[bytes, float] = field(default_factory=dict)
    _last_fail: dict[bytes, float] = field(default_factory=dict)
    _seen: list[NodeSeen] = field(default_factory=list)
    _seen_at: float = float("-inf")

    @property
    def me(self) -> bytes:
        return self.node.key.id

    def queue_nodes(self) -> dict[bytes, tuple[str, int]]:
        return self.node.role_addresses("queue")

    def note(self, node_id: bytes, ok: bool) -> None:
        (self._last_ok if ok else self._last_fail)[node_id] = time.monotonic()

    def is_suspect(self, node_id: bytes) -> bool:
        if node_id == self.me:
            return False
        fail = self._last_fail.get(node_id)
        if fail is None or time.monotonic() - fail > SUSPECT_FOR:
            return False
        return self._last_ok.get(node_id, 0.0) < fail

    def capacities(self) -> list[Capacity]:
        out = []
        for node_id, (site, cap) in self.node.capacities.items():
            if node_id in self.node.revocations.revoked:
                continue
            labels = frozenset(self.node.cfg.labels) if node_id == self.me else None
            out.append(Capacity(site, cap.get("cores", 0), cap.get("memory_mb", 0),
                                cap.get("disk_gb", 0) * 1024, labels))
        return out

    def nodes_seen(self) -> list[NodeSeen]:
        """The compute nodes as their newest records say (this one: now), ok ones and
        those with the most free slots first; for the queue's placement notes.  Worked
        out at most once a second: claims come much more often than records change."""
        now = time.monotonic()
        if now - self._seen_at < 1.0:
            return self._seen
        out = []
        for node_id in self.node.capacities:
            if node_id in self.node.revocations.revoked:
                continue
            health = (self.node.monitor.summary() if node_id == self.me
                      else self.node.health.get(node_id))
            out.append(NodeSeen(node_id, *node_state(health)))
        rank = {"ok": 0, "congested": 1, "": 2, "failing": 3}
        self._seen_at = now
        self._seen = sorted(out, key=lambda n: (rank[n.state], -n.slots_free, n.node_id))[:8]
        return self._seen


@dataclass
class SlotStore:
    state: Any
    grid: GridInfo

    async def save_slots(self, slots: Iterable[tuple[bytes, Slot]]) -> None:
        await self.state.save_slots([
            (j, s.promised, s.ballot, None if s.record is None else s.record.state,
             None if s.record is None else packb(s.record.to_wire())) for j, s in slots])

    async def load(self) -> list[tuple[bytes, Slot]]:
        out = []
        for job_id, promised, ballot, raw in await self.state.load_slots():
            rec = None
            if raw is not None:
                try:
                    rec = JobRecord.from_wire_untrusted(unpack(raw, max_size=1 << 20), self.grid,
                                                        stored=True)
                except BadMessage as exc:
                    log(logger, "slot.unreadable", logging.ERROR, job=job_id, reason=str(exc))
                    continue
            out.append((job_id, Slot(promised, ballot, rec)))
        return out


class JobRunner:
    """Runs leased jobs with the local executor."""

    def __init__(self, executor: Executor, disk_mb: int, data: DataService,
                 start_delay: float = 0.0) -> None:
        self.executor = executor
        self.start_delay = start_delay  # testing only: a slow node (capacity.start_delay)
        self.disk_mb = disk_mb
        self.data = data
        self.outcomes: Counter[str] = Counter()  # jobs that ended here: ok, failed
        self.staging = 0  # jobs still staging their input datasets in
        # Job (hex) -> (trio clock when its stage-in began, its datasets' full names).
        self.stage_ins: dict[str, tuple[float, tuple[str, ...]]] = {}
        self.released: dict[str, str] = {}  # jobs given back to the queue (rule c): why
        # Told of each outcome at once (the monitor's classifier): a node that fails
        # every job stops claiming after a few, not after the next sample.
        self.on_outcome: Callable[[bool], None] | None = None

    async def run(self, rec: JobRecord) -> tuple[bool, Failure | None, list[Any]]:
        if self.start_delay:
            await trio.sleep(self.start_delay)  # the job holds its slot meanwhile
        try:
            outcome = await self._run(rec)
        except Exception:
            self.released.pop(rec.job.hex_id, None)
            self._count(False)
            raise
        why = self.released.pop(rec.job.hex_id, None)
        if why is not None and not outcome[0]:
            # Given back, not failed: no outcome for the classifier, no attempt spent.
            return False, Failure("released", why), []
        failure = outcome[1]
        if failure is None or failure.code != "cancelled":
            # Killed on request (its user, an admin, a lease gone) says nothing of this node.
            self._count(outcome[0])
        return outcome

    def release(self, job: str, why: str) -> bool:
        """Give a job whose stage-in is stuck back to the queue (brokerage rule c)."""
        if job not in self.stage_ins or job in self.released:
            return False
        self.released[job] = why
        if not self.executor.cancel(job, f"released: {why}"):
            del self.released[job]
            return False
        return True

    def _count(self, ok: bool) -> None:
        self.outcomes["ok" if ok else "failed"] += 1
        if self.on_outcome is not None:
            self.on_outcome(ok)

    def capacity(self) -> tuple[int, int, int]:
        return self.executor.cores, self.executor.memory_mb, self.disk_mb

    def kill(self, job_id: bytes, reason: str) -> None:
        self.executor.cancel(job_id.hex(), reason)

    async def _run(self, rec: JobRecord) -> tuple[bool, Failure | None, list[Any]]:
        spec = rec.job.spec
        argv = tuple(a.replace("{index}", str(spec.index)) for a in spec.argv)
        stage_in = None
        if spec.inputs:
            names = dataset_names(spec.inputs, rec.job.user.name)

            async def stage_in(sandbox: Path) -> None:
                self.staging += 1
                self.stage_ins[rec.job.hex_id] = (trio.current_time(), names)
                try:
                    await self.data.stage_in(spec.inputs, rec.job.user.name, rec.job.hex_id,
                                             sandbox)
                finally:
                    self.staging -= 1
                    self.stage_ins.pop(rec.job.hex_id, None)
        result = await self.executor.run(RunSpec(
            job_id=rec.job.hex_id, attempt=rec.attempt, argv=argv, env=dict(spec.env),
            cores=spec.cores, memory_mb=spec.memory_mb, walltime_s=float(spec.walltime_s)),
            stage_in)
        if result.error is not None:
            return False, Failure(result.error, result.diagnosis, result.exit_code,
                                  result.signal, result.stderr_tail), []
        if not spec.outputs:
            return True, None, []
        prefix = str(spec.index) if spec.task_id else rec.job.hex_id
        try:
            outputs = await self.data.collect_outputs(spec.outputs, result.sandbox, prefix)
        except StageOutError as exc:
            return False, Failure("stage_out_failed", str(exc), result.exit_code, None,
                                  result.stderr_tail), []
        return True, None, outputs


def methods(node: Node) -> dict[str, Method]:
    async def worker_logs(ctx: CallContext, args: Any) -> AsyncIterator[bytes]:
        job, attempt, stream, follow = _log_args(args)
        path = node.executor.log_path(job.hex(), attempt, stream)
        if not path.exists():
            raise RpcError("not_found", f"no {stream} of job {job.hex()} attempt {attempt} "
                           f"on this node")
        if follow:
            async for chunk in node.executor.follow(job.hex(), attempt, stream):
                yield chunk
        else:
            async for chunk in _read(path):
                yield chunk

    async def job_logs(ctx: CallContext, args: Any) -> AsyncIterator[bytes]:
        job, attempt, stream, follow = _log_args(args)
        rec = await node.job_service.find(job)
        if rec is None:
            raise RpcError("not_found", f"no job {job.hex()} in this grid")
        ran = [e for e in rec.history if e.state == "running" and e.node]
        if not ran:
            raise RpcError("not_found", f"job {job.hex()} has not run yet ({rec.state})")
        worker = ran[-1].node
        attempt = attempt or rec.attempt
        query = {"job": job, "attempt": attempt, "stream": stream, "follow": follow}
        if worker == node.key.id:
            async for chunk in worker_logs(ctx, query):
                yield chunk
            return
        address = await _address_of(node, worker)
        client = await node.pool.client(*address, expect_id=worker)
        async with client.stream("worker.logs", query) as items:
            async for chunk in items:
                if not isinstance(chunk, bytes):
                    raise RpcError("internal", "the worker sent a bad log chunk")
                yield chunk

    return {
        "job.logs": Method(job_logs, streaming=True),
        "worker.logs": Method(worker_logs, streaming=True),
    }


async def _address_of(node: Node, node_id: bytes) -> tuple[str, int]:
    from .service import peer_addresses

    addresses = await peer_addresses(node, node_id)
    if not addresses:
        raise RpcError("unavailable", f"node {node_id.hex()} that ran the job is not known")
    return addresses[0]


def _log_args(args: Any) -> tuple[bytes, int, str, bool]:
    if not (isinstance(args, dict) and isinstance(args.get("job"), bytes)
            and len(args["job"]) == 20):
        raise bad_request("logs take {job, attempt, stream, follow}")
    attempt = args.get("attempt", 0)
    stream = args.get("stream", "stdout")
    follow = args.get("follow", False)
    if not (type(attempt) is int and 0 <= attempt < 1000 and stream in ("stdout", "stderr")
            and isinstance(follow, bool)):
        raise bad_request("attempt must be 0-999, stream stdout or stderr, follow a bool")
    return args["job"], attempt, stream, follow


async def _read(path: Path, chunk: int = 64 * 1024) -> AsyncIterator[bytes]:
    async with await trio.open_file(path, "rb") as f:
        while data := await f.read(chunk):
            yield data


def sandbox_root(datadir_root: Path) -> Path:
    root = datadir_root / "jobs"
    root.mkdir(exist_ok=True, mode=0o700)
    os.chmod(root, 0o700)
    return root


def record_view(rec: JobRecord) -> dict[str, Any]:
    spec = rec.job.spec
    f = rec.failure
    return {
        "id": rec.job.hex_id, "name": spec.name, "user": rec.job.user.name,
        "task": spec.task_id or None, "index": spec.index, "state": rec.state,
        "attempt": rec.attempt, "max_attempts": spec.max_attempts, "argv": list(spec.argv),
        "cores": spec.cores, "memory_mb": spec.memory_mb, "walltime_s": spec.walltime_s,
        "priority": spec.priority, "submitted": rec.job.submitted,
        "worker": rec.lease.worker.hex() if rec.lease else None,
        "home": [h.hex() for h in rec.home],
        "history": [{"time": e.time, "state": e.state, "reason": e.reason,
                     "node": e.node.hex() or None} for e in rec.history],
        "failure": None if f is None else {
            "code": f.code, "diagnosis": f.diagnosis, "exit_code": f.exit_code,
            "signal": f.signal, "stderr_tail": list(f.stderr_tail), "node": f.node.hex()},
    }
