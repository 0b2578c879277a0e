"""`/api/sessions/{id}/pause`, `/resume` and `/fork`: sessions that outlive their sandbox.

    POST /pause    active -> paused. The runner freezes the sandbox (cgroup freezer) and
                   snapshots its workspace and HOME (the Claude transcript lives there) to the
                   object store. 409 while a turn runs. A session whose runner is gone is
                   paused all the same: it resumes cold from its latest snapshot.
    POST /resume   paused (or active) -> active, answered with header `Ash-Resumed`:
                     warm   the sandbox is still on its runner: thawed (sub-millisecond there)
                     cold   the sandbox is gone (runner dead, restarted, evicted): any live
                            runner restores the latest snapshot into a fresh sandbox and the
                            CLI resumes the same Claude conversation id
                     none   it was active and its runner has it: nothing to do
                   A `starting` session (another resume in flight) is waited for.
    POST /fork     201: a new session whose workspace and conversation are copies of this
                   one's as of now (a fresh snapshot if its runner is reachable, else the
                   latest), the conversation forked under a new Claude session id at its first
                   turn. Both go on independently.

A **message to a paused session resumes it first** (`auto_resume`, used by the messages
endpoint), warm or cold, so clients need not call /resume (a message to a session being resumed
waits for that resume). Exec and files do not resume: a paused session's sandbox is frozen or
gone, so they answer 409 `conflict` saying to resume first (`require_active`).

A session still `active` on a runner that has just died is in between: its runner does not
answer (or its advert is already stale), and the reaper has not paused it yet (within about one
runner TTL plus one sweep). Every command to it meanwhile answers 503 `runner_unreachable`,
retryable (`runner_of`, `lost_runner`), never a hang or a 500; once the reaper has paused it, a
message resumes it cold on a live runner. A cold resume marks the session
`starting` while it runs (a compare-and-set on the status), so that two resumes never build two
sandboxes; a `starting` older than `create_timeout_s` twice over is taken over.

When the conversation cannot be restored (no snapshot was ever taken, or its transcript is not
in it), the session still resumes, in a new conversation, and its next turn carries an `error`
event `conversation_not_restored` right after `user_message`.

The decisions are pure functions of (state, now): `resume_step`, `fork_source`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterable
from typing import Literal

import msgspec
from aiohttp import web

from coordinator import credentials
from coordinator import auth
from coordinator.api.common import Services, json_response, services
from coordinator.api.sessions import load_session, reply_status
from coordinator.errors import ApiError
from coordinator.placement import Seen, is_live
from coordinator.reaper import EventLog
from coordinator.snapshots import latest_snapshot
from protocol import codec
from protocol.api import RESUMED_HEADER, SessionView
from protocol.commands import (
    Accepted,
    AgentRef,
    CreateSession,
    PauseSession,
    Rejected,
    ResumeSession,
    SessionOptions,
    SnapshotSession,
)
from protocol.errors import ErrorCode, ErrorInfo
from protocol.snapshots import SnapshotManifest

logger = logging.getLogger(__name__)

RESUME_TIMEOUT_S = 15.0  # a warm resume is a thaw; the bus round trip is all it costs
RESUME_ROUNDS = 3  # re-plans after losing a race on the session's status
GONE = (ErrorCode.not_found, ErrorCode.runner_unreachable)  # the sandbox is not there any more

ResumeStep = Literal["gone", "refuse", "wait", "warm", "cold"]
ForkSource = Literal["gone", "refuse", "snapshot", "latest"]


def resume_step(
    status: str, runner_id: str | None, live: frozenset[str], updated_at: float, now: float,
    stale_after_s: float,
) -> ResumeStep:
    """What resuming a session takes: `warm` asks its runner to thaw it (falling back to
    `cold` if the runner no longer has it), `cold` restores it on any live runner, `wait` lets
    another resume finish; `gone` (ended) and `refuse` (never started) cannot resume."""
    match status:
        case "ended":
            return "gone"
        case "starting":
            return "cold" if now - updated_at > stale_after_s else "wait"
        case "active" | "paused":
            return "warm" if runner_id is not None and runner_id in live else "cold"
        case _:
            return "refuse"


def fork_source(status: str, runner_id: str | None, live: frozenset[str]) -> ForkSource:
    """Where a fork's copy comes from: a fresh `snapshot` of a live active session, else the
    `latest` snapshot (a paused session's is as new as its pause)."""
    match status:
        case "ended":
            return "gone"
        case "active" if runner_id is not None and runner_id in live:
            return "snapshot"
        case "active" | "paused":
            return "latest"
        case _:
            return "refuse"


def live_runners(seen: Iterable[Seen], now: float, ttl_s: float) -> frozenset[str]:
    return frozenset(s.advert.runner_id for s in seen if is_live(s, now, ttl_s))


# -- handlers -----------------------------------------------------------------------------------


async def pause_session(request: web.Request) -> web.Response:
    """Pause: freeze the sandbox and snapshot it; resumable warm here or cold anywhere."""
    svc = services(request)
    view = await load_session(svc, request.match_info["id"], auth.tenant_of(request))
    match view.status:
        case "ended":
            raise _gone(view.id)
        case "paused":
            return json_response(view)
        case "starting" | "error":
            raise ApiError(409, ErrorCode.conflict, f"session {view.id} is {view.status}; only an "
                           "active session can be paused")
    assert view.runner_id is not None
    reply = await svc.bus.request(view.runner_id, PauseSession(session_id=view.id),
                                  svc.config.create_timeout_s)
    if isinstance(reply, Rejected):
        if reply.error.code not in GONE:
            raise ApiError.from_info(reply_status(reply.error.code), reply.error)
        logger.warning("pausing %s: its runner %s no longer has it (%s); paused cold", view.id,
                       view.runner_id, reply.error.message)
    paused = await svc.store.transition(view.id, ("active",), "paused", time.time())
    if paused is None:  # ended or paused meanwhile
        return json_response(await load_session(svc, view.id))
    if isinstance(reply, Accepted) and reply.claude_session_id not in (
        None, paused.claude_session_id
    ):
        paused = await svc.store.update_session(view.id, time.time(),
                                                claude_session_id=reply.claude_session_id) or paused
    return json_response(paused)


async def resume_session(request: web.Request) -> web.Response:
    """Resume: thaw the sandbox where it is, or restore it from its snapshot on any runner."""
    svc = services(request)
    view, how = await resume(svc, await load_session(svc, request.match_info["id"], auth.tenant_of(request)))
    response = json_response(view)
    response.headers[RESUMED_HEADER] = how
    return response


async def auto_resume(svc: Services, view: SessionView) -> SessionView:
    """The session, resumed first if it is paused: a message to a paused session resumes it.
    A session `starting` (being resumed, or created) is waited for, like by a second resume."""
    if view.status not in ("paused", "starting"):
        return view
    resumed, how = await resume(svc, view)
    logger.info("session %s resumed (%s) for a message", view.id, how)
    return resumed


async def resume(svc: Services, view: SessionView) -> tuple[SessionView, str]:
    """Make the session active: (its view, "warm" | "cold" | "none")."""
    stale_after_s = 2 * svc.config.create_timeout_s
    for _ in range(RESUME_ROUNDS):
        live = live_runners(svc.directory.snapshot(), time.monotonic(), svc.directory.ttl_s)
        step = resume_step(view.status, view.runner_id, live, view.updated_at, time.time(),
                           stale_after_s)
        exclude: frozenset[str] = frozenset()
        match step:
            case "gone":
                raise _gone(view.id)
            case "refuse":
                raise ApiError(409, ErrorCode.conflict,
                               f"session {view.id} is {view.status}; it never started, so there "
                               "is nothing to resume: create a new session")
            case "wait":
                view = await _wait_while_starting(svc, view.id, stale_after_s)
                continue
            case "warm":
                assert view.runner_id is not None
                reply = await svc.bus.request(view.runner_id, ResumeSession(session_id=view.id),
                                              RESUME_TIMEOUT_S)
                if isinstance(reply, Accepted):
                    resumed = await _warm_resumed(svc, view, reply)
                    if resumed is not None:
                        return resumed
                    view = await load_session(svc, view.id)  # changed meanwhile: plan again
                    continue
                if reply.error.code not in GONE:
                    raise ApiError.from_info(reply_status(reply.error.code), reply.error)
                exclude = frozenset({view.runner_id})  # its runner does not have it: cold
        claimed = await svc.store.transition(view.id, (view.status,), "starting", time.time())
        if claimed is None:
            view = await load_session(svc, view.id)
            continue
        if view.status == "active" and view.runner_id is not None:
            # Resumed before the reaper noticed its runner was lost: end the turn that runner
            # may have left open, as the reaper would, so streams following it end.
            await EventLog(svc.layout.js).end_lost_turn(view.id, view.runner_id)
        return await _cold_resume(svc, claimed, exclude), "cold"
    raise ApiError(409, ErrorCode.conflict, f"session {view.id} keeps changing; try again",
                   retryable=True)


async def _warm_resumed(
    svc: Services, view: SessionView, reply: Accepted
) -> tuple[SessionView, str] | None:
    """The session after its runner thawed it; None if its status changed meanwhile."""
    now = time.time()
    if view.status == "paused":
        active = await svc.store.transition(view.id, ("paused",), "active", now)
        if active is None:
            return None
        view, how = active, "warm"
    else:
        how = "none"
    if reply.claude_session_id not in (None, view.claude_session_id):
        view = await svc.store.update_session(view.id, now,
                                              claude_session_id=reply.claude_session_id) or view
    return view, how


async def _cold_resume(svc: Services, view: SessionView, exclude: frozenset[str]) -> SessionView:
    """Restore the (now `starting`) session on a live runner; back to `paused` on failure."""
    options = await _options(svc, view.id)
    command = CreateSession(
        session_id=view.id, agent=AgentRef(name=auth.runner_agent_name(view.tenant, view.agent),
                       digest=view.agent_digest),
        options=options, claude_session_id=view.claude_session_id, restore=True)
    try:
        credential = await credentials.for_stored_session(svc.credentials, svc.store, view.id)
        command = msgspec.structs.replace(command, credential=credential)
        reply = await _place(svc, command, exclude)
    except BaseException:
        await asyncio.shield(svc.store.transition(view.id, ("starting",), "paused", time.time()))
        raise
    if reply.warning is not None:
        logger.warning("session %s resumed cold on %s: %s", view.id, reply.runner_id,
                       reply.warning.message)
    resumed = await svc.store.update_session(
        view.id, time.time(), status="active", runner_id=reply.runner_id,
        claude_session_id=reply.claude_session_id)
    assert resumed is not None
    logger.info("session %s resumed cold on runner %s", view.id, reply.runner_id)
    return resumed


async def fork_session(request: web.Request) -> web.Response:
    """Fork: a new session with copies of this one's workspace and conversation."""
    svc = services(request)
    source = await load_session(svc, request.match_info["id"], auth.tenant_of(request))
    live = live_runners(svc.directory.snapshot(), time.monotonic(), svc.directory.ttl_s)
    step = fork_source(source.status, source.runner_id, live)
    if step == "gone":
        raise _gone(source.id)
    if step == "refuse":
        raise ApiError(409, ErrorCode.conflict, f"session {source.id} is {source.status}; "
                       "only an active or paused session can be forked")
    manifest: SnapshotManifest | None = None
    if step == "snapshot":
        assert source.runner_id is not None
        reply = await svc.bus.request(source.runner_id, SnapshotSession(session_id=source.id),
                                      svc.config.create_timeout_s)
        if isinstance(reply, Accepted):
            manifest = reply.snapshot
        elif reply.error.code not in GONE:
            raise ApiError.from_info(reply_status(reply.error.code), reply.error)
    if manifest is None:
        manifest = await latest_snapshot(svc.layout.snapshots, source.id)
    if manifest is None:
        raise ApiError(409, ErrorCode.conflict,
                       f"session {source.id} has no snapshot to fork from (its runner is gone "
                       "and it never had one)")
    fork_id = uuid.uuid4().hex
    options = await _options(svc, source.id)
    # The fork uses its source's credential (opened now: a deleted one refuses the fork).
    credential = await credentials.for_stored_session(svc.credentials, svc.store, source.id)
    await svc.store.create_session(
        fork_id, source.agent, source.agent_digest, source.model,
        credentials.stored_options(codec.to_builtins(options),
                                   credential.name if credential else None), time.time(),
        tenant=source.tenant)
    command = CreateSession(
        session_id=fork_id, agent=AgentRef(name=auth.runner_agent_name(source.tenant, source.agent),
                       digest=source.agent_digest),
        options=options, claude_session_id=manifest.claude_session_id or source.claude_session_id,
        restore=True, restore_from=source.id, fork=True, credential=credential)
    try:
        reply = await _place(svc, command, frozenset())
    except BaseException:
        await asyncio.shield(svc.store.update_session(fork_id, time.time(), status="error"))
        raise
    view = await svc.store.update_session(
        fork_id, time.time(), status="active", runner_id=reply.runner_id,
        claude_session_id=reply.claude_session_id)
    assert view is not None
    logger.info("session %s forked from %s on runner %s", fork_id, source.id, reply.runner_id)
    return json_response(view, 201)


# -- helpers ------------------------------------------------------------------------------------


async def _place(svc: Services, command: CreateSession, exclude: frozenset[str]) -> Accepted:
    """Send `command` to the runner placement chooses, then the next, like a new session."""
    return await svc.placer.place(command, exclude)


async def _options(svc: Services, session_id: str) -> SessionOptions:
    return msgspec.convert(await svc.store.get_session_options(session_id), SessionOptions)


async def _wait_while_starting(svc: Services, session_id: str, timeout_s: float) -> SessionView:
    """Poll the store (another coordinator may be the one resuming) until the session leaves
    `starting`, or the timeout makes it stale (the next plan takes it over)."""
    deadline = time.monotonic() + timeout_s
    while True:
        view = await load_session(svc, session_id)
        if view.status != "starting" or time.monotonic() >= deadline:
            return view
        await asyncio.sleep(0.1)  # a poll of the shared store, the only place the state lives


def require_active(session: SessionView) -> None:
    """Refuse a command that needs the session's sandbox running (exec, files): 410 when the
    session has ended, 409 otherwise, saying what to do instead."""
    sid = session.id
    match session.status:
        case "active" if session.runner_id is not None:
            return
        case "ended":
            raise _gone(sid)
        case "paused":
            raise ApiError(409, ErrorCode.conflict,
                           f"session {sid} is paused: resume it first (POST /api/sessions/{sid}/"
                           f"resume, or `ash resume {sid}`; a message also resumes it), then "
                           "try again")
        case "starting":
            raise ApiError(409, ErrorCode.conflict,
                           f"session {sid} is starting (being created or resumed); try again "
                           "in a moment", retryable=True)
        case _:
            raise ApiError(409, ErrorCode.conflict,
                           f"session {sid} is {session.status}: it never started, so it has no "
                           "sandbox; create a new session")


def runner_of(svc: Services, session: SessionView) -> str:
    """The runner holding the (active) session; 503 `lost_runner` at once when the directory,
    having read the registry, no longer sees that runner live: asking it would only wait for
    the bus timeout."""
    assert session.runner_id is not None
    directory = svc.directory
    if directory.loaded.is_set() and not directory.is_live(session.runner_id):
        raise lost_runner(session.id, session.runner_id)
    return session.runner_id


def lost_runner(session_id: str, runner_id: str, why: str = "is not answering") -> ApiError:
    """503 for a command to an active session whose runner has gone (or restarted without it):
    retryable, because the reaper pauses the session within seconds and then it resumes."""
    return ApiError(503, ErrorCode.runner_unreachable,
                    f"runner {runner_id} of session {session_id} {why} (it may have stopped); "
                    "the session is paused within a few seconds, and a message then resumes it "
                    "on another runner: retry", retryable=True)


def passed_on(session: SessionView, error: ErrorInfo, status: int) -> ApiError:
    """The HTTP error for a runner's refusal of a command about `session`: `status`, unless
    the bus says the runner did not answer (`lost_runner`)."""
    assert session.runner_id is not None
    if error.code == ErrorCode.runner_unreachable:
        return lost_runner(session.id, session.runner_id)
    return ApiError.from_info(status, error)


def _gone(session_id: str) -> ApiError:
    return ApiError(410, ErrorCode.gone, f"session {session_id} has ended; create a new one")
