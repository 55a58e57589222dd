"""A user's keys and certificates: one directory per grid in the user dir.

======================================  ==========================================
file                                    what
======================================  ==========================================
``USER_DIR/<grid id>/grid.info``        the grid's public info
``USER_DIR/<grid id>/user.key``         the user's Ed25519 key for that grid (0600)
``USER_DIR/<grid id>/join-request``     the request to send to the grid admin
``USER_DIR/<grid id>/user.cert``        the certificate, once admitted
======================================  ==========================================

The user dir is ``--user-dir``, else ``$GRIDNODE_USER_DIR``, else
``$XDG_CONFIG_HOME/gridnode`` (``~/.config/gridnode``).  One person can
belong to several grids; commands pick the grid with ``--grid`` (an id
prefix or a grid name), the grid of ``--data-dir``, or the only one there is.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from overlay import (
    BadMessage,
    Certificate,
    GridInfo,
    IdentityError,
    KeyPair,
    check_certificate,
    read_key,
)

from .datadir import read_grid_info
from .errors import UserError


def default_user_dir() -> Path:
    env = os.environ.get("GRIDNODE_USER_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "gridnode"


@dataclass(frozen=True)
class GridMembership:
    """The files of one grid in a user dir."""

    root: Path

    grid_info = property(lambda self: self.root / "grid.info")
    user_key = property(lambda self: self.root / "user.key")
    user_cert = property(lambda self: self.root / "user.cert")
    join_request = property(lambda self: self.root / "join-request")

    def load_grid(self) -> GridInfo:
        return read_grid_info(self.grid_info)

    def load_key(self) -> KeyPair:
        try:
            return read_key(self.user_key)
        except IdentityError as exc:
            raise UserError(str(exc)) from None

    def load_cert(self, key: KeyPair, grid: GridInfo) -> Certificate:
        if not self.user_cert.exists():
            raise UserError(f"no user certificate in {self.root} yet; send {self.join_request} "
                            f"to the grid admin, then run 'gridnode user install CERT'")
        return read_user_cert(self.user_cert, key, grid)


def read_user_cert(path: Path, key: KeyPair, grid: GridInfo) -> Certificate:
    try:
        cert = Certificate.from_bytes_untrusted(path.read_bytes())
        check_certificate(cert, grid, time.time(), kind="user", subject_key=key.public_key)
    except FileNotFoundError:
        raise UserError(f"certificate {path} is missing") from None
    except BadMessage as exc:
        raise UserError(f"certificate {path} refused: {exc}") from None
    return cert


@dataclass(frozen=True)
class UserDir:
    root: Path

    def membership(self, grid_id: bytes) -> GridMembership:
        return GridMembership(self.root / grid_id.hex())

    def memberships(self) -> list[tuple[GridMembership, GridInfo]]:
        """Every grid with a readable grid.info here, by grid name."""
        if not self.root.is_dir():
            return []
        found = []
        for d in sorted(self.root.iterdir()):
            m = GridMembership(d)
            if d.is_dir() and m.grid_info.exists():
                try:
                    found.append((m, m.load_grid()))
                except UserError:
                    continue
        return sorted(found, key=lambda x: x[1].name)

    def pick(self, selector: str | None, *, grid_id: bytes | None = None
             ) -> tuple[GridMembership, GridInfo]:
        """The grid named by ``selector`` (id prefix or name), or ``grid_id``, or the only one."""
        found = self.memberships()
        if grid_id is not None and selector is None:
            found = [f for f in found if f[1].grid_id == grid_id]
        elif selector is not None:
            found = [f for f in found if f[1].grid_id.hex().startswith(selector.lower())
                     or f[1].name == selector]
        if len(found) == 1:
            return found[0]
        if not found:
            what = (f"grid {selector!r}" if selector else
                    f"grid {grid_id.hex()}" if grid_id else "any grid")
            raise UserError(f"the user dir {self.root} holds no membership of {what}; run "
                            f"'gridnode user init --grid GRID.INFO' first")
        names = ", ".join(f"{g.name} ({g.grid_id.hex()[:12]})" for _, g in found)
        raise UserError(f"the user dir {self.root} holds several grids ({names}); "
                        f"pick one with --grid")
