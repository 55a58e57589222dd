"""Imports point down (node -> steering/replication -> overlay), with no cycles,
and the daemon reaches lower layers only through their exported names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("node", "steering", "replication", "overlay")
# What each package may import from the project.
ALLOWED = {
    "node": {"node", "steering", "replication", "overlay"},
    "steering": {"steering", "replication", "overlay"},
    "replication": {"replication", "overlay"},
    "overlay": {"overlay"},
}


def project_imports(path: Path) -> list[tuple[str, int]]:
    """(module, line) of every import of a project package in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [(n, node.lineno) for n in names if n.split(".")[0] in PACKAGES]
    return found


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_point_down(package):
    wrong = [f"{p.relative_to(ROOT)}:{line} imports {mod}"
             for p in sources(package) for mod, line in project_imports(p)
             if mod.split(".")[0] not in ALLOWED[package]]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("package", ["node", "steering", "replication"])
def test_lower_layers_reached_only_through_public_names(package):
    """``from overlay import X`` is fine; ``from overlay.dht import X`` is not."""
    wrong = [f"{p.relative_to(ROOT)}:{line} imports {mod}"
             for p in sources(package) for mod, line in project_imports(p)
             if mod.split(".")[0] != package and "." in mod]
    assert not wrong, "\n".join(wrong)


def test_public_names_exist():
    import overlay

    for name in overlay.__all__:
        assert hasattr(overlay, name), name


def test_the_checker_sees_a_wrong_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from node.daemon import Node\nimport overlay.dht\n")
    assert [m for m, _ in project_imports(bad)] == ["node.daemon", "overlay.dht"]
