"""Fixtures for the `ash` client tests: a fake coordinator (see fake_server), an agent, and a
real stack (`live_ash`, started once for the package when a test asks for it)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ash.embedded_nats import start_nats
from coordinator.auth import mint_key
from tests.ash.fake_server import FakeAsh
from tests.procs import Stack, clean_env


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


@dataclass
class LiveAsh:
    """A real stack: nats-server, a coordinator requiring API keys, a runner (stand-in CLI)."""

    url: str
    key: str
    tmp: Path

    def env(self, **extra: str) -> dict[str, str]:
        """An environment for `ash` / example code that points at this stack."""
        return clean_env(ASH_URL=self.url, ASH_API_KEY=self.key, ASH_HOME=str(self.tmp / "home"),
                         NO_COLOR="1", **extra)  # fmt: skip


@pytest.fixture(scope="package")
def live_ash(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveAsh]:
    tmp = tmp_path_factory.mktemp("live-ash")
    nats = start_nats(tmp / "nats", log_path=tmp / "nats.log")
    stack = Stack(tmp, nats.url)
    key = mint_key().token
    try:
        stack.start_coordinator(ASH_AUTH="required", ASH_BOOTSTRAP_ADMIN_KEY=key)
        stack.start_runner("live-runner", ASH_CLI="standin")
        stack.wait_ready()
        yield LiveAsh(stack.url, key, tmp)
    finally:
        stack.stop()
        nats.stop()
