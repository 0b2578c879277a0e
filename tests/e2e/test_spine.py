"""The spine, end to end: deploy, converse, use tools, stay inside the sandbox, end.

Real processes throughout: nats-server, a coordinator and a runner (separate processes that
talk only over NATS), bubblewrap, cgroups, and the real Claude Code CLI bundled with
claude-agent-sdk. Only the model is scripted (runner.scripted.model_api).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ash.bundle import pack
from tests.e2e.conftest import E2E
from tests.e2e.sse import Frame, read_turn, text_of
from tests.procs import ROOT

pytestmark = pytest.mark.e2e


async def deploy(http: aiohttp.ClientSession, url: str, name: str = "hello") -> dict[str, Any]:
    async with http.post(f"{url}/api/agents", params={"name": name},
                         data=pack(ROOT / "examples" / "hello"),
                         headers={"Content-Type": "application/gzip"}) as r:
        assert r.status == 201, await r.text()
        return await r.json()  # type: ignore[no-any-return]


async def new_session(http: aiohttp.ClientSession, url: str, agent: str = "hello") -> str:
    async with http.post(f"{url}/api/sessions", json={"agent": agent}) as r:
        assert r.status == 201, await r.text()
        body = await r.json()
    assert body["status"] == "active" and body["runner_id"] == "runner"
    return str(body["id"])


async def turn(http: aiohttp.ClientSession, url: str, sid: str, text: str) -> list[Frame]:
    async with http.post(f"{url}/api/sessions/{sid}/messages", json={"content": text}) as r:
        return await read_turn(r)


def conversation_requests(e2e: E2E, marker: str) -> list[dict[str, Any]]:
    """The model requests whose conversation mentions `marker`."""
    return [r for r in e2e.model.requests()
            if r["purpose"] == "conversation" and marker in json.dumps(r["body"]["messages"])]


async def test_two_turn_conversation_the_second_answer_depends_on_the_first(e2e: E2E) -> None:
    word = "pelican" + uuid.uuid4().hex[:6]
    async with aiohttp.ClientSession() as http:
        await deploy(http, e2e.url)
        sid = await new_session(http, e2e.url)
        first = await turn(http, e2e.url, sid, f"Remember the word {word}")
        second = await turn(http, e2e.url, sid, "What was the word?")
        async with http.get(f"{e2e.url}/api/sessions/{sid}/messages") as r:
            history = (await r.json())["messages"]
        async with http.get(f"{e2e.url}/api/sessions/{sid}") as r:
            view = await r.json()

    assert text_of(first) == f"I will remember the word {word}."
    assert text_of(second) == f"The word was {word}."
    # The model saw turn 1 in the request that answered turn 2.
    recalls = [r for r in conversation_requests(e2e, "What was the word?")]
    assert recalls, "the model never received turn 2"
    assert f"Remember the word {word}" in json.dumps(recalls[-1]["body"]["messages"])

    # Every frame carries id == seq, one per event, gapless across both turns.
    frames = first + second
    assert [f.id for f in frames] == [f.data["seq"] for f in frames]
    assert [f.id for f in frames] == list(range(frames[0].id, frames[0].id + len(frames)))
    assert [f.event for f in first][:2] == ["session_start", "user_message"]
    assert first[-1].event == "done" and first[-1].data["reason"] == "completed"
    assert {f.data["session_id"] for f in frames} == {sid}
    assert "turn_complete" in {f.event for f in first} and "message" in {f.event for f in first}

    # The history holds both turns, in order, and the session knows its Claude conversation.
    roles = [m["role"] for m in history]
    assert roles == ["user", "assistant", "result", "user", "assistant", "result"]
    assert history[0]["content"] == f"Remember the word {word}"
    assert view["turns"] == 2 and view["claude_session_id"]


async def test_tool_turns_write_into_the_session_workspace_and_nowhere_else(e2e: E2E) -> None:
    name = f"notes-{uuid.uuid4().hex[:8]}.txt"
    async with aiohttp.ClientSession() as http:
        await deploy(http, e2e.url)
        sid = await new_session(http, e2e.url)
        wrote = await turn(http, e2e.url, sid, f"write {name}: hello from the sandbox")
        ran = await turn(http, e2e.url, sid, f"run: echo ran > bash-{name}")

    tool_uses = [f.data for f in wrote if f.event == "tool_use"]
    assert [t["name"] for t in tool_uses] == ["Write"]
    assert tool_uses[0]["input"]["file_path"] == f"/workspace/{name}"
    results = [f.data for f in wrote if f.event == "tool_result"]
    assert results and not results[0]["is_error"]
    assert [f.data["name"] for f in ran if f.event == "tool_use"] == ["Bash"]

    # sessions/<id> links to the session's sandbox disk (runner/daemon.py); rglob below does
    # not follow links, so it must find the file at the link's target and nowhere else.
    workspace = (e2e.runner_dir / "sessions" / sid / "workspace").resolve()
    assert (workspace / name).read_text() == "hello from the sandbox"
    assert (workspace / f"bash-{name}").read_text() == "ran\n"
    # Nowhere else: not at the sandbox's path on the host, not in any other session, not in /tmp.
    assert not Path("/workspace").joinpath(name).exists()
    found = [p for p in e2e.stack.tmp.rglob(name)]
    assert found == [workspace / name]
    assert not list(Path("/tmp").glob(name))


async def test_the_agent_cannot_read_outside_its_workspace(e2e: E2E) -> None:
    token = f"planted-secret-{uuid.uuid4().hex}"
    in_runner_dir = e2e.runner_dir / f"planted-{token[-8:]}.txt"
    in_host_home = Path.home() / f"ash-planted-{token[-8:]}.txt"
    in_runner_dir.write_text(token)
    in_host_home.write_text(token)
    try:
        async with aiohttp.ClientSession() as http:
            await deploy(http, e2e.url)
            victim = await new_session(http, e2e.url)
            victim_file = e2e.runner_dir / "sessions" / victim / "workspace" / "private.txt"
            victim_file.write_text(token)
            attacker = await new_session(http, e2e.url)
            frames: list[Frame] = []
            for path in (in_runner_dir, in_host_home, victim_file):
                frames += await turn(http, e2e.url, attacker, f"run: cat {path}")
            frames += await turn(http, e2e.url, attacker, "run: ls -a / ; find / -path /proc -prune -o -name 'planted-*' -print ; echo searched")
    finally:
        in_runner_dir.unlink()
        in_host_home.unlink()

    results = [f.data for f in frames if f.event == "tool_result"]
    assert len(results) == 4, "every attempt must have run"
    assert all(r["is_error"] for r in results[:3]), results
    listing = json.dumps(results[3]["content"])
    assert "searched" in listing and "workspace" in listing
    assert "root" not in listing and "work\\n" not in listing and "planted-" not in listing
    everything = json.dumps([f.data for f in frames])
    assert token not in everything


async def make_bundle(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def assert_error(status: int, body: dict[str, Any], want_status: int, want_code: str) -> None:
    assert status == want_status, body
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "retryable"}
    assert body["error"]["code"] == want_code and body["error"]["message"]


async def test_bad_input_gets_the_json_error_shape_and_leaves_nothing_stuck(e2e: E2E) -> None:
    url = e2e.url
    async with aiohttp.ClientSession() as http:
        await deploy(http, url)

        async def call(method: str, path: str, **kw: Any) -> tuple[int, dict[str, Any]]:
            async with http.request(method, url + path, **kw) as r:
                return r.status, await r.json()

        assert_error(*await call("POST", "/api/sessions", json={"agent": "no-such-agent"}), 404, "not_found")
        no_claude_md = await make_bundle({"README.md": "no agent here"})
        assert_error(*await call("POST", "/api/agents", params={"name": "broken"}, data=no_claude_md),
                     422, "unprocessable")
        assert_error(*await call("GET", "/api/agents/broken"), 404, "not_found")
        assert_error(*await call("POST", "/api/agents", params={"name": "x"}, data=b"not a tar"),
                     400, "bad_request")
        assert_error(*await call("POST", "/api/sessions", data=b"{not json",
                                 headers={"Content-Type": "application/json"}), 400, "invalid_json")
        assert_error(*await call("POST", "/api/sessions", json={"agent": "hello", "bogus": 1}),
                     422, "validation_failed")
        assert_error(*await call("GET", "/api/no/such/route"), 404, "not_found")
        assert_error(*await call("GET", "/api/sessions/nope"), 404, "not_found")
        assert_error(*await call("PUT", "/api/sessions"), 405, "method_not_allowed")

        sid = await new_session(http, url)
        assert_error(*await call("POST", f"/api/sessions/{sid}/messages", data=b"[",
                                 headers={"Content-Type": "application/json"}), 400, "invalid_json")
        assert_error(*await call("POST", f"/api/sessions/{sid}/messages", json={"content": ""}),
                     422, "validation_failed")
        # The session is not stuck: it still takes a turn after the bad requests.
        assert text_of(await turn(http, url, sid, "Remember the word heron")) == \
            "I will remember the word heron."

        status, ended = await call("DELETE", f"/api/sessions/{sid}")
        assert status == 200 and ended["status"] == "ended"
        assert_error(*await call("POST", f"/api/sessions/{sid}/messages", json={"content": "hi"}),
                     410, "gone")
        status, again = await call("DELETE", f"/api/sessions/{sid}")
        assert status == 200 and again["status"] == "ended"


async def test_ending_a_session_stops_its_sandbox_and_keeps_its_history(e2e: E2E) -> None:
    async with aiohttp.ClientSession() as http:
        await deploy(http, e2e.url)
        sid = await new_session(http, e2e.url)
        await turn(http, e2e.url, sid, "Remember the word ibis")
        sandbox = sandbox_of(e2e, sid)
        assert sandbox_pids(sandbox), "a live session must have processes in its cgroup"
        async with http.delete(f"{e2e.url}/api/sessions/{sid}") as r:
            assert r.status == 200 and (await r.json())["status"] == "ended"
        async with http.get(f"{e2e.url}/api/sessions/{sid}/messages") as r:
            assert [m["role"] for m in (await r.json())["messages"]] == ["user", "assistant", "result"]
    assert sandbox_pids(sandbox) == []
    assert not (e2e.runner_dir / "sessions" / sid).exists()


def sandbox_of(e2e: E2E, session_id: str) -> str:
    """The session's sandbox slot: sessions/<id> links to sandboxes/<slot>/disk."""
    return (e2e.runner_dir / "sessions" / session_id).resolve().parent.name


def sandbox_pids(sandbox: str) -> list[int]:
    """Processes on this host whose cgroup belongs to the sandbox (named <slot>-<n>)."""
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if f"/{sandbox}-" in Path(entry.path, "cgroup").read_text():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


async def test_openapi_describes_every_route(e2e: E2E) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{e2e.url}/openapi.json") as r:
        doc = await r.json()
        async with http.get(f"{e2e.url}/health") as h:
            health = await h.json()
    ops = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    from coordinator.api.routes import ROUTES

    assert ops == {(r.method, r.path) for r in ROUTES}
    assert len(ROUTES) == len(ops), "a route is listed twice"
    assert "SessionView" in doc["components"]["schemas"]
    assert health["status"] == "ok" and health["nats"] and health["runners"] == 1
