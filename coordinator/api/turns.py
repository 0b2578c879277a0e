"""Turns: send a message and stream the turn; re-attach to a session's events; interrupt;
read the history.

A turn is a server-side job: it runs on the runner whether or not anyone listens, and its
events go to the session's JetStream log, which the recorder turns into history. HTTP streams
only follow that log, so a client that disconnects cancels nothing, and any coordinator can
serve a re-attach (`stream.py` says how a replay finds its start).

    POST /messages   resumes a paused session first (`lifecycle.auto_resume`); subscribes
                     to the session's subject (a plain NATS subscription, falling back to
                     the log on a gap: `stream.Follower`), then asks the runner to start the
                     turn, so no event can be missed; streams the turn's events to its `done`. An active
                     session whose runner is gone gets 503 `runner_unreachable` (retryable)
                     until the reaper pauses it; the next message then resumes it cold.
                     Answers name the turn and the seq its events come after (headers
                     `Ash-Turn-Id`, `Ash-Turn-After`), so a client can re-attach exactly even
                     if its stream breaks before the first event. One turn at a time: a message
                     while one runs is 409 `conflict`.
    GET  /events     `Last-Event-ID` (or `?after=N`): exactly the events with seq > N, then live;
                     without either, the running turn from its start. `follow=turn` (default)
                     ends after the first `done` (at once when no turn runs and the client has
                     every event); `follow=session` goes on across turns, with keep-alives,
                     until the client leaves or the session ends. An ended session's log is
                     replayed, never waited on.
    POST /interrupt  stops the running turn: its `done` says `interrupted`. Answers once that
                     `done` is published (bounded), so the next message is taken at once. No
                     turn running: 409 `conflict`.

Every stream writes its `done` only after the turn's history is recorded, so a client that
reads the history after `done` sees the whole turn. Keep-alive comments hold quiet streams open.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from aiohttp import web

from coordinator import auth
from coordinator.api import sse
from coordinator.api.common import Services, json_response, read_body, services
from coordinator.api.lifecycle import auto_resume, lost_runner, passed_on, runner_of
from coordinator.api.sessions import load_session, reply_status
from coordinator.api.stream import (
    EventLog,
    Follower,
    StillThere,
    pump,
    wait_done,
    wait_history,
)
from coordinator.errors import ApiError
from protocol.api import (
    LAST_EVENT_ID_HEADER,
    TURN_AFTER_HEADER,
    TURN_ID_HEADER,
    InterruptResult,
    MessageList,
    SendMessageRequest,
)
from protocol import events
from protocol.commands import Accepted, CommandReply, Interrupt, Rejected, SendTurn
from protocol.errors import ErrorCode

logger = logging.getLogger(__name__)

INTERRUPT_WAIT_S = 20.0  # the runner gives the CLI 5 s to stop, then cancels the turn
IDLE_INTERRUPT_WAIT_S = 2.0  # ... when the log shows no turn running yet
SETTLE_PAUSES_S = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4)  # about 0.8 s in all


def _check_can_send(status: str, session_id: str) -> None:
    if status == "ended":
        raise ApiError(410, ErrorCode.gone, f"session {session_id} has ended; create a new one")
    if status != "active":
        raise ApiError(
            409, ErrorCode.conflict, f"session {session_id} is {status}, not active", retryable=False
        )


def _turn_running(session_id: str) -> ApiError:
    return ApiError(
        409, ErrorCode.conflict,
        f"a turn is already running in session {session_id}: one turn at a time. Follow it with "
        f"GET /api/sessions/{session_id}/events, stop it with POST "
        f"/api/sessions/{session_id}/interrupt (`ash interrupt {session_id}`), or send again "
        "after its done event",
        retryable=True,
    )  # fmt: skip


async def send_message(request: web.Request) -> web.StreamResponse:
    """Start a turn and stream its events as SSE until `done`."""
    svc = services(request)
    session = await load_session(svc, request.match_info["id"], auth.tenant_of(request))
    req = await read_body(request, SendMessageRequest)
    session = await auto_resume(svc, session)  # a message to a paused session resumes it
    _check_can_send(session.status, session.id)
    runner_id = runner_of(svc, session)  # 503 at once if its runner is gone, until it is paused
    turn_id = uuid.uuid4().hex
    # The caller's key counts this turn until its done (429 when at its cap).
    slot = svc.limiter.acquire_turn(auth.principal(request).key_id) if svc.limiter else None
    started = ended = False
    after = 0
    try:
        # Subscribed before the runner is asked, so no event of the turn can be missed; the
        # runner's answer says which seq the turn's events come after.
        async with Follower(svc.layout.js, session.id, None, nc=svc.nc) as follower:
            command = SendTurn(session_id=session.id, turn_id=turn_id, content=req.content,
                               model=req.model)
            reply = await _start_turn(svc, runner_id, command)
            if isinstance(reply, Rejected):
                if reply.error.code == ErrorCode.conflict:
                    raise _turn_running(session.id)
                if reply.error.code == ErrorCode.not_found:  # it restarted, or dropped the sandbox
                    raise lost_runner(session.id, runner_id, "no longer holds its sandbox")
                raise passed_on(session, reply.error, reply_status(reply.error.code))
            started = True
            if isinstance(reply, Accepted) and reply.next_seq > 0:
                after = reply.next_seq - 1
            else:  # a runner that does not say: the log's last event is before the turn's
                last = await EventLog(svc.layout.js, session.id).last()
                after = last[1].seq if last is not None else 0
            follower.begin_after(after)
            resp = await sse.open_stream(
                request, {TURN_ID_HEADER: turn_id, TURN_AFTER_HEADER: str(after)}
            )
            await _pump_bounded(svc, resp, follower, select=lambda ev: ev.turn_id == turn_id)
            ended = True
            await resp.write_eof()
            return resp
    finally:
        if slot is not None and svc.limiter is not None:
            if started and not ended:  # the client left: the turn goes on, and still counts
                svc.limiter.hold_until(slot, _turn_done(svc, session.id, turn_id, after),
                                       svc.config.turn_timeout_s)
            else:
                slot.release()


async def _turn_done(svc: Services, session_id: str, turn_id: str, after: int) -> None:
    """Return once the turn's `done` is in the session's event log."""
    start = await EventLog(svc.layout.js, session_id).locate(after)
    async with Follower(svc.layout.js, session_id, start) as follower:
        while True:
            got = await follower.next(svc.config.keepalive_s)
            if got is not None and isinstance(got.event, events.Done) \
                    and got.event.turn_id == turn_id:
                return


async def _start_turn(svc: Services, runner_id: str, command: SendTurn) -> CommandReply:
    """Ask the runner to start the turn, asking again for a moment (about 0.8 s) when:
    - it is busy (too many commands in flight: hundreds of sessions sent a turn together);
    - it says a turn still runs while the log shows none running (its last event is a
      `done`): that turn is only winding down after its `done`, and a client that sends as
      soon as it reads `done` must not get a 409 for that."""
    settled: bool | None = None
    for pause in (*SETTLE_PAUSES_S, None):
        reply = await svc.bus.request(runner_id, command, 30.0)
        if not isinstance(reply, Rejected) or pause is None:
            return reply
        if reply.error.code == ErrorCode.conflict:
            if settled is None:  # asked of the log only when refused
                last = await EventLog(svc.layout.js, command.session_id).last()
                settled = last is None or isinstance(last[1], events.Done)
            if not settled:
                return reply
        elif reply.error.code != ErrorCode.runner_busy:
            return reply
        await asyncio.sleep(pause)  # backoff before asking again
    raise AssertionError("unreachable")


async def _pump_bounded(
    svc: Services, resp: web.StreamResponse, follower: Follower, **kw: Any
) -> None:
    """`pump` to the first selected `done`, for at most the turn timeout."""
    try:
        async with asyncio.timeout(svc.config.turn_timeout_s):
            await pump(svc, resp, follower, **kw)
    except TimeoutError:
        # The runner enforces the turn's own limit; this only stops an endless follow.
        logger.warning("stopped following session %s after the deadline", follower.session_id)


def _alive(svc: Services, session_id: str) -> StillThere:
    """Whether the session still exists and has not ended (checked while a stream is idle)."""

    async def still_there() -> bool:
        view = await svc.store.get_session(session_id)
        return view is not None and view.status != "ended"

    return still_there


def _after(request: web.Request) -> int | None:
    """The seq to resume after: `Last-Event-ID` if sent (a reconnecting EventSource sends it
    on the same URL), else `?after=`; None if neither."""
    raw = request.headers.get(LAST_EVENT_ID_HEADER, "").strip() or request.query.get("after")
    if raw is None or raw == "":
        return None
    try:
        after = int(raw)
    except ValueError:
        after = -1
    if after < 0:
        raise ApiError(400, ErrorCode.bad_request,
                       f"Last-Event-ID / 'after' must be an event seq (an integer >= 0), not {raw!r}")
    return after


async def stream_events(request: web.Request) -> web.StreamResponse:
    """Re-attach: replay the session's events after a seq, then follow them live."""
    svc = services(request)
    session = await load_session(svc, request.match_info["id"], auth.tenant_of(request))
    after = _after(request)
    follow = request.query.get("follow", "turn")
    if follow not in ("turn", "session"):
        raise ApiError(400, ErrorCode.bad_request, f"'follow' is 'turn' or 'session', not {follow!r}")
    start = await EventLog(svc.layout.js, session.id).locate(after)
    async with Follower(svc.layout.js, session.id, start) as follower:
        resp = await sse.open_stream(request)
        if follow == "turn" and start.last_is_done and start.after == start.last_seq:
            pass  # the client has every event and no turn runs: nothing to follow
        elif session.status == "ended":
            # Nothing more will come: replay what the log holds (to a done, for follow=turn).
            await pump(svc, resp, follower, until_done=follow == "turn", stop_at=start.last_seq)
        elif follow == "turn":
            await _pump_bounded(svc, resp, follower, still_there=_alive(svc, session.id))
        else:
            await pump(svc, resp, follower, until_done=False,
                       still_there=_alive(svc, session.id))  # fmt: skip
        await resp.write_eof()
        return resp


async def interrupt(request: web.Request) -> web.Response:
    """Stop the session's running turn; answer once its `done` is out (bounded)."""
    svc = services(request)
    session = await load_session(svc, request.match_info["id"], auth.tenant_of(request))
    if session.status == "ended":
        raise ApiError(410, ErrorCode.gone, f"session {session.id} has ended; no turn runs")
    if session.status != "active" or session.runner_id is None:
        raise ApiError(409, ErrorCode.conflict,
                       f"session {session.id} is {session.status}: no turn is running")
    # From the running turn's start (or one past the last event, when none shows yet), so
    # its `done` cannot be missed whenever it comes.
    start = await EventLog(svc.layout.js, session.id).locate(None)
    async with Follower(svc.layout.js, session.id, start) as follower:
        reply = await svc.bus.request(session.runner_id, Interrupt(session_id=session.id), 15.0)
        if isinstance(reply, Rejected):
            if reply.error.code == ErrorCode.conflict:
                raise ApiError(409, ErrorCode.conflict,
                               f"no turn is running in session {session.id}; nothing to interrupt")
            raise passed_on(session, reply.error, reply_status(reply.error.code))
        found = await wait_done(svc, follower, IDLE_INTERRUPT_WAIT_S)
        if found is None and start.last_is_done and follower.last == start.after:
            # The log showed no turn and none began: the runner's last turn was only winding
            # down after its done when it took the interrupt. Nothing was running.
            raise ApiError(409, ErrorCode.conflict,
                           f"no turn is running in session {session.id}; nothing to interrupt")
        if found is None:
            found = await wait_done(svc, follower, INTERRUPT_WAIT_S - IDLE_INTERRUPT_WAIT_S)
        if found is None:
            logger.warning("interrupted session %s but saw no done in time", session.id)
            return json_response(InterruptResult(session_id=session.id))
        done, stream_seq = found
        await wait_history(svc, session.id, done.seq, stream_seq)
        return json_response(InterruptResult(
            session_id=session.id, turn_id=done.turn_id, done_seq=done.seq, reason=done.reason,
        ))  # fmt: skip


async def list_messages(request: web.Request) -> web.Response:
    svc = services(request)
    session = await load_session(svc, request.match_info["id"], auth.tenant_of(request))
    try:
        after = int(request.query.get("after", "0"))
        limit = min(int(request.query.get("limit", "1000")), 1000)
    except ValueError as e:
        raise ApiError(400, ErrorCode.bad_request, "'after' and 'limit' must be integers") from e
    if after < 0 or limit < 1:
        raise ApiError(400, ErrorCode.bad_request, "'after' must be >= 0 and 'limit' >= 1")
    rows = await svc.store.list_messages(session.id, after_seq=after, limit=limit)
    return json_response(MessageList(messages=rows))

