"""`POST /api/sessions/{id}/exec`: run a command in the session's sandbox, stream its output.

The command runs in the session's own sandbox (same workspace, same cgroup limits, its own pid
namespace), beside whatever the session is doing: a turn may be running. The answer is
`text/event-stream` (before it: 409 for a session that is not active, a paused one saying to
resume it first; 503 `runner_unreachable`, retryable, when its runner is gone):

    ( exec_stdout | exec_stderr )* -> exec_exit        (`id:` = the exec's own seq, from 1)

Unlike a turn, an exec belongs to its HTTP request: when the client goes away the runner finds
no listener for the next chunk (or heartbeat) and kills the command. Before the runner is
asked to start, this handler subscribes to the exec's stream subject, so no output is missed;
output travels as bytes, and is decoded here (incrementally, so a character split across
chunks stays whole) or base64-encoded, as the request asked.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import logging
import uuid

from aiohttp import web

from coordinator import auth
from coordinator.api import sse
from coordinator.api.common import read_body, services
from coordinator.api.lifecycle import passed_on, require_active, runner_of
from coordinator.api.sessions import load_session
from coordinator.transfer import COMMAND_TIMEOUT_S, StreamBroken, StreamReceiver, runner_error
from protocol import codec
from protocol.api import ExecRequest
from protocol.commands import Rejected, StartExec
from protocol.errors import ErrorCode, ErrorInfo
from protocol.events import ExecEvent, ExecExit, ExecStderr, ExecStdout
from protocol.streams import Chunk, End

logger = logging.getLogger(__name__)

FOLLOW_GRACE_S = 60.0  # beyond the exec's own timeout, before we stop waiting for its end
EVENT_CHARS = 32 * 1024  # output text per event
EVENT_BYTES = 24 * 1024  # output bytes per event in base64 (32 KiB encoded)


class _Output:
    """Numbers the exec's events and turns output bytes into their `data`."""

    def __init__(self, session_id: str, exec_id: str, encoding: str) -> None:
        self._ids = {"session_id": session_id, "exec_id": exec_id}
        self._encoding = encoding
        self._decoders = {
            ch: codecs.getincrementaldecoder("utf-8")(errors="replace") for ch in ("stdout", "stderr")
        }
        self.seq = 0

    def output(self, channel: str, data: bytes, final: bool = False) -> list[ExecEvent]:
        """Events for a chunk of output, each at most EVENT_CHARS of `data` (SSE readers
        often cap a line's length; a runner chunk can be 512 KiB)."""
        if self._encoding == "base64":
            pieces = [base64.b64encode(data[i : i + EVENT_BYTES]).decode("ascii")
                      for i in range(0, len(data), EVENT_BYTES)]  # fmt: skip
        else:
            text = self._decoders[channel].decode(data, final)
            pieces = [text[i : i + EVENT_CHARS] for i in range(0, len(text), EVENT_CHARS)]
        cls = ExecStdout if channel == "stdout" else ExecStderr
        events: list[ExecEvent] = []
        for piece in pieces:
            self.seq += 1
            events.append(cls(**self._ids, seq=self.seq, data=piece, encoding=self._encoding))  # type: ignore[arg-type]
        return events

    def flush(self) -> list[ExecEvent]:
        """What the decoders still hold (an incomplete character at the very end)."""
        if self._encoding == "base64":
            return []
        return [*self.output("stdout", b"", final=True), *self.output("stderr", b"", final=True)]

    def exit(self, **fields: object) -> ExecExit:
        self.seq += 1
        return ExecExit(**self._ids, seq=self.seq, **fields)  # type: ignore[arg-type]


async def _write(resp: web.StreamResponse, event: ExecEvent) -> None:
    tag = type(event).__struct_config__.tag
    assert isinstance(tag, str)
    await resp.write(sse.frame(event.seq, tag, codec.encode(event)))


async def exec_command(request: web.Request) -> web.StreamResponse:
    """Run the command and stream its output as SSE until `exec_exit`."""
    svc = services(request)
    session = await load_session(svc, request.match_info["id"], auth.tenant_of(request))
    req = await read_body(request, ExecRequest)
    require_active(session)  # a paused session is resumed first: 409 saying so
    runner_id = runner_of(svc, session)
    exec_id = uuid.uuid4().hex
    out = _Output(session.id, exec_id, req.encoding)
    async with StreamReceiver(svc.nc, exec_id) as rx:
        command = StartExec(session_id=session.id, exec_id=exec_id, command=req.command,
                            timeout_s=req.timeout_s, env=req.env)  # fmt: skip
        reply = await svc.bus.request(runner_id, command, COMMAND_TIMEOUT_S)
        if isinstance(reply, Rejected):
            raise passed_on(session, reply.error, runner_error(reply.error).status)
        resp = await sse.open_stream(request)
        try:
            async with asyncio.timeout(req.timeout_s + FOLLOW_GRACE_S):
                async for item in rx.messages(svc.config.keepalive_s):
                    if item is None:
                        await resp.write(sse.KEEPALIVE)
                    elif isinstance(item, Chunk):
                        for event in out.output(item.channel, item.data):
                            await _write(resp, event)
                        await rx.ack()
                    elif isinstance(item, End):
                        for event in out.flush():
                            await _write(resp, event)
                        await _write(resp, out.exit(
                            exit_code=item.exit_code, timed_out=item.timed_out,
                            truncated=item.truncated, duration_ms=item.duration_ms,
                            error=item.error))  # fmt: skip
                        await rx.ack()
                        break
        except ConnectionResetError:
            return resp  # the client left; closing the receiver tells the runner to stop
        except StreamBroken as e:
            logger.warning("exec %s of session %s broke: %s", exec_id, session.id, e)
            await _write(resp, out.exit(exit_code=None, error=e.info))
        except TimeoutError:
            await _write(resp, out.exit(exit_code=None, error=ErrorInfo(
                code=ErrorCode.runner_unreachable, retryable=True,
                message=f"the runner did not end the exec within {req.timeout_s:g} s")))
        await resp.write_eof()
        return resp
