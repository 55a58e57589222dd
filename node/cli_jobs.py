"""The job commands: submit, jobs, status JOB, explain, logs, wait, cancel."""

from __future__ import annotations

import argparse
import os
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import trio

from overlay import RpcError
from steering import FINAL, JobRecord, JobSpec, SpecError, parse_job_id

from .cli_common import print_result, remote
from .client import Client
from .errors import UsageError, UserError
from .jobs import record_view

# Exit code of `gridnode wait` when its --timeout passed first.
WAIT_TIMEOUT_EXIT = 4
MAX_COUNT = 100_000


def add_parsers(sub: Any, parents: list[argparse.ArgumentParser],
                as_json: argparse.ArgumentParser) -> None:
    q = sub.add_parser("submit", parents=parents + [as_json],
                       help="submit a job (-- CMD ARG...) or a task file (--file)")
    q.add_argument("--file", type=Path, help="a task file (TOML) of many jobs")
    q.add_argument("--name", help="job name")
    q.add_argument("--cores", type=int)
    q.add_argument("--memory", type=int, dest="memory_mb", metavar="MB")
    q.add_argument("--disk", type=int, dest="disk_mb", metavar="MB")
    q.add_argument("--walltime", type=int, dest="walltime_s", metavar="S")
    q.add_argument("--priority", type=int)
    q.add_argument("--attempts", type=int, dest="max_attempts", metavar="K")
    q.add_argument("--count", type=int, default=1, help="N jobs; {index} in argv is replaced")
    q.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    q.add_argument("--site", action="append", dest="sites", metavar="SITE")
    q.add_argument("--label", action="append", dest="labels", metavar="LABEL")
    q.add_argument("--input", action="append", dest="inputs", metavar="DATASET")
    q.add_argument("--output", action="append", dest="outputs", metavar="PATTERN")
    q.add_argument("cmd_argv", nargs=argparse.REMAINDER, metavar="-- CMD ARG...",
                   help="the command to run and its arguments")

    q = sub.add_parser("jobs", parents=parents + [as_json], help="list jobs")
    q.add_argument("--state", help="only jobs in this state")
    q.add_argument("--user", help="only jobs of this user (name)")
    q.add_argument("--task", help="only jobs of this task (id)")
    q.add_argument("--limit", type=int, default=1000)

    q = sub.add_parser("explain", parents=parents + [as_json],
                       help="where a job went and why, attempt by attempt")
    q.add_argument("job")

    q = sub.add_parser("logs", parents=parents, help="a job's stdout (or --stderr)")
    q.add_argument("job")
    q.add_argument("-f", "--follow", action="store_true", help="keep following the output")
    q.add_argument("--stderr", action="store_true")
    q.add_argument("--attempt", type=int, default=0, help="which attempt (default: latest)")

    q = sub.add_parser("wait", parents=parents + [as_json],
                       help="wait until a job or task has ended; exit 0 if all finished")
    q.add_argument("job", help="a job or task id")
    q.add_argument("--timeout", type=float, help=f"give up after S seconds "
                   f"(exit {WAIT_TIMEOUT_EXIT})")

    q = sub.add_parser("cancel", parents=parents + [as_json], help="cancel a job or task")
    q.add_argument("job", help="a job or task id")


# -- specs ------------------------------------------------------------------------

SPEC_FLAGS = ("name", "cores", "memory_mb", "disk_mb", "walltime_s", "priority",
              "max_attempts", "sites", "labels", "inputs", "outputs")


def _flag_spec(args: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = {k: getattr(args, k) for k in SPEC_FLAGS
                            if getattr(args, k) is not None}
    env = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--env {item!r} is not NAME=VALUE")
        env[name] = value
    if env:
        spec["env"] = env
    return spec


def _expand(base: dict[str, Any], count: int, task_id: str, where: str) -> list[JobSpec]:
    if not 1 <= count <= MAX_COUNT:
        raise UsageError(f"{where}count must be from 1 to {MAX_COUNT}")
    specs = []
    for i in range(count):
        data = dict(base)
        if count > 1 or task_id:
            data["task_id"] = task_id
            data["index"] = i
        if "argv" in data and isinstance(data["argv"], list):
            data["argv"] = [a.replace("{index}", str(i)) if isinstance(a, str) else a
                            for a in data["argv"]]
        try:
            specs.append(JobSpec.from_mapping(data))
        except SpecError as exc:
            raise UserError(f"{where}{exc}") from None
    return specs


def task_file_specs(path: Path) -> tuple[list[JobSpec], str]:
    """A task file: top-level ``name``, ``[defaults]``, and ``[[job]]`` entries
    (each may have ``count``).  Returns the specs and the task id."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"task file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"task file {path} is not valid TOML: {exc}") from None
    unknown = set(data) - {"name", "defaults", "job"}
    if unknown:
        raise UserError(f"task file {path}: unknown key {sorted(unknown)[0]!r} "
                        f"(known: name, defaults, job)")
    defaults = data.get("defaults", {})
    jobs = data.get("job")
    if not isinstance(defaults, dict):
        raise UserError(f"task file {path}: [defaults] must be a table")
    if not (isinstance(jobs, list) and jobs and all(isinstance(j, dict) for j in jobs)):
        raise UserError(f"task file {path}: needs at least one [[job]] table")
    task_id = os.urandom(20).hex()
    specs: list[JobSpec] = []
    for n, entry in enumerate(jobs, start=1):
        entry = dict(entry)
        count = entry.pop("count", 1)
        if type(count) is not int:
            raise UserError(f"task file {path}, job {n}: count must be an integer")
        base = {**defaults, **entry}
        if "name" not in base and isinstance(data.get("name"), str):
            base["name"] = data["name"]
        base.pop("task_id", None)
        specs += _expand(base, count, task_id, f"task file {path}, job {n}: ")
        if len(specs) > MAX_COUNT:
            raise UserError(f"task file {path} makes more than {MAX_COUNT} jobs")
    for i, spec in enumerate(specs):  # one index sequence over the whole task
        specs[i] = JobSpec.from_mapping({**spec.to_mapping(), "index": i})
    return specs, task_id


def cmd_submit(args: argparse.Namespace) -> int:
    command = list(args.cmd_argv)
    if command and command[0] == "--":
        command = command[1:]
    if args.file is not None:
        if command:
            raise UsageError("give either --file or -- CMD ARG..., not both")
        specs, task_id = task_file_specs(args.file)
    else:
        if not command:
            raise UsageError("say what to run: gridnode submit [OPTIONS] -- CMD ARG...")
        task_id = os.urandom(20).hex() if args.count > 1 else ""
        specs = _expand({**_flag_spec(args), "argv": command}, args.count, task_id, "")

    async def go(client: Client) -> list[bytes]:
        return await client.submit(specs)

    ids = remote(args, go)
    result = {"task": task_id or None, "jobs": [i.hex() for i in ids]}
    text = task_id if task_id else ids[0].hex()
    if task_id:
        print(f"submitted {len(ids)} jobs as task:", file=sys.stderr)
    print_result(result, args.json, text)
    return 0


# -- reading -----------------------------------------------------------------------


def _job_arg(text: str) -> bytes:
    try:
        return parse_job_id(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def job_status(args: argparse.Namespace) -> int:
    job_id = _job_arg(args.job)
    rec = remote(args, lambda c: c.job(job_id))
    v = record_view(rec)
    lines = [f"job      {v['id']}{'  (' + v['name'] + ')' if v['name'] else ''}",
             f"user     {v['user']}",
             f"state    {v['state']} (attempt {v['attempt']} of {v['max_attempts']})",
             f"command  {' '.join(v['argv'])}"]
    if v["task"]:
        lines.append(f"task     {v['task']} #{v['index']}")
    if v["failure"]:
        f = v["failure"]
        lines.append(f"failure  {f['code']}: {f['diagnosis']}")
        lines += [f"  stderr | {line}" for line in f["stderr_tail"][-5:]]
    lines.append("history")
    lines += [f"  {_when(e['time'])}  {e['state']:<12} {e['reason']}"
              + (f"  [{e['node'][:12]}]" if e["node"] else "") for e in v["history"]]
    print_result(v, args.json, "\n".join(lines))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from .explain import explain_text

    job_id = _job_arg(args.job)
    view = remote(args, lambda c: c.explain(job_id))
    print_result(view, args.json, explain_text(view))
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 100_000:
        raise UsageError("--limit must be from 1 to 100000")
    records = remote(args, lambda c: c.jobs(state=args.state, user=args.user,
                                             task=args.task, limit=args.limit))
    views = [record_view(r) for r in records]
    lines = [f"{'ID':<40}  {'STATE':<12} {'USER':<12} {'ATT':>3}  NAME/COMMAND"]
    lines += [f"{v['id']:<40}  {v['state']:<12} {v['user'][:12]:<12} {v['attempt']:>3}  "
              f"{v['name'] or ' '.join(v['argv'])[:40]}" for v in views]
    print_result(views, args.json, "\n".join(lines))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    job_id = _job_arg(args.job)
    out = sys.stdout.buffer

    async def go(client: Client) -> None:
        async with client.logs(job_id, stream="stderr" if args.stderr else "stdout",
                               follow=args.follow, attempt=args.attempt) as chunks:
            async for chunk in chunks:
                out.write(chunk)
                out.flush()

    remote(args, go)
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    ident = _job_arg(args.job)
    if args.timeout is not None and args.timeout <= 0:
        raise UsageError("--timeout must be positive")

    async def go(client: Client) -> list[JobRecord] | None:
        with trio.move_on_after(args.timeout if args.timeout else float("inf")):
            return await client.wait(ident)
        return None

    records = remote(args, go)
    if records is None:
        print(f"gridnode: error: {args.job} did not end within {args.timeout:g} s",
              file=sys.stderr)
        return WAIT_TIMEOUT_EXIT
    counts: dict[str, int] = {}
    for r in records:
        counts[r.state] = counts.get(r.state, 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    print_result({"states": counts, "jobs": [record_view(r) for r in records]}, args.json,
                 summary)
    return 0 if set(counts) == {"finished"} else 1


def cmd_cancel(args: argparse.Namespace) -> int:
    ident = _job_arg(args.job)

    async def go(client: Client) -> dict[str, str]:
        out = {}
        for rec in await client.resolve(ident):
            if rec.state in FINAL:
                out[rec.job.hex_id] = rec.state
                continue
            try:
                out[rec.job.hex_id] = await client.cancel(rec.job_id)
            except RpcError as exc:
                if len(out) == 0 and exc.code == "forbidden":
                    raise
                out[rec.job.hex_id] = f"error: {exc}"
        return out

    result = remote(args, go)
    lines = [f"{k}  {v}" for k, v in result.items()]
    print_result(result, args.json, "\n".join(lines))
    return 0 if all(v in ("cancelled", *FINAL) for v in result.values()) else 1
