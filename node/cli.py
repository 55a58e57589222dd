"""The ``gridnode`` command line: ``main(argv) -> int``, errors mapped in one place."""

from __future__ import annotations

import argparse
import getpass
import json
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
from .config import Config, load_config, render_config
from .datadir import DataDir, default_data_dir, read_grid_info, read_node_cert, write_atomic
from .errors import UsageError, UserError, first_user_error
from .logs import setup_logging

DAY = 86400
MAX_DAYS = 100 * 366


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


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
    common = _Parser(add_help=False)
    common.add_argument("--data-dir", type=Path, default=None,
                        help="node data dir (default: $GRIDNODE_DATA_DIR, "
                        "else ~/.local/share/gridnode)")
    as_json = _Parser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON")

    p = _Parser(prog="gridnode", description="A peer-to-peer grid node.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    q = sub.add_parser("init", parents=[common], help="create a node (and a grid, without --grid)")
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

    sub.add_parser("status", parents=[common, as_json], help="show this node's status")
    sub.add_parser("peers", parents=[common, as_json], help="list the grid nodes this node knows")

    g = sub.add_parser("grid", help="grid authority commands").add_subparsers(
        dest="grid_command", required=True, parser_class=_Parser)
    q = g.add_parser("admit", parents=[common], help="sign a node's join request")
    q.add_argument("request", type=Path)
    q.add_argument("--out", type=Path, required=True, help="where to write the certificate")
    q.add_argument("--days", type=int, default=365, help="certificate lifetime (default 365)")
    q.add_argument("--roles", type=_roles, help="grant these roles instead of the requested ones")
    q = g.add_parser("revoke", parents=[common], help="revoke a node's or user's certificate")
    q.add_argument("node_id", help="40 hex digits, as 'gridnode peers' shows")
    g.add_parser("info", parents=[common, as_json], help="show the grid this data dir belongs to")

    c = sub.add_parser("cert", help="certificate commands").add_subparsers(
        dest="cert_command", required=True, parser_class=_Parser)
    q = c.add_parser("install", parents=[common], help="install this node's certificate")
    q.add_argument("cert", type=Path)
    c.add_parser("show", parents=[common, as_json], help="show this node's certificate")
    return p


def _datadir(args: argparse.Namespace) -> DataDir:
    return DataDir(args.data_dir if args.data_dir is not None else default_data_dir())


def _print(data: Any, as_json: bool, text: str) -> None:
    print(json.dumps(data, indent=2, sort_keys=True) if as_json else text)


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
        user = KeyPair.generate()
        write_key(dd.user_key, user)
        user_cert = Certificate.issue(authority, kind="user", subject_key=user.public_key,
                                      name=getpass.getuser(), roles=(), not_before=now,
                                      not_after=now + 365 * DAY)
        write_atomic(dd.user_cert, user_cert.raw)
        write_atomic(dd.config, render_config(cfg).encode())
        print(f"new grid {grid.name} ({grid.grid_id.hex()}) with node {key.id.hex()} "
              f"in {dd.root}; start it with: gridnode run --data-dir {dd.root}")
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


def cmd_status(args: argparse.Namespace) -> int:
    dd = _datadir(args)
    s = admin_call(dd.admin_socket, "status")
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
        f"refused     {refused}",
    ])
    _print(s, args.json, text)
    return 0


def _age(seconds: float) -> str:
    if seconds <= 0:
        return "never"
    age = max(0.0, time.time() - seconds)
    return f"{age:.0f}s ago" if age < 120 else f"{age / 60:.0f}m ago"


def cmd_peers(args: argparse.Namespace) -> int:
    dd = _datadir(args)
    peers = admin_call(dd.admin_socket, "peers")
    rows = [f"{'ID':<40}  {'SITE':<16}  {'ADDRESSES':<22}  {'ROLES':<28}  LAST SEEN"]
    rows += [f"{p['id']:<40}  {p['site']:<16}  {','.join(p['addresses']):<22}  "
             f"{','.join(p['roles']):<28}  {_age(p['last_seen'])}" for p in peers]
    _print(peers, args.json, "\n".join(rows))
    return 0


# -- grid and cert ---------------------------------------------------------


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
        raise UserError(f"node {request.subject_id.hex()} was revoked; it needs a new key")
    now = int(time.time())
    cert = Certificate.issue(authority, kind="node", subject_key=request.subject_key,
                             name=request.name, roles=args.roles or request.roles,
                             not_before=now, not_after=now + args.days * DAY)
    write_atomic(args.out, cert.raw)
    print(f"admitted node {request.subject_id.hex()} (site {request.name}, roles "
          f"{','.join(cert.roles)}) until {time.strftime('%Y-%m-%d', time.gmtime(cert.not_after))}"
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
    _print(info, args.json, "\n".join(f"{k:<14}{v}" for k, v in info.items()))
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
    _print(info, args.json, "\n".join(f"{k:<11}{v}" for k, v in info.items()))
    return 0


COMMANDS = {
    ("init",): cmd_init,
    ("run",): cmd_run,
    ("status",): cmd_status,
    ("peers",): cmd_peers,
    ("grid", "admit"): cmd_grid_admit,
    ("grid", "revoke"): cmd_grid_revoke,
    ("grid", "info"): cmd_grid_info,
    ("cert", "install"): cmd_cert_install,
    ("cert", "show"): cmd_cert_show,
}


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        key = (args.command,) + tuple(
            x for x in (getattr(args, "grid_command", None), getattr(args, "cert_command", None))
            if x)
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
