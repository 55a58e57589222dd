"""The ``gridnode`` command line: ``main(argv) -> int``, errors mapped in one place."""

from __future__ import annotations

import argparse
import getpass
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import trio

from overlay import (
    ROLES,
    USER_ROLES,
    BadMessage,
    Certificate,
    GridInfo,
    IdentityError,
    JoinRequest,
    KeyPair,
    RevocationList,
    write_key,
)

from .admin import admin_call
from .cli_common import Parser, parse_node_id, print_result, remote
from .cli_data import add_parsers as add_data_parsers
from .cli_data import cmd_datasets, cmd_get, cmd_ls, cmd_put, cmd_replicas
from .cli_jobs import add_parsers as add_job_parsers
from .cli_jobs import (
    cmd_cancel,
    cmd_explain,
    cmd_jobs,
    cmd_logs,
    cmd_submit,
    cmd_wait,
    job_status,
)
from .client import Client
from .config import Config, load_config, render_config
from .datadir import DataDir, default_data_dir, read_grid_info, read_node_cert, write_atomic
from .errors import UsageError, UserError, first_user_error
from .logs import setup_logging
from .userdir import GridMembership, UserDir, default_user_dir, read_user_cert

DAY = 86400
MAX_DAYS = 100 * 366


def _roles(text: str) -> tuple[str, ...]:
    roles = tuple(r.strip() for r in text.split(",") if r.strip())
    for r in roles:
        if r not in ROLES:
            raise argparse.ArgumentTypeError(f"unknown role {r!r} (known: {','.join(ROLES)})")
    if len(set(roles)) != len(roles):
        raise argparse.ArgumentTypeError(f"roles {text!r} repeat a role")
    return roles


def _check_name(name: str, what: str) -> str:
    """Certificates carry 1-128 printable characters; refuse others before any write."""
    if not (0 < len(name) <= 128 and name.isprintable()):
        raise UsageError(f"{what} {name!r} must be 1-128 printable characters")
    return name


def _parser() -> argparse.ArgumentParser:
    common = Parser(add_help=False)
    common.add_argument("--data-dir", type=Path, default=None,
                        help="node data dir (default: $GRIDNODE_DATA_DIR, "
                        "else ~/.local/share/gridnode)")
    as_json = Parser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON")

    p = Parser(prog="gridnode", description="A peer-to-peer grid node.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    user_dir = Parser(add_help=False)
    user_dir.add_argument("--user-dir", type=Path, default=None,
                          help="user keys and certs (default: $GRIDNODE_USER_DIR, "
                          "else ~/.config/gridnode)")

    q = sub.add_parser("init", parents=[common, user_dir],
                       help="create a node (and a grid with its admin user, without --grid)")
    q.add_argument("--grid", type=Path, help="grid.info of the grid to join")
    q.add_argument("--name", help="name of a new grid (default: local-grid)")
    q.add_argument("--site", help="site name for this node (default: the host name)")
    q.add_argument("--roles", type=_roles,
                   help=f"comma-separated roles (default: {','.join(ROLES)})")
    q.add_argument("--listen", help="HOST:PORT for config.toml (default 127.0.0.1:7400)")
    q.add_argument("--bootstrap", action="append", help="HOST:PORT of a grid node (repeatable)")

    q = sub.add_parser("run", parents=[common], help="run the daemon")
    q.add_argument("--listen", help="HOST:PORT to listen on")
    q.add_argument("--bootstrap", action="append", help="HOST:PORT of a grid node (repeatable)")
    q.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    q.add_argument("--config", type=Path, help="config file (default: DATA_DIR/config.toml)")

    reach = Parser(add_help=False, parents=[user_dir])
    reach.add_argument("--via", metavar="HOST:PORT",
                       help="reach this node over the network (default: the node of --data-dir)")
    reach.add_argument("--grid", dest="grid_select", metavar="GRID",
                       help="which grid of the user dir (id prefix or name)")

    q = sub.add_parser("status", parents=[common, as_json, reach],
                       help="show a node's status, or a job's (with JOB)")
    q.add_argument("job", nargs="?", help="a job id: show that job instead")
    sub.add_parser("peers", parents=[common, as_json, reach],
                   help="list the grid nodes a node knows")
    sub.add_parser("health", parents=[common, as_json, reach],
                   help="every known node's state (ok, congested, failing) and why")
    q = sub.add_parser("ping", parents=[common, as_json, reach],
                       help="round trip to a node, or through it to NODE_ID")
    q.add_argument("node_id", nargs="?", help="40 hex digits: ping this node through --via")
    q.add_argument("--count", type=int, default=1, help="number of pings (default 1)")
    sub.add_parser("whoami", parents=[common, as_json, reach],
                   help="who the node sees you as, and what you may do")

    q = sub.add_parser("console", parents=[common, as_json],
                       help="print the admin console's login link (of the node of --data-dir)")
    q.add_argument("--open", action="store_true", help="also open it in a web browser")

    add_job_parsers(sub, [common, reach], as_json)
    add_data_parsers(sub, [common, reach], as_json)

    u = sub.add_parser("user", help="user keys and certificates").add_subparsers(
        dest="user_command", required=True, parser_class=Parser)
    q = u.add_parser("init", parents=[user_dir], help="make a user key and a join request")
    q.add_argument("--grid", type=Path, required=True, help="grid.info of the grid")
    q.add_argument("--name", help="user name (default: the login name)")
    q.add_argument("--admin", action="store_true", help="ask for the admin role")
    q = u.add_parser("install", parents=[user_dir], help="install a user certificate")
    q.add_argument("cert", type=Path)
    u.add_parser("list", parents=[user_dir, as_json], help="list the grids of the user dir")

    g = sub.add_parser("grid", help="grid authority commands").add_subparsers(
        dest="grid_command", required=True, parser_class=Parser)
    q = g.add_parser("admit", parents=[common], help="sign a node's or user's join request")
    q.add_argument("request", type=Path)
    q.add_argument("--out", type=Path, required=True, help="where to write the certificate")
    q.add_argument("--days", type=int, default=365, help="certificate lifetime (default 365)")
    q.add_argument("--roles", help="grant these roles instead of the requested ones "
                   f"(nodes: {','.join(ROLES)}; users: {','.join(USER_ROLES)}; '' for none)")
    q = g.add_parser("revoke", parents=[common], help="revoke a node's or user's certificate")
    q.add_argument("node_id", help="40 hex digits, as 'gridnode peers' shows")
    g.add_parser("info", parents=[common, as_json], help="show the grid this data dir belongs to")

    c = sub.add_parser("cert", help="certificate commands").add_subparsers(
        dest="cert_command", required=True, parser_class=Parser)
    q = c.add_parser("install", parents=[common], help="install this node's certificate")
    q.add_argument("cert", type=Path)
    c.add_parser("show", parents=[common, as_json], help="show this node's certificate")
    return p


def _datadir(args: argparse.Namespace) -> DataDir:
    return DataDir(args.data_dir if args.data_dir is not None else default_data_dir())


# -- init ------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    dd = _datadir(args)
    if dd.node_key.exists():
        raise UserError(f"{dd.root} is already initialised (node.key exists); "
                        f"use another --data-dir")
    overrides = {"listen": args.listen, "bootstrap": args.bootstrap, "roles": args.roles}
    cfg = load_config(None, overrides)  # validate flags before touching the disk
    if args.name and args.grid:
        raise UsageError("--name names a new grid; it cannot be used with --grid")
    site = _check_name(args.site or socket.gethostname() or "site", "site")
    if args.name:
        _check_name(args.name, "grid name")
    grid = read_grid_info(args.grid) if args.grid else None
    dd.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(dd.root, 0o700)
    now = int(time.time())
    roles = args.roles or ROLES
    key = KeyPair.generate()
    try:
        write_key(dd.node_key, key)
    except IdentityError as exc:
        raise UserError(str(exc)) from None
    if grid is None:
        authority = KeyPair.generate()
        write_key(dd.authority_key, authority)
        hints = (args.listen,) if args.listen else ()
        grid = GridInfo.create(authority, args.name or "local-grid", now, hints)
        write_atomic(dd.grid_info, grid.raw)
        cert = Certificate.issue(authority, kind="node", subject_key=key.public_key, name=site,
                                 roles=roles, not_before=now, not_after=now + 365 * DAY)
        write_atomic(dd.node_cert, cert.raw)
        write_atomic(dd.config, render_config(cfg).encode())
        # The quick start needs no ceremony: the grid's creator is its first admin user.
        member = UserDir(args.user_dir or default_user_dir()).membership(grid.grid_id)
        user = _new_user_key(member, grid)
        user_cert = Certificate.issue(authority, kind="user", subject_key=user.public_key,
                                      name=_login_name(), roles=("admin",), not_before=now,
                                      not_after=now + 365 * DAY)
        write_atomic(member.user_cert, user_cert.raw)
        print(f"new grid {grid.name} ({grid.grid_id.hex()}) with node {key.id.hex()} "
              f"in {dd.root}, admin user {user_cert.name} in {member.root}; "
              f"start it with: gridnode run --data-dir {dd.root}")
        return 0
    write_atomic(dd.grid_info, grid.raw)
    request = JoinRequest.create(key, grid, site, roles, now)
    write_atomic(dd.join_request, request.raw)
    write_atomic(dd.config, render_config(cfg).encode())
    print(f"node {key.id.hex()} for grid {grid.name} in {dd.root}; send {dd.join_request} to "
          f"the grid admin, then run: gridnode cert install --data-dir {dd.root} CERT")
    return 0


# -- run, status, peers ----------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from .daemon import run_node

    dd = _datadir(args)
    dd.require_initialised()
    if args.config is not None and not args.config.exists():
        raise UserError(f"config file {args.config} does not exist")
    cfg = load_config(args.config or dd.config, {
        "listen": args.listen, "bootstrap": args.bootstrap, "log_level": args.log_level})
    setup_logging(cfg.log_level)
    trio.run(_serve_until_signal, run_node, cfg, dd)
    return 0


async def _serve_until_signal(run_node: Any, cfg: Config, dd: DataDir) -> None:
    import logging

    from .logs import log

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(run_node, cfg, dd)

            async def stop_on_signal() -> None:
                async for signum in signals:
                    log(logging.getLogger("gridnode.daemon"), "node.stopping",
                        reason=f"received {signal.Signals(signum).name}")
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(stop_on_signal)


def _status(args: argparse.Namespace) -> dict[str, Any]:
    if args.via is not None:
        return dict(remote(args, lambda c: c.status()))
    return dict(admin_call(_datadir(args).admin_socket, "status"))


def cmd_status(args: argparse.Namespace) -> int:
    if args.job is not None:
        return job_status(args)
    s = _status(args)
    ch = s.get("channel", {})
    data = s.get("data", {})
    refused = ", ".join(f"{k}={v}" for k, v in sorted(s["refused"].items()))
    text = "\n".join([
        f"id          {s['id']}",
        f"grid        {s['grid_name']} ({s['grid']})",
        f"site        {s['site']}",
        f"roles       {','.join(s['roles'])}",
        f"addresses   {', '.join(s['addresses']) or '-'}",
        f"uptime      {s['uptime']:.0f} s",
        f"peers known {s['peers_known']}",
        f"dht         {s['dht']['contacts']} contacts, {s['dht']['records_held']} records held, "
        f"{s['dht'].get('datagrams_refused', 0)} datagrams refused",
        f"channel     {ch.get('channels_open', 0)} open, {ch.get('handshakes_ok', 0)} "
        f"handshakes, {ch.get('handshakes_refused', 0)} refused, "
        f"{ch.get('handshake_timeouts', 0)} timed out, {ch.get('calls', 0)} calls",
        f"data        {data.get('datasets_held', 0)} datasets held, "
        f"{data.get('chunks', 0)} chunks, {data.get('used_bytes', 0) / 1e6:.1f} MB used, "
        f"{data.get('transfers', 0)} transfers ({data.get('bytes_fetched', 0) / 1e6:.1f} MB in), "
        f"{data.get('transfers_failed', 0)} failed",
        f"refused     {refused}",
    ])
    print_result(s, args.json, text)
    return 0


def _age(seconds: float) -> str:
    if seconds <= 0:
        return "never"
    age = max(0.0, time.time() - seconds)
    return f"{age:.0f}s ago" if age < 120 else f"{age / 60:.0f}m ago"


def cmd_console(args: argparse.Namespace) -> int:
    from .console.auth import read_token  # the web stack only for this command

    dd = _datadir(args)
    status = admin_call(dd.admin_socket, "status")
    url = (status.get("console") or {}).get("url")
    if not url:
        raise UserError("this node serves no console: console.listen is \"\" in its config, "
                        "or its port was taken (see the node's log)")
    login = f"{url}/login?token={read_token(dd.root)}"
    print_result({"url": url, "login": login}, args.json,
                 f"{login}\n(the token in this link is the node's admin password: "
                 f"do not share it)")
    if args.open:
        import webbrowser
        webbrowser.open(login)
    return 0


def cmd_peers(args: argparse.Namespace) -> int:
    if args.via is not None:
        peers = remote(args, lambda c: c.peers())
    else:
        peers = admin_call(_datadir(args).admin_socket, "peers")
    rows = [f"{'ID':<40}  {'SITE':<16}  {'ADDRESSES':<22}  {'ROLES':<28}  LAST SEEN"]
    rows += [f"{p['id']:<40}  {p['site']:<16}  {','.join(p['addresses']):<22}  "
             f"{','.join(p['roles']):<28}  {_age(p['last_seen'])}" for p in peers]
    print_result(peers, args.json, "\n".join(rows))
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    if args.via is not None:
        health = remote(args, lambda c: c.health())
    else:
        health = admin_call(_datadir(args).admin_socket, "health")
    rows = [f"{'ID':<12}  {'SITE':<16}  {'STATE':<9}  {'PRESSURE':>8}  {'FAILED':>6}  "
            f"{'FREE SLOTS':>10}  {'RTT MS':>7}  LAST SEEN"]
    for n in health["nodes"]:
        rtt = n.get("rtt_ms")
        rows.append(f"{n['id'][:12]:<12}  {n['site']:<16}  {n['state']:<9}  "
                    f"{n.get('pressure', 0.0):>8.2f}  {n.get('failure_rate', 0.0):>6.0%}  "
                    f"{n.get('slots_free', '-')!s:>10}  {'-' if rtt is None else rtt:>7}  "
                    f"{'this node' if n['self'] else _age(n['last_seen'])}")
        if n.get("evidence") and n["state"] != "ok":
            rows.append(f"    {n['evidence']['reason']}")
    links = health.get("links") or []
    rows += ["", "no link measured yet (links are measured by the chunk transfers over them)"
             if not links else f"{'LINK (FROM -> TO)':<36}  {'STATE':<9}  {'RATE MB/s':>9}  "
             f"{'BEST':>7}  {'FAILED':>6}  REASON"]
    for link in links:
        rate, best = link["rate"], link["best"]
        rows.append(f"{link['from_site'] + ' -> ' + link['to_site']:<36}  "
                    f"{link['state']:<9}  "
                    f"{'-' if rate is None else f'{rate / 1e6:.1f}':>9}  "
                    f"{'-' if best is None else f'{best / 1e6:.1f}':>7}  "
                    f"{link['failures']:>6}  {link['reason']}")
    print_result(health, args.json, "\n".join(rows))
    return 0


def cmd_ping(args: argparse.Namespace) -> int:
    target = parse_node_id(args.node_id) if args.node_id else None
    if not 1 <= args.count <= 10000:
        raise UsageError("--count must be from 1 to 10000")

    async def pings(client: Client) -> list[dict[str, Any]]:
        return [await client.ping(target) for _ in range(args.count)]

    answers = remote(args, pings)
    rows = [{"id": a["id"].hex(), "site": a["site"], "total_ms": round(a["total_ms"], 3),
             "forwarded_ms": round(a["rtt_ms"], 3) if "rtt_ms" in a else None,
             "address": a.get("address")} for a in answers]
    lines = [f"pong from {r['id']} (site {r['site']}) in {r['total_ms']:.2f} ms"
             + (f" (the node we asked reached {r['address']} in {r['forwarded_ms']:.2f} ms)"
                if r["forwarded_ms"] is not None else "") for r in rows]
    print_result(rows if args.count > 1 else rows[0], args.json, "\n".join(lines))
    return 0


def cmd_whoami(args: argparse.Namespace) -> int:
    async def ask(client: Client) -> dict[str, Any]:
        return {**await client.whoami(), "speaking_as": client.identity.source}

    w = remote(args, ask)
    info = {"id": w["id"].hex(), "kind": w["kind"], "name": w["name"], "roles": w["roles"],
            "grid": w["grid"].hex(), "access": w["access"], "not_after": w["not_after"],
            "node": w["node"].hex(), "site": w["site"], "speaking_as": w["speaking_as"]}
    text = "\n".join([
        f"you are     {info['kind']} {info['name']} ({info['id']})",
        f"roles       {','.join(info['roles']) or 'none'}",
        f"may         {', '.join(info['access'])}",
        f"grid        {info['grid']}",
        f"cert until  {time.strftime('%Y-%m-%d', time.gmtime(info['not_after']))}",
        f"seen by     node {info['node']} (site {info['site']})",
        f"speaking as {info['speaking_as']}",
    ])
    print_result(info, args.json, text)
    return 0


# -- grid and cert ---------------------------------------------------------


def _login_name() -> str:
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = "user"
    return name if 0 < len(name) <= 128 and name.isprintable() else "user"


def _new_user_key(member: GridMembership, grid: GridInfo) -> KeyPair:
    """A fresh user key in the grid's user-dir entry, with the grid's info beside it."""
    if member.user_key.exists():
        raise UserError(f"{member.root} already holds a user key for grid {grid.name}")
    member.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(member.root, 0o700)
    write_atomic(member.grid_info, grid.raw)
    key = KeyPair.generate()
    try:
        write_key(member.user_key, key)
    except IdentityError as exc:
        raise UserError(str(exc)) from None
    return key


def _granted_roles(text: str | None, request: JoinRequest) -> tuple[str, ...]:
    if text is None:
        return request.roles
    roles = tuple(r.strip() for r in text.split(",") if r.strip())
    known = USER_ROLES if request.kind == "user" else ROLES
    for r in roles:
        if r not in known:
            raise UsageError(f"unknown {request.kind} role {r!r} (known: {','.join(known)})")
    if len(set(roles)) != len(roles):
        raise UsageError(f"--roles {text!r} repeats a role")
    return roles


def cmd_grid_admit(args: argparse.Namespace) -> int:
    dd = _datadir(args)
    authority = dd.load_authority()
    grid = dd.load_grid()
    if not 0 < args.days <= MAX_DAYS:
        raise UsageError(f"--days must be from 1 to {MAX_DAYS}")
    try:
        request = JoinRequest.from_bytes_untrusted(args.request.read_bytes())
    except FileNotFoundError:
        raise UserError(f"join request {args.request} does not exist") from None
    except BadMessage as exc:
        raise UserError(f"join request {args.request} is corrupt or tampered ({exc}); "
                        f"ask the node's admin for a fresh one") from None
    if request.grid_id != grid.grid_id:
        raise UserError(f"join request {args.request} is for grid {request.grid_id.hex()}, "
                        f"not this grid {grid.grid_id.hex()}")
    if request.subject_id in dd.load_authority_revocations(grid).revoked:
        raise UserError(f"{request.kind} {request.subject_id.hex()} was revoked; "
                        f"it needs a new key")
    roles = _granted_roles(args.roles, request)
    now = int(time.time())
    cert = Certificate.issue(authority, kind=request.kind, subject_key=request.subject_key,
                             name=request.name, roles=roles,
                             not_before=now, not_after=now + args.days * DAY)
    write_atomic(args.out, cert.raw)
    what = "site" if request.kind == "node" else "name"
    print(f"admitted {request.kind} {request.subject_id.hex()} ({what} {request.name}, roles "
          f"{','.join(cert.roles) or 'none'}) until "
          f"{time.strftime('%Y-%m-%d', time.gmtime(cert.not_after))}"
          f"; certificate written to {args.out}")
    return 0


def cmd_grid_revoke(args: argparse.Namespace) -> int:
    dd = _datadir(args)
    authority = dd.load_authority()
    grid = dd.load_grid()
    try:
        node_id = bytes.fromhex(args.node_id)
    except ValueError:
        node_id = b""
    if len(node_id) != 20:
        raise UsageError(f"{args.node_id!r} is not a node id (40 hex digits)")
    current = dd.load_authority_revocations(grid)
    if node_id in current.revoked:
        print(f"{args.node_id} is already revoked (revocation list {current.serial})")
        return 0
    rl = RevocationList.issue(authority, current.serial + 1, int(time.time()),
                              current.revoked | {node_id})
    write_atomic(dd.revocations, rl.raw)
    print(f"revoked {args.node_id}; revocation list {rl.serial} lists {len(rl.revoked)} "
          f"ids and reaches running nodes through the DHT")
    return 0


def cmd_grid_info(args: argparse.Namespace) -> int:
    grid = _datadir(args).load_grid()
    info = {"grid": grid.grid_id.hex(), "name": grid.name,
            "authority_key": grid.authority_key.hex(), "created": grid.created,
            "bootstrap": list(grid.bootstrap)}
    print_result(info, args.json, "\n".join(f"{k:<14}{v}" for k, v in info.items()))
    return 0


def cmd_cert_install(args: argparse.Namespace) -> int:
    dd = _datadir(args)
    key = dd.load_key()
    grid = dd.load_grid()
    revoked = dd.load_authority_revocations(grid).revoked
    cert = read_node_cert(args.cert, key, grid, revoked)
    write_atomic(dd.node_cert, cert.raw)
    print(f"installed certificate for node {key.id.hex()} (site {cert.name}, roles "
          f"{','.join(cert.roles)}); start it with: gridnode run --data-dir {dd.root}")
    return 0


def cmd_cert_show(args: argparse.Namespace) -> int:
    dd = _datadir(args)
    key = dd.load_key()
    cert = dd.load_cert(key, dd.load_grid())
    info = {"id": key.id.hex(), "site": cert.name, "kind": cert.kind, "roles": list(cert.roles),
            "grid": cert.grid_id.hex(), "not_before": cert.not_before,
            "not_after": cert.not_after}
    print_result(info, args.json, "\n".join(f"{k:<11}{v}" for k, v in info.items()))
    return 0


# -- users -----------------------------------------------------------------


def _user_dir(args: argparse.Namespace) -> UserDir:
    return UserDir(args.user_dir or default_user_dir())


def cmd_user_init(args: argparse.Namespace) -> int:
    grid = read_grid_info(args.grid)
    name = _check_name(args.name or _login_name(), "user name")
    member = _user_dir(args).membership(grid.grid_id)
    key = _new_user_key(member, grid)
    request = JoinRequest.create(key, grid, name, ("admin",) if args.admin else (),
                                 int(time.time()), kind="user")
    write_atomic(member.join_request, request.raw)
    print(f"user {name} ({key.id.hex()}) for grid {grid.name} in {member.root}; send "
          f"{member.join_request} to the grid admin, then run: gridnode user install CERT")
    return 0


def cmd_user_install(args: argparse.Namespace) -> int:
    try:
        cert = Certificate.from_bytes_untrusted(args.cert.read_bytes())
    except FileNotFoundError:
        raise UserError(f"certificate {args.cert} does not exist") from None
    except BadMessage as exc:
        raise UserError(f"certificate {args.cert} is corrupt or tampered ({exc})") from None
    member = _user_dir(args).membership(cert.grid_id)
    if not member.user_key.exists():
        raise UserError(f"{args.cert} is for grid {cert.grid_id.hex()}, for which the user dir "
                        f"holds no key; run 'gridnode user init --grid GRID.INFO' first")
    grid = member.load_grid()
    read_user_cert(args.cert, member.load_key(), grid)
    write_atomic(member.user_cert, cert.raw)
    print(f"installed user certificate for {cert.name} in grid {grid.name} (roles "
          f"{','.join(cert.roles) or 'none'})")
    return 0


def cmd_user_list(args: argparse.Namespace) -> int:
    rows = []
    for member, grid in _user_dir(args).memberships():
        row: dict[str, Any] = {"grid": grid.grid_id.hex(), "grid_name": grid.name,
                               "dir": str(member.root), "user": None, "roles": [],
                               "not_after": None, "state": "no key"}
        if member.user_key.exists():
            row["state"] = "waiting for a certificate"
            if member.user_cert.exists():
                try:
                    cert = member.load_cert(member.load_key(), grid)
                    row.update(user=cert.name, roles=list(cert.roles),
                               not_after=cert.not_after, state="admitted")
                except UserError as exc:
                    row["state"] = f"unusable: {exc}"
        rows.append(row)
    lines = [f"{'GRID':<14}{'NAME':<16}{'USER':<14}{'ROLES':<8}STATE"]
    lines += [f"{r['grid'][:12]:<14}{r['grid_name'][:15]:<16}{(r['user'] or '-')[:13]:<14}"
              f"{','.join(r['roles']) or '-':<8}{r['state']}" for r in rows]
    print_result(rows, args.json, "\n".join(lines))
    return 0


COMMANDS = {
    ("init",): cmd_init,
    ("run",): cmd_run,
    ("status",): cmd_status,
    ("peers",): cmd_peers,
    ("console",): cmd_console,
    ("health",): cmd_health,
    ("ping",): cmd_ping,
    ("whoami",): cmd_whoami,
    ("submit",): cmd_submit,
    ("jobs",): cmd_jobs,
    ("explain",): cmd_explain,
    ("logs",): cmd_logs,
    ("wait",): cmd_wait,
    ("cancel",): cmd_cancel,
    ("put",): cmd_put,
    ("get",): cmd_get,
    ("datasets",): cmd_datasets,
    ("ls",): cmd_ls,
    ("replicas",): cmd_replicas,
    ("grid", "admit"): cmd_grid_admit,
    ("grid", "revoke"): cmd_grid_revoke,
    ("grid", "info"): cmd_grid_info,
    ("cert", "install"): cmd_cert_install,
    ("cert", "show"): cmd_cert_show,
    ("user", "init"): cmd_user_init,
    ("user", "install"): cmd_user_install,
    ("user", "list"): cmd_user_list,
}


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        sub_command = getattr(args, f"{args.command}_command", None)
        key = (args.command,) + ((sub_command,) if sub_command else ())
        return COMMANDS[key](args)
    except (UserError, BaseExceptionGroup) as exc:
        err = first_user_error(exc)
        if err is None:
            raise
        print(f"gridnode: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1
    except OSError as exc:  # a path that is a directory, a missing parent dir, ...
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"gridnode: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1


def entry() -> NoReturn:
    sys.exit(main())
