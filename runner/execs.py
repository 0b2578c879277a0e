"""Exec: one-off commands in a session's own sandbox, their output streamed to a coordinator.

    start() --spawn--> running --both pipes at EOF, process reaped--> End(exit_code)
                          |--timeout_s passed--------> SIGKILL --> End(timed_out, 137)
                          |--output past the cap-----> SIGKILL --> End(truncated, 137)
                          '--listener gone-----------> SIGKILL --> (End, best effort)

Each exec is its own launch of the session's sandbox (`command()` of its sandbox): the same
mounts, the same cgroup and limits, a fresh pid namespace. Killing the launch (bwrap) takes its
whole pid namespace with it, so a timeout stops the command and everything it started. An
exec runs beside whatever else the session does: a turn may be running, and up to
`per_session` execs may run at once.

Output is read in pieces of up to 64 KiB into a small bounded queue, merged per channel up to
a chunk, and sent over a `StreamSender`; a slow listener therefore slows the reads, and the
command blocks on its full pipe rather than anything buffering without bound. After
`HEARTBEAT_S` of silence an empty chunk goes out, so a quiet command learns when its listener
is gone (and is killed) and the coordinator learns the runner is still there.

Environment: the sandbox's own (from its bwrap options), plus the request's `env`, which a
short bash prelude reads NUL-separated from stdin, exports and then execs the command: values
never appear in an argv that host `ps` could show. The command itself finds stdin at EOF.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass

from nats.aio.client import Client as NatsClient

from protocol import subjects
from protocol.commands import StartExec
from protocol.errors import ErrorCode, ErrorInfo
from protocol.files import (
    CHUNK_BYTES,
    ENV_KEY_PATTERN,
    EXEC_SHELL,
    MAX_EXEC_OUTPUT,
    MAX_EXEC_TIMEOUT_S,
)
from protocol.streams import HEARTBEAT_S, Channel
from runner.files import SandboxLookup, sandbox_of
from runner.sessions import SessionError
from runner.streams import ListenerGone, StreamSender

logger = logging.getLogger(__name__)

PRELUDE = 'while IFS= read -r -d "" kv; do export -- "$kv"; done; exec -- "$@"'
READ_BYTES = 64 * 1024
KILL_GRACE_S = 2.0  # after a kill, how long the pipes may stay open before we stop reading
_ENV_KEY = re.compile(ENV_KEY_PATTERN)


def exec_argv(command: str | list[str]) -> list[str]:
    """The argv run inside the sandbox: the env prelude, then the command (a string through
    `/bin/bash -lc`, a list as it is)."""
    inner = [*EXEC_SHELL, command] if isinstance(command, str) else list(command)
    return ["/bin/bash", "-c", PRELUDE, "ash-exec", *inner]


def env_input(env: Mapping[str, str]) -> bytes:
    """The prelude's stdin for `env`. Raises SessionError(validation_failed) on a bad key or
    a NUL in a value (the coordinator checks first; this is the runner's own guard)."""
    out = bytearray()
    for key, value in env.items():
        if not _ENV_KEY.match(key) or "\0" in value:
            raise SessionError(ErrorCode.validation_failed, f"invalid environment variable {key!r}")
        out += f"{key}={value}".encode() + b"\0"
    return bytes(out)


@dataclass(slots=True)
class _State:
    proc: asyncio.subprocess.Process
    timed_out: bool = False
    truncated: bool = False
    gone: bool = False
    sent: int = 0
    killed_at: float | None = None

    def kill(self) -> None:
        """SIGKILL the launch (bwrap: its whole pid namespace goes with it)."""
        if self.killed_at is None:
            self.killed_at = asyncio.get_running_loop().time()
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    def given_up(self) -> bool:
        """Killed a while ago, yet its pipes are still open: something outlived the kill.
        Impossible while the launch is bwrap with its own pid namespace; should a launcher
        ever sit between us and bwrap without exec'ing it, the runner must not wait forever."""
        now = asyncio.get_running_loop().time()
        if self.killed_at is None or now - self.killed_at <= KILL_GRACE_S:
            return False
        logger.warning("exec pid %s: its output pipes outlived the kill; no longer reading them",
                       self.proc.pid)
        return True


class ExecService:
    """Starts execs in sessions' sandboxes and keeps them until they end (or `close`)."""

    def __init__(
        self,
        nc: NatsClient,
        sessions: SandboxLookup,
        *,
        per_session: int = 8,
        max_running: int = 64,
        max_output: int = MAX_EXEC_OUTPUT,
        heartbeat_s: float = HEARTBEAT_S,
    ) -> None:
        self._nc = nc
        self._sessions = sessions
        self._per_session = per_session
        self._max_running = max_running
        self._max_output = max_output
        self._heartbeat_s = heartbeat_s
        self._running: dict[asyncio.Task[None], str] = {}

    def running(self, session_id: str | None = None) -> int:
        """How many execs run (in one session, or in all)."""
        return sum(1 for s in self._running.values() if session_id in (None, s))

    async def start(self, cmd: StartExec) -> None:
        """Spawn the command; its output and end go to `subjects.stream(cmd.exec_id)`.

        Raises SessionError: conflict (no such session here), validation_failed, runner_busy
        (`per_session` or `max_running` execs already run), sandbox_failed.
        """
        sandbox = sandbox_of(self._sessions, cmd.session_id)
        # The coordinator validated the request; these are the runner's own guards.
        if not 0 < cmd.timeout_s <= MAX_EXEC_TIMEOUT_S:
            raise SessionError(ErrorCode.validation_failed, "timeout_s must be in (0, 3600]")
        words = [cmd.command] if isinstance(cmd.command, str) else cmd.command
        if not words or any(not isinstance(w, str) or "\0" in w for w in words):
            raise SessionError(ErrorCode.validation_failed, "the command is empty or holds a NUL")
        stdin = env_input(cmd.env)
        if len(self._running) >= self._max_running or self.running(cmd.session_id) >= self._per_session:
            raise SessionError(ErrorCode.runner_busy, "too many commands are running; try again", True)
        try:
            proc = await asyncio.create_subprocess_exec(
                *sandbox.command(exec_argv(cmd.command)),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as e:
            raise SessionError(ErrorCode.sandbox_failed, f"could not start the command: {e}", True) from e
        sender = StreamSender(self._nc, subjects.stream(cmd.exec_id), cmd.exec_id)
        task = asyncio.create_task(self._run(proc, cmd, sender, stdin), name=f"exec-{cmd.exec_id}")
        self._running[task] = cmd.session_id
        task.add_done_callback(lambda t: self._ended(t, cmd.session_id))
        logger.info("exec %s started in session %s", cmd.exec_id, cmd.session_id)

    def _ended(self, task: asyncio.Task[None], session_id: str) -> None:
        self._running.pop(task, None)
        with contextlib.suppress(SessionError):
            # Looking the session up is what counts as its activity: an exec's end is as
            # recent as activity gets (idle expiry must not count from its start).
            self._sessions.get(session_id)

    async def close(self) -> None:
        """Kill every running exec and wait for them. Idempotent."""
        tasks = list(self._running)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=10)

    async def _run(
        self, proc: asyncio.subprocess.Process, cmd: StartExec, sender: StreamSender, stdin: bytes
    ) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        state = _State(proc)

        def on_timeout() -> None:
            state.timed_out = True
            state.kill()

        timer = loop.call_later(cmd.timeout_s, on_timeout)
        error: ErrorInfo | None = None
        try:
            queue: asyncio.Queue[tuple[Channel, bytes]] = asyncio.Queue(maxsize=8)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(_feed(proc.stdin, stdin))
                pumps = [tg.create_task(_pump(proc.stdout, "stdout", queue)),
                         tg.create_task(_pump(proc.stderr, "stderr", queue))]  # fmt: skip
                waiter = tg.create_task(proc.wait())
                await self._forward(queue, sender, state)
                for pump in pumps:  # done, unless given up on after a kill
                    pump.cancel()
                while not waiter.done():  # pipes closed; the command may still run
                    await asyncio.wait({waiter}, timeout=self._heartbeat_s)
                    if not waiter.done():
                        await self._heartbeat(sender, state)
        except Exception as e:
            logger.exception("exec %s failed", cmd.exec_id)
            error = ErrorInfo(code=ErrorCode.internal, message=f"the exec failed: {e}")
        finally:
            timer.cancel()
            if proc.returncode is None:
                state.kill()
                with contextlib.suppress(Exception):
                    await asyncio.shield(proc.wait())
        code = proc.returncode
        exit_code = None if code is None else (128 - code if code < 0 else code)
        duration_ms = int((loop.time() - started) * 1000)
        logger.info("exec %s exited %s after %d ms%s%s%s", cmd.exec_id, exit_code, duration_ms,
                    " (timed out)" if state.timed_out else "",
                    " (output cap)" if state.truncated else "",
                    " (listener gone)" if state.gone else "")
        if not state.gone:
            await sender.end(exit_code=exit_code if error is None else None,
                             timed_out=state.timed_out, truncated=state.truncated,
                             duration_ms=duration_ms, error=error)

    async def _forward(
        self, queue: asyncio.Queue[tuple[Channel, bytes]], sender: StreamSender, state: _State
    ) -> None:
        """Send what the pumps read until both pipes reach EOF; keep draining (and dropping)
        once the cap is passed or the listener is gone, so the pumps never block."""
        eofs = 0
        carry: tuple[Channel, bytes] | None = None
        while eofs < 2 and not state.given_up():
            if carry is not None:
                (channel, data), carry = carry, None
            else:
                wait = self._heartbeat_s if state.killed_at is None else KILL_GRACE_S / 4
                try:
                    channel, data = await asyncio.wait_for(queue.get(), wait)
                except TimeoutError:
                    await self._heartbeat(sender, state)
                    continue
            if not data:
                eofs += 1
                continue
            buf = bytearray(data)
            while len(buf) < CHUNK_BYTES and not queue.empty():
                nxt = queue.get_nowait()
                if nxt[0] != channel or not nxt[1]:
                    carry = nxt
                    break
                buf += nxt[1]
            if state.gone or state.truncated:
                continue
            room = self._max_output - state.sent
            if len(buf) > room:
                del buf[room:]
                state.truncated = True
            try:
                if buf:
                    await sender.send(bytes(buf), channel)
                    state.sent += len(buf)
            except ListenerGone as e:
                logger.info("exec %s lost its listener (%s); killing it", sender.stream_id, e)
                state.gone = True
            if state.truncated or state.gone:
                state.kill()

    @staticmethod
    async def _heartbeat(sender: StreamSender, state: _State) -> None:
        if state.gone or state.killed_at is not None:
            return
        try:
            await sender.send(b"")
        except ListenerGone:
            state.gone = True
            state.kill()


async def _pump(
    stream: asyncio.StreamReader | None, channel: Channel, queue: asyncio.Queue[tuple[Channel, bytes]]
) -> None:
    if stream is not None:
        while chunk := await stream.read(READ_BYTES):
            await queue.put((channel, chunk))
    await queue.put((channel, b""))


async def _feed(stream: asyncio.StreamWriter | None, data: bytes) -> None:
    if stream is None:
        return
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        if data:
            stream.write(data)
            await stream.drain()
    stream.close()
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        await stream.wait_closed()
