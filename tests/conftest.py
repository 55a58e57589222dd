"""Shared test helpers: real data dirs made through the real CLI."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from node.cli import main as gridnode
from node.config import Config, load_config
from node.datadir import DataDir


def cli(*argv: str) -> str:
    """Run a gridnode command in-process; return its stdout, fail the test on error."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = gridnode(list(argv))
    assert code == 0, f"gridnode {' '.join(argv)} exited {code}"
    return out.getvalue()


def make_grid(root: Path, n: int) -> list[DataDir]:
    """A grid of ``n`` admitted nodes: node 0 holds the authority."""
    dirs = [DataDir(root / f"n{i:02d}") for i in range(n)]
    cli("init", "--data-dir", str(dirs[0].root), "--site", "site-00")
    for i, dd in enumerate(dirs[1:], start=1):
        cli("init", "--data-dir", str(dd.root), "--grid", str(dirs[0].grid_info),
            "--site", f"site-{i:02d}")
        cli("grid", "admit", "--data-dir", str(dirs[0].root), str(dd.join_request),
            "--out", str(dd.node_cert))
    return dirs


def node_config(dd: DataDir, **overrides: object) -> Config:
    base = {"listen": "127.0.0.1:0", "refresh_interval": 1.0}
    base.update(overrides)
    return load_config(dd.config, base)


@pytest.fixture(autouse=True)
def user_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test has its own user dir (and subprocesses inherit it): never the real one."""
    path = tmp_path_factory.mktemp("user")
    monkeypatch.setenv("GRIDNODE_USER_DIR", str(path))
    return path


@pytest.fixture
def short_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short directory: Unix socket paths are limited to about 100 bytes."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="gn-"))
    yield path
    import shutil

    shutil.rmtree(path, ignore_errors=True)
