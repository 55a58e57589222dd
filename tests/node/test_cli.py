"""The ``gridnode`` command line, run as a real subprocess (``python -m node``).

Every refusal must be one ``gridnode: error:`` line on stderr, a non-zero exit
code, no traceback, and no change to the files already stored.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from overlay import ROLES, Certificate, read_key
from overlay.certs import CLOCK_SKEW

DAY = 86400


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("GRIDNODE_DATA_DIR", "XDG_DATA_HOME")}
    # A default data dir, should one be used by mistake, lands in the test's tree.
    env["HOME"] = str(Path.cwd() / "home")
    env.update(extra or {})
    return env


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m node ARGS`` in the current directory (the test's tmp_path)."""
    return subprocess.run([sys.executable, "-m", "node", *args], cwd=Path.cwd(),
                          env=_env(env), capture_output=True, text=True, timeout=60)


def ok(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = run(*args, env=env)
    assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stdout + proc.stderr
    return proc


def refused(proc: subprocess.CompletedProcess[str], *needles: str,
            code: int | None = None) -> str:
    """Assert ``proc`` failed with exactly one 'gridnode: error:' line; return it."""
    assert proc.returncode != 0, (proc.args, proc.stdout, proc.stderr)
    if code is not None:
        assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("gridnode: error:"), proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def snapshot(*dirs: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for d in dirs if d.exists() for p in sorted(d.rglob("*"))
            if p.is_file()}


def assert_unchanged(before: dict[Path, bytes]) -> None:
    """Every file stored before is still there, byte for byte (new files are allowed)."""
    for path, data in before.items():
        assert path.exists(), f"{path} was removed"
        assert path.read_bytes() == data, f"{path} was changed"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def node_id(data_dir: Path) -> str:
    return read_key(data_dir / "node.key").id.hex()


# A grid made once per module: A holds the authority (and is a node of its
# own), B joined it.  Each test gets private copies in its tmp_path.


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("template")
    old = Path.cwd()
    os.chdir(root)
    try:
        ok("init", "--data-dir", "A", "--site", "site-a")
        ok("init", "--data-dir", "B", "--grid", "A/grid.info", "--site", "site-b")
        ok("grid", "admit", "--data-dir", "A", "B/join-request", "--out", "B/node.cert")
        ok("cert", "install", "--data-dir", "B", "B/node.cert")
    finally:
        os.chdir(old)
    return root


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def grid(template: Path, tmp_path: Path) -> Path:
    """Fresh copies of the template's A and B in tmp_path (modes preserved)."""
    for name in ("A", "B"):
        shutil.copytree(template / name, tmp_path / name)
    return tmp_path


# -- a. the happy path ----------------------------------------------------------


def test_init_admit_install_revoke_flow(tmp_path: Path, user_dir: Path) -> None:
    a, b = tmp_path / "A", tmp_path / "B"
    ok("init", "--data-dir", "A")
    ok("init", "--data-dir", "B", "--grid", "A/grid.info")
    assert (b / "join-request").exists() and not (b / "node.cert").exists()
    ok("grid", "admit", "--data-dir", "A", "B/join-request", "--out", "B/node.cert")
    ok("cert", "install", "--data-dir", "B", "B/node.cert")

    user_keys = list(user_dir.glob("*/user.key"))
    assert len(user_keys) == 1  # the grid's creator is its first admin user
    for key in (a / "node.key", a / "authority.key", b / "node.key", *user_keys):
        assert mode(key) == 0o600, key
    assert mode(a) == 0o700 and mode(b) == 0o700
    assert not (b / "authority.key").exists()

    info = json.loads(ok("grid", "info", "--data-dir", "A", "--json").stdout)
    assert info["name"] == "local-grid"
    assert info["grid"] == json.loads(ok("grid", "info", "--data-dir", "B", "--json").stdout)[
        "grid"]
    shown = json.loads(ok("cert", "show", "--data-dir", "B", "--json").stdout)
    b_id = shown["id"]
    assert b_id == node_id(b)
    assert shown["grid"] == info["grid"] and shown["kind"] == "node"
    assert set(shown["roles"]) == set(ROLES)

    ok("grid", "revoke", "--data-dir", "A", b_id)
    assert (a / "revocations").exists()
    again = ok("grid", "revoke", "--data-dir", "A", b_id)
    assert "already revoked" in again.stdout

    # The revoked node's join request is not admitted a second time.
    line = refused(run("grid", "admit", "--data-dir", "A", "B/join-request",
                       "--out", "B/again.cert"), "revoked")
    assert b_id in line
    assert not (b / "again.cert").exists()


# -- b. GRIDNODE_DATA_DIR -------------------------------------------------------------


def test_gridnode_data_dir_is_honoured(tmp_path: Path) -> None:
    env = {"GRIDNODE_DATA_DIR": str(tmp_path / "E")}
    ok("init", env=env)
    assert (tmp_path / "E" / "node.key").exists()
    assert mode(tmp_path / "E") == 0o700
    shown = json.loads(ok("cert", "show", "--json", env=env).stdout)
    assert shown["id"] == node_id(tmp_path / "E")
    assert not (tmp_path / "home").exists()  # the default data dir was not touched


# -- c. bad input ------------------------------------------------------------------------


def test_unknown_config_key_is_refused_by_name(grid: Path) -> None:
    config = grid / "B" / "config.toml"
    config.write_text(config.read_text().replace("log_level", "log_lvl"))
    before = snapshot(grid / "B")
    refused(run("run", "--data-dir", "B", "--listen", "127.0.0.1:0"), "'log_lvl'",
            "config.toml")
    assert_unchanged(before)
    assert not (grid / "B" / "admin.sock").exists()


@pytest.mark.parametrize(("flags", "needle"), [
    (["--listen", "nohost"], "'nohost'"),
    (["--listen", "1.2.3.4:99999"], "'1.2.3.4:99999'"),
    (["--listen", "127.0.0.1:0", "--bootstrap", "x:y"], "'x:y'"),
])
def test_malformed_addresses_for_run_are_refused(grid: Path, flags: list[str],
                                                 needle: str) -> None:
    before = snapshot(grid / "B")
    line = refused(run("run", "--data-dir", "B", *flags), needle)
    assert "config.toml" not in line  # the bad value came from the command line
    assert_unchanged(before)


def test_port_in_use_is_refused(grid: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        refused(run("run", "--data-dir", "B", "--listen", f"127.0.0.1:{port}"),
                f"127.0.0.1:{port}", "in use")
    assert not (grid / "B" / "admin.sock").exists()


def test_missing_node_key_is_refused(grid: Path) -> None:
    (grid / "B" / "node.key").unlink()
    before = snapshot(grid / "B")
    refused(run("run", "--data-dir", "B", "--listen", "127.0.0.1:0"), "node.key")
    assert_unchanged(before)
    assert not (grid / "B" / "state.sqlite").exists()


@pytest.mark.parametrize("command", [["run", "--listen", "127.0.0.1:0"], ["cert", "show"]])
def test_corrupt_node_key_is_refused(grid: Path, command: list[str]) -> None:
    key = grid / "B" / "node.key"
    key.write_bytes(b"this is not a key\n")
    before = snapshot(grid / "B")
    refused(run(*command, "--data-dir", "B"), "node.key", "corrupt")
    assert_unchanged(before)
    assert not (grid / "B" / "state.sqlite").exists()


@pytest.mark.parametrize("command", [["run", "--listen", "127.0.0.1:0"], ["cert", "show"]])
def test_world_readable_node_key_is_refused(grid: Path, command: list[str]) -> None:
    key = grid / "B" / "node.key"
    key.chmod(0o644)
    before = snapshot(grid / "B")
    refused(run(*command, "--data-dir", "B"), "node.key", "0644", "chmod 600")
    assert_unchanged(before)
    assert mode(key) == 0o644  # reported, not silently "fixed"
    assert not (grid / "B" / "state.sqlite").exists()


def test_cert_from_another_grid_is_refused(grid: Path) -> None:
    ok("init", "--data-dir", "C")
    ok("init", "--data-dir", "D", "--grid", "C/grid.info")
    ok("grid", "admit", "--data-dir", "C", "D/join-request", "--out", "c.cert")
    before = snapshot(grid / "B")
    refused(run("cert", "install", "--data-dir", "B", "c.cert"), "c.cert", "grid")
    assert_unchanged(before)


def test_cert_for_another_key_is_refused(grid: Path) -> None:
    ok("init", "--data-dir", "D", "--grid", "A/grid.info")
    ok("grid", "admit", "--data-dir", "A", "D/join-request", "--out", "d.cert")
    before = snapshot(grid / "B")
    refused(run("cert", "install", "--data-dir", "B", "d.cert"), "d.cert", "key")
    assert_unchanged(before)


def _expired_cert_for_b(grid: Path) -> bytes:
    authority = read_key(grid / "A" / "authority.key")
    now = int(time.time())
    cert = Certificate.issue(authority, kind="node",
                             subject_key=read_key(grid / "B" / "node.key").public_key,
                             name="site-b", roles=ROLES, not_before=now - 30 * DAY,
                             not_after=now - CLOCK_SKEW - 120)
    return cert.raw


def test_expired_cert_install_is_refused(grid: Path) -> None:
    (grid / "expired.cert").write_bytes(_expired_cert_for_b(grid))
    before = snapshot(grid / "B")
    refused(run("cert", "install", "--data-dir", "B", "expired.cert"), "expired")
    assert_unchanged(before)


def test_run_with_an_expired_cert_is_refused(grid: Path) -> None:
    (grid / "B" / "node.cert").write_bytes(_expired_cert_for_b(grid))
    before = snapshot(grid / "B")
    refused(run("run", "--data-dir", "B", "--listen", "127.0.0.1:0"), "expired")
    assert_unchanged(before)
    assert not (grid / "B" / "admin.sock").exists()


def test_run_with_a_revoked_cert_is_refused(grid: Path) -> None:
    ok("grid", "revoke", "--data-dir", "A", node_id(grid / "B"))
    shutil.copy(grid / "A" / "revocations", grid / "B" / "revocations")
    before = snapshot(grid / "B")
    refused(run("run", "--data-dir", "B", "--listen", "127.0.0.1:0"), "revoked")
    assert_unchanged(before)
    assert not (grid / "B" / "admin.sock").exists()


def test_tampered_join_request_is_refused(grid: Path) -> None:
    request = grid / "B" / "join-request"
    data = bytearray(request.read_bytes())
    data[len(data) // 2] ^= 0x01
    request.write_bytes(bytes(data))
    before = snapshot(grid / "A", grid / "B")
    refused(run("grid", "admit", "--data-dir", "A", "B/join-request", "--out", "new.cert"),
            "join-request", "tampered")
    assert_unchanged(before)
    assert not (grid / "new.cert").exists()


@pytest.mark.parametrize("corrupt", ["garbage", "flipped"])
def test_corrupt_grid_info_for_init_is_refused(grid: Path, corrupt: str) -> None:
    data = bytearray((grid / "A" / "grid.info").read_bytes())
    if corrupt == "garbage":
        data = bytearray(b"not a grid\n")
    else:
        data[len(data) // 2] ^= 0x01
    (grid / "bad.info").write_bytes(bytes(data))
    refused(run("init", "--data-dir", "D", "--grid", "bad.info"), "bad.info", "corrupt")
    assert not (grid / "D").exists()


def test_init_of_an_initialised_dir_is_refused(grid: Path) -> None:
    before = snapshot(grid / "A")
    refused(run("init", "--data-dir", "A"), "already initialised")
    refused(run("init", "--data-dir", "A", "--grid", "A/grid.info"), "already initialised")
    assert_unchanged(before)
    assert snapshot(grid / "A").keys() == before.keys()


def test_admit_without_authority_key_is_refused(grid: Path) -> None:
    ok("init", "--data-dir", "D", "--grid", "A/grid.info")
    before = snapshot(grid / "B", grid / "D")
    refused(run("grid", "admit", "--data-dir", "B", "D/join-request", "--out", "d.cert"),
            "authority key")
    assert_unchanged(before)
    assert not (grid / "d.cert").exists()


@pytest.mark.parametrize("bad_id", ["zz", "ab" * 19 + "a", "ab" * 21, "g" * 40, ""])
def test_revoke_with_a_malformed_id_is_refused(grid: Path, bad_id: str) -> None:
    before = snapshot(grid / "A")
    refused(run("grid", "revoke", "--data-dir", "A", bad_id), "not a node id", code=2)
    assert_unchanged(before)
    assert not (grid / "A" / "revocations").exists()


@pytest.mark.parametrize("argv", [
    [],
    ["bogus"],
    ["grid"],
    ["grid", "bogus"],
    ["cert", "install"],
    ["grid", "admit", "--data-dir", "A"],
    ["run", "--log-level", "loud"],
    ["status", "--no-such-flag"],
    ["init", "--data-dir", "D", "--roles", "queue,nope"],
    ["init", "--data-dir", "D", "--roles", "queue,queue"],
    ["grid", "admit", "--data-dir", "A", "B/join-request", "--out", "x", "--days", "ten"],
])
def test_usage_errors_are_one_line(tmp_path: Path, argv: list[str]) -> None:
    line = refused(run(*argv), code=2)
    assert "--help" in line
    assert not (tmp_path / "D").exists()


@pytest.mark.parametrize("command", ["status", "peers"])
def test_status_without_a_daemon_is_refused(grid: Path, command: str) -> None:
    refused(run(command, "--data-dir", "A"), "no gridnode is running")


# Refusals that used to end in a traceback or a half-made data dir.


@pytest.mark.parametrize(("argv", "needle"), [
    (["init", "--data-dir", "D", "--grid", "A/grid.info", "--name", "x"], "--name"),
    (["init", "--data-dir", "D", "--site", "s" * 129], "site"),
    (["init", "--data-dir", "D", "--name", "tab\there"], "grid name"),
    (["init", "--data-dir", "D", "--grid", "A/grid.info", "--site", "new\nline"], "site"),
])
def test_init_refuses_bad_names_before_writing(grid: Path, argv: list[str],
                                                needle: str) -> None:
    refused(run(*argv), needle, code=2)
    assert not (grid / "D").exists()


def test_init_into_a_file_is_refused(grid: Path) -> None:
    (grid / "D").write_bytes(b"a file\n")
    refused(run("init", "--data-dir", "D"), "D")
    assert (grid / "D").read_bytes() == b"a file\n"


def test_admit_out_into_a_missing_dir_is_refused(grid: Path) -> None:
    before = snapshot(grid / "A", grid / "B")
    refused(run("grid", "admit", "--data-dir", "A", "B/join-request",
                "--out", "missing/node.cert"), "No such file")
    assert_unchanged(before)


def test_admit_with_absurd_days_is_refused(grid: Path) -> None:
    refused(run("grid", "admit", "--data-dir", "A", "B/join-request", "--out", "x.cert",
                "--days", str(10**15)), "--days", code=2)
    assert not (grid / "x.cert").exists()


@pytest.mark.parametrize("argv", [
    ["cert", "install", "--data-dir", "B", "A"],
    ["grid", "admit", "--data-dir", "A", "B", "--out", "x.cert"],
])
def test_a_directory_instead_of_a_file_is_refused(grid: Path, argv: list[str]) -> None:
    before = snapshot(grid / "A", grid / "B")
    refused(run(*argv), "directory")
    assert_unchanged(before)


@pytest.mark.parametrize(("config", "needle"), [("A", "cannot read"), ("nope.toml", "nope")])
def test_run_with_an_unusable_config_is_refused(grid: Path, config: str, needle: str) -> None:
    refused(run("run", "--data-dir", "B", "--listen", "127.0.0.1:0", "--config", config),
            needle)
    assert not (grid / "B" / "admin.sock").exists()


# -- d. the daemon ---------------------------------------------------------------------------


@pytest.fixture
def node_a(template: Path, tmp_path: Path) -> Path:
    shutil.copytree(template / "A", tmp_path / "A")
    return tmp_path / "A"


def _wait_for_status(proc: subprocess.Popen[bytes], a: Path, log: Path) -> dict:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        code = proc.poll()
        assert code is None, f"daemon exited {code}: {log.read_text()}"
        if (a / "admin.sock").exists():
            status = run("status", "--data-dir", "A", "--json")
            if status.returncode == 0:
                return json.loads(status.stdout)
        time.sleep(0.05)
    raise AssertionError(f"the daemon did not answer within 20 s: {log.read_text()}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_daemon_answers_and_stops_cleanly(node_a: Path, tmp_path: Path,
                                          signum: signal.Signals) -> None:
    log = tmp_path / "daemon.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "node", "run", "--data-dir", "A", "--listen", "127.0.0.1:0"],
            cwd=tmp_path, env=_env(None), stdout=out, stderr=out)
    try:
        status = _wait_for_status(proc, node_a, log)
        for key in ("id", "grid", "site", "roles", "addresses", "uptime", "peers_known",
                    "dht", "refused"):
            assert key in status, key
        assert status["id"] == node_id(node_a)
        assert status["site"] == "site-a"
        assert status["peers_known"] == 0
        [address] = status["addresses"]
        assert address.startswith("127.0.0.1:") and not address.endswith(":0")
        assert mode(node_a / "admin.sock") == 0o600

        peers = json.loads(ok("peers", "--data-dir", "A", "--json").stdout)
        assert peers == []
        assert status["id"] in ok("status", "--data-dir", "A").stdout

        proc.send_signal(signum)
        assert proc.wait(timeout=15) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not (node_a / "admin.sock").exists()
    assert (node_a / "state.sqlite").exists()
    text = log.read_text()
    assert "Traceback" not in text
    assert f"received {signum.name}" in text
    assert "event=node.stopped" in text


def test_fresh_init_with_no_flags_runs_at_once(tmp_path: Path) -> None:
    """`gridnode init` alone makes a one-node grid in the default data dir that runs."""
    ok("init")
    default = tmp_path / "home" / ".local" / "share" / "gridnode"
    assert (default / "node.cert").exists() and (default / "authority.key").exists()
    log = tmp_path / "daemon.log"
    with log.open("wb") as out:
        # The port is the only thing overridden: 7400 may be taken on a CI machine.
        proc = subprocess.Popen([sys.executable, "-m", "node", "run", "--listen", "127.0.0.1:0"],
                                cwd=tmp_path, env=_env(None), stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 20
        status = run("status", "--json")
        while status.returncode != 0 and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.05)
            status = run("status", "--json")
        assert status.returncode == 0, log.read_text()
        assert json.loads(status.stdout)["id"] == node_id(default)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_second_daemon_on_the_same_data_dir_is_refused(node_a: Path, tmp_path: Path) -> None:
    log = tmp_path / "daemon.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "node", "run", "--data-dir", "A", "--listen", "127.0.0.1:0"],
            cwd=tmp_path, env=_env(None), stdout=out, stderr=out)
    try:
        status = _wait_for_status(proc, node_a, log)
        port = status["addresses"][0].rsplit(":", 1)[1]
        # Same data dir, same port: the admin socket answers first, so the
        # admin hears "already running", not "port in use".
        refused(run("run", "--data-dir", "A", "--listen", f"127.0.0.1:{port}"),
                "already running")
        assert run("status", "--data-dir", "A").returncode == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
