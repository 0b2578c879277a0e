"""The runner's metrics: a turn's meter, the /metrics HTTP exporter, and a real cgroup's CPU
counter, which is what a turn's `cpu_s` is the difference of."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from protocol import events
from runner.metrics import MetricsServer, RunnerMetrics, TurnMeter
from runner.sandbox.cgroups import NoCgroups, detect
from runner.sandbox.spec import Limits


def test_a_meter_counts_tool_calls_keeps_the_result_and_the_cpu_difference() -> None:
    meter = TurnMeter.start(cpu_us=1_000_000, model="claude-sonnet-4")
    assert meter.first_event_s is None
    meter.saw(events.TextDelta, {"delta": "hi"})
    first = meter.first_event_s
    assert first is not None and first >= 0
    meter.saw(events.ToolUse, {"tool_use_id": "a", "name": "Bash", "input": {}})
    meter.saw(events.ToolUse, {"tool_use_id": "b", "name": "Write", "input": {}})
    meter.saw(events.TurnComplete, {"total_cost_usd": 0.125, "usage": {
        "input_tokens": 120, "output_tokens": 30, "cache_read_input_tokens": 7,
        "cache_creation_input_tokens": 3, "service_tier": "standard"}})
    assert meter.first_event_s == first  # only the first event counts

    usage = meter.usage(cpu_end_us=3_500_000)
    assert usage == events.TurnUsage(
        model="claude-sonnet-4", input_tokens=120, output_tokens=30,
        cache_creation_input_tokens=3, cache_read_input_tokens=7, total_cost_usd=0.125,
        tool_calls=2, cpu_s=2.5, duration_ms=usage.duration_ms)


def test_the_model_is_the_one_the_cli_says_it_uses() -> None:
    meter = TurnMeter.start(cpu_us=None, model=None)
    meter.saw(events.Message, {"message": {"type": "system", "subtype": "init",
                                           "model": "claude-haiku-4-5"}})
    assert meter.usage(None).model == "claude-haiku-4-5"
    meter = TurnMeter.start(cpu_us=None, model="sonnet")
    meter.saw(events.Message, {"message": {"type": "result",
                                           "modelUsage": {"claude-opus-4-5": {}}}})
    assert meter.usage(None).model == "claude-opus-4-5"


def test_a_turn_without_a_result_or_cpu_accounting_reports_what_it_has() -> None:
    meter = TurnMeter.start(cpu_us=None, model=None)
    meter.saw(events.ToolUse, {"tool_use_id": "a", "name": "Bash", "input": {}})
    usage = meter.usage(cpu_end_us=None)
    assert (usage.tool_calls, usage.cpu_s, usage.input_tokens, usage.total_cost_usd) == \
        (1, None, 0, None)


async def test_the_exporter_serves_the_registry_with_gauges_refreshed_at_scrape() -> None:
    metrics = RunnerMetrics()
    meter = TurnMeter.start(cpu_us=0, model=None)
    meter.saw(events.ToolUse, {"tool_use_id": "a", "name": "Bash", "input": {}})
    metrics.observe_turn(meter, "completed", meter.usage(cpu_end_us=250_000))
    held = [3]
    async with MetricsServer(metrics.registry, "127.0.0.1", 0,
                             refresh=lambda: metrics.sessions.set(held[0])) as server:
        async with aiohttp.ClientSession() as http, http.get(server.url) as r:
            assert r.status == 200
            families = {f.name: f for f in text_string_to_metric_families(await r.text())}
        held[0] = 5
        async with aiohttp.ClientSession() as http, http.get(server.url) as r:
            again = {f.name: f for f in text_string_to_metric_families(await r.text())}

    def sample(fams: dict[str, object], family: str, name: str, **labels: str) -> float:
        return next(s.value for s in fams[family].samples  # type: ignore[attr-defined]
                    if s.name == name and s.labels == labels)

    hist = "ash_runner_turn_duration_seconds"
    assert sample(families, hist, hist + "_count", reason="completed") == 1
    assert sample(families, hist, hist + "_count", reason="error") == 0
    assert sample(families, "ash_runner_turn_first_event_seconds",
                  "ash_runner_turn_first_event_seconds_count") == 1
    assert sample(families, "ash_runner_turn_cpu_seconds",
                  "ash_runner_turn_cpu_seconds_total") == 0.25
    assert sample(families, "ash_runner_sessions", "ash_runner_sessions") == 3
    assert sample(again, "ash_runner_sessions", "ash_runner_sessions") == 5


async def test_a_sandbox_cgroup_counts_the_cpu_its_processes_burn() -> None:
    backend = detect()
    if isinstance(backend, NoCgroups):
        pytest.skip("no writable cgroup hierarchy on this host")
    cg = backend.create(f"test-{uuid.uuid4().hex[:12]}", Limits(memory_mb=64, pids=16))
    try:
        before = cg.cpu_usage_us()
        assert before is not None, "this host accounts CPU per cgroup (cpuacct or cpu.stat)"
        joins = "".join(f"echo $$ > {p} && " for p in cg.procs_files)
        burn = "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"
        proc = await asyncio.create_subprocess_exec("/bin/sh", "-c", f"{joins} {burn}")
        assert await asyncio.wait_for(proc.wait(), 60) == 0
        after = cg.cpu_usage_us()
        assert after is not None and after > before
    finally:
        await cg.destroy()
