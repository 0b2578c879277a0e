"""`/api/agents`: deploy a folder (as a gzip'd tar), list, get, delete."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web
from nats.js.errors import NotFoundError, ObjectNotFoundError

from coordinator import auth, bundles
from coordinator.api.common import json_response, services
from coordinator.errors import ApiError, not_found
from protocol.api import AgentList
from protocol.errors import ErrorCode
from protocol.subjects import is_token

AGENT_NAME_HINT = "letters, digits, '-' and '_', starting with a letter or digit, at most 63"


def _agent_name(raw: str | None) -> str:
    if not raw:
        raise ApiError(400, ErrorCode.bad_request, "the query parameter 'name' is required")
    if not is_token(raw) or len(raw) > 63 or raw[0] in "-_":
        raise ApiError(422, ErrorCode.validation_failed, f"agent name must be {AGENT_NAME_HINT}")
    return raw


async def deploy_agent(request: web.Request) -> web.Response:
    """Deploy or redeploy an agent from a gzip'd tar of its folder."""
    svc = services(request)
    name = _agent_name(request.query.get("name"))
    data = await request.read()
    limit = svc.config.max_bundle_mb * 1024 * 1024
    try:
        facts = await asyncio.to_thread(bundles.inspect, data, 4 * limit)
    except bundles.BundleRejected as e:
        code = {
            400: ErrorCode.bad_request,
            413: ErrorCode.payload_too_large,
        }.get(e.status, ErrorCode.unprocessable)
        raise ApiError(e.status, code, str(e)) from e
    obs = svc.layout.bundles
    try:
        await obs.get_info(facts.digest)
    except (NotFoundError, ObjectNotFoundError):
        await obs.put(facts.digest, data)
    view = await svc.store.upsert_agent(name, facts.digest, facts.files, facts.size, time.time(),
                                        tenant=auth.tenant_of(request))
    return json_response(view, 201)


async def list_agents(request: web.Request) -> web.Response:
    views = await services(request).store.list_agents(tenant=auth.tenant_of(request))
    return json_response(AgentList(agents=views))


async def get_agent(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    view = await services(request).store.get_agent(name, tenant=auth.tenant_of(request))
    if view is None:
        raise not_found("agent", name)
    return json_response(view)


async def delete_agent(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if not await services(request).store.delete_agent(name, tenant=auth.tenant_of(request)):
        raise not_found("agent", name)
    return web.Response(status=204)
