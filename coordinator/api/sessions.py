"""`/api/sessions`: create (placed on a runner), list, get, end."""

from __future__ import annotations

import logging
import time
import uuid

from aiohttp import web

from coordinator import credentials
from coordinator import auth
from coordinator.api.common import Services, json_response, read_body, services
from coordinator.errors import ApiError, not_found
from coordinator.errors import reply_status as reply_status  # where other handlers import it
from coordinator.snapshots import forget_snapshot
from protocol import codec
from protocol.api import CreateSessionRequest, SessionList, SessionView
from protocol.commands import AgentRef, CreateSession, EndSession, Rejected, SessionOptions
from protocol.errors import ErrorCode

logger = logging.getLogger(__name__)


async def load_session(svc: Services, session_id: str, tenant: str | None = None) -> SessionView:
    """The session; 404 if there is none, or (given `tenant`) it is another tenant's."""
    view = await svc.store.get_session(session_id, tenant=tenant)
    if view is None:
        raise not_found("session", session_id)
    return view


async def create_session(request: web.Request) -> web.Response:
    """Create a session: place it on a runner, which makes its sandbox and connects the CLI."""
    svc = services(request)
    req = await read_body(request, CreateSessionRequest)
    caller = auth.principal(request)
    if svc.limiter is not None:  # first: a refused create costs nothing
        svc.limiter.session_create(caller.key_id)
    agent = await svc.store.get_agent(req.agent, tenant=caller.tenant)
    if agent is None:
        raise not_found("agent", req.agent)
    if svc.directory.live_count() == 0:
        raise ApiError(
            503, ErrorCode.no_runner, "no runner is available; start one with `ash runner`",
            retryable=True,
        )
    session_id = uuid.uuid4().hex
    options = SessionOptions(model=req.model, system_prompt=req.system_prompt, env=req.env,
                             mcp_servers=codec.to_builtins(req.mcp_servers))
    # The session's model credential (its own, else its agent's), opened before anything is
    # made: a missing one is a 404 that leaves no session behind.
    credential_name, credential = await credentials.resolve_for_create(
        svc.credentials, caller.tenant, req.credential, agent.digest)
    await svc.store.create_session(
        session_id, agent.name, agent.digest, req.model,
        credentials.stored_options(codec.to_builtins(options), credential_name), time.time(),
        tenant=caller.tenant,
    )
    command = CreateSession(
        session_id=session_id, agent=AgentRef(name=auth.runner_agent_name(caller.tenant, agent.name),
                                               digest=agent.digest), options=options,
        credential=credential,
    )
    try:
        reply = await svc.placer.place(command)
    except ApiError:
        await svc.store.update_session(session_id, time.time(), status="error")
        raise
    view = await svc.store.update_session(
        session_id, time.time(), status="active", runner_id=reply.runner_id,
        claude_session_id=reply.claude_session_id,
    )
    assert view is not None
    return json_response(view, 201)


async def list_sessions(request: web.Request) -> web.Response:
    agent = request.query.get("agent")
    views = await services(request).store.list_sessions(agent=agent, tenant=auth.tenant_of(request))
    return json_response(SessionList(sessions=views))


async def get_session(request: web.Request) -> web.Response:
    return json_response(await load_session(services(request), request.match_info["id"],
                                            auth.tenant_of(request)))


async def end_session(request: web.Request) -> web.Response:
    """End a session: its sandbox is destroyed, its history kept. Ending twice is fine."""
    svc = services(request)
    view = await load_session(svc, request.match_info["id"], auth.tenant_of(request))
    if view.status == "ended":
        return json_response(view)
    ended = await svc.store.transition(
        view.id, ("starting", "active", "paused", "error"), "ended", time.time()
    )
    if ended is None:  # someone else ended it meanwhile
        return json_response(await load_session(svc, view.id))
    if view.runner_id:
        reply = await svc.bus.request(view.runner_id, EndSession(session_id=view.id), 15.0)
        if isinstance(reply, Rejected) and reply.error.code != ErrorCode.not_found:
            # The runner's own sweep removes sandboxes of ended sessions; the session is ended.
            logger.warning("runner %s could not end %s: %s", view.runner_id, view.id, reply.error)
    await forget_snapshot(svc.layout.snapshots, view.id)  # an ended session never resumes
    return json_response(ended)
