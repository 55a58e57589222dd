"""What the site admin can do from the console; each action is logged with who and why.

* drain / resume the node, set the slots it offers (``node.site``);
* cancel a job that runs on this node: its primary cancels it for good, as a
  grid admin's cancel would, and the worker kills its processes. A site admin
  owns the machine, not the grid's jobs: a job that runs elsewhere is refused
  (its user or a grid admin cancels it with ``gridnode cancel``);
* repair a dataset: ask storage nodes to pull copies until its minimum of
  replicas is held again, now rather than at the custodian's next round.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from overlay import RpcError

from ..logs import log
from ..site import SiteError, check_reason
from .views import BadParameter, NotFound, find_job, parse_dataset

if TYPE_CHECKING:
    from ..daemon import Node

logger = logging.getLogger("gridnode.console")


class Refused(PermissionError):
    """The console may not do this (HTTP 403); nothing changed."""


async def drain(node: Node, who: str, reason: Any) -> dict[str, Any]:
    view = await node.site.set_drain(True, who, _reason(reason))
    return {**view, "done": f"drained: {view['drain_reason']}; running jobs finish"}


async def resume(node: Node, who: str, reason: Any) -> dict[str, Any]:
    view = await node.site.set_drain(False, who, _reason(reason))
    return {**view, "done": "resumed: the node claims jobs again"}


async def set_slots(node: Node, who: str, cores: Any, reason: Any) -> dict[str, Any]:
    if isinstance(cores, str) and cores.strip().isdigit():
        cores = int(cores)
    try:
        view = await node.site.set_offered_cores(cores, who, _reason(reason))
    except SiteError as exc:
        raise BadParameter(str(exc)) from None
    return {**view, "done": f"the node offers {view['offered_cores']} of "
                            f"{view['configured_cores']} cores"}


async def cancel_job(node: Node, who: str, ident: str, reason: Any) -> dict[str, Any]:
    why = _reason(reason)
    rec = await find_job(node, ident)
    job_id = rec.job_id
    if rec.final:
        return {"job": job_id.hex(), "state": rec.state,
                "done": f"job {job_id.hex()[:12]} had already ended: {rec.state}"}
    if job_id not in node.worker.held:
        raise Refused(f"job {job_id.hex()} does not run on this node; its user or a grid "
                      f"admin may cancel it (gridnode cancel)")
    state = await node.job_service.cancel(
        rec, f"site admin of {node.cert.name} ({who}): {why}"[:200])
    log(logger, "console.cancel", logging.WARNING, job=job_id, who=who, state=state,
        reason=why)
    return {"job": job_id.hex(), "state": state, "done": f"job {job_id.hex()[:12]}: {state}"}


async def repair(node: Node, who: str, text: str, reason: Any) -> dict[str, Any]:
    why = _reason(reason)
    name = parse_dataset(text)
    try:
        rec = await node.data.record(name)
    except RpcError as exc:
        if exc.code == "not_found":
            raise NotFound(str(exc)) from None
        raise
    before = len(await node.data.holders(rec.name))
    log(logger, "console.repair", who=who, dataset=name, holders=before,
        minimum=rec.policy.min_replicas, reason=why)
    added = await node.data.replicate_to_min(rec)
    return {"dataset": str(name), "holders_before": before, "requested": added,
            "minimum": rec.policy.min_replicas,
            "done": f"{name}: {before} holders, {added} more copies asked for "
                    f"(minimum {rec.policy.min_replicas})"}


def _reason(reason: Any) -> str:
    try:
        return check_reason(reason)
    except SiteError as exc:
        raise BadParameter(str(exc)) from None
