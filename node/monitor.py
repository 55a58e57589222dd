"""The node's monitor: samples, short series, a down-sampled history, /metrics.

Every ``monitor.interval`` seconds the node samples itself (slots offered
and free, jobs running, load, free disk, the chunk store's use, jobs that
ended well or not since the last sample, the failure rate over the
classifier's window), keeps the last ``monitor.window`` samples of each in
memory, feeds its own bottleneck classifier (``steering.Classifier``), and
every ``monitor.history_every`` samples writes their mean to the state file
(``metrics`` table; rows older than ``monitor.history_days`` are deleted).

``/metrics`` serves the Prometheus text format over HTTP (Starlette on
Hypercorn's trio worker, inside the daemon's nursery) at
``monitor.metrics_listen`` — loopback by default: every number of ``gridnode
status`` as a gauge ``gridnode_<section>_<key>``, plus the latest samples as
``gridnode_sample_<name>`` and the node's health state.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from collections import Counter, deque
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import trio

from steering import ClaimPlan, Classifier, HealthParams, LinkBook, NodeView, claim

from .executor import ExecutorError, RunSpec
from .http import serve_http
from .logs import log
from .release import stuck_stage_ins

if TYPE_CHECKING:
    from .daemon import Node

logger = logging.getLogger("gridnode.monitor")

SAMPLES = ("slots_total", "slots_free", "jobs_running", "load", "disk_free_bytes",
           "store_used_bytes", "jobs_ok", "jobs_failed", "failure_rate", "pressure",
           "jobs_waiting", "queue_wait", "transfer_bytes_per_s")
HEALTH = ("ok", "congested", "failing")
LINK_RECENT_S = 600.0  # links with traffic this recent weigh on the claims


class Monitor:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.cfg = node.cfg.monitor
        self.series: dict[str, deque[tuple[float, float]]] = {
            name: deque(maxlen=self.cfg.window) for name in SAMPLES}
        self.health = Classifier(HealthParams(), time.time())
        self.broker = self.cfg.broker_params()
        self._cpu_bound = True  # the last pressure sample came from the CPU, not the disk
        self.links = LinkBook()  # the peers this node fetched chunks from
        self._pending: list[dict[str, float]] = []
        self.metrics_url: str | None = None
        self.changed = False  # the health state changed since the record was published
        self._seen = (0, 0)  # the runner's outcome counts at the last sample
        self._fetched = (0.0, 0)  # (time, bytes fetched) at the last sample
        self.counters: Counter[str] = Counter()

    def sample(self, now: float) -> dict[str, float]:
        ex = self.node.executor
        free_cores, _ = ex.free()
        load = os.getloadavg()[0] / (os.cpu_count() or 1)
        ok, failed = self.node.runner.outcomes["ok"], self.node.runner.outcomes["failed"]
        new_ok, new_failed = ok - self._seen[0], failed - self._seen[1]
        self._seen = (ok, failed)
        # Pressure on a node: its CPU oversubscribed (a load of 1 per core is busy, not
        # congested: it counts 0.5; 2 per core counts 1), or its disk filling.
        disk = shutil.disk_usage(self.node.datadir.root)
        used = 1 - disk.free / disk.total if disk.total else 0.0
        pressure = max(min(2.0, load / 2), used)
        self._cpu_bound = min(2.0, load / 2) >= used
        self.health.sample(now, pressure)
        waiting, wait = self.queue_wait(now)
        fetched = self.node.data.counters["bytes_fetched"]
        then, before = self._fetched
        self._fetched = (now, fetched)
        rate = (fetched - before) / (now - then) if then and now > then else 0.0
        return {"jobs_waiting": float(waiting), "queue_wait": round(wait, 3),
                "transfer_bytes_per_s": round(rate, 1), "slots_total": float(ex.cores),
                "slots_free": float(free_cores),
                "jobs_running": float(len(ex.running())), "load": round(load, 3),
                "disk_free_bytes": float(disk.free),
                "store_used_bytes": float(self.node.data.store.used_bytes),
                "jobs_ok": float(new_ok), "jobs_failed": float(new_failed),
                "failure_rate": self.health.failure_rate, "pressure": round(pressure, 3)}

    def queue_wait(self, now: float) -> tuple[int, float]:
        """(jobs waiting to be claimed among those this node's queue leads, their mean
        seconds since they were last activated)."""
        queue = self.node.queue
        ages = []
        for j in queue.match.job_ids():
            slot = queue.slots.get(j)
            rec = slot.record if slot is not None else None
            if rec is not None:
                since = next((e.time for e in reversed(rec.history) if e.state == "activated"),
                             rec.job.submitted)
                ages.append(max(0.0, now - since))
        return len(ages), (sum(ages) / len(ages) if ages else 0.0)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        async with trio.open_nursery() as nursery:
            if self.cfg.metrics_listen:  # "" turns /metrics off
                address = self.node.cfg.metrics_address(
                    self.node.bound[1] if self.node.bound else 0)
                url = await nursery.start(serve_http, self._metrics_app(), address, "metrics")
                self.metrics_url = f"{url}/metrics" if url else None
            task_status.started()
            next_probe = 0.0
            while True:
                await self.tick(time.time())
                if self.health.state == "failing" and trio.current_time() >= next_probe:
                    next_probe = trio.current_time() + self.cfg.probe_interval
                    nursery.start_soon(self.probe)
                await trio.sleep(self.cfg.interval)

    async def tick(self, now: float) -> None:
        before = self.health.state
        values = self.sample(now)
        for peer, was, state in self.links.sample(now):
            link = self.links.links[peer]
            log(logger, "link.changed", logging.WARNING if state != "ok" else logging.INFO,
                peer=peer, site=self.node.site_of(peer), state=state, was=was,
                reason=link.classifier.reason)
        for name, v in values.items():
            self.series[name].append((now, v))
        self._note_change(before, self.health.reason)
        self.release_stuck()
        self._pending.append(values)
        if len(self._pending) >= self.cfg.history_every:
            rows = [(now, name, sum(p[name] for p in self._pending) / len(self._pending))
                    for name in SAMPLES]
            self._pending = []
            await self.node.state.add_metrics(rows, now - self.cfg.history_days * 86400)

    def outcome(self, ok: bool) -> None:
        """A job ended here (the runner calls this at once)."""
        before = self.health.state
        self.health.outcome(time.time(), ok)
        self._note_change(before, self.health.reason + (
            "; it claims no jobs until its probes pass"
            if self.health.state == "failing" else ""))

    def _note_change(self, before: str, reason: str) -> bool:
        """Log a change of state and have the node record say it soon."""
        if self.health.state == before:
            return False
        self.changed = True
        log(logger, "health.changed", logging.WARNING if self.health.state != "ok"
            else logging.INFO, state=self.health.state, was=before, reason=reason)
        return True

    def transferred(self, stats: Any) -> None:
        """A chunk fetch ended (``replication.FetchStats``): what each holder gave."""
        now = time.time()
        for peer in set(stats.bytes_by_holder) | set(stats.failures):
            self.links.observe(now, peer, stats.bytes_by_holder.get(peer, 0), stats.seconds,
                               stats.failures.get(peer, 0))

    def view(self, free_cores: int) -> NodeView:
        """This node as the brokerage sees a node (steering.NodeView)."""
        cores = max(1, self.node.executor.cores)
        t = self.health.trend
        return NodeView(self.health.state, t.prediction, t.slope,
                        max(0, min(free_cores, cores, 64)), cores,
                        min(self.node.runner.staging, 1 << 20))

    def _links_view(self, view: NodeView) -> tuple[NodeView, str]:
        """An ok node whose CPU and disk are fine but most of whose links it read over
        lately crawl (its site's uplink, say) is congested where its stage-ins are
        concerned: (that view, why); else (``view``, "")."""
        if view.state != "ok":
            return view, ""
        used, hot, prediction, slope = self.links.inbound(time.time(), LINK_RECENT_S)
        if not hot or 2 * hot < used:
            return view, ""
        return (replace(view, state="congested", prediction=prediction, slope=slope),
                f"{hot} of the {used} links it read over lately are congested")

    def release_stuck(self) -> int:
        """Give back the stage-ins stuck behind this node's own bottleneck (rule c): its
        CPU or disk, or most of the links it reads over."""
        runner = self.node.runner
        if not runner.stage_ins:
            return 0
        here, links = self._links_view(self.view(self.node.worker.free()[0]))
        if here.state == "ok":
            return 0
        released = 0
        for job, why in stuck_stage_ins(
                runner.stage_ins, self.node.data.fetch_progress, trio.current_time(),
                here, self.broker, self.cfg.nominal_rate_mb_s * 1e6):
            if links:
                why += f" ({links})"
            if runner.release(job, why):
                released += 1
                self.counters["jobs_released"] += 1
                log(logger, "job.released", logging.WARNING, job=job, reason=why)
        return released

    def claim_plan(self, free_cores: int) -> ClaimPlan:
        """What this node claims for ``free_cores``: the brokerage's rule (b)
        (``steering.claim``) fed with its classifier.  ok: one job per free core;
        congested: of those, few with input datasets to stage in, and when the
        pressure is its CPU rather than its disk, at most half its free cores (the
        rule caps what loads the congested resource); failing: nothing (the
        monitor's probes let it back)."""
        view = self.view(free_cores)
        free, t = view.free_slots, self.health.trend
        c = claim(view, self.broker)
        jobs, why = c.jobs, {"ok": f"ok: one job per free core, {free} free",
                             "failing": "failing: no jobs until its probes pass"
                             }.get(view.state, "")
        if view.state == "congested":
            why = (f"congested (pressure predicted {t.prediction:.2f}): at most "
                   f"{c.stage_ins} stage-ins, {view.staging} staging now")
            if self._cpu_bound:
                jobs = min(jobs, max(1, free // 2)) if free else 0
                why += f"; its CPU is the pressure: at most {jobs} of {free} free cores"
        elif view.state == "ok":
            # Its CPU and disk are fine, but most links it reads over crawl: what loads
            # them, stage-ins, is capped as at a congested node.
            links_view, links = self._links_view(view)
            if links:
                c = claim(links_view, self.broker)
                why += (f"; {links}: at most {c.stage_ins} stage-ins, {view.staging} "
                        f"staging now")
        return ClaimPlan(jobs, min(c.stage_ins, jobs), view.state, why)

    async def probe(self) -> None:
        """A tiny job through the local executor, as a user's job would run; its
        outcome counts like one (passing probes end ``failing``)."""
        if not self.node.executor.can_run(1, 16):
            return  # its slots are busy with jobs that still run: probe next time
        probe_id = os.urandom(8).hex()
        self.counters["probes"] += 1
        try:
            result = await self.node.executor.run(RunSpec(
                job_id=probe_id, attempt=1, argv=("sh", "-c", "exit 0"), env={}, cores=1,
                memory_mb=16, walltime_s=30.0))
            ok, why = result.error is None, result.diagnosis or "passed"
        except ExecutorError as exc:
            ok, why = False, str(exc)
        finally:
            await trio.to_thread.run_sync(shutil.rmtree, self.node.executor.root / probe_id,
                                          True)
        before = self.health.state
        self.health.outcome(time.time(), ok)
        self.counters["probes_passed" if ok else "probes_failed"] += 1
        log(logger, "health.probe", logging.INFO if ok else logging.WARNING, ok=ok,
            state=self.health.state, reason=why)
        if self._note_change(before, f"{self.health.p.recover_after} probes in a row "
                                     f"passed; it claims jobs again"):
            self.node.worker.wake()

    def summary(self) -> dict[str, Any]:
        """What the node record carries of this node's health (overlay HEALTH_KEYS)."""
        last = self.latest()
        if not last:
            return {"state": self.health.state}
        return {"state": self.health.state, "since": int(self.health.since),
                "pressure": float(last["pressure"]), "failure_rate": float(last["failure_rate"]),
                "load": float(last["load"]), "slots_free": int(last["slots_free"]),
                "disk_free_gb": int(last["disk_free_bytes"] // 1e9)}

    def latest(self) -> dict[str, float]:
        return {name: s[-1][1] for name, s in self.series.items() if s}

    def statistics(self) -> dict[str, Any]:
        return {**self.latest(), "health": self.health.state,
                "health_reason": self.health.reason, "metrics_url": self.metrics_url,
                **self.counters}

    # -- /metrics ------------------------------------------------------------

    async def prometheus(self) -> str:
        status = await self.node._op_status()
        labels = f'node="{status["id"][:16]}",site="{_escape(status["site"])}"'
        lines: list[str] = []
        for name, value in _numbers(status, "gridnode"):
            lines += [f"# TYPE {name} gauge", f"{name}{{{labels}}} {value}"]
        for name, value in self.latest().items():
            lines += [f"# TYPE gridnode_sample_{name} gauge",
                      f"gridnode_sample_{name}{{{labels}}} {value}"]
        lines.append("# TYPE gridnode_health gauge")
        lines += [f'gridnode_health{{{labels},state="{s}"}} {int(self.health.state == s)}'
                  for s in HEALTH]
        return "\n".join(lines) + "\n"

    def _metrics_app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route

        async def metrics(request: Request) -> PlainTextResponse:
            return PlainTextResponse(await self.prometheus(),
                                     media_type="text/plain; version=0.0.4")

        return Starlette(routes=[Route("/metrics", metrics)])


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _numbers(obj: Any, prefix: str) -> list[tuple[str, float]]:
    """The numeric leaves of a status dict, named after their path."""
    out: list[tuple[str, float]] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            key = "".join(c if c.isalnum() else "_" for c in str(k))
            out += _numbers(v, f"{prefix}_{key}")
    elif isinstance(obj, bool):
        out.append((prefix, float(obj)))
    elif isinstance(obj, int | float) and math.isfinite(obj):
        out.append((prefix, obj))
    return out
