"""`/metrics` after real traffic, and JSON logs that name what they are about.

Real nats-server, a coordinator and two runner processes (the scripted stand-in CLI, real
bwrap, cgroups and snapshots). One session goes through turns, an exec, a pause and a warm
resume on runner A; then A drains away and the session resumes cold on B. The coordinator's
and both runners' `/metrics` are scraped with Prometheus's own parser, and every histogram
must have counted that traffic under the right labels. The processes log JSON lines
(ASH_LOG_FORMAT's default), and the lines about the session carry its ids.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ash.embedded_nats import start_nats
from tests.e2e.sse import Frame, read_turn, text_of
from tests.e2e.test_pool import bundle
from tests.procs import Proc, Stack, free_port

pytestmark = pytest.mark.e2e

RUNNER_ENV = {"ASH_CLI": "standin", "ASH_ADVERT_INTERVAL_S": "0.1", "ASH_POOL_GENERIC": "1",
              "ASH_TMP_MB": "16", "ASH_SNAPSHOT_DEBOUNCE_S": "0.2"}


@dataclass
class Fleet:
    stack: Stack
    runners: dict[str, tuple[Proc, str]]  # runner id -> (process, metrics url)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("metrics")
    server = start_nats(tmp / "nats", log_path=tmp / "nats.log")
    stack = Stack(tmp, server.url)
    try:
        # Spread with no random pick: the session lands on mt-a (more room), then on mt-b.
        stack.start_coordinator(ASH_PLACEMENT="spread", ASH_PLACEMENT_CHOICES="1")
        runners = {}
        for name, size in (("mt-a", "16"), ("mt-b", "8")):
            port = free_port()
            proc = stack.start_runner(name, ASH_MAX_SESSIONS=size,
                                      ASH_RUNNER_METRICS_PORT=str(port), **RUNNER_ENV)
            runners[name] = (proc, f"http://127.0.0.1:{port}/metrics")
        stack.wait_ready(runners=2)
        yield Fleet(stack, runners)
    finally:
        stack.stop()
        server.stop()


def scrape(url: str) -> dict[str, list[Any]]:
    """Metric family name -> its samples, parsed by prometheus_client's own parser."""
    with urllib.request.urlopen(url, timeout=5) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def value(families: dict[str, list[Any]], family: str, sample: str, **labels: str) -> float:
    """The sum of `sample`'s values whose labels include `labels` (0 when there are none)."""
    return sum(s.value for s in families.get(family, [])
               if s.name == sample and labels.items() <= s.labels.items())


def count(families: dict[str, list[Any]], histogram: str, **labels: str) -> float:
    return value(families, histogram, histogram + "_count", **labels)


async def turn(http: aiohttp.ClientSession, url: str, sid: str, text: str) -> list[Frame]:
    async with http.post(f"{url}/api/sessions/{sid}/messages", json={"content": text}) as r:
        return await read_turn(r)


async def post(http: aiohttp.ClientSession, url: str, want: int = 200,
               **kw: Any) -> tuple[dict[str, Any], Any]:
    async with http.post(url, **kw) as r:
        body = await r.json()
        assert r.status == want, body
        return body, r.headers


def json_lines(proc: Proc) -> list[dict[str, Any]]:
    lines = []
    for line in proc.log.read_text(errors="replace").splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            assert not line.startswith("{"), line  # a broken JSON line is a defect
    return lines


async def test_metrics_count_turns_exec_placement_and_warm_and_cold_resume(fleet: Fleet) -> None:
    url = fleet.stack.url
    name = f"metrics-{uuid.uuid4().hex[:8]}"
    async with aiohttp.ClientSession() as http:
        await post(http, f"{url}/api/agents", 201, params={"name": name},
                   data=bundle({"CLAUDE.md": "You are a test agent.\n"}),
                   headers={"Content-Type": "application/gzip"})
        session, _ = await post(http, f"{url}/api/sessions", 201, json={"agent": name})
        sid = session["id"]
        assert session["runner_id"] == "mt-a"
        first = await turn(http, url, sid, "Remember the word avocet")
        tooled = await turn(http, url, sid, "run: echo from a tool")
        async with http.post(f"{url}/api/sessions/{sid}/exec", json={"command": "echo hi"}) as r:
            execd = await read_turn(r)
        await post(http, f"{url}/api/sessions/{sid}/pause")
        _, warm = await post(http, f"{url}/api/sessions/{sid}/resume")
        runner_a = scrape(fleet.runners["mt-a"][1])

        # A drains away (SIGTERM): its sessions are snapshotted, then resume cold on B.
        await post(http, f"{url}/api/sessions/{sid}/pause")
        proc_a = fleet.runners["mt-a"][0]
        assert await asyncio.to_thread(proc_a.stop) == 0, proc_a.tail()
        resumed, cold = await post(http, f"{url}/api/sessions/{sid}/resume")
        again = await turn(http, url, sid, "What was the word?")
        coordinator = scrape(url + "/metrics")
        runner_b = scrape(fleet.runners["mt-b"][1])

    assert text_of(first) == "I will remember the word avocet."
    assert [f.data["name"] for f in tooled if f.event == "tool_use"] == ["Bash"]
    assert execd[-1].event == "exec_exit" and execd[-1].data["exit_code"] == 0
    assert (warm["Ash-Resumed"], cold["Ash-Resumed"]) == ("warm", "cold")
    assert resumed["runner_id"] == "mt-b" and text_of(again) == "The word was avocet."

    # Runner A: two turns completed, each with a first event; its sandbox was spawned from
    # the agent; gauges for its sessions, capacity and pools.
    assert count(runner_a, "ash_runner_turn_duration_seconds", reason="completed") == 2
    assert count(runner_a, "ash_runner_turn_first_event_seconds") == 2
    assert count(runner_a, "ash_runner_sandbox_spawn_seconds", source="agent") >= 1
    assert value(runner_a, "ash_runner_sessions", "ash_runner_sessions") == 1
    assert value(runner_a, "ash_runner_max_sessions", "ash_runner_max_sessions") == 16
    assert value(runner_a, "ash_runner_turn_tool_calls", "ash_runner_turn_tool_calls_total") == 1
    assert "ash_runner_pool_sandboxes" in runner_a
    # Runner B: the cold resume restored a sandbox from the snapshot, then ran a turn.
    assert count(runner_b, "ash_runner_sandbox_spawn_seconds", source="snapshot") == 1
    assert count(runner_b, "ash_runner_turn_duration_seconds", reason="completed") == 1

    # Coordinator: requests by route template (never a raw path with an id in it).
    http_hist = "ash_http_request_duration_seconds"
    messages = "/api/sessions/{id}/messages"
    assert count(coordinator, http_hist, method="POST", route=messages, status="200") == 3
    assert count(coordinator, http_hist, method="POST", route="/api/sessions/{id}/exec",
                 status="200") == 1
    assert count(coordinator, http_hist, method="POST", route="/api/sessions", status="201") >= 1
    assert count(coordinator, http_hist, method="POST", route="/api/sessions/{id}/resume") >= 2
    routes = {s.labels["route"] for s in coordinator[http_hist] if "route" in s.labels}
    assert not [r for r in routes if sid in r], routes
    # Placement: the create and the cold resume; resume by kind.
    assert count(coordinator, "ash_placement_duration_seconds", outcome="placed") >= 2
    assert count(coordinator, "ash_resume_duration_seconds", kind="warm") >= 1
    assert count(coordinator, "ash_resume_duration_seconds", kind="cold") >= 1
    # Gauges as of the scrape: the session is active; only B is live, with its capacity.
    assert value(coordinator, "ash_sessions", "ash_sessions", state="active") >= 1
    assert value(coordinator, "ash_runners", "ash_runners", state="live") == 1
    assert value(coordinator, "ash_fleet_runner_max_sessions", "ash_fleet_runner_max_sessions",
                 runner="mt-b") == 8
    assert value(coordinator, "ash_fleet_runner_sessions", "ash_fleet_runner_sessions",
                 runner="mt-b") >= 1

    # JSON logs: runner A's lines about the session's turns carry session, turn and runner ids;
    # the coordinator's line about the cold resume carries the session id.
    turn_ids = {f.data["turn_id"] for f in first + tooled}
    about = [line for line in json_lines(proc_a) if line.get("session_id") == sid]
    assert {line.get("turn_id") for line in about} >= turn_ids, about
    assert {line["runner_id"] for line in about} == {"mt-a"}
    assert all({"ts", "level", "logger", "msg"} <= line.keys() for line in about)
    coordinator_proc = fleet.stack.procs[0]
    deadline = time.monotonic() + 10
    while not [line for line in json_lines(coordinator_proc)
               if line.get("session_id") == sid and "resumed cold" in line["msg"]]:
        assert time.monotonic() < deadline, coordinator_proc.tail()
        await asyncio.sleep(0.05)  # the log line is written by another process
