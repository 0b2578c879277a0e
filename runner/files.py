"""The files API on the runner: list, read, write, delete and archive a session's workspace.

    list_files, delete_file            one request, one reply
    read_file, read_workspace          reply `StreamOpened`, then the bytes on a StreamSender
    open_upload, upload_chunk*, close_upload

The file work itself is `runner.workspace` and `runner.archive` (host side, by descriptors,
never following a symlink), run in threads. An upload's state machine:

    open (an O_TMPFILE held) --upload_chunk seq n+1--> open --close_upload commit--> committed
      \\-- close_upload abort | UPLOAD_IDLE_S without a chunk | a wrong seq | past max_bytes
           | runner shutdown --> aborted: the unnamed file is closed, nothing was ever visible

Limits: `max_streams` downloads and `max_uploads` uploads at once on this runner; beyond them
the runner answers `runner_busy` at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from nats.aio.client import Client as NatsClient

from protocol import subjects
from protocol.commands import (
    CloseUpload,
    DeleteFile,
    FileListing,
    ListFiles,
    OpenUpload,
    ReadFile,
    ReadWorkspace,
    StreamOpened,
    UploadChunk,
    UploadDone,
)
from protocol.errors import ErrorCode, ErrorInfo
from protocol.files import CHUNK_BYTES, MAX_ARCHIVE_BYTES, MAX_FILE_BYTES
from protocol.streams import ACK_TIMEOUT_S
from runner.archive import extract_archive, write_archive
from runner.sessions import SessionError
from runner.streams import ListenerGone, StreamSender
from runner.workspace import Workspace, WorkspaceError, display, parse

logger = logging.getLogger(__name__)

T = TypeVar("T")
UPLOAD_IDLE_S = 60.0


class SandboxLike(Protocol):
    """What exec and files need of a session's sandbox."""

    @property
    def workspace(self) -> str: ...

    def command(self, argv_inside: list[str]) -> list[str]: ...


class _HasSandbox(Protocol):
    @property
    def sandbox(self) -> SandboxLike: ...


class SandboxLookup(Protocol):
    """The sessions of this runner, as exec and files see them (`SessionManager` is one)."""

    runner_id: str

    def get(self, session_id: str) -> _HasSandbox: ...


def sandbox_of(sessions: SandboxLookup, session_id: str) -> SandboxLike:
    """The session's sandbox. A session this runner does not hold is a `conflict` (the
    coordinator thinks it is here: the runner restarted or lost it), so that `not_found`
    keeps meaning a missing path."""
    try:
        return sessions.get(session_id).sandbox
    except SessionError as e:
        if e.info.code != ErrorCode.not_found:
            raise
        raise SessionError(
            ErrorCode.conflict, f"session {session_id} is not running on runner {sessions.runner_id}"
        ) from None


async def blocking(fn: Callable[..., T], *args: Any) -> T:
    """Run file work in a thread, turning its errors into SessionError."""
    try:
        return await asyncio.to_thread(fn, *args)
    except WorkspaceError as e:
        raise SessionError(e.code, e.message) from None
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise SessionError(ErrorCode.payload_too_large, "the workspace is full") from None
        raise


@dataclass(slots=True, eq=False)
class _Upload:
    id: str
    session_id: str
    kind: str
    path: str
    workspace: Workspace
    fd: int
    max_bytes: int
    size: int = 0
    seq: int = 0
    closed: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    timer: asyncio.TimerHandle | None = None


class FileService:
    """Serves the files commands for the sessions of one runner."""

    def __init__(
        self,
        nc: NatsClient,
        sessions: SandboxLookup,
        *,
        max_streams: int = 32,
        max_uploads: int = 32,
        upload_idle_s: float = UPLOAD_IDLE_S,
    ) -> None:
        self._nc = nc
        self._sessions = sessions
        self._max_streams = max_streams
        self._max_uploads = max_uploads
        self._upload_idle_s = upload_idle_s
        self._streams: set[asyncio.Task[None]] = set()
        self._uploads: dict[str, _Upload] = {}
        self._aborts: set[asyncio.Task[None]] = set()

    @property
    def runner_id(self) -> str:
        return self._sessions.runner_id

    def _workspace(self, session_id: str) -> Workspace:
        return Workspace(sandbox_of(self._sessions, session_id).workspace)

    # -- one request, one reply ------------------------------------------------------------

    async def list_files(self, cmd: ListFiles) -> FileListing:
        ws = self._workspace(cmd.session_id)
        entries, truncated = await blocking(lambda: ws.list(cmd.path, recursive=cmd.recursive))
        return FileListing(runner_id=self.runner_id, entries=entries, truncated=truncated)

    async def delete_file(self, cmd: DeleteFile) -> None:
        ws = self._workspace(cmd.session_id)
        await blocking(lambda: ws.delete(cmd.path, recursive=cmd.recursive))

    # -- downloads -------------------------------------------------------------------------

    async def read_file(self, cmd: ReadFile) -> StreamOpened:
        ws = self._workspace(cmd.session_id)
        self._admit_stream()
        fd, st = await blocking(ws.open_file, cmd.path, min(cmd.max_bytes, MAX_FILE_BYTES))
        sender = StreamSender(self._nc, subjects.stream(cmd.stream_id), cmd.stream_id)
        self._spawn(self._send_file(fd, st.st_size, sender))
        return StreamOpened(runner_id=self.runner_id, size=st.st_size, mtime=st.st_mtime)

    async def read_workspace(self, cmd: ReadWorkspace) -> StreamOpened:
        ws = self._workspace(cmd.session_id)
        self._admit_stream()
        sender = StreamSender(self._nc, subjects.stream(cmd.stream_id), cmd.stream_id)
        self._spawn(self._send_archive(ws, sender))
        return StreamOpened(runner_id=self.runner_id)

    def _admit_stream(self) -> None:
        if len(self._streams) >= self._max_streams:
            raise SessionError(ErrorCode.runner_busy, "too many downloads at once; try again", True)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._streams.add(task)
        task.add_done_callback(self._streams.discard)

    @staticmethod
    async def _send_file(fd: int, size: int, sender: StreamSender) -> None:
        error: ErrorInfo | None = None
        try:
            offset = 0
            while offset < size:
                data = await asyncio.to_thread(os.pread, fd, min(CHUNK_BYTES, size - offset), offset)
                if not data:
                    error = ErrorInfo(code=ErrorCode.conflict, message="the file shrank while it was read")
                    break
                await sender.send(data)
                offset += len(data)
            await sender.end(error=error)
        except ListenerGone as e:
            logger.info("download %s stopped: %s", sender.stream_id, e)
        finally:
            os.close(fd)

    @staticmethod
    async def _send_archive(ws: Workspace, sender: StreamSender) -> None:
        sink = _Sink(asyncio.get_running_loop(), sender)
        error: ErrorInfo | None = None
        try:
            await asyncio.to_thread(_archive_into, ws, sink)
        except ListenerGone as e:
            logger.info("workspace download %s stopped: %s", sender.stream_id, e)
            return
        except WorkspaceError as e:
            error = ErrorInfo(code=e.code, message=e.message)
        except Exception as e:
            logger.exception("workspace download %s failed", sender.stream_id)
            error = ErrorInfo(code=ErrorCode.internal, message=f"the archive failed: {e}")
        except asyncio.CancelledError:
            sink.cancelled = True
            raise
        await sender.end(error=error)

    # -- uploads ---------------------------------------------------------------------------

    async def open_upload(self, cmd: OpenUpload) -> None:
        ws = self._workspace(cmd.session_id)
        if cmd.upload_id in self._uploads:
            raise SessionError(ErrorCode.conflict, f"upload {cmd.upload_id} is already open")
        if len(self._uploads) >= self._max_uploads:
            raise SessionError(ErrorCode.runner_busy, "too many uploads at once; try again", True)
        cap = MAX_FILE_BYTES if cmd.kind == "file" else MAX_ARCHIVE_BYTES
        if cmd.kind == "file":
            await blocking(ws.check_writable, cmd.path)
        fd = await blocking(ws.new_upload)
        up = _Upload(id=cmd.upload_id, session_id=cmd.session_id, kind=cmd.kind, path=cmd.path,
                     workspace=ws, fd=fd, max_bytes=min(cmd.max_bytes, cap))  # fmt: skip
        self._uploads[up.id] = up
        self._touch(up)

    async def upload_chunk(self, cmd: UploadChunk) -> None:
        up = self._upload(cmd.upload_id, cmd.session_id)
        async with up.lock:
            if up.closed:
                raise SessionError(ErrorCode.not_found, f"upload {up.id} was aborted")
            if cmd.seq != up.seq + 1:
                await self._drop(up)
                raise SessionError(ErrorCode.conflict, f"upload chunk {cmd.seq} after {up.seq}")
            if up.size + len(cmd.data) > up.max_bytes:
                await self._drop(up)
                raise SessionError(ErrorCode.payload_too_large,
                                   f"the upload is larger than {up.max_bytes} bytes")
            try:
                await blocking(_write_all, up.fd, cmd.data)
            except BaseException:
                await self._drop(up)
                raise
            up.size += len(cmd.data)
            up.seq = cmd.seq
            self._touch(up)

    async def close_upload(self, cmd: CloseUpload) -> UploadDone | None:
        """Commit (returns UploadDone) or abort (returns None; aborting twice is fine)."""
        up = self._uploads.get(cmd.upload_id)
        if up is None or up.session_id != cmd.session_id:
            if not cmd.commit:
                return None
            raise SessionError(ErrorCode.not_found, f"no open upload {cmd.upload_id}")
        async with up.lock:
            if up.closed:
                raise SessionError(ErrorCode.not_found, f"upload {up.id} was aborted")
            try:
                if not cmd.commit:
                    return None
                if cmd.size != up.size:
                    raise SessionError(ErrorCode.conflict,
                                       f"the upload has {up.size} bytes, not {cmd.size}")
                ws = up.workspace
                if up.kind == "file":
                    created = await blocking(ws.commit_file, up.fd, up.path)
                    return UploadDone(runner_id=self.runner_id, path=display(parse(up.path)),
                                      size=up.size, created=created)  # fmt: skip
                done = await blocking(extract_archive, ws, up.fd)
                return UploadDone(runner_id=self.runner_id, size=done.size, files=done.files,
                                  dirs=done.dirs, symlinks=done.symlinks)  # fmt: skip
            finally:
                await self._drop(up)

    def _upload(self, upload_id: str, session_id: str) -> _Upload:
        up = self._uploads.get(upload_id)
        if up is None or up.session_id != session_id:
            raise SessionError(ErrorCode.not_found, f"no open upload {upload_id}")
        return up

    def _touch(self, up: _Upload) -> None:
        if up.timer is not None:
            up.timer.cancel()
        up.timer = asyncio.get_running_loop().call_later(self._upload_idle_s, self._expire, up)

    def _expire(self, up: _Upload) -> None:
        logger.info("upload %s idle for %g s; aborting it", up.id, self._upload_idle_s)
        task = asyncio.create_task(self._drop_locked(up))
        self._aborts.add(task)
        task.add_done_callback(self._aborts.discard)

    async def _drop_locked(self, up: _Upload) -> None:
        async with up.lock:
            await self._drop(up)

    async def _drop(self, up: _Upload) -> None:
        """Forget the upload and close its unnamed file (caller holds `up.lock`)."""
        if up.closed:
            return
        up.closed = True
        if up.timer is not None:
            up.timer.cancel()
        self._uploads.pop(up.id, None)
        os.close(up.fd)

    async def close(self) -> None:
        """Stop downloads and abort uploads. Idempotent."""
        for t in list(self._streams):
            t.cancel()
        if self._streams:
            await asyncio.wait(list(self._streams), timeout=10)
        for up in list(self._uploads.values()):
            await self._drop_locked(up)
        if self._aborts:
            await asyncio.wait(list(self._aborts), timeout=10)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _archive_into(ws: Workspace, sink: _Sink) -> None:
    write_archive(ws, sink)
    sink.flush()


class _Sink:
    """A file-like `write` for the archive thread: collects CHUNK_BYTES, then hands them to
    the event loop's StreamSender and waits for the ack (backpressure on the thread)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sender: StreamSender) -> None:
        self._loop = loop
        self._sender = sender
        self._buf = bytearray()
        self.cancelled = False

    def write(self, data: bytes) -> int:
        self._buf += data
        while len(self._buf) >= CHUNK_BYTES:
            piece = bytes(self._buf[:CHUNK_BYTES])
            del self._buf[:CHUNK_BYTES]
            self._send(piece)
        return len(data)

    def flush(self) -> None:
        if self._buf:
            piece, self._buf = bytes(self._buf), bytearray()
            self._send(piece)

    def _send(self, piece: bytes) -> None:
        if self.cancelled:
            raise ListenerGone("the download was cancelled")
        future = asyncio.run_coroutine_threadsafe(self._sender.send(piece), self._loop)
        try:
            future.result(timeout=ACK_TIMEOUT_S + 5)  # the send has its own; this guards the loop
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise ListenerGone("the download stalled") from None
