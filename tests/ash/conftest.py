"""Fixtures for the `ash` client tests: a fake coordinator (see fake_server) and an agent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ash.fake_server import FakeAsh


@pytest.fixture
def fake_ash() -> Iterator[FakeAsh]:
    yield from FakeAsh().serve_in_thread()


@pytest.fixture
def agent_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "hello"
    (folder / ".claude" / "skills" / "greet").mkdir(parents=True)
    (folder / "CLAUDE.md").write_text("# Hello\n\nYou greet people.\n")
    (folder / ".claude" / "skills" / "greet" / "SKILL.md").write_text("Say hello.\n")
    return folder
