"""The client package imports only `protocol` of ours: users install it without the servers."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import ash

OURS = {"protocol", "coordinator", "runner", "ash"}
THIRD_PARTY = {"aiohttp", "msgspec"}


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_ash_imports_only_protocol_stdlib_and_its_dependencies() -> None:
    files = sorted(Path(ash.__file__).parent.rglob("*.py"))
    assert len(files) >= 8
    for path in files:
        roots = _imported_roots(path)
        assert not roots & {"coordinator", "runner"}, f"{path.name} imports a server package"
        unknown = roots - OURS - THIRD_PARTY - set(sys.stdlib_module_names) - {"__future__"}
        assert not unknown, f"{path.name} imports {sorted(unknown)}, not declared for the client"
