"""The console's admin token, its session cookie and the CSRF token.

The token is 32 random bytes (URL-safe text) in ``console.token`` in the data
dir, mode 0600, made at the first start: whoever can read the data dir is the
site admin. ``/login?token=...`` (the link ``gridnode console`` prints) sets
a cookie; scripts send ``Authorization: Bearer TOKEN`` instead. The cookie
and the CSRF token are derived from the token with keyed BLAKE2b, so a new
token file (delete it and restart) logs everyone out.

A state-changing request (POST) needs the token (cookie or header) and the
CSRF token (``X-CSRF-Token`` header or ``csrf`` form field), which only pages
served to a logged-in browser carry: a page of another site cannot read it.
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from pathlib import Path

from nacl.encoding import HexEncoder
from nacl.hash import blake2b

from ..datadir import write_atomic
from ..errors import UserError

TOKEN_FILE = "console.token"
COOKIE = "gridnode_console"


def load_or_create_token(data_dir: Path) -> str:
    """The admin token of this data dir (made, mode 0600, when missing)."""
    path = data_dir / TOKEN_FILE
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        write_atomic(path, (secrets.token_urlsafe(32) + "\n").encode(), 0o600)
        mode = path.stat().st_mode
    if stat.S_IMODE(mode) & 0o077:
        os.chmod(path, 0o600)  # others could read it: close it, the token stays valid
    token = path.read_text(encoding="ascii", errors="replace").strip()
    if len(token) < 32 or not token.isascii():
        raise UserError(f"{path} does not hold a console token; delete it and restart "
                        f"the node to make a new one")
    return token


def read_token(data_dir: Path) -> str:
    """The token of a running node's data dir, for ``gridnode console``."""
    path = data_dir / TOKEN_FILE
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise UserError(f"no console token in {data_dir}: is the node running with "
                        f"its console on?") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None


def _derive(token: str, purpose: bytes) -> str:
    return blake2b(purpose, key=token.encode()[:64], digest_size=24,
                   encoder=HexEncoder).decode()


class Keys:
    """What a request is checked against."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.session = _derive(token, b"gridnode console session")
        self.csrf = _derive(token, b"gridnode console csrf")

    def is_token(self, text: object) -> bool:
        return _same(text, self.token)

    def is_session(self, text: object) -> bool:
        return _same(text, self.session)

    def is_csrf(self, text: object) -> bool:
        return _same(text, self.csrf)


def _same(text: object, secret: str) -> bool:
    """``text`` is ``secret`` (in constant time); anything but a string is not."""
    return isinstance(text, str) and hmac.compare_digest(
        text.encode("utf-8", "replace"), secret.encode())
