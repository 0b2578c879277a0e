"""MCP servers end to end: the agent's `.mcp.json`, a session's own servers merged over it, and
every server's connection status reported as an `mcp_status` event and in the session view.

Real parts throughout: the real Claude Code CLI in a bwrap sandbox starts the stdio servers
inside the sandbox (`examples/mcp/notes_server.py`, a tiny MCP server run by python3), and an
HTTP server's connection goes through the runner's egress proxy, which refuses a host that is
not on the agent's allowlist (answered locally: nothing leaves the machine).
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest

from ash.bundle import pack
from protocol import codec, subjects
from tests.e2e.conftest import E2E
from tests.e2e.sse import Frame, read_turn
from tests.procs import ROOT

pytestmark = pytest.mark.e2e

EXAMPLE = ROOT / "examples" / "mcp"
# Exits at once, before any MCP handshake: the CLI must call it failed, not leave it out.
BROKEN = {"type": "stdio", "command": "python3", "args": ["-c", "import sys; sys.exit(3)"]}
NOTES = {"type": "stdio", "command": "python3", "args": ["notes_server.py"]}
REFUSED_HOST = "mcp-not-allowed.example.com"  # not on the allowlist: the proxy answers 403


def agent_folder(tmp: Path) -> Path:
    """examples/mcp with a second, broken server in its .mcp.json."""
    folder = tmp / f"mcp-agent-{uuid.uuid4().hex[:6]}"
    shutil.copytree(EXAMPLE, folder)
    servers = {"notes": NOTES, "broken": BROKEN}
    (folder / ".mcp.json").write_text(json.dumps({"mcpServers": servers}))
    return folder


async def deploy(http: aiohttp.ClientSession, url: str, folder: Path, name: str) -> None:
    async with http.post(f"{url}/api/agents", params={"name": name}, data=pack(folder),
                         headers={"Content-Type": "application/gzip"}) as r:
        assert r.status == 201, await r.text()


async def create(http: aiohttp.ClientSession, url: str, agent: str, **options: Any) -> str:
    async with http.post(f"{url}/api/sessions", json={"agent": agent, **options}) as r:
        assert r.status == 201, await r.text()
        return str((await r.json())["id"])


async def turn(http: aiohttp.ClientSession, url: str, sid: str, text: str) -> list[Frame]:
    async with http.post(f"{url}/api/sessions/{sid}/messages", json={"content": text}) as r:
        return await read_turn(r)


async def view(http: aiohttp.ClientSession, url: str, sid: str) -> dict[str, Any]:
    async with http.get(f"{url}/api/sessions/{sid}") as r:
        assert r.status == 200
        return await r.json()  # type: ignore[no-any-return]


def statuses(servers: list[dict[str, Any]]) -> dict[str, str]:
    return {s["name"]: s["status"] for s in servers}


def mcp_events(frames: list[Frame]) -> list[dict[str, Any]]:
    return [f.data for f in frames if f.event == "mcp_status"]


def init_tools(frames: list[Frame]) -> list[str]:
    """The tools the CLI's system/init of this turn lists."""
    for f in frames:
        m = f.data.get("message") or {}
        if f.event == "message" and m.get("type") == "system" and m.get("subtype") == "init":
            return list(m.get("tools", []))
    raise AssertionError("the turn has no system/init message")


async def wait_warm(e2e: E2E, agent: str, timeout: float = 60.0) -> None:
    """Wait until the runner advertises a warm sandbox of `agent` (the runner registry)."""
    nc = await nats.connect(e2e.stack.nats_url)
    try:
        kv = await nc.jetstream().key_value(subjects.RUNNERS_BUCKET)
        deadline = time.monotonic() + timeout
        while True:
            entry = await kv.get("runner")
            if codec.decode_advert(entry.value or b"{}").warm.get(agent, 0) >= 1:
                return
            assert time.monotonic() < deadline, f"no warm sandbox of {agent}"
            await asyncio.sleep(0.05)  # poll interval of the advert check above
    finally:
        await nc.close()


def sandbox_kind(e2e: E2E, sid: str) -> str:
    """How the runner got the session's sandbox: warm, freshly started or restored (its log)."""
    log = (e2e.stack.tmp / "runner.log").read_text(errors="replace")
    m = re.search(rf"session {sid} of \S+: (warm|restored|freshly started) sandbox", log)
    assert m, f"the runner did not log how session {sid} got its sandbox"
    return m.group(1)


async def test_a_working_and_a_broken_server_both_report_their_status(
    e2e: E2E, tmp_path: Path
) -> None:
    name = f"mcp-{uuid.uuid4().hex[:6]}"
    async with aiohttp.ClientSession() as http:
        await deploy(http, e2e.url, agent_folder(tmp_path), name)
        sid = await create(http, e2e.url, name)
        first = await turn(http, e2e.url, sid, "Hello there")
        second = await turn(http, e2e.url, sid, "Hello again")
        shown = await view(http, e2e.url, sid)

    reported = mcp_events(first)
    assert len(reported) == 1, [f.event for f in first]
    servers = {s["name"]: s for s in reported[0]["servers"]}
    assert statuses(reported[0]["servers"]) == {"notes": "connected", "broken": "failed"}
    assert servers["broken"]["error"], "a failed server must say why"
    assert servers["notes"]["transport"] == "stdio" and servers["notes"]["error"] is None
    # An event like the others: in the turn's seq order, before its done.
    event = next(f for f in first if f.event == "mcp_status")
    assert event.id == event.data["seq"] and event.data["session_id"] == sid
    assert first[-1].event == "done" and first[-1].data["reason"] == "completed"
    # The working server's tools reached the CLI (it ran inside the sandbox: python3 there).
    assert {"mcp__notes__echo", "mcp__notes__add"} <= set(init_tools(first))
    assert not any(t.startswith("mcp__broken__") for t in init_tools(first))
    # Nothing changed by the second turn: no second report; the view keeps the latest.
    assert mcp_events(second) == []
    assert statuses(shown["mcp_servers"]) == {"notes": "connected", "broken": "failed"}
    assert {s["name"]: s["error"] for s in shown["mcp_servers"]}["broken"]


async def test_session_servers_merge_over_the_agents_and_never_get_the_warm_sandbox(
    e2e: E2E, tmp_path: Path
) -> None:
    name = f"mcp-{uuid.uuid4().hex[:6]}"
    own = {"more": NOTES, "notes": BROKEN}  # one added; one of the agent's replaced (session wins)
    async with aiohttp.ClientSession() as http:
        await deploy(http, e2e.url, agent_folder(tmp_path), name)
        plain = await create(http, e2e.url, name)  # the runner now warms a sandbox of the agent
        await turn(http, e2e.url, plain, "Hello")
        await wait_warm(e2e, name)
        merged = await create(http, e2e.url, name, mcp_servers=own)
        frames = await turn(http, e2e.url, merged, "Hello")
        shown = await view(http, e2e.url, merged)
        after = await create(http, e2e.url, name)  # a default session still gets the warm one

    assert statuses(mcp_events(frames)[0]["servers"]) == {
        "notes": "failed", "broken": "failed", "more": "connected"}
    assert statuses(shown["mcp_servers"]) == {"notes": "failed", "broken": "failed",
                                              "more": "connected"}
    assert "mcp__more__add" in init_tools(frames) and "mcp__notes__add" not in init_tools(frames)
    # Its options are not the agent's defaults, so the warm sandbox (started with the agent's
    # servers only) was not handed to it; the default session after it took that one.
    assert sandbox_kind(e2e, merged) == "freshly started"
    assert sandbox_kind(e2e, after) == "warm"


async def test_an_http_server_whose_host_is_not_allowlisted_is_reported_failed(
    e2e: E2E, tmp_path: Path
) -> None:
    name = f"mcp-{uuid.uuid4().hex[:6]}"
    web = {"type": "http", "url": f"http://{REFUSED_HOST}/mcp"}
    async with aiohttp.ClientSession() as http:
        await deploy(http, e2e.url, agent_folder(tmp_path), name)
        sid = await create(http, e2e.url, name, mcp_servers={"web": web})
        frames = await turn(http, e2e.url, sid, "Hello")
        shown = await view(http, e2e.url, sid)

    reported = {s["name"]: s for s in mcp_events(frames)[0]["servers"]}
    assert reported["web"]["status"] == "failed" and reported["web"]["transport"] == "http"
    assert "not on this sandbox's allowlist" in reported["web"]["error"]
    assert reported["notes"]["status"] == "connected"
    assert statuses(shown["mcp_servers"])["web"] == "failed"
    # It failed at the egress proxy, by policy, not for want of a network.
    log = (e2e.stack.tmp / "runner.log").read_text(errors="replace")
    assert f"{REFUSED_HOST} is not on this sandbox's allowlist" in log


async def test_bad_session_mcp_servers_are_refused_before_anything_starts(e2e: E2E) -> None:
    async with aiohttp.ClientSession() as http:
        for servers in ({"x": {"type": "http"}}, {"x": {"command": "a", "url": "http://h/"}},
                        {"bad name!": NOTES}, {"x": {**NOTES, "bogus": 1}}):
            async with http.post(f"{e2e.url}/api/sessions",
                                 json={"agent": "any", "mcp_servers": servers}) as r:
                assert r.status == 422, (servers, await r.text())
                assert (await r.json())["error"]["code"] == "validation_failed"
