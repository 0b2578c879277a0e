"""The coordinator's Prometheus metrics, one `CoordinatorMetrics` per process, served at `/metrics`.

    ash_http_request_duration_seconds{method,route,status}  histogram; route is the route's
                                                            template (/api/sessions/{id}), or
                                                            "unmatched"; status 499: the client left
    ash_placement_duration_seconds{outcome}      histogram; placing a session (placed | failed)
    ash_resume_duration_seconds{kind}            histogram; POST .../resume by Ash-Resumed:
                                                 warm | cold | none (it was active)
    ash_sessions{state}                          gauge; sessions in the store by status
    ash_runners{state}                           gauge; runners seen: live | draining
    ash_fleet_runner_sessions{runner}            gauge; each live runner's sessions ...
    ash_fleet_runner_max_sessions{runner}        ... and how many it takes (its capacity), as
                                                 adverts say (a runner's own /metrics has
                                                 ash_runner_sessions and ash_runner_max_sessions)

Gauges are read from the store and the runner directory when scraped (`refresh`), so a scrape
shows the state of the fleet as of now whichever coordinator answers it.

`observe_middleware` times every request by route and binds the request's session id to its
logs (protocol/logs.py); it runs outside the error middleware, so it sees the final status.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, Histogram
from prometheus_client import generate_latest

from coordinator.api.common import Handler
from coordinator.placement import Seen, is_live
from protocol import logs
from protocol.api import RESUMED_HEADER, SessionStatus

STATES: tuple[SessionStatus, ...] = ("starting", "active", "paused", "ended", "error")
RESUME_ROUTE = "/api/sessions/{id}/resume"
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
                60, 300)
PLACEMENT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
                     30, 90)


class SessionCounter(Protocol):
    async def session_counts(self) -> dict[str, int]: ...


class Directory(Protocol):
    ttl_s: float

    def snapshot(self) -> list[Seen]: ...


class CoordinatorMetrics:
    """The metric objects of one coordinator on their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http = Histogram(
            "ash_http_request_duration_seconds", "HTTP requests by route template and status",
            ["method", "route", "status"], buckets=HTTP_BUCKETS, registry=r)
        self.placement = Histogram(
            "ash_placement_duration_seconds", "Placing a session on a runner", ["outcome"],
            buckets=PLACEMENT_BUCKETS, registry=r)
        self.resume = Histogram(
            "ash_resume_duration_seconds", "Resuming a session, by kind", ["kind"],
            buckets=PLACEMENT_BUCKETS, registry=r)
        self.sessions = Gauge("ash_sessions", "Sessions by state", ["state"], registry=r)
        self.runners = Gauge("ash_runners", "Runners seen, by state", ["state"], registry=r)
        self.runner_sessions = Gauge(
            "ash_fleet_runner_sessions", "Sessions on each live runner", ["runner"], registry=r)
        self.runner_capacity = Gauge(
            "ash_fleet_runner_max_sessions", "Sessions each live runner takes", ["runner"], registry=r)
        for outcome in ("placed", "failed"):
            self.placement.labels(outcome)
        for kind in ("warm", "cold"):
            self.resume.labels(kind)
        for state in STATES:
            self.sessions.labels(state)
        for state in ("live", "draining"):
            self.runners.labels(state)

    def observe_placement(self, outcome: str, seconds: float) -> None:
        self.placement.labels(outcome).observe(seconds)

    async def refresh(self, store: SessionCounter, directory: Directory) -> None:
        """Set the gauges from the store and the runner directory, as of now."""
        with contextlib.suppress(Exception):  # a store that is down leaves the last counts
            counts = await asyncio.wait_for(store.session_counts(), 2.0)
            for state in STATES:
                self.sessions.labels(state).set(counts.get(state, 0))
        now = time.monotonic()
        live = [s for s in directory.snapshot() if is_live(s, now, directory.ttl_s)]
        self.runners.labels("live").set(sum(not s.advert.draining for s in live))
        self.runners.labels("draining").set(sum(s.advert.draining for s in live))
        self.runner_sessions.clear()
        self.runner_capacity.clear()
        for s in live:
            self.runner_sessions.labels(s.advert.runner_id).set(s.advert.sessions)
            self.runner_capacity.labels(s.advert.runner_id).set(s.advert.max_sessions)

    def exposition(self) -> web.Response:
        return web.Response(body=generate_latest(self.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})


METRICS = web.AppKey("metrics", CoordinatorMetrics)


def route_of(request: web.Request) -> str:
    """The route template that matched (`/api/sessions/{id}`), never the raw path."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def observe_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Time the request by route and status; bind its session id to the logs inside it."""
    metrics = request.app[METRICS]
    route = route_of(request)
    session_id = request.match_info.get("id") if route.startswith("/api/sessions/") else None
    started = time.perf_counter()
    status = 500
    response: web.StreamResponse | None = None
    try:
        with logs.bind(session_id=session_id):
            response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as e:
        status = e.status
        raise
    except asyncio.CancelledError:
        status = 499  # the client went away (an SSE stream it stopped reading)
        raise
    finally:
        elapsed = time.perf_counter() - started
        metrics.http.labels(request.method, route, str(status)).observe(elapsed)
        if route == RESUME_ROUTE and status == 200 and response is not None:
            kind = response.headers.get(RESUMED_HEADER, "none")
            metrics.resume.labels(kind).observe(elapsed)
