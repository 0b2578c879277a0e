"""The packages depend on each other in one direction only (DESIGN.md, STYLE.md rule 1)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = {"protocol", "coordinator", "runner", "ash"}
ALLOWED = {
    "protocol": set(),
    "coordinator": {"protocol"},
    "runner": {"protocol"},
    "ash": {"protocol"},
}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & OURS


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_the_layering_allows(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"{package}/ has no modules"
    bad = {
        f"{f.relative_to(ROOT)} imports {other}"
        for f in files
        for other in imports_of(f) - ALLOWED[package] - {package}
    }
    assert not bad, "layering violated:\n" + "\n".join(sorted(bad))


def test_only_the_bridge_imports_the_agent_sdk() -> None:
    importers = set()
    for package in OURS:
        for f in (ROOT / package).rglob("*.py"):
            tree = ast.parse(f.read_text())
            for node in ast.walk(tree):
                names = (
                    [a.name for a in node.names] if isinstance(node, ast.Import)
                    else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                )
                if any(n.split(".")[0] == "claude_agent_sdk" for n in names):
                    importers.add(str(f.relative_to(ROOT)))
    assert importers == {"runner/bridge.py"}


def test_the_walker_sees_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "m.py"
    bad.write_text("from runner.sessions import SessionManager\nimport coordinator.app\n")
    assert imports_of(bad) == {"runner", "coordinator"}
