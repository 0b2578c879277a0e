"""ash.toml limits against a hostile agent: the real Claude Code CLI runs a memory bomb and a
disk fill through its Bash tool (the scripted model turns `run: CMD` into a Bash call).

Each attempt fails inside the sandbox, the session reports it clearly and goes on, and the
host is unaffected.
"""

from __future__ import annotations

import json
import shutil
import uuid

import aiohttp
import pytest

from tests.e2e.conftest import E2E
from tests.e2e.sse import Frame, text_of
from tests.e2e.test_pool import bundle
from tests.e2e.test_spine import turn

pytestmark = pytest.mark.e2e

# The real CLI needs ~250 MB itself; the bomb is a child of its Bash tool.
ASH_TOML = """
[limits]
memory_mb = 768
disk_mb = 32

[pool]
warm = 0
"""


async def deploy_limited(http: aiohttp.ClientSession, e2e: E2E) -> str:
    name = f"limited-{uuid.uuid4().hex[:8]}"
    data = bundle({"CLAUDE.md": "You run what you are told.\n", "ash.toml": ASH_TOML})
    async with http.post(f"{e2e.url}/api/agents", params={"name": name}, data=data,
                         headers={"Content-Type": "application/gzip"}) as r:
        assert r.status == 201, await r.text()
    async with http.post(f"{e2e.url}/api/sessions", json={"agent": name}) as r:
        assert r.status == 201, await r.text()
        return str((await r.json())["id"])


def tool_output(frames: list[Frame]) -> str:
    results = [f.data for f in frames if f.event == "tool_result"]
    assert results, f"the command never ran: {[f.event for f in frames]}"
    return json.dumps(results[-1]["content"])


async def test_a_memory_bomb_is_killed_reported_and_the_session_goes_on(e2e: E2E) -> None:
    async with aiohttp.ClientSession() as http:
        sid = await deploy_limited(http, e2e)
        bomb = await turn(http, e2e.url, sid,
                          "run: python3 -c \"x = [b'x' * (1 << 20) for _ in range(4096)]\"; echo rc=$?")
        errors = [f.data["error"] for f in bomb if f.event == "error"]
        assert [e["code"] for e in errors] == ["out_of_memory"], [f.event for f in bomb]
        assert "768 MB" in errors[0]["message"]
        assert "rc=137" in tool_output(bomb)  # the bomb was SIGKILLed, its shell lived on
        assert bomb[-1].event == "done"
        after = await turn(http, e2e.url, sid, "run: echo still here")
        assert "still here" in tool_output(after) and after[-1].data["reason"] == "completed"
        assert not [f for f in after if f.event == "error"]


async def test_filling_the_disk_hits_enospc_inside_and_the_host_is_unaffected(e2e: E2E) -> None:
    async with aiohttp.ClientSession() as http:
        sid = await deploy_limited(http, e2e)
        free = shutil.disk_usage(e2e.runner_dir).free
        fill = await turn(http, e2e.url, sid,
                          "run: dd if=/dev/zero of=/workspace/fill bs=1M count=256; echo rc=$?")
        out = tool_output(fill)
        assert "No space left on device" in out and "rc=1" in out, out
        link = e2e.runner_dir / "sessions" / sid
        size = (link / "workspace" / "fill").stat().st_size
        assert 0 < size <= 32 << 20
        image = link.resolve().parent / "disk.img"
        assert image.stat().st_blocks * 512 <= 33 << 20
        assert free - shutil.disk_usage(e2e.runner_dir).free < 64 << 20
        # The session goes on: it frees the space and writes again.
        again = await turn(http, e2e.url, sid, "run: rm /workspace/fill && echo ok > /workspace/ok && cat /workspace/ok")
        assert "ok" in tool_output(again) and again[-1].data["reason"] == "completed"
        assert text_of(again).startswith("Done.")
        async with http.delete(f"{e2e.url}/api/sessions/{sid}") as r:
            assert r.status == 200
    assert not link.exists()
