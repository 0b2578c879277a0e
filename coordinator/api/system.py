"""`/health`, `/ready`, `/metrics`, `/openapi.json` and `/docs`."""

from __future__ import annotations

import asyncio

from aiohttp import web

from coordinator.api.common import error_response, json_response, services
from coordinator.metrics import METRICS
from protocol.api import Health, Ready
from protocol.errors import ErrorCode, ErrorInfo


async def health(request: web.Request) -> web.Response:
    svc = services(request)
    connected = svc.nc.is_connected
    return json_response(
        Health(
            status="ok" if connected else "degraded",
            version=svc.version,
            nats=connected,
            runners=svc.directory.live_count(),
            scripted_model=svc.directory.any_scripted(),
        )
    )


async def openapi(request: web.Request) -> web.Response:
    from coordinator.api import openapi as doc
    from coordinator.api.routes import ROUTES

    return json_response(doc.build(ROUTES, services(request).version))


async def docs(request: web.Request) -> web.Response:
    """The OpenAPI document rendered on the server as HTML: no script, nothing fetched."""
    from coordinator.api import docs as page
    from coordinator.api import openapi as doc
    from coordinator.api.routes import ROUTES

    html = page.render(doc.build(ROUTES, services(request).version))
    return web.Response(text=html, content_type="text/html", charset="utf-8")


READY_CHECK_S = 2.0  # a store that does not answer within this is not ready


async def ready(request: web.Request) -> web.Response:
    """Readiness: NATS connected, the store answering, at least one live runner; else 503
    with the one error shape, its message naming what is missing."""
    svc = services(request)
    nats_ok = svc.nc.is_connected
    try:
        await asyncio.wait_for(svc.store.session_counts(), READY_CHECK_S)
        store_ok = True
    except Exception:
        store_ok = False
    runners = svc.directory.live_count()
    missing = [what for what, ok in (("NATS is not connected", nats_ok),
                                     ("the store does not answer", store_ok),
                                     ("no runner is live", runners > 0)) if not ok]
    if missing:
        return error_response(503, ErrorInfo(
            code=ErrorCode.not_ready, message="not ready: " + "; ".join(missing), retryable=True))
    return json_response(Ready(nats=nats_ok, store=store_ok, runners=runners))


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition of this coordinator's metrics (gauges read as of now)."""
    svc = services(request)
    registry = request.app[METRICS]
    await registry.refresh(svc.store, svc.directory)
    return registry.exposition()
