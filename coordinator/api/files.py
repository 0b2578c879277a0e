"""`/api/sessions/{id}/files` and `/workspace`: the session's workspace over HTTP.

    GET    files?path=DIR[&recursive=true]   list (entries as lstat sees them; capped, `truncated`)
    GET    files/content?path=P              the bytes of a regular file
    PUT    files/content?path=P              write it (parents made), 201 new / 200 replaced
    DELETE files/content?path=P[&recursive=true]   a file, a symlink itself, or a directory
    GET    workspace                         the whole workspace as tar.gz
    POST   workspace                         extract a tar.gz into it

The runner holding the session does the file work on the host, walking every path by
directory descriptors from the workspace root and never following a symlink (see
`runner.workspace`); this module validates what it can early (path syntax, declared sizes),
then moves the bytes over NATS in CHUNK_BYTES pieces (`coordinator.transfer`). Paths are
relative to the workspace; `..`, absolute paths, NUL, symlinks on the way and special files
are refused with a 4xx, and a refused or oversize write changes nothing.

The session must be active (404 unknown, 410 ended; 409 otherwise: a paused session must be
resumed first, `lifecycle.require_active`). An active session whose runner is gone answers 503
`runner_unreachable`, retryable, until the reaper pauses it. Files may be used while a turn
runs; what the agent writes meanwhile is what a read sees.
"""

from __future__ import annotations

import uuid
from urllib.parse import quote

from aiohttp import web

from coordinator import auth
from coordinator.api.common import Services, json_response, services
from coordinator.api.lifecycle import passed_on, require_active, runner_of
from coordinator.api.sessions import load_session
from coordinator.errors import ApiError
from coordinator.transfer import (
    COMMAND_TIMEOUT_S,
    StreamBroken,
    StreamReceiver,
    runner_error,
    unexpected,
    upload,
)
from protocol.api import FileList, FileWritten, SessionView, WorkspaceUploaded
from protocol.commands import (
    DeleteFile,
    FileListing,
    ListFiles,
    ReadFile,
    ReadWorkspace,
    Rejected,
    StreamOpened,
)
from protocol.errors import ErrorCode
from protocol.files import MAX_ARCHIVE_BYTES, MAX_FILE_BYTES, PathError, split_path
from protocol.streams import Chunk, End

DOWNLOAD_TICK_S = 5.0


async def live_session(request: web.Request) -> tuple[Services, SessionView, str]:
    """The session of the route, which must be active, and the runner that holds it."""
    svc = services(request)
    session = await load_session(svc, request.match_info["id"], auth.tenant_of(request))
    require_active(session)
    return svc, session, runner_of(svc, session)


def _refused(session: SessionView, reply: Rejected) -> ApiError:
    """A runner's refusal as the HTTP error (503, retryable, when the runner is gone)."""
    return passed_on(session, reply.error, runner_error(reply.error).status)


def _path(request: web.Request, *, allow_root: bool = False) -> str:
    path = request.query.get("path")
    if path is None:
        if allow_root:
            return ""
        raise ApiError(400, ErrorCode.bad_request, "the query parameter 'path' is required")
    try:
        split_path(path, allow_root=allow_root)
    except PathError as e:
        raise ApiError(422, ErrorCode.validation_failed, str(e)) from None
    return path


def _flag(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "false").lower()
    if raw in ("true", "1", "yes"):
        return True
    if raw in ("false", "0", "no", ""):
        return False
    raise ApiError(400, ErrorCode.bad_request, f"'{name}' must be true or false")


def _check_declared_size(request: web.Request, limit: int) -> None:
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, ErrorCode.payload_too_large,
                       f"the body is {request.content_length} bytes; at most {limit} are accepted")


async def list_files(request: web.Request) -> web.Response:
    """List a directory of the workspace (the workspace itself by default)."""
    svc, session, runner_id = await live_session(request)
    cmd = ListFiles(session_id=session.id, path=_path(request, allow_root=True),
                    recursive=_flag(request, "recursive"))  # fmt: skip
    reply = await svc.bus.request(runner_id, cmd, COMMAND_TIMEOUT_S)
    if isinstance(reply, Rejected):
        raise _refused(session, reply)
    if not isinstance(reply, FileListing):
        raise unexpected(reply)
    return json_response(FileList(entries=reply.entries, truncated=reply.truncated))


async def read_file(request: web.Request) -> web.StreamResponse:
    """The bytes of one regular file, streamed with its Content-Length."""
    svc, session, runner_id = await live_session(request)
    path = _path(request)
    stream_id = uuid.uuid4().hex
    async with StreamReceiver(svc.nc, stream_id) as rx:
        cmd = ReadFile(session_id=session.id, stream_id=stream_id, path=path)
        reply = await svc.bus.request(runner_id, cmd, COMMAND_TIMEOUT_S)
        if isinstance(reply, Rejected):
            raise _refused(session, reply)
        if not isinstance(reply, StreamOpened) or reply.size is None:
            raise unexpected(reply)
        name = quote(path.rstrip("/").rsplit("/", 1)[-1], safe="")
        resp = web.StreamResponse(headers={
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f"attachment; filename*=UTF-8''{name}",
        })  # fmt: skip
        resp.content_length = reply.size
        await resp.prepare(request)
        return await _relay(request, resp, rx, expect=reply.size)


async def write_file(request: web.Request) -> web.Response:
    """Write the body to a file: 201 if it is new, 200 if it replaced one."""
    svc, session, runner_id = await live_session(request)
    path = _path(request)
    _check_declared_size(request, MAX_FILE_BYTES)
    done = await upload(svc.bus, runner_id, session.id, request.content, kind="file",
                        path=path, max_bytes=MAX_FILE_BYTES, upload_id=uuid.uuid4().hex)  # fmt: skip
    view = FileWritten(path=done.path, size=done.size, created=done.created)
    return json_response(view, 201 if done.created else 200)


async def delete_file(request: web.Request) -> web.Response:
    """Delete a file, a symlink (not its target), or a directory (`recursive` if not empty)."""
    svc, session, runner_id = await live_session(request)
    cmd = DeleteFile(session_id=session.id, path=_path(request),
                     recursive=_flag(request, "recursive"))  # fmt: skip
    reply = await svc.bus.request(runner_id, cmd, COMMAND_TIMEOUT_S)
    if isinstance(reply, Rejected):
        raise _refused(session, reply)
    return web.Response(status=204)


async def download_workspace(request: web.Request) -> web.StreamResponse:
    """The workspace as a tar.gz, streamed as the runner writes it."""
    svc, session, runner_id = await live_session(request)
    stream_id = uuid.uuid4().hex
    async with StreamReceiver(svc.nc, stream_id) as rx:
        cmd = ReadWorkspace(session_id=session.id, stream_id=stream_id)
        reply = await svc.bus.request(runner_id, cmd, COMMAND_TIMEOUT_S)
        if isinstance(reply, Rejected):
            raise _refused(session, reply)
        if not isinstance(reply, StreamOpened):
            raise unexpected(reply)
        resp = web.StreamResponse(headers={
            "Content-Type": "application/gzip",
            "Content-Disposition": f'attachment; filename="workspace-{session.id}.tar.gz"',
        })  # fmt: skip
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        return await _relay(request, resp, rx, expect=None)


async def upload_workspace(request: web.Request) -> web.Response:
    """Extract a tar.gz into the workspace; a bad archive is refused whole, before any write."""
    svc, session, runner_id = await live_session(request)
    _check_declared_size(request, MAX_ARCHIVE_BYTES)
    done = await upload(svc.bus, runner_id, session.id, request.content, kind="archive",
                        max_bytes=MAX_ARCHIVE_BYTES, upload_id=uuid.uuid4().hex)  # fmt: skip
    return json_response(
        WorkspaceUploaded(files=done.files, dirs=done.dirs, symlinks=done.symlinks, size=done.size)
    )


async def _relay(
    request: web.Request, resp: web.StreamResponse, rx: StreamReceiver, *, expect: int | None
) -> web.StreamResponse:
    """Copy the stream into the started response. If the stream breaks, the connection is
    closed before the body is complete, so the client sees a failed download, never a short
    file that looks whole."""
    sent = 0
    try:
        async for item in rx.messages(DOWNLOAD_TICK_S):
            if isinstance(item, Chunk):
                await resp.write(item.data)
                sent += len(item.data)
                await rx.ack()
            elif isinstance(item, End):
                await rx.ack()
                if item.error is None and expect in (None, sent):
                    await resp.write_eof()
                    return resp
                break
    except (StreamBroken, ConnectionResetError):
        pass
    if request.transport is not None:
        request.transport.close()
    return resp
