"""The runner's Prometheus metrics, one `RunnerMetrics` per runner process.

Each instance registers on its own `CollectorRegistry` (the composition root makes one), so
tests can build many pools in one process without colliding on the global default registry.

    ash_runner_pool_sandboxes{state}          warming | warm | claimed   (gauge)
    ash_runner_pool_slots{queue}              fresh | recycled           (gauge: ready generic disks)
    ash_runner_pool_hits_total                sessions that claimed a warm sandbox
    ash_runner_pool_misses_total{reason}      options | empty | disabled
    ash_runner_pool_evictions_total{reason}   lru | idle | redeploy | capacity | dead | closing
    ash_runner_pool_warm_failures_total       warm-ups that failed (CLI did not start, ...)
    ash_runner_turn_duration_seconds{reason}  a turn from its start to its done (histogram;
                                              reason: completed | interrupted | error | timeout)
    ash_runner_turn_first_event_seconds       a turn's start to the CLI's first event (histogram)
    ash_runner_sandbox_spawn_seconds{source}  a sandbox started with its CLI connected (histogram;
                                              source: agent | snapshot)
    ash_runner_sessions                       sessions with a sandbox here (gauge)
    ash_runner_max_sessions                   how many this runner takes (gauge)
    ash_runner_turn_cpu_seconds_total         sandbox CPU time used by turns
    ash_runner_turn_tool_calls_total          tool calls made by turns

`MetricsServer` serves the registry as `GET /metrics` (Prometheus text format) when the
runner's ASH_RUNNER_METRICS_PORT is set. `TurnMeter` measures one turn as its events pass:
the usage its `done` event reports, and the timings above.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import generate_latest

from protocol import events

SANDBOX_STATES = ("warming", "warm", "claimed")
SLOT_QUEUES = ("fresh", "recycled")
MISS_REASONS = ("options", "empty", "disabled")
EVICTION_REASONS = ("lru", "idle", "redeploy", "capacity", "dead", "closing")
TURN_REASONS = ("completed", "interrupted", "error", "timeout")
SPAWN_SOURCES = ("agent", "snapshot")
TURN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
FIRST_EVENT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
SPAWN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class RunnerMetrics:
    """The metric objects of one runner; `registry` is what an exporter would serve."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.pool_sandboxes = Gauge(
            "ash_runner_pool_sandboxes", "Sandboxes of the warm pools by state", ["state"], registry=r)
        self.pool_slots = Gauge(
            "ash_runner_pool_slots", "Ready generic sandbox disks by queue", ["queue"], registry=r)
        self.pool_hits = Counter(
            "ash_runner_pool_hits", "Sessions that claimed a warm sandbox", registry=r)
        self.pool_misses = Counter(
            "ash_runner_pool_misses", "Sessions that got a freshly started sandbox", ["reason"],
            registry=r)
        self.pool_evictions = Counter(
            "ash_runner_pool_evictions", "Warm sandboxes stopped unclaimed", ["reason"], registry=r)
        self.pool_warm_failures = Counter(
            "ash_runner_pool_warm_failures", "Warm-ups that failed", registry=r)
        # Label sets exist from the start, so a scrape shows zeros rather than nothing.
        for state in SANDBOX_STATES:
            self.pool_sandboxes.labels(state)
        for queue in SLOT_QUEUES:
            self.pool_slots.labels(queue)
        for reason in MISS_REASONS:
            self.pool_misses.labels(reason)
        for reason in EVICTION_REASONS:
            self.pool_evictions.labels(reason)
        self.turn_duration = Histogram(
            "ash_runner_turn_duration_seconds", "Turns from start to done, by how they ended",
            ["reason"], buckets=TURN_BUCKETS, registry=r)
        self.turn_first_event = Histogram(
            "ash_runner_turn_first_event_seconds", "From a turn's start to the CLI's first event",
            buckets=FIRST_EVENT_BUCKETS, registry=r)
        self.sandbox_spawn = Histogram(
            "ash_runner_sandbox_spawn_seconds", "Starting a sandbox with its CLI connected",
            ["source"], buckets=SPAWN_BUCKETS, registry=r)
        self.sessions = Gauge("ash_runner_sessions", "Sessions with a sandbox here", registry=r)
        self.max_sessions = Gauge("ash_runner_max_sessions", "Sessions this runner takes",
                                  registry=r)
        self.turn_cpu = Counter(
            "ash_runner_turn_cpu_seconds", "Sandbox CPU time used by turns", registry=r)
        self.turn_tool_calls = Counter(
            "ash_runner_turn_tool_calls", "Tool calls made by turns", registry=r)
        for reason in TURN_REASONS:
            self.turn_duration.labels(reason)
        for source in SPAWN_SOURCES:
            self.sandbox_spawn.labels(source)

    def observe_turn(self, meter: TurnMeter, reason: str, usage: events.TurnUsage) -> None:
        """A turn ended: its duration, time to first event, CPU and tool calls."""
        self.turn_duration.labels(reason).observe(meter.elapsed())
        if meter.first_event_s is not None:
            self.turn_first_event.observe(meter.first_event_s)
        if usage.cpu_s:
            self.turn_cpu.inc(usage.cpu_s)
        if usage.tool_calls:
            self.turn_tool_calls.inc(usage.tool_calls)

    def value(self, name: str, **labels: str) -> float:
        """The current value of one sample (tests, logs), 0.0 if absent."""
        got = self.registry.get_sample_value(name, labels)
        return 0.0 if got is None else got


@dataclass(slots=True)
class TurnMeter:
    """One turn's usage and timings, fed with each event draft the CLI produces."""

    cpu_start_us: int | None
    model: str | None = None
    started: float = 0.0  # perf_counter at the turn's start
    first_event_s: float | None = None
    tool_calls: int = 0
    result: dict[str, Any] | None = None  # the turn_complete's fields

    @classmethod
    def start(cls, cpu_us: int | None, model: str | None) -> TurnMeter:
        return cls(cpu_start_us=cpu_us, model=model, started=time.perf_counter())

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def saw(self, cls: type[events.Event], fields: dict[str, Any]) -> None:
        if self.first_event_s is None:
            self.first_event_s = self.elapsed()
        if cls is events.ToolUse:
            self.tool_calls += 1
        elif cls is events.TurnComplete:
            self.result = fields
        elif cls is events.Message:
            # The CLI names the model it really uses (the agent's default when the session
            # set none) in its init message, and per model in its result's modelUsage.
            message = fields.get("message") or {}
            named = message.get("model") if message.get("subtype") == "init" else None
            if not named and message.get("type") == "result":
                named = next(iter(message.get("modelUsage") or {}), None)
            if isinstance(named, str) and named:
                self.model = named

    def usage(self, cpu_end_us: int | None) -> events.TurnUsage:
        """What the turn used, with the sandbox's CPU counter read at its end."""
        result = self.result or {}
        tokens = result.get("usage") or {}
        cpu_s = None
        if self.cpu_start_us is not None and cpu_end_us is not None:
            cpu_s = max(0, cpu_end_us - self.cpu_start_us) / 1e6
        cost = result.get("total_cost_usd")
        return events.TurnUsage(
            model=self.model,
            input_tokens=_int(tokens.get("input_tokens")),
            output_tokens=_int(tokens.get("output_tokens")),
            cache_creation_input_tokens=_int(tokens.get("cache_creation_input_tokens")),
            cache_read_input_tokens=_int(tokens.get("cache_read_input_tokens")),
            total_cost_usd=float(cost) if isinstance(cost, (int, float)) else None,
            tool_calls=self.tool_calls,
            cpu_s=cpu_s,
            duration_ms=int(self.elapsed() * 1000),
        )


def _int(value: object) -> int:
    return int(value) if isinstance(value, (int, float)) else 0


class MetricsServer:
    """`GET /metrics` of one registry over HTTP, on `host:port` (port 0: a free one)."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int,
                 refresh: Callable[[], None] | None = None) -> None:
        self._registry = registry
        self._host = host
        self._port = port
        self._refresh = refresh  # sets the gauges read at scrape time
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> MetricsServer:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://{self._host}:{port}/metrics"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            with contextlib.suppress(Exception):
                await runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        if self._refresh is not None:
            self._refresh()
        return web.Response(body=generate_latest(self._registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})
