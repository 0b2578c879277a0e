"""The reaper: a sweep every `interval_s` that keeps sessions and sandboxes honest.

Each sweep reads the sessions that live on a runner (`starting`, `active`, `paused`) and the
live runners' adverts, asks `coordinator.lifetimes.plan` what to do, and does it:

    ColdPause   store: -> paused on no runner (CAS on status and runner); if the session's
                event log ends inside a turn, append `error` (runner_lost) and `done`, so
                every stream following that turn ends and the history says why
    IdlePause   store: active -> paused (CAS), then PauseSession to the runner; on refusal
                back to active, or, when the runner no longer has the sandbox, cold
    Expire      store: -> ended (CAS), then EndSession to its runner
    FailStart   store: starting -> error (CAS)
    Unstick     store: starting -> paused on no runner (CAS)
    EndSandbox  EndSession to the runner that holds the orphan

No leader: every coordinator sweeps; compare-and-set on the store makes each change happen
once, and only the coordinator whose change won sends the command or appends to the log.
The appended events carry the log's next seqs and are published only if the log has not
moved since it was read (`Nats-Expected-Last-Subject-Sequence`), so they never interleave
with a runner that was slow rather than dead.

A coordinator that has not watched the registry for one runner TTL (just started, or
reconnected to NATS) does nothing that is judged from runners' absence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection
from typing import Protocol

from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from coordinator import lifetimes
from coordinator.lifetimes import (
    Action,
    ColdPause,
    EndSandbox,
    Expire,
    FailStart,
    IdlePause,
    LiveRunner,
    Policy,
    Unstick,
)
from coordinator.placement import Seen, is_live
from coordinator.store.base import UNSET, Unset
from protocol import codec, events, subjects
from protocol.api import SessionStatus, SessionView
from protocol.commands import Accepted, Command, CommandReply, EndSession, PauseSession, Rejected
from protocol.errors import ErrorCode, ErrorInfo

logger = logging.getLogger(__name__)

EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
END_TIMEOUT_S = 15.0
PAUSE_TIMEOUT_S = 90.0  # a pause snapshots the workspace
MAX_CONCURRENT = 16


class Clock(Protocol):
    def time(self) -> float: ...

    def monotonic(self) -> float: ...


class SystemClock:
    """The real clocks."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class Runners(Protocol):
    """The live view of the registry (`coordinator.directory.RunnerDirectory`)."""

    ttl_s: float
    loaded: asyncio.Event

    def snapshot(self) -> list[Seen]: ...


class SessionStore(Protocol):
    """The part of `coordinator.store.Store` the reaper uses."""

    async def sessions_with_status(
        self, statuses: Collection[SessionStatus], limit: int = ...
    ) -> list[SessionView]: ...

    async def get_session(self, id: str) -> SessionView | None: ...

    async def transition(
        self, id: str, from_statuses: Collection[SessionStatus], to_status: SessionStatus,
        now: float, *, on_runner: str | None | Unset = UNSET, runner_id: str | None | Unset = UNSET,
    ) -> SessionView | None: ...


class Commands(Protocol):
    """`coordinator.bus.RunnerBus`."""

    async def request(self, runner_id: str, command: Command, timeout_s: float) -> CommandReply: ...


class TurnLog(Protocol):
    async def end_lost_turn(self, session_id: str, runner_id: str) -> bool: ...


class EventLog:
    """Ends, in a session's JetStream log, a turn whose runner was lost mid-way."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    async def end_lost_turn(self, session_id: str, runner_id: str) -> bool:
        """Append `error` (runner_lost) and `done` if the log's last event is not a `done`;
        False when there was nothing to end or the log moved meanwhile."""
        subject = subjects.session_events(session_id)
        try:
            msg = await self._js.get_last_msg(subjects.EVENTS_STREAM, subject)
        except NotFoundError:
            return False
        last = codec.decode_event(msg.data)
        if isinstance(last, events.Done):
            return False
        error = events.Error(
            session_id=session_id, turn_id=last.turn_id, seq=last.seq + 1,
            error=ErrorInfo(code=ErrorCode.runner_lost, retryable=True, message=(
                f"runner {runner_id} was lost during this turn; the session is paused and can "
                "be resumed (the turn's events so far are kept)")))
        done = events.Done(session_id=session_id, turn_id=last.turn_id, seq=last.seq + 2,
                           reason="error")
        expected = msg.seq
        try:
            for ev in (error, done):
                ack = await self._js.publish(subject, codec.encode(ev), headers={
                    subjects.MSG_ID_HEADER: subjects.event_msg_id(session_id, ev.seq),
                    EXPECTED_LAST_SUBJECT_SEQ: str(expected),
                })
                expected = ack.seq
        except APIError as e:  # the log moved on: its writer is alive after all
            logger.warning("session %s: not ending its turn in the log: %s", session_id, e)
            return False
        return True


class Reaper:
    """Sweeps every `interval_s` until closed; `sweep()` is one pass (tests call it)."""

    def __init__(
        self,
        store: SessionStore,
        runners: Runners,
        bus: Commands,
        log: TurnLog,
        policy: Policy,
        *,
        interval_s: float = 1.0,
        link: Callable[[], int | None] = lambda: 0,
        clock: Clock = SystemClock(),
    ) -> None:
        """`link()` is None while the bus is disconnected, else a number that changes with
        every reconnect (the adverts missed meanwhile make every runner look stale)."""
        self._store = store
        self._runners = runners
        self._bus = bus
        self._log = log
        self._policy = policy
        self._interval_s = interval_s
        self._link = link
        self._clock = clock
        self._epoch: int | None = None
        self._since: float | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Reaper:
        self._task = asyncio.create_task(self._loop(), name="reaper")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:
                logger.exception("reaper sweep failed")
            await asyncio.sleep(self._interval_s)

    def runners_trusted(self) -> bool:
        """Whether this coordinator has heard the registry without a break for one TTL."""
        now = self._clock.monotonic()
        epoch = self._link()
        if epoch is None or not self._runners.loaded.is_set():
            self._since = None
            return False
        if self._since is None or epoch != self._epoch:
            self._since, self._epoch = now, epoch
        return now - self._since >= self._runners.ttl_s

    def live_runners(self) -> dict[str, LiveRunner]:
        """The runners with a fresh advert, their arrival put on the wall clock."""
        mono, wall, ttl = self._clock.monotonic(), self._clock.time(), self._runners.ttl_s
        return {
            s.advert.runner_id: LiveRunner(
                runner_id=s.advert.runner_id, heard_at=wall - (mono - s.received_at),
                sessions=s.advert.activity, draining=s.advert.draining)
            for s in self._runners.snapshot() if is_live(s, mono, ttl)
        }

    async def sweep(self) -> list[Action]:
        """One pass: decide, then act. Returns the actions that took effect."""
        trusted = self.runners_trusted()
        live = self.live_runners()
        rows = await self._store.sessions_with_status(lifetimes.ON_A_RUNNER)
        known: dict[str, SessionView | None] = {s.id: s for s in rows}
        if trusted:
            for runner in live.values():
                for session_id in runner.sessions or ():
                    if session_id not in known:
                        known[session_id] = await self._store.get_session(session_id)
        actions = lifetimes.plan(rows, live, known, self._clock.time(), self._policy,
                                 runners_trusted=trusted)
        if not actions:
            return []
        gate = asyncio.Semaphore(MAX_CONCURRENT)
        done: list[Action] = []

        async def run(action: Action) -> None:
            async with gate:
                try:
                    if await self.apply(action):
                        done.append(action)
                except Exception:
                    logger.exception("reaper: %s failed", action)

        async with asyncio.TaskGroup() as tg:
            for action in actions:
                tg.create_task(run(action))
        return done

    async def apply(self, action: Action) -> bool:
        """Carry out one action; False when the store had already moved on (another
        coordinator, a client) and nothing was done."""
        store, now = self._store, self._clock.time()
        match action:
            case ColdPause(session_id=sid, runner_id=rid, why=why):
                view = await store.transition(sid, lifetimes.HELD, "paused", now,
                                              on_runner=rid, runner_id=None)
                if view is None:
                    return False
                logger.warning("session %s paused (cold): %s on runner %s", sid,
                               "runner lost" if why == "runner_lost" else "no sandbox", rid)
                await self._log.end_lost_turn(sid, rid)
                return True
            case IdlePause(session_id=sid, runner_id=rid, idle_s=idle):
                return await self._idle_pause(sid, rid, idle)
            case Expire(session_id=sid, runner_id=rid):
                view = await store.transition(sid, lifetimes.NOT_ENDED, "ended", now)
                if view is None:
                    return False
                logger.info("session %s ended: older than %g s", sid, self._policy.session_ttl_s)
                if rid is not None:
                    await self._end_sandbox(rid, sid)
                return True
            case FailStart(session_id=sid):
                view = await store.transition(sid, ("starting",), "error", now, on_runner=None)
                if view is not None:
                    logger.warning("session %s never finished starting: error", sid)
                return view is not None
            case Unstick(session_id=sid):
                view = await store.transition(sid, ("starting",), "paused", now, runner_id=None)
                if view is not None:
                    logger.warning("session %s: its resume never finished; paused again", sid)
                return view is not None
            case EndSandbox(runner_id=rid, session_id=sid, why=why):
                logger.warning("runner %s holds a sandbox for session %s (%s): ending it",
                               rid, sid, why)
                await self._end_sandbox(rid, sid)
                return True
            case _:
                raise ValueError(f"unknown reaper action {action!r}")

    async def _idle_pause(self, sid: str, rid: str, idle_s: float) -> bool:
        store = self._store
        view = await store.transition(sid, ("active",), "paused", self._clock.time(), on_runner=rid)
        if view is None:
            return False
        reply = await self._bus.request(rid, PauseSession(session_id=sid), PAUSE_TIMEOUT_S)
        match reply:
            case Accepted():
                logger.info("session %s paused after %.0f s idle", sid, idle_s)
                return True
            case Rejected(error=error) if error.code == ErrorCode.not_found:
                # The sandbox is gone already: the session resumes cold.
                await store.transition(sid, ("paused",), "paused", self._clock.time(),
                                       on_runner=rid, runner_id=None)
                return True
            case _:
                why = reply.error if isinstance(reply, Rejected) else type(reply).__name__
                logger.warning("runner %s did not pause idle session %s: %s", rid, sid, why)
                await store.transition(sid, ("paused",), "active", self._clock.time(), on_runner=rid)
                return False

    async def _end_sandbox(self, runner_id: str, session_id: str) -> None:
        reply = await self._bus.request(runner_id, EndSession(session_id=session_id), END_TIMEOUT_S)
        if isinstance(reply, Rejected) and reply.error.code != ErrorCode.not_found:
            logger.warning("runner %s could not end session %s: %s", runner_id, session_id,
                           reply.error)
