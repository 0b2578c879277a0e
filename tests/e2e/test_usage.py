"""Usage, end to end: turns through the real CLI (scripted model) become usage rows that
`GET /api/usage` and `ash usage` sum by turn, session and agent.

Tokens and cost come from the CLI's `result` (the scripted Messages API reports its usage to
the real CLI, which sums it); tool calls are the turn's `tool_use` events; CPU seconds are what
the sandbox's cgroup used, so a turn whose Bash tool spins for a while shows more of them.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from typing import Any

import aiohttp
import pytest

from tests.e2e.conftest import E2E
from tests.e2e.sse import Frame
from tests.e2e.test_spine import new_session, turn
from tests.procs import ROOT, clean_env

pytestmark = pytest.mark.e2e

# About a second of CPU in the sandbox's bash, with no sleeping and no files.
BURN = "run: i=0; while [ $i -lt 400000 ]; do i=$((i+1)); done; echo burned $i"


async def deploy_as(http: aiohttp.ClientSession, url: str, name: str) -> None:
    from ash.bundle import pack

    async with http.post(f"{url}/api/agents", params={"name": name},
                         data=pack(ROOT / "examples" / "hello"),
                         headers={"Content-Type": "application/gzip"}) as r:
        assert r.status == 201, await r.text()


async def usage(http: aiohttp.ClientSession, url: str, **params: str) -> dict[str, Any]:
    async with http.get(f"{url}/api/usage", params=params) as r:
        assert r.status == 200, await r.text()
        return await r.json()  # type: ignore[no-any-return]


async def usage_of_turns(http: aiohttp.ClientSession, url: str, sid: str,
                         turns: int) -> dict[str, Any]:
    """The per-turn usage of a session, once the recorder has written all `turns` rows (the
    recorder consumes the event log in another process, so the last `done` may be moments
    behind the stream that showed it)."""
    deadline = time.monotonic() + 20
    while True:
        report = await usage(http, url, session=sid, group_by="turn")
        if len(report["usage"]) >= turns or time.monotonic() > deadline:
            return report
        await asyncio.sleep(0.05)  # poll: the coordinator's recorder, another task


def completion(frames: list[Frame]) -> dict[str, Any]:
    [done] = [f.data for f in frames if f.event == "turn_complete"]
    return done


async def test_usage_by_turn_session_and_agent_comes_from_the_turns(e2e: E2E) -> None:
    agent = f"usage-{uuid.uuid4().hex[:8]}"
    async with aiohttp.ClientSession() as http:
        await deploy_as(http, e2e.url, agent)
        sid = await new_session(http, e2e.url, agent)
        talk = await turn(http, e2e.url, sid, "Remember the word osprey")
        burn = await turn(http, e2e.url, sid, BURN)
        by_turn = await usage_of_turns(http, e2e.url, sid, 2)
        by_session = await usage(http, e2e.url, session=sid)
        by_agent = await usage(http, e2e.url, agent=agent, group_by="agent")

    assert [f.data["reason"] for f in talk + burn if f.event == "done"] == ["completed"] * 2
    assert "burned 400000" in json.dumps([f.data for f in burn if f.event == "tool_result"])
    rows = by_turn["usage"]
    assert [r["key"] for r in rows] == [talk[0].data["turn_id"], burn[0].data["turn_id"]]
    for row, frames in zip(rows, (talk, burn), strict=True):
        reported = completion(frames)
        assert row["session_id"] == sid and row["agent"] == agent and row["turns"] == 1
        # Tokens and cost are the CLI's, which summed the scripted model's usage numbers.
        assert row["input_tokens"] == reported["usage"]["input_tokens"] > 0
        assert row["output_tokens"] == reported["usage"]["output_tokens"] > 0
        assert row["cache_read_input_tokens"] == reported["usage"].get("cache_read_input_tokens", 0)
        assert row["cost_usd"] == pytest.approx(reported["total_cost_usd"])
        assert row["tool_calls"] == sum(f.event == "tool_use" for f in frames)
    assert rows[0]["tool_calls"] == 0 and rows[1]["tool_calls"] == 1
    # The sandbox's cgroup counted the CPU the Bash loop burned (plus the CLI's own).
    assert rows[1]["cpu_s"] > 0
    assert rows[1]["cpu_s"] > rows[0]["cpu_s"]

    # The session and agent groups are the sums of the turns; `total` sums everything matched.
    for report, key in ((by_session, sid), (by_agent, agent)):
        [group] = report["usage"]
        assert group["key"] == key and group["turns"] == 2
        for field in ("input_tokens", "output_tokens", "tool_calls"):
            assert group[field] == sum(r[field] for r in rows) == report["total"][field]
        assert group["cpu_s"] == pytest.approx(sum(r["cpu_s"] for r in rows))
        assert group["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in rows))
    assert by_agent["usage"][0]["agent"] == agent


async def test_usage_filters_by_time_and_ash_usage_prints_it(e2e: E2E) -> None:
    agent = f"usage-{uuid.uuid4().hex[:8]}"
    async with aiohttp.ClientSession() as http:
        await deploy_as(http, e2e.url, agent)
        sid = await new_session(http, e2e.url, agent)
        before = time.time() - 1
        await turn(http, e2e.url, sid, "Remember the word plover")
        await usage_of_turns(http, e2e.url, sid, 1)
        later = await usage(http, e2e.url, agent=agent, since=str(time.time() + 3600))
        recent = await usage(http, e2e.url, agent=agent, since="1h")
        iso = await usage(http, e2e.url, agent=agent, group_by="day",
                          since=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(before)))
        async with http.get(f"{e2e.url}/api/usage", params={"group_by": "week"}) as r:
            bad = (r.status, await r.json())

    assert later["usage"] == [] and later["total"]["turns"] == 0
    assert [g["key"] for g in recent["usage"]] == [sid] and recent["total"]["turns"] == 1
    assert iso["usage"][0]["key"] == time.strftime("%Y-%m-%d", time.gmtime())
    assert bad[0] == 400 and bad[1]["error"]["code"] == "bad_request"

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ash", "--url", e2e.url, "usage", "--agent", agent,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=clean_env(), cwd=ROOT)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines[0].split()[:3] == ["SESSION", "TURNS", "INPUT"]
    assert lines[1].split()[:2] == [sid, "1"] and lines[-1].split()[:2] == ["TOTAL", "1"]

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ash", "--url", e2e.url, "usage", "--agent", agent,
        "--group-by", "turn", "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=clean_env(), cwd=ROOT)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    report = json.loads(out)
    assert report["group_by"] == "turn" and report["usage"][0]["session_id"] == sid
