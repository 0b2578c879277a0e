"""`/api/sessions`: create (placed on a runner), list, get, end."""

from __future__ import annotations

import logging
import time
import uuid

from aiohttp import web

from coordinator.api.common import Services, json_response, read_body, services
from coordinator.errors import ApiError, not_found
from coordinator.placement import choose_runner
from coordinator.snapshots import forget_snapshot
from protocol import codec
from protocol.api import CreateSessionRequest, SessionList, SessionView
from protocol.commands import Accepted, AgentRef, CreateSession, EndSession, Rejected, SessionOptions
from protocol.errors import ErrorCode

logger = logging.getLogger(__name__)

MAX_PLACEMENT_TRIES = 3


async def load_session(svc: Services, session_id: str) -> SessionView:
    view = await svc.store.get_session(session_id)
    if view is None:
        raise not_found("session", session_id)
    return view


def reply_status(code: str) -> int:
    """The HTTP status that passes a runner's refusal on to the client."""
    return {
        ErrorCode.conflict: 409,
        ErrorCode.not_found: 409,
        ErrorCode.validation_failed: 422,
        ErrorCode.sandbox_failed: 500,
        ErrorCode.agent_failed: 502,
    }.get(code, 503)


async def create_session(request: web.Request) -> web.Response:
    """Create a session: place it on a runner, which makes its sandbox and connects the CLI."""
    svc = services(request)
    req = await read_body(request, CreateSessionRequest)
    agent = await svc.store.get_agent(req.agent)
    if agent is None:
        raise not_found("agent", req.agent)
    if svc.directory.live_count() == 0:
        raise ApiError(
            503, ErrorCode.no_runner, "no runner is available; start one with `ash runner`",
            retryable=True,
        )
    session_id = uuid.uuid4().hex
    options = SessionOptions(model=req.model, system_prompt=req.system_prompt, env=req.env)
    await svc.store.create_session(
        session_id, agent.name, agent.digest, req.model, codec.to_builtins(options), time.time()
    )
    command = CreateSession(
        session_id=session_id, agent=AgentRef(name=agent.name, digest=agent.digest), options=options
    )
    tried: set[str] = set()
    last: Rejected | None = None
    for _ in range(MAX_PLACEMENT_TRIES):
        advert = choose_runner(
            svc.directory.snapshot(), time.monotonic(), svc.directory.ttl_s, frozenset(tried)
        )
        if advert is None:
            break
        tried.add(advert.runner_id)
        reply = await svc.bus.request(advert.runner_id, command, svc.config.create_timeout_s)
        match reply:
            case Accepted():
                view = await svc.store.update_session(
                    session_id,
                    time.time(),
                    status="active",
                    runner_id=reply.runner_id,
                    claude_session_id=reply.claude_session_id,
                )
                assert view is not None
                return json_response(view, 201)
            case Rejected():
                last = reply
                logger.warning(
                    "runner %s refused session %s: %s", reply.runner_id, session_id, reply.error
                )
                if not reply.error.retryable:
                    break
    await svc.store.update_session(session_id, time.time(), status="error")
    if last is None:
        raise ApiError(503, ErrorCode.no_runner, "no runner could take the session", retryable=True)
    raise ApiError.from_info(reply_status(last.error.code), last.error)


async def list_sessions(request: web.Request) -> web.Response:
    agent = request.query.get("agent")
    views = await services(request).store.list_sessions(agent=agent)
    return json_response(SessionList(sessions=views))


async def get_session(request: web.Request) -> web.Response:
    return json_response(await load_session(services(request), request.match_info["id"]))


async def end_session(request: web.Request) -> web.Response:
    """End a session: its sandbox is destroyed, its history kept. Ending twice is fine."""
    svc = services(request)
    view = await load_session(svc, request.match_info["id"])
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
