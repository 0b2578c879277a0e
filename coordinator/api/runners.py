"""`GET /api/runners`: the fleet as this coordinator's runner directory sees it."""

from __future__ import annotations

import time

from aiohttp import web

from coordinator.api.common import json_response, services
from coordinator.placement import is_live
from protocol.api import RunnerList, RunnerView


async def list_runners(request: web.Request) -> web.Response:
    """Every runner in the registry, live or not yet expired, by id: what it holds, its cap,
    whether it drains, its labels and capacity."""
    directory = services(request).directory
    now = time.monotonic()
    views = []
    for seen in sorted(directory.snapshot(), key=lambda s: s.advert.runner_id):
        a = seen.advert
        views.append(RunnerView(
            runner_id=a.runner_id, version=a.version,
            live=is_live(seen, now, directory.ttl_s), draining=a.draining,
            sessions=a.sessions, max_sessions=a.max_sessions, labels=dict(a.labels),
            warm=dict(a.warm), scripted_model=a.scripted_model, started_at=a.started_at,
            seen_s=round(max(0.0, now - seen.received_at), 3),
            total=a.total, free=a.free, committed=a.committed,
        ))  # fmt: skip
    return json_response(RunnerList(runners=views))
