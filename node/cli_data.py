"""The dataset commands: put, get, datasets, ls, replicas."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from replication import DatasetRecord, ReplicationPolicy

from .cli_common import print_result, remote
from .errors import UsageError
from .outputs import OutputView


def add_parsers(sub: Any, parents: list[argparse.ArgumentParser],
                as_json: argparse.ArgumentParser) -> None:
    q = sub.add_parser("put", parents=parents + [as_json],
                       help="put files into a dataset (SCOPE:NAME or NAME)")
    q.add_argument("dataset")
    q.add_argument("paths", nargs="+", type=Path, metavar="FILE|DIR")
    q.add_argument("--close", action="store_true", help="close the dataset: no more files")
    q.add_argument("--min-replicas", type=int, help="replicas to keep at least (default 2)")
    q.add_argument("--max-replicas", type=int, help="replicas to keep at most (default 5)")
    q.add_argument("--quiet", action="store_true", help="no progress bar")

    q = sub.add_parser("get", parents=parents + [as_json],
                       help="fetch a dataset (or DATASET/FILE) into --out")
    q.add_argument("dataset", metavar="DATASET[/FILE]")
    q.add_argument("--out", type=Path, default=Path("."), help="directory (default: here)")
    q.add_argument("--quiet", action="store_true", help="no progress bar")

    q = sub.add_parser("datasets", parents=parents + [as_json], help="list datasets")
    q.add_argument("--scope", help="only this scope")
    q.add_argument("--limit", type=int, default=1000)

    q = sub.add_parser("ls", parents=parents + [as_json], help="files of a dataset")
    q.add_argument("dataset")

    q = sub.add_parser("replicas", parents=parents + [as_json],
                       help="which nodes hold a dataset")
    q.add_argument("dataset")
    q.add_argument("--explain", action="store_true",
                   help="the custodian's view: access trend, target, last decisions")


class Bar:
    """A one-line progress bar on stderr (only on a terminal, unless asked)."""

    def __init__(self, verb: str, quiet: bool) -> None:
        self.verb = verb
        self.show = not quiet and sys.stderr.isatty()
        self.t0 = time.monotonic()
        self.last = 0.0

    def __call__(self, what: str, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.show or (now - self.last < 0.1 and done < total):
            return
        self.last = now
        frac = done / total if total else 1.0
        rate = done / max(now - self.t0, 1e-6) / 1e6
        bar = "#" * int(30 * frac)
        sys.stderr.write(f"\r{self.verb} [{bar:<30}] {100 * frac:5.1f}% "
                         f"{done / 1e6:.1f}/{total / 1e6:.1f} MB {rate:.1f} MB/s {what[:30]:<30}")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def dataset_view(rec: DatasetRecord | OutputView) -> dict[str, Any]:
    owner = rec.owner_name if isinstance(rec, OutputView) else rec.owner.name
    return {"name": str(rec.name), "owner": owner, "version": rec.version,
            "closed": rec.closed, "files": len(rec.files), "bytes": rec.size,
            "created": rec.created, "min_replicas": rec.policy.min_replicas,
            "max_replicas": rec.policy.max_replicas}


def cmd_put(args: argparse.Namespace) -> int:
    policy = None
    if args.min_replicas is not None or args.max_replicas is not None:
        try:
            policy = ReplicationPolicy(args.min_replicas or 2, args.max_replicas or 5)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    bar = Bar("put", args.quiet or args.json)
    rec = remote(args, lambda c: c.put(args.dataset, args.paths, close=args.close,
                                       policy=policy, progress=bar))
    view = dataset_view(rec)
    print_result(view, args.json, f"{view['name']} version {view['version']}: "
                 f"{view['files']} files, {view['bytes']} bytes"
                 + (", closed" if rec.closed else ""))
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    bar = Bar("get", args.quiet or args.json)
    paths = remote(args, lambda c: c.get(args.dataset, args.out, progress=bar))
    print_result([str(p) for p in paths], args.json, "\n".join(str(p) for p in paths))
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 10_000:
        raise UsageError("--limit must be from 1 to 10000")
    records = remote(args, lambda c: c.datasets(scope=args.scope, limit=args.limit))
    views = [dataset_view(r) for r in records]
    lines = [f"{'DATASET':<40} {'OWNER':<12} {'VER':>3} {'FILES':>6} {'BYTES':>14}  CLOSED"]
    lines += [f"{v['name']:<40} {v['owner'][:12]:<12} {v['version']:>3} {v['files']:>6} "
              f"{v['bytes']:>14}  {'yes' if v['closed'] else 'no'}" for v in views]
    print_result(views, args.json, "\n".join(lines))
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    rec = remote(args, lambda c: c.dataset(args.dataset))
    files = [{"name": m.name, "size": m.size, "hash": m.hash.hex(), "chunks": len(m.chunks)}
             for m in rec.files]
    lines = [f"{f['size']:>14}  {f['hash'][:16]}  {f['name']}" for f in files]
    print_result({**dataset_view(rec), "files": files}, args.json,
                 "\n".join(lines) or f"{rec.name}: no files")
    return 0


def cmd_replicas(args: argparse.Namespace) -> int:
    if args.explain:
        info = remote(args, lambda c: c.explain_replicas(args.dataset))
        print_result(info, args.json, "\n".join(explain_lines(info)))
        return 0
    info = remote(args, lambda c: c.replicas(args.dataset))
    lines = [f"{info['name']} version {info['version']}: {len(info['holders'])} holders "
             f"(policy {info['min_replicas']}-{info['max_replicas']})"]
    lines += [f"  {h['id']}  {h['site']:<16} version {h['version']}"
              + ("" if h["complete"] else " (older)") for h in info["holders"]]
    print_result(info, args.json, "\n".join(lines))
    return 0



def explain_lines(info: dict[str, Any]) -> list[str]:
    t = info["trend"]
    lines = [f"{info['name']}: custodian {info['custodian'][:12]} ({info['site']})",
             f"  reads per {info['bucket_seconds']:g}s bucket, oldest first: "
             + " ".join(f"{x:g}" for x in t["series"]),
             f"  level {t['level']:.2f}  slope {t['slope']:+.2f}  "
             f"prediction {t['prediction']:.2f} reads/bucket",
             "  reads in the window by site: " + (", ".join(f"{s} {w:g}" for s, w in sorted(
                 info["by_site"].items(), key=lambda x: -x[1])) or "none"),
             f"  target {info['target']}: {info['reason']}",
             f"  holders ({len(info['holders'])}):"]
    lines += [f"    {h['id'][:12]}  {h['site']:<16}"
              + (" counted" if h["counted"] else "")
              + (" leaving" if h["leaving"] else "") for h in info["holders"]]
    lines.append(f"  last decisions ({len(info['decisions'])}):")
    lines += [f"    {time.strftime('%H:%M:%S', time.localtime(d['t']))}  {d['kind']:<13} "
              f"{d['node'][:12]} ({d['site']}): {d['reason']}" for d in info["decisions"]]
    return lines
