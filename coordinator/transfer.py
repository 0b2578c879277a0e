"""The coordinator's end of exec and files traffic with a runner.

    StreamReceiver   subscribe `subjects.stream(id)` *before* asking the runner to start, then
                     take the runner's chunks in seq order, acking each once the HTTP client
                     has it (the protocol and why it is core NATS: `protocol.streams`)
    upload()         OpenUpload, one UploadChunk command per CHUNK_BYTES of the request body,
                     CloseUpload(commit); any failure on the way aborts the upload, so the
                     runner's unnamed file is dropped and nothing appears in the workspace
    runner_error()   a runner's refusal as the HTTP error to answer

The receiver's state machine:

    subscribed --chunk seq n+1--> taken (ack once consumed) --> subscribed ... --end--> done
         \\-- nothing for IDLE_TIMEOUT_S (runner heartbeats every HEARTBEAT_S) --> StreamBroken
         \\-- a seq gap or an undecodable message --> StreamBroken
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Literal, Protocol

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from coordinator.bus import RunnerBus
from coordinator.errors import ApiError
from protocol import codec, subjects
from protocol.commands import CloseUpload, OpenUpload, Rejected, UploadChunk, UploadDone
from protocol.errors import ErrorCode, ErrorInfo
from protocol.files import CHUNK_BYTES
from protocol.streams import IDLE_TIMEOUT_S, Ack, Chunk, End

COMMAND_TIMEOUT_S = 30.0
COMMIT_TIMEOUT_S = 600.0  # extracting a large archive takes a while

_STATUS: dict[str, int] = {
    ErrorCode.bad_request: 400,
    ErrorCode.validation_failed: 422,
    ErrorCode.unprocessable: 422,
    ErrorCode.not_found: 404,
    ErrorCode.conflict: 409,
    ErrorCode.gone: 410,
    ErrorCode.payload_too_large: 413,
    ErrorCode.sandbox_failed: 500,
    ErrorCode.internal: 500,
}


def runner_error(info: ErrorInfo) -> ApiError:
    """The HTTP error for a runner's `Rejected` (503 for what may pass: busy, unreachable)."""
    return ApiError.from_info(_STATUS.get(info.code, 503), info)


def unexpected(reply: object) -> ApiError:
    return ApiError(502, ErrorCode.internal, f"the runner answered {type(reply).__name__}",
                    retryable=True)


class StreamBroken(Exception):
    """The stream ended without its `End`; `info` says why."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.info = ErrorInfo(code=code, message=message, retryable=True)


class StreamReceiver:
    """Receives one stream a runner pushes to `subjects.stream(stream_id)`."""

    def __init__(self, nc: NatsClient, stream_id: str, *, idle_timeout_s: float = IDLE_TIMEOUT_S):
        self._nc = nc
        self.stream_id = stream_id
        self._idle_timeout_s = idle_timeout_s
        self._sub: Subscription | None = None
        self._seq = 0
        self._unacked: Msg | None = None

    async def __aenter__(self) -> StreamReceiver:
        # One chunk is in flight at a time; the limits only guard against a misbehaving sender.
        self._sub = await self._nc.subscribe(
            subjects.stream(self.stream_id),
            pending_msgs_limit=64,
            pending_bytes_limit=8 * CHUNK_BYTES,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Tell the runner to stop (answering what has arrived with a stop ack), then
        unsubscribe, so that anything it sends later finds no listener. Idempotent."""
        sub, self._sub = self._sub, None
        if sub is None:
            return
        with contextlib.suppress(Exception):
            if self._unacked is not None:
                await _respond(self._unacked, self._seq, stop=True)
                self._unacked = None
            while sub.pending_msgs:
                msg = await sub.next_msg(timeout=0.1)
                await _respond(msg, 0, stop=True)
        with contextlib.suppress(Exception):
            await sub.unsubscribe()

    async def messages(self, tick: float) -> AsyncIterator[Chunk | End | None]:
        """The stream's chunks and its end, in order; `None` every `tick` seconds of quiet
        (and for each heartbeat), so the caller can keep its HTTP client's connection warm.

        Call `ack()` after consuming each Chunk or End. Raises StreamBroken.
        """
        assert self._sub is not None, "use StreamReceiver as an async context manager"
        last = time.monotonic()
        while True:
            try:
                msg = await self._sub.next_msg(timeout=tick)
            except nats.errors.TimeoutError:
                if time.monotonic() - last > self._idle_timeout_s:
                    raise StreamBroken(
                        ErrorCode.runner_unreachable,
                        f"the runner sent nothing for {self._idle_timeout_s:g} s",
                    ) from None
                yield None
                continue
            last = time.monotonic()
            try:
                item = codec.decode_stream(msg.data)
            except (codec.DecodeError, codec.ValidationError) as e:
                raise StreamBroken(ErrorCode.internal, f"undecodable stream message: {e}") from None
            if item.seq <= self._seq:  # a resend of what we already took: ack it again
                await _respond(msg, item.seq)
                continue
            if item.seq != self._seq + 1:
                raise StreamBroken(ErrorCode.internal, f"stream gap: {item.seq} after {self._seq}")
            self._seq = item.seq
            self._unacked = msg
            if isinstance(item, Chunk) and not item.data:
                await self.ack()
                yield None
                continue
            yield item

    async def ack(self) -> None:
        """Tell the runner the last message is taken; it sends the next one."""
        msg, self._unacked = self._unacked, None
        if msg is not None:
            await _respond(msg, self._seq)


async def _respond(msg: Msg, seq: int, *, stop: bool = False) -> None:
    with contextlib.suppress(Exception):  # a runner that gave up on us times out by itself
        await msg.respond(codec.encode(Ack(seq=seq, stop=stop)))


class Body(Protocol):
    """A request body being received (aiohttp's `request.content` is one)."""

    async def read(self, n: int = -1) -> bytes: ...


async def read_chunk(content: Body, size: int) -> bytes:
    """Up to `size` bytes of a request body (fewer only at its end)."""
    buf = bytearray()
    while len(buf) < size:
        data = await content.read(size - len(buf))
        if not data:
            break
        buf += data
    return bytes(buf)


async def upload(
    bus: RunnerBus,
    runner_id: str,
    session_id: str,
    body: Body,
    *,
    kind: Literal["file", "archive"],
    path: str = "",
    max_bytes: int,
    upload_id: str,
) -> UploadDone:
    """Stream `body` to the runner as an upload and commit it; raises ApiError.

    A body past `max_bytes` is a 413 once the first byte too many arrives; the runner then
    drops what it received, and nothing is written.
    """
    opened = await bus.request(
        runner_id,
        OpenUpload(session_id=session_id, upload_id=upload_id, kind=kind, path=path,
                   max_bytes=max_bytes),
        COMMAND_TIMEOUT_S,
    )  # fmt: skip
    if isinstance(opened, Rejected):
        raise runner_error(opened.error)
    committed = False
    try:
        size, seq = 0, 0
        while chunk := await read_chunk(body, CHUNK_BYTES):
            size += len(chunk)
            if size > max_bytes:
                raise ApiError(413, ErrorCode.payload_too_large,
                               f"the body is larger than {max_bytes} bytes")  # fmt: skip
            seq += 1
            cmd = UploadChunk(session_id=session_id, upload_id=upload_id, seq=seq, data=chunk)
            reply = await bus.request(runner_id, cmd, COMMAND_TIMEOUT_S)
            if isinstance(reply, Rejected):
                raise runner_error(reply.error)
        close = CloseUpload(session_id=session_id, upload_id=upload_id, commit=True, size=size)
        done = await bus.request(runner_id, close, COMMIT_TIMEOUT_S)
        committed = True
        if isinstance(done, Rejected):
            raise runner_error(done.error)
        if not isinstance(done, UploadDone):
            raise unexpected(done)
        return done
    finally:
        if not committed:
            abort = CloseUpload(session_id=session_id, upload_id=upload_id, commit=False)
            with contextlib.suppress(Exception):  # the runner's idle timer is the backstop
                await asyncio.shield(bus.request(runner_id, abort, COMMAND_TIMEOUT_S))
