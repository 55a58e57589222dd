"""The data dir: where a node keeps its keys, certificates, config and state.

======================  ====================================================
file                    what
======================  ====================================================
``node.key``            this node's Ed25519 key (0600)
``grid.info``           the grid's public info: name, authority key, hints
``node.cert``           this node's certificate, once admitted
``join-request``        the signed request to send to the grid admin
``config.toml``         node configuration
``state.sqlite``        local state (peers, ...), WAL
``admin.sock``          local admin socket (0600)
``console.token``       the web console's admin token (0600), made at start
``authority.key``       the grid authority key (only in the authority's dir)
``revocations``         the authority's signed revocation list
``user.key/user.cert``  a local user, made by a one-node ``init``
======================  ====================================================
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
    RevocationList,
    check_certificate,
    read_key,
)

from .errors import UserError


def default_data_dir() -> Path:
    env = os.environ.get("GRIDNODE_DATA_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"),
                                                           ".local", "share")
    return Path(base) / "gridnode"


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write a file so that a crash leaves either the old or the new content."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


@dataclass(frozen=True)
class DataDir:
    root: Path

    node_key = property(lambda self: self.root / "node.key")
    grid_info = property(lambda self: self.root / "grid.info")
    node_cert = property(lambda self: self.root / "node.cert")
    join_request = property(lambda self: self.root / "join-request")
    config = property(lambda self: self.root / "config.toml")
    state = property(lambda self: self.root / "state.sqlite")
    admin_socket = property(lambda self: self.root / "admin.sock")
    authority_key = property(lambda self: self.root / "authority.key")
    revocations = property(lambda self: self.root / "revocations")
    user_key = property(lambda self: self.root / "user.key")
    user_cert = property(lambda self: self.root / "user.cert")

    def require_initialised(self) -> None:
        if not self.node_key.exists():
            raise UserError(f"{self.root} is not a gridnode data dir (no node.key); "
                            f"run 'gridnode init --data-dir {self.root}' first")

    def load_key(self) -> KeyPair:
        self.require_initialised()
        try:
            return read_key(self.node_key)
        except IdentityError as exc:
            raise UserError(str(exc)) from None

    def load_authority(self) -> KeyPair:
        if not self.authority_key.exists():
            raise UserError(f"{self.root} holds no grid authority key; run this on the "
                            f"grid admin's data dir (the one made by a plain 'gridnode init')")
        try:
            return read_key(self.authority_key)
        except IdentityError as exc:
            raise UserError(str(exc)) from None

    def load_grid(self) -> GridInfo:
        return read_grid_info(self.grid_info)

    def load_authority_revocations(self, grid: GridInfo) -> RevocationList:
        if not self.revocations.exists():
            return RevocationList.empty(grid)
        try:
            return RevocationList.from_bytes_untrusted(self.revocations.read_bytes(), grid)
        except BadMessage as exc:
            raise UserError(f"revocation list {self.revocations} is corrupt: {exc}") from None

    def load_cert(self, key: KeyPair, grid: GridInfo,
                  revoked: frozenset[bytes] = frozenset()) -> Certificate:
        if not self.node_cert.exists():
            raise UserError(
                f"no certificate installed in {self.root}; send {self.join_request} to the "
                f"grid admin, then run 'gridnode cert install --data-dir {self.root} CERT'")
        return read_node_cert(self.node_cert, key, grid, revoked)


def read_grid_info(path: Path) -> GridInfo:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"grid info {path} is missing; ask the grid admin for grid.info") from None
    try:
        return GridInfo.from_bytes_untrusted(data)
    except BadMessage as exc:
        raise UserError(f"grid info {path} is corrupt: {exc}") from None


def read_node_cert(path: Path, key: KeyPair, grid: GridInfo,
                   revoked: frozenset[bytes] = frozenset()) -> Certificate:
    """Read a node certificate and check that it is valid for ``key`` in ``grid`` now."""
    try:
        cert = Certificate.from_bytes_untrusted(path.read_bytes())
        check_certificate(cert, grid, time.time(), revoked=revoked, kind="node",
                          subject_key=key.public_key)
    except FileNotFoundError:
        raise UserError(f"certificate {path} is missing") from None
    except BadMessage as exc:
        raise UserError(f"certificate {path} refused: {exc}") from None
    return cert
