"""The queue's RPC surface: argument checks in front of :class:`QueueNode`."""

from __future__ import annotations

from typing import Any

from overlay import BadMessage, CallContext, Method, RpcError, bad_request

from .job import SignedJob
from .matching import MAX_HELD, Offer
from .placement import HEALTH_STATES, MAX_WHY
from .queue import MAX_BATCH, QueueNode
from .record import MAX_OUTPUTS, Failure, JobRecord, Report, within_budget


def queue_methods(q: QueueNode) -> dict[str, Method]:
    """The queue's RPC table: members and workers are nodes; reading is for members."""

    def bind(fn: Any) -> Any:
        async def handler(ctx: CallContext, args: Any) -> Any:
            return await fn(q, ctx, args)
        return handler

    return {
        "queue.prepare": Method(bind(_prepare), access="node"),
        "queue.accept": Method(bind(_accept), access="node"),
        "queue.create": Method(bind(_create), access="node"),
        "queue.claim": Method(bind(_claim), access="node"),
        "queue.heartbeat": Method(bind(_heartbeat), access="node", inline=True),
        "queue.report": Method(bind(_report), access="node"),
        "queue.cancel": Method(bind(_cancel), access="node"),
        "queue.get": Method(bind(_get), inline=True),
        "queue.list": Method(bind(_list)),
    }


async def _prepare(q: QueueNode, ctx: CallContext, args: Any) -> list[Any]:
    entries = _entries(args)
    parsed = []
    for e in entries:
        if not (isinstance(e, list) and len(e) == 2 and _is_id(e[0]) and _uint(e[1])):
            raise bad_request("prepare entries are [job id, ballot]")
        parsed.append((e[0], e[1]))
    promises = await q.local_prepare(parsed)
    return [[p.ok, p.promised, p.ballot, None if p.record is None else p.record.to_wire()]
            for p in promises]


async def _accept(q: QueueNode, ctx: CallContext, args: Any) -> list[bool]:
    parsed = []
    for e in _entries(args):
        if not (isinstance(e, list) and len(e) == 2 and _uint(e[0])):
            raise bad_request("accept entries are [ballot, record]")
        try:
            rec = JobRecord.from_wire_untrusted(e[1], q.grid, known=q.known_job)
        except BadMessage as exc:
            raise bad_request(f"bad record: {exc}") from None
        if ctx.peer_id not in rec.home:
            raise RpcError("forbidden", "only a home member may write a job's record")
        parsed.append((e[0], rec))
    return await q.local_accept(parsed)


async def _create(q: QueueNode, ctx: CallContext, args: Any) -> dict[bytes, str]:
    if not (isinstance(args, dict) and isinstance(args.get("jobs"), list)
            and len(args["jobs"]) <= MAX_BATCH):
        raise bad_request("create takes {jobs: [[job, home set]...]}")
    jobs, homes = [], {}
    for e in args["jobs"]:
        if not (isinstance(e, list) and len(e) == 2 and isinstance(e[0], bytes)
                and isinstance(e[1], list) and all(_is_id(h) for h in e[1])
                and 0 < len(e[1]) <= 16):
            raise bad_request("bad job entry")
        try:
            job = SignedJob.from_bytes_untrusted(e[0], q.grid)
        except BadMessage as exc:
            raise bad_request(f"bad job: {exc}") from None
        jobs.append(job)
        homes[job.job_id] = tuple(e[1])
    return await q.create(jobs, homes)


async def _claim(q: QueueNode, ctx: CallContext, args: Any) -> list[Any]:
    offer = _offer(ctx.peer_id, args)
    return [r.to_wire() for r in await q.claim(offer)]


async def _heartbeat(q: QueueNode, ctx: CallContext, args: Any) -> dict[bytes, Any]:
    leases = []
    for e in _entries(args):
        if not (isinstance(e, list) and len(e) == 2 and _is_id(e[0]) and _uint(e[1])):
            raise bad_request("heartbeat entries are [job id, attempt]")
        leases.append((e[0], e[1]))
    return q.heartbeat(ctx.peer_id, leases)


async def _report(q: QueueNode, ctx: CallContext, args: Any) -> Any:
    """Reports; with an ``offer`` (the slots they free) also a claim, written together:
    then the answer is {verdicts, leased} instead of the verdicts alone."""
    reports = []
    for e in _entries(args):
        if not (isinstance(e, list) and len(e) in (5, 6) and _is_id(e[0]) and _uint(e[1])
                and _uint(e[2]) and isinstance(e[3], bool)):
            raise bad_request("report entries are [job id, attempt, epoch, ok, failure, "
                              "outputs]")
        failure = None if e[3] else _failure(e[4], ctx.peer_id)
        outputs = e[5] if len(e) == 6 else []
        if not (isinstance(outputs, list) and len(outputs) <= MAX_OUTPUTS
                and all(isinstance(o, list) for o in outputs)):
            raise bad_request(f"outputs are at most {MAX_OUTPUTS} file manifests")
        reports.append(Report(e[0], e[1], e[2], e[3], failure, tuple(outputs)))
    if args.get("offer") is None:
        return await q.report(ctx.peer_id, reports)
    verdicts, leased = await q.report_and_claim(ctx.peer_id, reports,
                                                _offer(ctx.peer_id, args["offer"]))
    return {"verdicts": verdicts, "leased": [r.to_wire() for r in leased]}


async def _cancel(q: QueueNode, ctx: CallContext, args: Any) -> str:
    if not (isinstance(args, dict) and _is_id(args.get("job"))
            and isinstance(args.get("who"), str)):
        raise bad_request("cancel takes {job, who}")
    return await q.cancel(args["job"], args["who"][:200])


async def _get(q: QueueNode, ctx: CallContext, args: Any) -> Any:
    if not (isinstance(args, dict) and _is_id(args.get("job"))):
        raise bad_request("get takes {job}")
    slot = q.slots.get(args["job"])
    if slot is None or slot.record is None:
        return None
    return [slot.ballot, slot.record.to_wire()]


async def _list(q: QueueNode, ctx: CallContext, args: Any) -> list[Any]:
    if not isinstance(args, dict):
        raise bad_request("list takes {state, user, task, limit}")
    state, user, task = args.get("state"), args.get("user"), args.get("task")
    limit = args.get("limit", 1000)
    if not (_uint(limit) and limit <= 100_000):
        raise bad_request("limit must be 0-100000")
    return [[ballot, rec.to_wire()] for ballot, rec in
            within_budget(q.list_local(state=state, user=user, task=task, limit=limit))]


def _is_id(x: Any) -> bool:
    return isinstance(x, bytes) and len(x) == 20


def _uint(x: Any) -> bool:
    return type(x) is int and 0 <= x < 2**63


def _entries(args: Any) -> list[Any]:
    if not (isinstance(args, dict) and isinstance(args.get("entries"), list)
            and len(args["entries"]) <= MAX_BATCH):
        raise bad_request(f"expected {{entries: [...]}} with at most {MAX_BATCH} entries")
    return args["entries"]


def _offer(worker: bytes, args: Any) -> Offer:
    if not isinstance(args, dict):
        raise bad_request("claim takes an offer")
    try:
        labels = args.get("labels", [])
        if not (isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
            raise TypeError
        stage_ins = args.get("max_stage_ins")
        state, why = args.get("state", ""), args.get("why", "")
        if not (isinstance(state, str) and isinstance(why, str)):
            raise TypeError
        held = args.get("held", [])
        if not (isinstance(held, list) and len(held) <= MAX_HELD
                and all(isinstance(x, str) and len(x) <= 300 for x in held)):
            raise bad_request(f"held must be a list of at most {MAX_HELD} dataset names")
        offer = Offer(worker, str(args["site"]), int(args["cores"]), int(args["memory_mb"]),
                      int(args["disk_mb"]), frozenset(labels), int(args.get("max_jobs", 8)),
                      None if stage_ins is None else int(stage_ins), state, why[:MAX_WHY],
                      frozenset(held))
    except (KeyError, TypeError, ValueError):
        raise bad_request("offer needs site, cores, memory_mb, disk_mb, labels, max_jobs"
                          ) from None
    if not (0 <= offer.cores <= 1 << 20 and 0 <= offer.memory_mb and 0 <= offer.disk_mb
            and 1 <= offer.max_jobs <= 256):
        raise bad_request("offer out of range")
    if offer.max_stage_ins is not None and not 0 <= offer.max_stage_ins <= offer.max_jobs:
        raise bad_request("max_stage_ins must be 0 to max_jobs")
    if offer.state not in HEALTH_STATES:
        raise bad_request(f"state must be one of ok, congested, failing, got {offer.state!r}")
    return offer


def _failure(data: Any, node: bytes) -> Failure:
    if not (isinstance(data, dict) and isinstance(data.get("code"), str)
            and isinstance(data.get("diagnosis"), str)):
        raise bad_request("failure needs code and diagnosis")
    tail = data.get("stderr_tail", [])
    if not (isinstance(tail, list) and all(isinstance(x, str) for x in tail)):
        raise bad_request("bad stderr tail")
    ec, sg = data.get("exit_code"), data.get("signal")
    if not ((ec is None or type(ec) is int) and (sg is None or type(sg) is int)):
        raise bad_request("bad exit code or signal")
    return Failure(data["code"][:64], data["diagnosis"][:1000], ec, sg,
                   tuple(x[:1000] for x in tail[-20:]), node)
