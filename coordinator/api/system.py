"""`/health` and `/openapi.json`."""

from __future__ import annotations

from aiohttp import web

from coordinator.api.common import json_response, services
from protocol.api import Health


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
