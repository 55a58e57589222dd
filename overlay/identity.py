"""Ed25519 keys on disk and the ids derived from them.

A key file holds the 32-byte Ed25519 seed behind a short header, mode 0600.
A key file that others can read is refused: the admin fixes the mode, we do
not guess whether the key leaked.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import nacl.signing

from ._errors import IdentityError

KEY_HEADER = b"gridnode-ed25519-seed-v1\n"
SEED_SIZE = 32
ID_SIZE = 20


def node_id_of(public_key: bytes) -> bytes:
    """Node (or user, or grid) id: the first 160 bits of BLAKE2b(public key)."""
    return hashlib.blake2b(public_key, digest_size=ID_SIZE).digest()


@dataclass(frozen=True)
class KeyPair:
    signing_key: nacl.signing.SigningKey

    @classmethod
    def generate(cls) -> KeyPair:
        return cls(nacl.signing.SigningKey.generate())

    # Worked out once: the queue asks for its node's id for every job it looks at.
    @cached_property
    def public_key(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @cached_property
    def id(self) -> bytes:
        return node_id_of(self.public_key)


def write_key(path: Path, key: KeyPair) -> None:
    """Create ``path`` with mode 0600 and the key; never overwrites."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise IdentityError(f"{path} already exists; refusing to overwrite a key") from None
    with os.fdopen(fd, "wb") as f:
        f.write(KEY_HEADER + bytes(key.signing_key).hex().encode() + b"\n")
        f.flush()
        os.fsync(f.fileno())


def read_key(path: Path) -> KeyPair:
    """Load a key file, refusing one that is missing, corrupt or readable by others."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise IdentityError(f"key file {path} is missing; run 'gridnode init' first") from None
    except OSError as exc:
        raise IdentityError(f"key file {path} cannot be read ({exc.strerror}); "
                            f"check the path and its permissions") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise IdentityError(
            f"key file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run 'chmod 600 {path}' and check whether the key leaked"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise IdentityError(f"key file {path} cannot be read ({exc.strerror}); "
                            f"check the path and its permissions") from None
    if not data.startswith(KEY_HEADER):
        raise IdentityError(f"key file {path} is corrupt (bad header); restore it from backup")
    try:
        seed = bytes.fromhex(data[len(KEY_HEADER):].strip().decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        seed = b""
    if len(seed) != SEED_SIZE:
        raise IdentityError(f"key file {path} is corrupt (bad seed); restore it from backup")
    return KeyPair(nacl.signing.SigningKey(seed))
