"""Conversation continuity across a cold resume, and a fork, with the real Claude Code CLI.

Real processes throughout: nats-server, a coordinator, two runners running the real bundled
CLI in bwrap sandboxes, and the scripted Messages API (`runner.scripted.model_api`), the only
fake, which records every request it receives. Turn 1 asks the agent to remember a word and
to write a file; the runner holding the session is SIGKILLed; the session is resumed on the
other runner; turn 2 asks for the word. The model must have received turn 1 in the request
that answered turn 2, and the file must be there: the CLI's transcript under the sandbox HOME
and the workspace both came back from the snapshot, and the CLI resumed the same Claude
conversation id.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import nats
import pytest

from ash.bundle import pack
from ash.embedded_nats import start_nats
from tests.e2e.conftest import ModelApi
from tests.e2e.sse import text_of
from tests.e2e.test_resume import Rig
from tests.procs import ROOT, Stack, clean_env, free_port

pytestmark = pytest.mark.e2e

RUNNERS = {"rc-a": "8", "rc-b": "4"}  # max sessions: spread placement prefers rc-a


@dataclass
class RealStack:
    stack: Stack
    model: ModelApi


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealStack]:
    tmp = tmp_path_factory.mktemp("resume-real")
    server = start_nats(tmp / "nats", log_path=tmp / "nats.log")
    port = free_port()
    with (tmp / "model.log").open("wb") as out:
        model = subprocess.Popen(
            [sys.executable, "-m", "runner.scripted.model_api", "--port", str(port)],
            cwd=ROOT, env=clean_env(), stdout=out, stderr=subprocess.STDOUT,
        )
    stack = Stack(tmp, server.url)
    try:
        stack.start_coordinator(ASH_PLACEMENT="spread", ASH_PLACEMENT_CHOICES="1")
        for name, max_sessions in RUNNERS.items():
            stack.start_runner(
                name, ASH_CLI="claude", ASH_MODEL_BASE_URL=f"http://127.0.0.1:{port}",
                ANTHROPIC_API_KEY="sk-ant-resume-" + uuid.uuid4().hex, ASH_MAX_SESSIONS=max_sessions,
                ASH_ADVERT_INTERVAL_S="0.2", ASH_SNAPSHOT_DEBOUNCE_S="0.3", ASH_POOL_GENERIC="1")
        stack.wait_ready(runners=len(RUNNERS))
        yield RealStack(stack, ModelApi(f"http://127.0.0.1:{port}", model))
    finally:
        stack.stop()
        model.terminate()
        model.wait(10)
        server.stop()


@pytest.fixture
async def rig(real: RealStack) -> AsyncIterator[Rig]:
    nc = await nats.connect(real.stack.nats_url)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{real.stack.url}/api/agents", params={"name": "hello"},
                             data=pack(ROOT / "examples" / "hello"),
                             headers={"Content-Type": "application/gzip"}) as r:
            assert r.status == 201, await r.text()
        try:
            yield Rig(real.stack, nc, http, "hello")
        finally:
            await nc.close()


def requests_with(real: RealStack, *markers: str) -> list[dict[str, Any]]:
    """The conversation requests the model received whose messages mention every marker."""
    return [r for r in real.model.requests()
            if r["purpose"] == "conversation"
            and all(m in json.dumps(r["body"]["messages"]) for m in markers)]


async def test_a_fork_continues_the_conversation_under_its_own_id_and_each_goes_its_own_way(
    real: RealStack, rig: Rig,
) -> None:
    alpha, bravo, charlie = (w + uuid.uuid4().hex[:6] for w in ("alpha", "bravo", "charlie"))
    sid = (await rig.create())["id"]
    assert text_of(await rig.turn(sid, f"Remember the word {alpha}")) == \
        f"I will remember the word {alpha}."
    fork, _ = await rig.lifecycle(sid, "fork", want=201)
    fid = fork["id"]

    await rig.turn(sid, f"Remember the word {bravo}")
    await rig.turn(fid, f"Remember the word {charlie}")
    assert text_of(await rig.turn(sid, "What was the word?")) == f"The word was {bravo}."
    assert text_of(await rig.turn(fid, "What was the word?")) == f"The word was {charlie}."

    # What the model was sent for the fork's recall: the source's first turn, the fork's own
    # word, and nothing the source was told after the fork.
    (fork_recall,) = [r for r in requests_with(real, charlie, "What was the word?")
                      if r["body"]["messages"][-1] and
                      "What was the word?" in json.dumps(r["body"]["messages"][-1])]
    said = json.dumps(fork_recall["body"]["messages"])
    assert f"Remember the word {alpha}" in said and bravo not in said
    source, forked = await rig.get(sid), await rig.get(fid)
    assert forked["claude_session_id"] and source["claude_session_id"]
    assert forked["claude_session_id"] != source["claude_session_id"]


async def test_the_conversation_and_the_workspace_survive_a_sigkilled_runner(
    real: RealStack, rig: Rig,
) -> None:
    word = "pelican" + uuid.uuid4().hex[:6]
    session = await rig.create()
    sid, first_runner = session["id"], session["runner_id"]
    assert first_runner == "rc-a"
    first = await rig.turn(sid, f"Remember the word {word}")
    assert text_of(first) == f"I will remember the word {word}."
    wrote = await rig.turn(sid, "write keep.txt: written before the crash")
    assert [f.data["name"] for f in wrote if f.event == "tool_use"] == ["Write"]
    done = time.time()
    claude_id = (await rig.get(sid))["claude_session_id"]
    assert claude_id
    snap = await rig.wait_snapshot(sid, done, timeout=30)  # debounced, after the last turn
    assert snap.claude_session_id == claude_id

    victim = next(p for p in rig.stack.procs if p.name == first_runner)
    victim.popen.send_signal(signal.SIGKILL)
    victim.popen.wait(10)
    resumed, headers = await rig.lifecycle(sid, "resume")
    assert headers["Ash-Resumed"] == "cold"
    assert resumed["status"] == "active" and resumed["runner_id"] == "rc-b"
    assert resumed["claude_session_id"] == claude_id

    second = await rig.turn(sid, "What was the word?")
    assert text_of(second) == f"The word was {word}."
    assert "error" not in [f.event for f in second]
    start = second[0].data
    assert start["runner_id"] == "rc-b" and start["claude_session_id"] == claude_id
    # The request that answered turn 2 carried turn 1: the CLI resumed the same conversation
    # from the transcript the snapshot brought along.
    recall = requests_with(real, "What was the word?", word)
    assert recall, "the model never received turn 2 with turn 1 in it"
    assert f"Remember the word {word}" in json.dumps(recall[-1]["body"]["messages"])
    # And the workspace came back with it.
    assert await rig.read_file(sid, "keep.txt") == b"written before the crash"
    workspace = rig.stack.tmp / "rc-b" / "sessions" / sid / "workspace"
    assert (workspace / "keep.txt").read_text() == "written before the crash"
    assert (workspace / "CLAUDE.md").exists()
