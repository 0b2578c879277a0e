"""The runner's live sessions: each one a sandbox, a connected CLI and an event publisher.

    (create: claim a sandbox) -> idle <-> running a turn -> (end: release the sandbox)

`create` gets its sandbox and connected CLI from `acquire` (the warm pool: a claimed warm one
when the session's options are the agent's defaults, else a freshly started one) and hands it
back with the claim's `release` when the session ends.

One turn at a time per session: a second `send_turn` while one runs is refused with
`conflict`. A turn always ends with a `done` event, published even when the turn fails or is
cancelled. A CLI that died (crash, out of memory) is reconnected on the next turn, resuming
the same Claude conversation. When the kernel OOM-killed anything in the sandbox during a
turn, the turn reports an `out_of_memory` error naming the limit.

Pause and resume (warm), snapshots (for cold resume and fork, `runner.snapshots`):

    idle --pause: freeze the cgroup, then snapshot--> frozen --resume (or a turn): thaw--> idle
      \\--turn ends or files change--> (debounced snapshot, `runner.autosave`)

A pause is refused while a turn runs; a pause whose snapshot fails is undone (thawed), so a
paused session always has a snapshot as new as its pause. A sandbox destroyed while its
session lives on (runner shutdown, `evict`) is snapshotted first when anything changed since
its last snapshot; `snapshot_all` does it for every session (the drain). A session restored
without its conversation (`Claim.notice`) says so with an `error` event
`conversation_not_restored` right after the `user_message` of its next turn, and goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from protocol import events, logs
from protocol.commands import CreateSession, SendTurn
from protocol.errors import ErrorCode, ErrorInfo
from protocol.snapshots import SnapshotManifest
from runner.autosave import AutoSave, SavePolicy
from runner.bridge import AgentOptions, Conversation, Launcher
from runner.metrics import RunnerMetrics, TurnMeter
from runner.phases import Phases
from runner.publisher import EventPublisher
from runner.snapshots import SnapshotError, SnapshotSuperseded

logger = logging.getLogger(__name__)

SHUTDOWN_SNAPSHOT_S = 60.0  # how long a runner stopping waits for the snapshots of its sessions


class SessionError(Exception):
    """A command about a session cannot be carried out; `info` says why, as data."""

    def __init__(self, code: ErrorCode, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.info = ErrorInfo(code=code, message=message, retryable=retryable)


class OomCounter(Protocol):
    """A sandbox's cgroup, as far as the sessions care."""

    def oom_kills(self) -> int: ...

    def freeze(self) -> None: ...

    def thaw(self) -> None: ...


class SnapshotTaker(Protocol):
    """Where sessions' snapshots go (`runner.snapshots.SnapshotStore`)."""

    async def take(
        self, session_id: str, workspace: str, *, claude_session_id: str | None, writer: str,
        expect_writer: str | None, reason: str,
    ) -> SnapshotManifest: ...


class SandboxHandle(Launcher, Protocol):
    """A prepared sandbox for one session."""

    @property
    def workspace(self) -> str: ...

    @property
    def cgroup(self) -> OomCounter: ...

    async def close(self) -> None: ...


@dataclass(slots=True)
class Claim:
    """A sandbox with a connected CLI, ready to become a session, and how to hand it back."""

    sandbox: SandboxHandle
    conversation: Conversation
    options: AgentOptions
    release: Callable[[], Awaitable[None]]  # stops the CLI and the sandbox
    warm: bool = False  # claimed from the agent's warm pool
    turn_timeout_s: float = float("inf")  # the agent's limit (the runner's applies too)
    memory_mb: int = 0  # for the out-of-memory message
    notice: ErrorInfo | None = None  # restored without its conversation: say so at the next turn
    restored: SnapshotManifest | None = None  # the session's own snapshot it was restored from
    phases: Phases = field(default_factory=Phases)  # how long getting it took, step by step


@dataclass(slots=True)
class Session:
    id: str
    agent: str
    sandbox: SandboxHandle
    options: AgentOptions
    conversation: Conversation
    publisher: EventPublisher
    release: Callable[[], Awaitable[None]]
    warm: bool = False
    turn_timeout_s: float = float("inf")
    memory_mb: int = 0
    oom_kills: int = 0  # as last reported
    turn: asyncio.Task[None] | None = None
    turn_ended: bool = False  # the turn's `done` is being published: it only winds down now
    cancel_reason: str | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    frozen: bool = False  # paused: the cgroup freezer holds every process of the sandbox
    created_at: float = 0.0  # the manager's clock: when the sandbox became this session's
    active_at: float = 0.0  # ... and its last command (`get`) or turn end: for idle expiry
    stop_note: str | None = None  # why an interrupt that is not the user's stopped the turn
    notice: ErrorInfo | None = None
    autosave: AutoSave | None = None
    writer: str = field(default_factory=lambda: secrets.token_hex(8))  # this sandbox life's id
    snapshot_owner: str | None = None  # the writer of the session's snapshot as last seen here
    phases: dict[str, float] | None = None  # ms by phase of its create (runner.phases)
    ending: bool = False  # ended or evicted here, its sandbox being destroyed


class SessionManager:
    """Creates, drives and ends the sessions of this runner."""

    def __init__(
        self,
        *,
        runner_id: str,
        max_sessions: int,
        turn_timeout_s: float,
        acquire: Callable[[CreateSession], Awaitable[Claim]],
        make_publisher: Callable[[str, bool], Awaitable[EventPublisher]],
        snapshots: SnapshotTaker | None = None,
        save_policy: SavePolicy = SavePolicy.from_debounce(2.0),
        clock: Callable[[], float] = time.monotonic,
        metrics: RunnerMetrics | None = None,
    ) -> None:
        """`acquire` raises SessionError when it cannot provide a sandbox with a running CLI.
        `make_publisher(session_id, fresh)`: fresh means the session has no events yet (a new
        session, not a restore), so its seq starts at 0 without asking the log.
        Without `snapshots`, nothing is snapshotted (pause only freezes)."""
        self._metrics = metrics
        self._snapshots = snapshots
        self._save_policy = save_policy
        self._clock = clock
        self.runner_id = runner_id
        self.max_sessions = max_sessions
        self.turn_timeout_s = turn_timeout_s
        self._acquire = acquire
        self._make_publisher = make_publisher
        self._sessions: dict[str, Session] = {}
        self._creating: set[str] = set()
        self._ending: dict[int, Session] = {}  # by id(): a resumed session may be ending twice
        self._turns: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._sessions) + len(self._creating) + len(self._ending)

    async def create(self, cmd: CreateSession) -> Session:
        """Claim a sandbox with a connected CLI and register the session; its `phases` say how
        long each step took (the create that made it, for a repeated command)."""
        if cmd.session_id in self._sessions:
            return self._sessions[cmd.session_id]
        if cmd.session_id in self._creating:
            raise SessionError(ErrorCode.conflict, f"session {cmd.session_id} is being created", True)
        if len(self) >= self.max_sessions:
            raise SessionError(ErrorCode.runner_busy, f"runner {self.runner_id} is full", True)
        self._creating.add(cmd.session_id)
        started = time.perf_counter()
        claim: Claim | None = None
        try:
            claim = await self._acquire(cmd)
            fresh = not cmd.restore and cmd.claude_session_id is None
            with claim.phases.span("publisher"):
                publisher = await self._make_publisher(cmd.session_id, fresh)
            session = Session(
                id=cmd.session_id, agent=cmd.agent.name, sandbox=claim.sandbox,
                options=claim.options, conversation=claim.conversation, publisher=publisher,
                release=claim.release, warm=claim.warm,
                turn_timeout_s=min(self.turn_timeout_s, claim.turn_timeout_s),
                memory_mb=claim.memory_mb, oom_kills=_oom_kills(claim.sandbox),
            )
            session.notice = claim.notice
            session.created_at = session.active_at = self._clock()
            if claim.restored is not None and claim.restored.session_id == session.id:
                session.snapshot_owner = claim.restored.writer
            self._start_autosave(session, claim.restored)
            self._sessions[cmd.session_id] = session
            session.phases = claim.phases.done(started)
            logger.debug("session %s created in %s", session.id, session.phases)
            claim = None  # owned by the session now
            return session
        finally:
            self._creating.discard(cmd.session_id)
            if claim is not None:
                await asyncio.shield(claim.release())

    def get(self, session_id: str) -> Session:
        """The session; every command about a session looks it up here, which is what counts
        as its activity (turns, interrupts, exec, files, pause)."""
        session = self._sessions.get(session_id)
        if session is None:
            raise SessionError(ErrorCode.not_found, f"session {session_id} is not on runner {self.runner_id}")
        session.active_at = self._clock()
        return session

    def _mark_active(self, session: Session) -> None:
        """A turn ended: that is activity as of now, not of its start (a long turn must not
        leave its session looking idle for as long as it ran)."""
        session.active_at = self._clock()

    def held(self) -> list[Session]:
        """Every session with a sandbox here (for the advert), those whose sandbox is being
        destroyed included (`ending`, listed first: a session created here again while its old
        sandbox goes is listed after it, so that by id the live one wins)."""
        return [*self._ending.values(), *self._sessions.values()]

    def running_turns(self) -> dict[str, asyncio.Task[None]]:
        """The running turns, by session id (what a drain waits for)."""
        return {s.id: s.turn for s in self._sessions.values()
                if s.turn is not None and not s.turn.done()}

    def start_turn(self, cmd: SendTurn) -> None:
        """Start a turn in the background; its events go to the session's event log."""
        session = self.get(cmd.session_id)
        if _turn_running(session):
            raise SessionError(ErrorCode.conflict, "a turn is already running in this session; "
                               "wait for its done event or interrupt it")
        session.cancel_reason = None
        # The last turn's done is out but its task may not have returned: the new one waits
        # for it (a client may send as soon as it reads `done`).
        previous = session.turn if session.turn is not None and not session.turn.done() else None
        session.turn_ended = False
        if session.frozen:  # a turn means the session is active (the coordinator resumes first)
            self._thaw(session)
        task = asyncio.create_task(self._run_turn(session, cmd, previous),
                                   name=f"turn-{cmd.turn_id}")
        session.turn = task
        self._turns.add(task)
        task.add_done_callback(self._turns.discard)
        task.add_done_callback(lambda _: self._mark_active(session))
        if session.autosave is not None:
            autosave = session.autosave
            autosave.set_busy(True)
            # Not once a next turn began (it may, as soon as this one's done is out).
            task.add_done_callback(lambda t: _turn_over(autosave) if session.turn is t else None)

    async def interrupt(self, session_id: str, note: str | None = None) -> bool:
        """Interrupt the running turn; False when none runs. `note`: why, when it is not the
        user's doing (the runner draining), told in an `error` before the `done`."""
        session = self.get(session_id)
        if not _turn_running(session):
            return False
        session.cancel_reason = "interrupted"
        session.stop_note = note
        try:
            await asyncio.wait_for(session.conversation.interrupt(), 5)
        except Exception:
            session.turn.cancel()
        return True

    async def end(self, session_id: str) -> None:
        """Stop any turn, disconnect the CLI and destroy the sandbox."""
        async with self._leaving(self.get(session_id)) as session:
            await self._destroy(session, "session ended")

    # -- pause, resume, snapshots -----------------------------------------------------------

    def touch(self, session_id: str) -> None:
        """Something in the session's sandbox may have changed (files API, exec): snapshot it
        after the debounce. Unknown sessions are ignored."""
        session = self._sessions.get(session_id)
        if session is not None and session.autosave is not None:
            session.autosave.touch()

    async def pause(self, session_id: str) -> SnapshotManifest | None:
        """Freeze the sandbox, then snapshot it (None without a snapshot store). Pausing a
        paused session returns its snapshot again. Raises SessionError: conflict while a turn
        runs; sandbox_failed (retryable) when the snapshot fails, the session then thawed."""
        session = self.get(session_id)
        if _turn_running(session):
            raise SessionError(ErrorCode.conflict, "a turn is running in this session; interrupt "
                               "it or wait for its done event, then pause")
        was_frozen = session.frozen
        if not was_frozen:
            try:
                session.sandbox.cgroup.freeze()
                session.frozen = True
            except Exception as e:  # no freezer (cgroup v1 without it): paused by snapshot only
                logger.warning("session %s: cannot freeze its sandbox: %s", session_id, e)
        try:
            return await self._save(session, "pause")
        except SessionError:
            if not was_frozen and session.frozen:
                self._thaw(session)
            raise

    def resume(self, session_id: str) -> None:
        """Thaw the sandbox (a warm resume; a no-op for a session not paused). Raises
        SessionError not_found when the session's sandbox is not here: resume it cold."""
        session = self.get(session_id)
        if session.frozen:
            self._thaw(session)

    async def snapshot(self, session_id: str, reason: str = "fork", *,
                       during_turn: bool = False) -> SnapshotManifest | None:
        """Snapshot the session now, or return its latest snapshot when nothing changed since.
        Refused with conflict while a turn runs, unless `during_turn` (the drain)."""
        session = self.get(session_id)
        if not during_turn and _turn_running(session):
            raise SessionError(ErrorCode.conflict, "a turn is running in this session; wait for "
                               "its done event")
        return await self._save(session, reason)

    async def snapshot_all(
        self, timeout_s: float = 60.0, reason: str = "drain"
    ) -> dict[str, SnapshotManifest | None | BaseException]:
        """Snapshot every session changed since its last snapshot (the drain hook), running
        turns included, all at once (the store bounds how many pack at a time), within
        `timeout_s`. Returns each session's manifest, or the error that stopped it."""
        return await self._save_many(list(self._sessions.values()), reason, timeout_s)

    async def evict(self, session_id: str, reason: str = "evicted") -> SnapshotManifest | None:
        """Destroy the session's sandbox while the session lives on (it resumes cold): stop
        its turn, snapshot it if anything changed, then release the sandbox."""
        async with self._leaving(self.get(session_id)) as session:
            await self._stop_turn(session, reason)
            result = (await self._save_many([session], "evict", SHUTDOWN_SNAPSHOT_S))[session_id]
            await self._destroy(session, reason)
        if isinstance(result, BaseException):
            raise SessionError(ErrorCode.sandbox_failed, f"evicted without a snapshot: {result}",
                               retryable=True)
        return result

    async def _save(self, session: Session, reason: str) -> SnapshotManifest | None:
        if session.autosave is None:
            return None
        try:
            return await session.autosave.save_now(reason)
        except SnapshotSuperseded as e:
            raise SessionError(ErrorCode.conflict, str(e)) from e
        except SnapshotError as e:
            raise SessionError(ErrorCode.sandbox_failed, f"the snapshot failed: {e}", True) from e

    async def _save_many(
        self, sessions: list[Session], reason: str, timeout_s: float
    ) -> dict[str, SnapshotManifest | None | BaseException]:
        todo = [s for s in sessions if s.autosave is not None and not s.autosave.current
                and not s.autosave.superseded]
        results: dict[str, SnapshotManifest | None | BaseException] = {
            s.id: s.autosave.last if s.autosave is not None else None for s in sessions}
        if not todo:
            return results
        tasks = {asyncio.create_task(self._save(s, reason), name=f"save-{s.id}"): s for s in todo}
        done, late = await asyncio.wait(tasks, timeout=timeout_s)
        for t in late:
            t.cancel()
        for t, s in tasks.items():
            if t in late:
                results[s.id] = TimeoutError(f"no snapshot within {timeout_s:g} s")
            elif (e := t.exception()) is not None:
                results[s.id] = e
            else:
                results[s.id] = t.result()
            if isinstance(results[s.id], BaseException):
                logger.warning("session %s: no %s snapshot: %s", s.id, reason, results[s.id])
        return results

    def _start_autosave(self, session: Session, restored: SnapshotManifest | None) -> None:
        if self._snapshots is None:
            return
        snapshots = self._snapshots

        async def save(reason: str) -> SnapshotManifest:
            manifest = await snapshots.take(
                session.id, session.sandbox.workspace,
                claude_session_id=session.conversation.claude_session_id,
                writer=session.writer, expect_writer=session.snapshot_owner, reason=reason)
            session.snapshot_owner = manifest.writer
            return manifest

        own = restored if restored is not None and restored.session_id == session.id else None
        session.autosave = AutoSave(save, self._save_policy, name=session.id, last=own,
                                    clock=self._clock)
        session.autosave.start()

    def _thaw(self, session: Session) -> None:
        try:
            session.sandbox.cgroup.thaw()
        except Exception as e:  # a sandbox whose cgroup is gone has nothing left to thaw
            logger.warning("session %s: cannot thaw its sandbox: %s", session.id, e)
        session.frozen = False

    async def close(self, snapshot_timeout_s: float = SHUTDOWN_SNAPSHOT_S) -> None:
        """End every session (runner shutdown), snapshotting first those changed since their
        last snapshot, so that they resume cold elsewhere (0: a forced stop, no snapshots)."""
        sessions, self._sessions = list(self._sessions.values()), {}
        for s in sessions:
            await self._stop_turn(s, "runner shutting down")
        if snapshot_timeout_s > 0:
            await self._save_many(sessions, "evict", snapshot_timeout_s)
        for s in sessions:
            await self._destroy(s, "runner shutting down")

    @contextlib.asynccontextmanager
    async def _leaving(self, session: Session) -> AsyncIterator[Session]:
        """The session is no longer here (commands no longer find it), but while the body
        destroys its sandbox it is still held: counted and advertised (as `ending`)."""
        del self._sessions[session.id]
        session.ending = True
        self._ending[id(session)] = session
        try:
            yield session
        finally:
            del self._ending[id(session)]

    async def _stop_turn(self, session: Session, reason: str) -> None:
        if session.turn is not None and not session.turn.done():
            session.cancel_reason = reason
            session.turn.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await session.turn

    async def _destroy(self, session: Session, reason: str) -> None:
        await self._stop_turn(session, reason)
        if session.autosave is not None:
            await session.autosave.close()
        if session.frozen:  # a frozen CLI cannot hear its stdin close
            self._thaw(session)
        # The session's current CLI (a reconnect may have replaced the claimed one), then the
        # claim: its sandbox goes, its slot is recycled.
        await session.conversation.close()
        await session.release()

    async def _ensure_connected(self, session: Session) -> None:
        if not session.conversation.broken:
            return
        # The CLI died: start a new one on the same conversation.
        await session.conversation.close()
        options = AgentOptions(**{**_fields(session.options), "fork": False,
                                  "resume": session.conversation.claude_session_id})
        session.options = options
        session.conversation = Conversation(options, session.sandbox)
        await session.conversation.connect()

    async def _run_turn(self, session: Session, cmd: SendTurn,
                        previous: asyncio.Task[None] | None = None) -> None:
        pub, turn = session.publisher, cmd.turn_id
        reason = "completed"
        logs.set_ids(session_id=session.id, turn_id=turn)  # this task's logs carry them
        meter = TurnMeter.start(_cpu_us(session.sandbox), cmd.model or session.options.model)
        try:
            if previous is not None:
                await asyncio.wait([previous])  # its done is being published: after it
            async with session.lock:
                await pub.emit(events.SessionStart, turn, agent=session.agent, runner_id=self.runner_id,
                               claude_session_id=session.conversation.claude_session_id)
                await pub.emit(events.UserMessage, turn, content=cmd.content)
                if session.notice is not None:
                    notice, session.notice = session.notice, None
                    await pub.emit(events.Error, turn, error=notice)
                try:
                    async with asyncio.timeout(session.turn_timeout_s):
                        await self._ensure_connected(session)
                        completed = False
                        if session.cancel_reason is None:  # else stopped before it began
                            resent = False
                            async for cls, fields in session.conversation.turn(cmd.content, cmd.model):
                                meter.saw(cls, fields)
                                await pub.emit(cls, turn, **fields)
                                completed = cls is events.TurnComplete and not fields.get("is_error")
                                if session.cancel_reason == "interrupted" and not resent:
                                    # A CLI drops an interrupt that came before it began the
                                    # turn; it has begun now, so say it again (harmless twice).
                                    resent = True
                                    await self._safe_interrupt(session)
                    if session.cancel_reason == "interrupted" and not completed:
                        reason = "interrupted"
                    if oom := self._new_oom_kills(session):
                        await pub.emit(events.Error, turn, error=oom)
                except TimeoutError:
                    reason = "timeout"
                    await self._safe_interrupt(session)
                    await pub.emit(events.Error, turn, error=ErrorInfo(
                        code=ErrorCode.turn_timeout,
                        message=f"the turn ran longer than {session.turn_timeout_s:g} s and was stopped"))
                except asyncio.CancelledError:
                    reason = "interrupted" if session.cancel_reason == "interrupted" else "error"
                    raise
                except Exception as e:
                    reason = "error"
                    logger.warning("turn %s of %s failed: %s", turn, session.id, e)
                    error = self._new_oom_kills(session) or ErrorInfo(
                        code=ErrorCode.agent_failed, message=f"the agent failed: {e}", retryable=True)
                    await pub.emit(events.Error, turn, error=error)
        finally:
            await asyncio.shield(self._finish(session, turn, reason, meter))

    async def _finish(self, session: Session, turn: str, reason: str,
                      meter: TurnMeter | None = None) -> None:
        usage = meter.usage(_cpu_us(session.sandbox)) if meter is not None else None
        if meter is not None and usage is not None:
            if self._metrics is not None:
                self._metrics.observe_turn(meter, reason, usage)
            logger.info("turn %s: %s after %d ms, %d tool calls, %s s CPU", turn, reason,
                        usage.duration_ms, usage.tool_calls,
                        "?" if usage.cpu_s is None else f"{usage.cpu_s:.3f}")
        try:
            async with asyncio.timeout(10):
                note, session.stop_note = session.stop_note, None
                if note is not None and reason == "interrupted":
                    await session.publisher.emit(events.Error, turn, error=ErrorInfo(
                        code=ErrorCode.interrupted, message=note, retryable=True))
                if session.cancel_reason and reason == "error":
                    await session.publisher.emit(events.Error, turn, error=ErrorInfo(
                        code=ErrorCode.interrupted, message=f"the turn was stopped: {session.cancel_reason}"))
                # A client that reads this done may pause or send at once, before this task
                # has returned (it waits for the done's ack): the turn counts as over now.
                session.turn_ended = True
                await session.publisher.emit(events.Done, turn, reason=reason, usage=usage)
        except Exception:
            logger.exception("could not publish the end of turn %s of %s", turn, session.id)

    @staticmethod
    def _new_oom_kills(session: Session) -> ErrorInfo | None:
        """An out_of_memory error if the kernel OOM-killed anything in the sandbox since the
        last report (the CLI itself or a tool it ran), else None."""
        kills = _oom_kills(session.sandbox)
        new, session.oom_kills = kills - session.oom_kills, kills
        if new <= 0:
            return None
        logger.warning("session %s: %d processes OOM-killed (limit %d MB)", session.id, new,
                       session.memory_mb)
        return ErrorInfo(
            code=ErrorCode.out_of_memory,
            message=f"the sandbox ran out of memory (limit {session.memory_mb} MB): the kernel "
                    f"killed {new} process{'es' if new > 1 else ''} in it; the session goes on",
            retryable=True)

    @staticmethod
    async def _safe_interrupt(session: Session) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(session.conversation.interrupt(), 5)


def _turn_running(session: Session) -> bool:
    """A turn runs and has not begun to publish its `done`."""
    return session.turn is not None and not session.turn.done() and not session.turn_ended


def _turn_over(autosave: AutoSave) -> None:
    """A turn ended: what it did is worth a (debounced) snapshot."""
    autosave.set_busy(False)
    autosave.touch()


def _cpu_us(sandbox: SandboxHandle) -> int | None:
    """The sandbox cgroup's CPU counter (microseconds), None where it is not accounted."""
    try:
        return sandbox.cgroup.cpu_usage_us()  # type: ignore[attr-defined, no-any-return]
    except Exception:  # a closed sandbox has no cgroup; a fake one may not count CPU
        return None


def _oom_kills(sandbox: SandboxHandle) -> int:
    try:
        return sandbox.cgroup.oom_kills()
    except Exception:  # a closed sandbox has no cgroup; a count is only a report
        return 0


def _fields(options: AgentOptions) -> dict[str, Any]:
    return {f: getattr(options, f) for f in AgentOptions.__dataclass_fields__}
