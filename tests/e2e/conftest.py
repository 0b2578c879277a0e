"""A whole Ash stack for end-to-end tests: real nats-server, the scripted Messages API, a
coordinator process and a runner process that runs the real bundled Claude Code CLI in bwrap."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ash.embedded_nats import start_nats
from tests.procs import ROOT, Stack, clean_env, free_port


@dataclass
class ModelApi:
    url: str
    popen: subprocess.Popen[bytes]

    def requests(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(self.url + "/_scripted/requests", timeout=5) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]


# A secret the runner holds in its own environment; no sandbox may ever see it.
HOST_SECRET = "host-secret-" + uuid.uuid4().hex
# The runner's model key: the egress proxy hands it to the model; sandboxes hold a placeholder.
MODEL_KEY = "sk-ant-e2e-" + uuid.uuid4().hex


@dataclass
class E2E:
    stack: Stack
    model: ModelApi
    runner_dir: Path

    @property
    def url(self) -> str:
        return self.stack.url


@pytest.fixture(scope="package")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2E]:
    tmp = tmp_path_factory.mktemp("e2e")
    nats = start_nats(tmp / "nats", log_path=tmp / "nats.log")
    port = free_port()
    with (tmp / "model.log").open("wb") as out:
        model = subprocess.Popen(
            [sys.executable, "-m", "runner.scripted.model_api", "--port", str(port)],
            cwd=ROOT, env=clean_env(), stdout=out, stderr=subprocess.STDOUT,
        )
    stack = Stack(tmp, nats.url)
    try:
        # Every e2e module shares this runner and few tests end their sessions, so the
        # package leaves ~100 idle sandboxes behind: commit memory and CPU loosely (each sandbox's
        # 2 GB limit is a cap, not what it uses) so that placement never runs out of room.
        stack.start_coordinator(ASH_OVERCOMMIT_MEMORY="1000", ASH_OVERCOMMIT_CPU="1000")
        stack.start_runner("runner", ASH_CLI="claude", ASH_MODEL_BASE_URL=f"http://127.0.0.1:{port}",
                           HOST_SECRET_TOKEN=HOST_SECRET, ANTHROPIC_API_KEY=MODEL_KEY)
        stack.wait_ready()
        yield E2E(stack, ModelApi(f"http://127.0.0.1:{port}", model), tmp / "runner")
    finally:
        stack.stop()
        model.terminate()
        model.wait(10)
        nats.stop()
