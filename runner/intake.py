"""Receives the runner's commands from NATS and answers each with Accepted or Rejected.

Each command is handled in its own task (creating a session takes a CLI start, and must not
hold up an interrupt behind it); at most `max_inflight` at once, beyond which the runner
answers `runner_busy` at once rather than queueing.

Exec and files commands go to `ExecService` and `FileService`; an exec or a download is
answered as soon as it has started, and its bytes then flow on their own stream subject.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from protocol import codec, subjects
from protocol.commands import (
    Accepted,
    AgentRef,
    CloseUpload,
    CommandReply,
    CreateSession,
    DeleteFile,
    EndSession,
    Interrupt,
    ListFiles,
    OpenUpload,
    PauseSession,
    ReadFile,
    ReadWorkspace,
    Rejected,
    ResumeSession,
    SendTurn,
    SnapshotSession,
    StartExec,
    StreamOpened,
    UploadChunk,
    WarmAgent,
)
from protocol.errors import ErrorCode, ErrorInfo
from protocol.snapshots import SnapshotManifest
from runner.execs import ExecService
from runner.files import FileService
from runner.sessions import SessionError, SessionManager

logger = logging.getLogger(__name__)

MIN_INFLIGHT = 256  # commands handled at once, at least (else twice the runner's max sessions)


class Intake:
    """Subscribes to `subjects.runner_commands(runner_id)` and dispatches to the sessions."""

    def __init__(
        self,
        nc: NatsClient,
        sessions: SessionManager,
        *,
        max_inflight: int | None = None,
        execs: ExecService | None = None,
        files: FileService | None = None,
        warm_agent: Callable[[AgentRef], Awaitable[None]] | None = None,
    ) -> None:
        self._nc = nc
        self._sessions = sessions
        self._warm_agent = warm_agent
        self._execs = execs if execs is not None else ExecService(nc, sessions)
        self._files = files if files is not None else FileService(nc, sessions)
        # Every session may have a command in flight at once (500 sessions each sent a turn
        # together), and then some; at least MIN_INFLIGHT.
        self._max_inflight = max_inflight if max_inflight is not None else max(
            MIN_INFLIGHT, 2 * sessions.max_sessions)
        self._tasks: set[asyncio.Task[None]] = set()
        self._sub = None

    async def __aenter__(self) -> Intake:
        self._sub = await self._nc.subscribe(
            subjects.runner_commands(self._sessions.runner_id),
            cb=self._on_msg,
            pending_msgs_limit=4096,
            pending_bytes_limit=64 * 1024 * 1024,
        )
        await self._nc.flush()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop taking commands, then let those in flight finish (bounded)."""
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=10)
        for t in list(self._tasks):
            t.cancel()
        await self._execs.close()
        await self._files.close()

    async def _on_msg(self, msg: Msg) -> None:
        if len(self._tasks) >= self._max_inflight:
            await self._reply(msg, self._rejected(ErrorCode.runner_busy, "runner is busy", True))
            return
        task = asyncio.create_task(self._handle(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, msg: Msg) -> None:
        try:
            command = codec.decode_command(msg.data)
        except (codec.DecodeError, codec.ValidationError) as e:
            await self._reply(msg, self._rejected(ErrorCode.bad_request, f"undecodable command: {e}"))
            return
        try:
            reply = await self.dispatch(command)
        except SessionError as e:
            reply = Rejected(runner_id=self._sessions.runner_id, error=e.info)
        except Exception as e:
            logger.exception("command %s failed", type(command).__name__)
            reply = self._rejected(ErrorCode.internal, f"the runner failed: {e}", True)
        await self._reply(msg, reply)

    async def dispatch(self, command: object) -> CommandReply:
        s = self._sessions
        match command:
            case CreateSession():
                session = await s.create(command)
                return Accepted(runner_id=s.runner_id,
                                claude_session_id=session.conversation.claude_session_id,
                                next_seq=session.publisher.seq + 1, warm=session.warm,
                                warning=session.notice, phases=session.phases)
            case SendTurn():
                s.start_turn(command)
                # The turn's events come after every event already handed to the publisher
                # (a previous turn's `done` still being stored may come between).
                return Accepted(runner_id=s.runner_id,
                                next_seq=s.get(command.session_id).publisher.seq + 1)
            case Interrupt():
                if not await s.interrupt(command.session_id):
                    return self._rejected(ErrorCode.conflict, "no turn is running in this session")
                return Accepted(runner_id=s.runner_id)
            case EndSession():
                await s.end(command.session_id)
                return Accepted(runner_id=s.runner_id)
            case PauseSession():
                snapshot = await s.pause(command.session_id)
                return self._lifecycle_reply(command.session_id, snapshot)
            case ResumeSession():
                s.resume(command.session_id)
                return self._lifecycle_reply(command.session_id)
            case SnapshotSession():
                snapshot = await s.snapshot(command.session_id)
                return self._lifecycle_reply(command.session_id, snapshot)
            case WarmAgent() if self._warm_agent is not None:
                await self._warm_agent(command.agent)
                return Accepted(runner_id=s.runner_id)
            case StartExec():
                s.touch(command.session_id)  # what it changes is snapshotted after the debounce
                await self._execs.start(command)
                return StreamOpened(runner_id=s.runner_id)
            case ListFiles():
                return await self._files.list_files(command)
            case ReadFile():
                return await self._files.read_file(command)
            case ReadWorkspace():
                return await self._files.read_workspace(command)
            case DeleteFile():
                await self._files.delete_file(command)
                s.touch(command.session_id)
                return Accepted(runner_id=s.runner_id)
            case OpenUpload():
                await self._files.open_upload(command)
                return Accepted(runner_id=s.runner_id)
            case UploadChunk():
                await self._files.upload_chunk(command)
                return Accepted(runner_id=s.runner_id)
            case CloseUpload():
                done = await self._files.close_upload(command)
                s.touch(command.session_id)
                return done if done is not None else Accepted(runner_id=s.runner_id)
            case _:
                return self._rejected(ErrorCode.bad_request, f"unknown command {type(command).__name__}")

    def _lifecycle_reply(self, session_id: str, snapshot: SnapshotManifest | None = None) -> Accepted:
        """Accepted, with the conversation the session is on now (for the store to keep)."""
        session = self._sessions.get(session_id)
        return Accepted(runner_id=self._sessions.runner_id, snapshot=snapshot,
                        claude_session_id=session.conversation.claude_session_id)

    def _rejected(self, code: ErrorCode, message: str, retryable: bool = False) -> Rejected:
        return Rejected(runner_id=self._sessions.runner_id,
                        error=ErrorInfo(code=code, message=message, retryable=retryable))

    async def _reply(self, msg: Msg, reply: CommandReply) -> None:
        if msg.reply:
            with contextlib.suppress(Exception):
                await msg.respond(codec.encode(reply))
