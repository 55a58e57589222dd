"""What users ask any node about jobs: submit, get, list, cancel.

Any node answers (G4): it finds a job's home set from the queue nodes it
knows, asks its members, and takes the newest record among the answers.
Submissions are checked here (signature, certificate, spec) and handed to
the first live member of each job's home set, which acknowledges only
after a majority of the home set stored the job.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import trio

from overlay import BadMessage, CallContext, Method, RpcError, bad_request

from .homeset import home_set
from .job import SignedJob
from .queue import MAX_BATCH, QueueNode, log
from .record import JobRecord, within_budget

logger = logging.getLogger("gridnode.jobs")


@dataclass
class JobService:
    queue: QueueNode
    revoked: Any  # () -> frozenset[bytes]

    @property
    def membership(self) -> Any:
        return self.queue.membership

    def methods(self) -> dict[str, Method]:
        return {
            "job.submit": Method(self._submit, access="user"),
            "job.get": Method(self._get),
            "job.list": Method(self._list),
            "job.cancel": Method(self._cancel, access="user"),
        }

    # -- submit ---------------------------------------------------------------

    async def _submit(self, ctx: CallContext, args: Any) -> dict[str, Any]:
        if not (isinstance(args, dict) and isinstance(args.get("jobs"), list)
                and 0 < len(args["jobs"]) <= MAX_BATCH):
            raise bad_request(f"submit takes {{jobs: [signed job...]}} with 1-{MAX_BATCH} jobs")
        jobs = []
        for raw in args["jobs"]:
            if not isinstance(raw, bytes):
                raise bad_request("a job must be the signed bytes")
            try:
                job = SignedJob.from_bytes_untrusted(raw, self.queue.grid, now=time.time(),
                                                     revoked=self.revoked())
            except BadMessage as exc:
                raise bad_request(f"job refused: {exc}") from None
            if job.user_id != ctx.peer_id:
                raise RpcError("forbidden", "a job must be signed by the user who submits it")
            jobs.append(job)
        queues = list(self.membership.queue_nodes())
        if not queues:
            raise RpcError("unavailable", "no queue node is known yet; try again shortly")
        homes = {j.job_id: home_set(j.job_id, queues, self.queue.config.r) for j in jobs}
        results: dict[bytes, str] = {}
        pending = list(jobs)
        for round_ in range(self.queue.config.r):
            if not pending:
                break
            by_target: dict[bytes, list[SignedJob]] = {}
            for j in pending:
                home = homes[j.job_id]
                live = [m for m in home if not self.membership.is_suspect(m)] or list(home)
                by_target.setdefault(live[round_ % len(live)], []).append(j)
            async with trio.open_nursery() as nursery:
                for target, batch in by_target.items():
                    nursery.start_soon(self._create_on, target, batch, homes, results)
            pending = [j for j in pending if results.get(j.job_id) != "ok"]
        ok = [j for j in jobs if results.get(j.job_id) == "ok"]
        log("job.submitted", count=len(ok), refused=len(jobs) - len(ok),
            user=ctx.peer.name, reason="a user submitted through this node")
        return {"ids": [j.job_id for j in ok],
                "errors": {j.job_id: results.get(j.job_id, "not stored")
                           for j in jobs if results.get(j.job_id) != "ok"}}

    async def _create_on(self, target: bytes, batch: list[SignedJob],
                         homes: dict[bytes, tuple[bytes, ...]], results: dict[bytes, str]
                         ) -> None:
        try:
            if target == self.membership.me:
                answer = await self.queue.create(batch, homes)
            else:
                answer = await self.queue._call(target, "queue.create", {
                    "jobs": [[j.raw, list(homes[j.job_id])] for j in batch]})
        except RpcError as exc:
            for j in batch:
                results[j.job_id] = str(exc)
            return
        if isinstance(answer, dict):
            for j in batch:
                v = answer.get(j.job_id)
                results[j.job_id] = v if isinstance(v, str) else "no answer"

    # -- get and list ----------------------------------------------------------

    async def find(self, job_id: bytes) -> JobRecord | None:
        """The newest record of a job among the queue nodes that may hold it."""
        queues = list(self.membership.queue_nodes())
        candidates = home_set(job_id, queues, 2 * self.queue.config.r)
        found: list[tuple[int, int, JobRecord]] = []

        async def ask(member: bytes) -> None:
            if member == self.membership.me:
                slot = self.queue.slots.get(job_id)
                if slot is not None and slot.record is not None:
                    found.append((slot.ballot, slot.record.version, slot.record))
                return
            try:
                answer = await self.queue._call(member, "queue.get", {"job": job_id})
            except RpcError:
                return
            rec = self._record(answer)
            if rec is not None:
                found.append(rec)

        async with trio.open_nursery() as nursery:
            for m in candidates:
                nursery.start_soon(ask, m)
        if not found:
            return None
        return max(found, key=lambda f: (f[0], f[1]))[2]

    def _record(self, answer: Any) -> tuple[int, int, JobRecord] | None:
        if not (isinstance(answer, list) and len(answer) == 2 and type(answer[0]) is int):
            return None
        try:
            rec = JobRecord.from_wire_untrusted(answer[1], self.queue.grid)
        except BadMessage as exc:
            log("jobs.bad_record", logging.WARNING, reason=str(exc))
            return None
        return answer[0], rec.version, rec

    async def _find_arg(self, args: Any, what: str) -> JobRecord:
        """The record of ``{job: id}``; bad_request or not_found otherwise."""
        if not (isinstance(args, dict) and isinstance(args.get("job"), bytes)
                and len(args["job"]) == 20):
            raise bad_request(f"{what} takes {{job: 20-byte id}}")
        rec = await self.find(args["job"])
        if rec is None:
            raise RpcError("not_found", f"no job {args['job'].hex()} in this grid")
        return rec

    async def _get(self, ctx: CallContext, args: Any) -> Any:
        return (await self._find_arg(args, "get")).to_wire()

    async def list_jobs(self, *, state: str | None = None, user: Any = None,
                   task: str | None = None, limit: int = 1000) -> list[JobRecord]:
        query = {"state": state, "user": user, "task": task, "limit": limit}
        best: dict[bytes, tuple[int, int, JobRecord]] = {}

        async def ask(member: bytes) -> None:
            if member == self.membership.me:
                answer = [[b, r.to_wire()] for b, r in self.queue.list_local(
                    state=state, user=user, task=task, limit=limit)]
            else:
                try:
                    answer = await self.queue._call(member, "queue.list", query)
                except RpcError:
                    return
            if not isinstance(answer, list):
                return
            for item in answer:
                got = self._record(item)
                if got is None:
                    continue
                j = got[2].job_id
                if j not in best or best[j][:2] < got[:2]:
                    best[j] = got

        async with trio.open_nursery() as nursery:
            for m in self.membership.queue_nodes():
                nursery.start_soon(ask, m)
        records = [b[2] for b in best.values()]
        records.sort(key=lambda r: (r.job.submitted, r.job.spec.index, r.job_id))
        return records[:limit]

    async def _list(self, ctx: CallContext, args: Any) -> list[Any]:
        if not isinstance(args, dict):
            raise bad_request("list takes {state, user, task, limit}")
        limit = args.get("limit", 1000)
        if not (type(limit) is int and 0 < limit <= 100_000):
            raise bad_request("limit must be 1-100000")
        state, task = args.get("state"), args.get("task")
        user = args.get("user")
        for name, v in (("state", state), ("task", task)):
            if v is not None and not isinstance(v, str):
                raise bad_request(f"{name} must be a string")
        if user is not None and not isinstance(user, str | bytes):
            raise bad_request("user must be a name or an id")
        found = await self.list_jobs(state=state, user=user, task=task, limit=limit)
        return [r.to_wire() for r in within_budget(found)]

    # -- cancel -----------------------------------------------------------------

    async def _cancel(self, ctx: CallContext, args: Any) -> str:
        rec = await self._find_arg(args, "cancel")
        admin = ctx.peer.kind == "user" and "admin" in ctx.peer.roles
        if rec.job.user_id != ctx.peer_id and not admin:
            raise RpcError("forbidden", f"job {rec.job.hex_id} belongs to {rec.job.user.name}; "
                           f"only its user or a grid admin may cancel it")
        return await self.cancel(rec, f"{ctx.peer.name} ({'admin' if admin else 'owner'})")

    async def cancel(self, rec: JobRecord, who: str) -> str:
        """Have the job's primary cancel it (the caller checked who may)."""
        if rec.final:
            return rec.state
        for member in rec.home:
            try:
                if member == self.membership.me:
                    answer = await self.queue.cancel(rec.job_id, who)
                else:
                    answer = await self.queue._call(member, "queue.cancel",
                                                    {"job": rec.job_id, "who": who})
            except RpcError:
                continue
            if answer != "not_primary":
                return str(answer)
        raise RpcError("unavailable", "no primary of the job's home set answered; try again")
