"""Key files on disk and the ids derived from keys (overlay.identity)."""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from pathlib import Path

import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay import IdentityError, KeyPair, node_id_of, read_key, write_key
from overlay.identity import ID_SIZE, KEY_HEADER

SETTINGS = settings(max_examples=200, deadline=None, database=None)

SEED = bytes(range(32))


def _fixed_key() -> KeyPair:
    return KeyPair(nacl.signing.SigningKey(SEED))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _assert_one_line(exc: pytest.ExceptionInfo[IdentityError], path: Path) -> str:
    msg = str(exc.value)
    assert msg, "IdentityError without a message"
    assert "\n" not in msg and "\r" not in msg
    assert str(path) in msg, "the message should name the file"
    return msg


# -- write_key ----------------------------------------------------------------


def test_write_key_creates_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    write_key(path, KeyPair.generate())
    assert path.is_file()
    assert _mode(path) == 0o600


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_write_key_mode_does_not_depend_on_umask(tmp_path: Path, umask: int) -> None:
    path = tmp_path / "node.key"
    old = os.umask(umask)
    try:
        write_key(path, KeyPair.generate())
    finally:
        os.umask(old)
    assert _mode(path) == 0o600


def test_write_key_file_format(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    write_key(path, _fixed_key())
    assert path.read_bytes() == KEY_HEADER + SEED.hex().encode() + b"\n"


def test_write_key_refuses_to_overwrite_a_key(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    first = KeyPair.generate()
    write_key(path, first)
    before = path.read_bytes()
    with pytest.raises(IdentityError) as exc:
        write_key(path, KeyPair.generate())
    msg = _assert_one_line(exc, path)
    assert "overwrite" in msg
    assert path.read_bytes() == before
    assert read_key(path).public_key == first.public_key


def test_write_key_refuses_to_overwrite_any_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"precious")
    with pytest.raises(IdentityError):
        write_key(path, KeyPair.generate())
    assert path.read_bytes() == b"precious"


def test_write_key_does_not_follow_a_dangling_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.key"
    link = tmp_path / "node.key"
    link.symlink_to(target)
    with pytest.raises(IdentityError):
        write_key(link, KeyPair.generate())
    assert not target.exists()


# -- read_key -----------------------------------------------------------------


def test_read_key_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    key = KeyPair.generate()
    write_key(path, key)
    loaded = read_key(path)
    assert bytes(loaded.signing_key) == bytes(key.signing_key)
    assert loaded.public_key == key.public_key
    assert loaded.id == key.id
    # The loaded key signs verifiably for the original public key.
    signed = loaded.signing_key.sign(b"hello")
    assert nacl.signing.VerifyKey(key.public_key).verify(signed) == b"hello"


def test_read_key_round_trip_fixed_seed(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    write_key(path, _fixed_key())
    assert bytes(read_key(path).signing_key) == SEED


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_read_key_accepts_owner_only_modes(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "node.key"
    write_key(path, _fixed_key())
    path.chmod(mode)
    assert read_key(path).public_key == _fixed_key().public_key


def test_read_key_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.key"
    with pytest.raises(IdentityError) as exc:
        read_key(path)
    msg = _assert_one_line(exc, path)
    assert "missing" in msg
    assert "gridnode init" in msg


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o620, 0o602, 0o700 | 0o044])
def test_read_key_refuses_a_file_others_can_access(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "node.key"
    write_key(path, _fixed_key())
    path.chmod(mode)
    with pytest.raises(IdentityError) as exc:
        read_key(path)
    msg = _assert_one_line(exc, path)
    assert f"chmod 600 {path}" in msg
    assert f"{mode:04o}" in msg
    # Refusing does not "fix" the mode behind the admin's back.
    assert _mode(path) == mode


def _write_raw(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "node.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(content)
    assert _mode(path) == 0o600
    return path


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"gridnode-ed25519-seed-v2\n" + SEED.hex().encode() + b"\n",
        b"GRIDNODE-ED25519-SEED-V1\n" + SEED.hex().encode() + b"\n",
        SEED.hex().encode() + b"\n",
        SEED,
        b"-----BEGIN OPENSSH PRIVATE KEY-----\n",
        KEY_HEADER[:-1],
        b"\n" + KEY_HEADER + SEED.hex().encode() + b"\n",
    ],
    ids=["empty", "other-version", "upper-case", "no-header", "raw-seed", "ssh-key",
         "header-cut", "leading-newline"],
)
def test_read_key_refuses_a_corrupt_header(tmp_path: Path, content: bytes) -> None:
    path = _write_raw(tmp_path, content)
    with pytest.raises(IdentityError) as exc:
        read_key(path)
    msg = _assert_one_line(exc, path)
    assert "corrupt" in msg and "header" in msg
    assert "restore" in msg


@pytest.mark.parametrize(
    "seed_part",
    [
        b"",
        b"\n",
        SEED.hex().encode()[:-2] + b"\n",  # one byte short
        SEED.hex().encode()[:-1] + b"\n",  # odd number of hex digits
        SEED.hex().encode()[:32] + b"\n",  # half a seed
        SEED.hex().encode() + b"00\n",  # one byte too many
        SEED.hex().encode() * 2 + b"\n",  # two seeds
        b"zz" + SEED.hex().encode()[2:] + b"\n",  # non-hex digits
        SEED.hex().encode()[:-2] + b"\xff\xfe\n",  # not ASCII
        SEED + b"\n",  # raw bytes instead of hex
        SEED.hex().encode() + b"\ntrailing garbage\n",
    ],
    ids=["nothing", "blank", "short", "odd", "half", "long", "double", "non-hex",
         "non-ascii", "binary", "trailing"],
)
def test_read_key_refuses_a_bad_seed(tmp_path: Path, seed_part: bytes) -> None:
    path = _write_raw(tmp_path, KEY_HEADER + seed_part)
    with pytest.raises(IdentityError) as exc:
        read_key(path)
    msg = _assert_one_line(exc, path)
    assert "corrupt" in msg and "seed" in msg
    assert "restore" in msg


@SETTINGS
@given(garbage=st.binary(max_size=200))
def test_read_key_on_garbage_returns_a_key_or_raises_identity_error(garbage: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = _write_raw(Path(d), KEY_HEADER + garbage)
        try:
            key = read_key(path)
        except IdentityError as exc:
            assert "\n" not in str(exc)
        else:
            # Only 32 bytes of (whitespace-tolerant) hex make a key.
            assert bytes.fromhex(garbage.strip().decode("ascii")) == bytes(key.signing_key)


def test_read_key_on_a_directory_raises_identity_error(tmp_path: Path) -> None:
    path = tmp_path / "keydir"
    path.mkdir(mode=0o700)
    path.chmod(0o700)
    with pytest.raises(IdentityError) as exc:
        read_key(path)
    _assert_one_line(exc, path)


def test_read_key_below_a_file_raises_identity_error(tmp_path: Path) -> None:
    (tmp_path / "plain").write_bytes(b"x")
    path = tmp_path / "plain" / "node.key"
    with pytest.raises(IdentityError) as exc:
        read_key(path)
    _assert_one_line(exc, path)


# -- ids ------------------------------------------------------------------------


def test_node_id_of_is_blake2b_160() -> None:
    key = _fixed_key()
    expected = hashlib.blake2b(key.public_key, digest_size=20).digest()
    assert node_id_of(key.public_key) == expected
    assert key.id == expected
    assert len(key.id) == ID_SIZE == 20
    # Not a truncation of the default 64-byte BLAKE2b: digest_size is a parameter.
    assert expected != hashlib.blake2b(key.public_key).digest()[:20]


@SETTINGS
@given(pub=st.binary(min_size=32, max_size=32))
def test_node_id_of_any_public_key(pub: bytes) -> None:
    nid = node_id_of(pub)
    assert isinstance(nid, bytes)
    assert len(nid) == 20
    assert nid == hashlib.blake2b(pub, digest_size=20).digest()


@SETTINGS
@given(a=st.binary(min_size=32, max_size=32), b=st.binary(min_size=32, max_size=32))
def test_node_ids_differ_for_different_keys(a: bytes, b: bytes) -> None:
    assert (node_id_of(a) == node_id_of(b)) == (a == b)


def test_generated_keys_are_distinct() -> None:
    keys = [KeyPair.generate() for _ in range(20)]
    assert len({k.public_key for k in keys}) == 20
    assert len({k.id for k in keys}) == 20
    for k in keys:
        assert len(k.public_key) == 32
        assert k.id == node_id_of(k.public_key)
