"""`AsyncClient`: the Ash HTTP API as typed Python calls, with turns streamed as events.

    async with AsyncClient("http://127.0.0.1:4100") as ash:
        await ash.deploy("examples/hello", "hello")
        session = await ash.create_session("hello")
        async for event in ash.send(session.id, "hi"):
            ...

Turns run server-side: `send` re-attaches by `Last-Event-ID` when its connection breaks
mid-turn, so its caller sees every event exactly once; `stream(session_id, after)` re-attaches
on purpose (the rest of a turn, or every turn with `follow="session"`); `interrupt` stops the
running turn.

Exec and files: `exec` yields a command's `exec_stdout` / `exec_stderr` events and its
`exec_exit`; `files_list / files_read / files_download / files_write / files_delete` work on
single files of the workspace, `workspace_download / workspace_upload` on all of it as a
tar.gz. Transfers stream in pieces and can report `progress(done_bytes, total_bytes_or_None)`.

Responses decode into `protocol.api` views, events into `protocol.events`. Every failure is an
`ash.errors.AshError`: an HTTP error carries the server's code; a refused connection is an
`AshConnectionError` that says how to start a server.

`Client` is the same API, blocking: it drives an `AsyncClient` on a private event-loop thread, so
`for event in client.send(...)` still yields each event as it arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import random
import threading
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Coroutine,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from typing import IO, Any, Literal, Self, TypeVar
from urllib.parse import quote

import aiohttp
import msgspec

from ash import bundle
from ash.errors import (
    INVALID_RESPONSE,
    STREAM_CLOSED,
    AshConnectionError,
    AshError,
    AshTimeoutError,
)
from ash.retry import Failure, RetryPolicy, failure_of_status, parse_retry_after
from ash.sse import SSEParser
from protocol import codec
from protocol.api import (
    LAST_EVENT_ID_HEADER,
    TURN_AFTER_HEADER,
    TURN_ID_HEADER,
    AgentList,
    AgentName,
    AgentView,
    CreateKeyRequest,
    CreateSessionRequest,
    CredentialCreate,
    CredentialList,
    CredentialView,
    ErrorBody,
    ExecRequest,
    FileList,
    FileWritten,
    Follow,
    Health,
    InterruptResult,
    RunnerList,
    RunnerView,
    KeyCreated,
    KeyList,
    KeyView,
    MessageList,
    MessageView,
    SendMessageRequest,
    SessionList,
    SessionView,
    UsageReport,
    WorkspaceUploaded,
)
from protocol.errors import ErrorCode
from protocol.events import EVENT_TYPES, EXEC_EVENT_TYPES, Done, Event, ExecEvent, ExecExit
from protocol.files import MAX_ARCHIVE_BYTES, MAX_FILE_BYTES, PathError, split_path

T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:4100"
USER_AGENT = "ash-python/0.1"
_EVENT_TYPES = frozenset(EVENT_TYPES)
_EXEC_EVENT_TYPES = frozenset(EXEC_EVENT_TYPES)
PIECE = 256 * 1024  # bytes per read or write of a transfer

Progress = Callable[[int, int | None], None]
"""Called as bytes move: (bytes so far, total bytes if known)."""


class AsyncClient:
    """An Ash server's HTTP API.

    `base_url` defaults to `$ASH_URL`, else http://127.0.0.1:4100; `api_key` to
    `$ASH_API_KEY` (sent as `Authorization: Bearer`). Timeouts, in seconds: `connect_timeout`
    bounds making a connection; `timeout` bounds each ordinary request as a whole; streams
    (`send`, `stream`, `exec`) and transfers (deploy, files, workspace) have no total bound,
    since a turn may run for minutes: `read_timeout` bounds the silence between two reads
    instead (the server sends keep-alives while the agent thinks).

    Failed requests are tried again (`retries` more times, backoff 0.25 s doubling to 4 s,
    with jitter; a server's `Retry-After` is honoured) when a repeat cannot do anything twice:
    see `ash.retry` for the table. An async context manager; `close()` is idempotent.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        read_timeout: float = 300.0,
        retries: int = 3,
    ) -> None:
        self.base_url = (base_url or os.environ.get("ASH_URL") or DEFAULT_URL).rstrip("/")
        self._api_key = api_key if api_key is not None else os.environ.get("ASH_API_KEY")
        self._timeout = aiohttp.ClientTimeout(
            total=timeout, sock_connect=min(connect_timeout, timeout)
        )
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self.retry = RetryPolicy(attempts=retries + 1)
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    async def __aenter__(self) -> Self:
        self._http()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection pool. Safe to call more than once."""
        self._closed = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    # -- agents ----------------------------------------------------------------------------

    async def deploy(self, path: str | os.PathLike[str], name: str | None = None) -> AgentView:
        """Pack the agent folder at `path` and deploy it as `name` (default: the folder's name).

        Deploying an existing name makes a new version of it.
        """
        name = name if name is not None else os.path.basename(os.path.abspath(path))
        check_agent_name(name)
        body = await asyncio.to_thread(bundle.pack, path)
        return await self._call(
            "POST",
            "/api/agents",
            AgentView,
            params={"name": name},
            data=body,
            headers={"Content-Type": "application/gzip"},
            timeout=self._stream_timeout,
        )

    async def list_agents(self) -> list[AgentView]:
        """Every deployed agent."""
        return (await self._call("GET", "/api/agents", AgentList)).agents

    async def get_agent(self, name: str) -> AgentView:
        return await self._call("GET", f"/api/agents/{_seg(name)}", AgentView)

    async def delete_agent(self, name: str) -> None:
        await self._call("DELETE", f"/api/agents/{_seg(name)}", None)

    # -- API keys (admin) ------------------------------------------------------------------

    async def create_key(
        self, name: str, scopes: list[str], tenant: str | None = None
    ) -> KeyCreated:
        """A new API key: `.key` is its secret, shown this once."""
        request = CreateKeyRequest(name=name, scopes=scopes, tenant=tenant)  # type: ignore[arg-type]
        return await self._call("POST", "/api/keys", KeyCreated, json=request)

    async def list_keys(self, tenant: str | None = None) -> list[KeyView]:
        path = "/api/keys" + (f"?tenant={_seg(tenant)}" if tenant else "")
        return (await self._call("GET", path, KeyList)).keys

    async def revoke_key(self, key_id: str) -> KeyView:
        return await self._call("DELETE", f"/api/keys/{_seg(key_id)}", KeyView)

    # -- credentials (admin) ---------------------------------------------------------------

    async def add_credential(
        self, name: str, value: str, kind: str = "anthropic_api_key"
    ) -> CredentialView:
        """Store a credential (sealed at rest; replaces one of the same name). Its value is
        never shown again; sessions name it (`credential=`), or agents in `ash.toml`."""
        request = CredentialCreate(name=name, kind=kind, value=value)  # type: ignore[arg-type]
        return await self._call("POST", "/api/credentials", CredentialView, json=request)

    async def list_credentials(self) -> list[CredentialView]:
        return (await self._call("GET", "/api/credentials", CredentialList)).credentials

    async def delete_credential(self, name: str) -> None:
        await self._call("DELETE", f"/api/credentials/{_seg(name)}", None)

    # -- sessions --------------------------------------------------------------------------

    async def create_session(self, agent: str, **options: Any) -> SessionView:
        """Start a session with `agent`; `options` are `CreateSessionRequest` fields
        (`model`, `system_prompt`, `env`, `mcp_servers`, `credential`)."""
        request = CreateSessionRequest(agent=agent, **options)
        return await self._call("POST", "/api/sessions", SessionView, json=request, safe=True)

    async def list_sessions(self, agent: str | None = None) -> list[SessionView]:
        params = {"agent": agent} if agent is not None else None
        return (await self._call("GET", "/api/sessions", SessionList, params=params)).sessions

    async def get_session(self, session_id: str) -> SessionView:
        return await self._call("GET", f"/api/sessions/{_seg(session_id)}", SessionView)

    async def end_session(self, session_id: str) -> SessionView:
        """End the session: its sandbox goes away; the view comes back with status `ended`."""
        return await self._call("DELETE", f"/api/sessions/{_seg(session_id)}", SessionView)

    async def pause_session(self, session_id: str) -> SessionView:
        """Pause the session: its sandbox is frozen and snapshotted (status `paused`). A
        message to a paused session resumes it; so does `resume_session`."""
        return await self._call("POST", f"/api/sessions/{_seg(session_id)}/pause", SessionView,
                                safe=True)  # fmt: skip

    async def resume_session(self, session_id: str) -> SessionView:
        """Resume the session: thawed where it was, or restored from its snapshot on any
        runner with its conversation (status `active`)."""
        return await self._call("POST", f"/api/sessions/{_seg(session_id)}/resume", SessionView,
                                safe=True)  # fmt: skip

    async def fork_session(self, session_id: str) -> SessionView:
        """A new session with copies of this one's workspace and conversation; both go on
        independently."""
        return await self._call("POST", f"/api/sessions/{_seg(session_id)}/fork", SessionView)

    async def messages(self, session_id: str) -> list[MessageView]:
        """The session's persisted history."""
        path = f"/api/sessions/{_seg(session_id)}/messages"
        return (await self._call("GET", path, MessageList)).messages

    async def health(self) -> Health:
        return await self._call("GET", "/health", Health)

    async def list_runners(self) -> list[RunnerView]:
        """The fleet's runners as the registry shows them: sessions, cap, draining, labels."""
        return (await self._call("GET", "/api/runners", RunnerList)).runners

    async def usage(
        self, *, group_by: str = "session", agent: str | None = None,
        session: str | None = None, since: str | float | None = None,
        until: str | float | None = None, tenant: str | None = None, limit: int | None = None,
    ) -> UsageReport:
        """Tokens, cost, tool calls and sandbox CPU of turns, summed by `group_by` (turn,
        session, agent, tenant or day). `since`/`until`: epoch seconds, ISO 8601 or an age
        such as "24h"; `tenant` needs an admin key."""
        given = {"group_by": group_by, "agent": agent, "session": session, "since": since,
                 "until": until, "tenant": tenant, "limit": limit}
        params = {k: str(v) for k, v in given.items() if v is not None}
        return await self._call("GET", "/api/usage", UsageReport, params=params)

    async def send(
        self, session_id: str, content: str, *, model: str | None = None, reattach: int = 5
    ) -> AsyncGenerator[Event, None]:
        """Send a message and yield the turn's events as they arrive; ends after `done`.

        The turn runs server-side whatever happens to this connection. If the connection
        breaks before `done`, this re-attaches (`GET .../events` with `Last-Event-ID` = the
        last event it yielded) and goes on, so the caller sees every event of the turn exactly
        once. It gives up, with `AshError(stream_closed)`, after `reattach` tries in a row
        that brought nothing new (backoff 0.2 s doubling to 2 s between them). Event types
        this client does not know (from a newer server) are skipped. Leaving the loop early
        closes the stream; the turn goes on.
        """
        request = SendMessageRequest(content=content, model=model)
        url = f"{self.base_url}/api/sessions/{_seg(session_id)}/messages"
        headers = self._headers({"Accept": "text/event-stream", "Content-Type": "application/json"})
        cursor = _Cursor()
        try:
            async with await self._respond(
                "POST", url, data=codec.encode(request), headers=headers,
                timeout=self._stream_timeout, safe=True,
            ) as response:  # fmt: skip
                await _raise_for_status(response)
                cursor.turn_id = response.headers.get(TURN_ID_HEADER)
                with contextlib.suppress(ValueError):
                    cursor.after = int(response.headers.get(TURN_AFTER_HEADER, ""))
                async for event in self._events(response, cursor):
                    yield event
                    if isinstance(event, Done):
                        return
            broke: BaseException | None = None
        except (aiohttp.ClientError, TimeoutError) as exc:
            broke = exc
        if cursor.turn_id is None:
            # A server that does not name its turns has no re-attach either.
            if broke is not None:
                raise self._stream_error(broke) from broke
            raise self._closed_early(session_id, cursor)
        async for event in self._reattach(session_id, cursor, "turn", reattach, broke):
            yield event

    async def stream(
        self,
        session_id: str,
        after: int | None = None,
        *,
        follow: Follow = "turn",
        reattach: int = 5,
    ) -> AsyncGenerator[Event, None]:
        """Re-attach to a session's events: those with seq > `after`, then live.

        `after` None: the running turn from its first event. `follow="turn"` ends after the
        first `done` (at once when no turn runs and nothing is left after `after`);
        `follow="session"` goes on across turns until the caller stops or the session ends.
        A broken connection is re-attached from the last event yielded, as in `send`.
        """
        cursor = _Cursor(after=after)
        async for event in self._reattach(session_id, cursor, follow, reattach, None):
            yield event

    async def logs(
        self, session_id: str, after: int = 0, *, follow: bool = False
    ) -> AsyncGenerator[Event, None]:
        """A session's events with seq > `after`, every turn's, oldest first: up to its last
        event when called, or, with `follow`, on and on as new turns run (until the caller
        stops or the session ends)."""
        if follow:
            async for event in self.stream(session_id, after, follow="session"):
                yield event
            return
        # Turn by turn: each stream ends at a `done` (a running turn's, once it ends), and
        # at once, empty, when nothing is left after the cursor.
        cursor = after
        while True:
            before = cursor
            async for event in self.stream(session_id, cursor, follow="turn"):
                cursor = event.seq
                yield event
            if cursor == before:
                return

    async def _reattach(
        self,
        session_id: str,
        cursor: _Cursor,
        follow: Follow,
        tries: int,
        broke: BaseException | None,
    ) -> AsyncGenerator[Event, None]:
        """Follow `GET .../events` from the cursor, reconnecting after breaks; with a cursor
        naming a turn, yield only that turn's events and stop at its `done`."""
        url = f"{self.base_url}/api/sessions/{_seg(session_id)}/events"
        failures = 0 if broke is None else 1
        while True:
            if failures:
                if failures > tries:
                    raise self._closed_early(session_id, cursor) from broke
                await asyncio.sleep(min(0.2 * 2 ** (failures - 1), 2.0))  # backoff
            headers = {"Accept": "text/event-stream"}
            if cursor.after is not None:
                headers[LAST_EVENT_ID_HEADER] = str(cursor.after)
            before = cursor.after
            try:
                async with self._http().get(
                    url, params={"follow": follow}, headers=self._headers(headers),
                    timeout=self._stream_timeout,
                ) as response:  # fmt: skip
                    await _raise_for_status(response)
                    async for event in self._events(response, cursor):
                        ours = cursor.turn_id is None or event.turn_id == cursor.turn_id
                        if ours:
                            yield event
                        if ours and isinstance(event, Done) and follow == "turn":
                            return
                # The server ended the stream: nothing more to follow, unless we wait for a
                # turn of our own that the stream did not reach yet.
                if cursor.turn_id is None:
                    return
                broke = None
            except (aiohttp.ClientError, TimeoutError) as exc:
                broke = exc
            except AshError as exc:
                if not exc.retryable:
                    raise
                broke = exc
            failures = 0 if cursor.after != before else failures + 1
            failures = max(failures, 1)  # even after progress, pause before reconnecting

    async def _events(
        self, response: aiohttp.ClientResponse, cursor: _Cursor
    ) -> AsyncGenerator[Event, None]:
        """The events of one SSE response, each once: seqs at or below the cursor are skipped
        (a re-attach overlapping what was already yielded)."""
        parser = SSEParser()
        async for chunk in response.content.iter_any():
            for frame in parser.feed(chunk):
                if frame.event not in _EVENT_TYPES:
                    continue
                event = _decode_event(frame.data)
                if cursor.after is not None and event.seq <= cursor.after:
                    continue
                cursor.after = event.seq
                yield event

    async def interrupt(self, session_id: str) -> InterruptResult:
        """Stop the session's running turn; returns once its `done` (reason `interrupted`)
        is out. `AshError(conflict)`, status 409, when no turn is running."""
        path = f"/api/sessions/{_seg(session_id)}/interrupt"
        return await self._call("POST", path, InterruptResult, timeout=self._stream_timeout,
                                safe=True)  # fmt: skip

    def _stream_error(self, exc: BaseException) -> AshError:
        if isinstance(exc, aiohttp.ClientError):
            return self._transport_error(exc)
        return AshTimeoutError(
            f"no data from the Ash server at {self.base_url} for too long during a turn"
        )

    @staticmethod
    def _closed_early(session_id: str, cursor: _Cursor) -> AshError:
        last = cursor.after if cursor.after is not None else 0
        return AshError(
            f"the event stream closed before the turn ended (last event id {last}); the turn "
            f"goes on server-side: `ash attach {session_id} --after {last}` follows it",
            code=STREAM_CLOSED,
            retryable=True,
        )

    # -- exec and files --------------------------------------------------------------------

    async def exec(
        self,
        session_id: str,
        command: str | Sequence[str],
        *,
        timeout_s: float = 60.0,
        env: Mapping[str, str] | None = None,
        encoding: Literal["utf-8", "base64"] = "utf-8",
    ) -> AsyncGenerator[ExecEvent, None]:
        """Run `command` in the session's sandbox; yield its output events as they arrive and
        finally its `ExecExit` (exit code, whether it timed out or its output was capped).

        A string runs via `/bin/bash -lc`; a sequence is the argv itself. Leaving the loop
        early closes the stream, and the server then kills the command.
        """
        argv: str | list[str] = command if isinstance(command, str) else list(command)
        request = ExecRequest(command=argv, timeout_s=timeout_s, env=dict(env or {}),
                              encoding=encoding)  # fmt: skip
        url = f"{self.base_url}/api/sessions/{_seg(session_id)}/exec"
        headers = self._headers({"Accept": "text/event-stream", "Content-Type": "application/json"})
        parser = SSEParser()
        try:
            async with await self._respond(
                "POST", url, data=codec.encode(request), headers=headers,
                timeout=self._stream_timeout, safe=True,
            ) as response:  # fmt: skip
                await _raise_for_status(response)
                async for chunk in response.content.iter_any():
                    for frame in parser.feed(chunk):
                        if frame.event not in _EXEC_EVENT_TYPES:
                            continue
                        event = _decode_exec_event(frame.data)
                        yield event
                        if isinstance(event, ExecExit):
                            return
        except aiohttp.ClientError as exc:
            raise self._transport_error(exc) from exc
        except TimeoutError as exc:
            raise AshTimeoutError(
                f"no data from the Ash server at {self.base_url} for too long during an exec"
            ) from exc
        raise AshError(
            "the exec stream closed before the command's exit was reported",
            code=STREAM_CLOSED,
            retryable=True,
        )

    async def files_list(
        self, session_id: str, path: str = "", *, recursive: bool = False
    ) -> FileList:
        """The entries of a workspace directory (all below it if `recursive`); paths are
        relative to the workspace, symlinks are reported, not followed."""
        params = {"path": _check_path(path, allow_root=True),
                  "recursive": "true" if recursive else "false"}  # fmt: skip
        return await self._call("GET", self._files(session_id), FileList, params=params)

    async def files_read(self, session_id: str, path: str) -> bytes:
        """The bytes of one file of the workspace."""
        buf = io.BytesIO()
        await self.files_download(session_id, path, buf)
        return buf.getvalue()

    async def files_download(
        self, session_id: str, path: str, out: IO[bytes], *, progress: Progress | None = None
    ) -> int:
        """Write one file of the workspace to `out`; returns its size."""
        params = {"path": _check_path(path)}
        return await self._download(self._files(session_id) + "/content", params, out, progress)

    async def files_write(
        self,
        session_id: str,
        path: str,
        data: bytes | IO[bytes],
        *,
        progress: Progress | None = None,
    ) -> FileWritten:
        """Write `data` (bytes, or a binary file object read from where it stands) to `path`
        in the workspace; parent directories are made. `created` tells new from replaced."""
        params = {"path": _check_path(path)}
        return await self._upload("PUT", self._files(session_id) + "/content", params, data,
                                  "application/octet-stream", MAX_FILE_BYTES, FileWritten,
                                  progress)  # fmt: skip

    async def files_delete(self, session_id: str, path: str, *, recursive: bool = False) -> None:
        """Delete a file, a symlink (never its target), or a directory (`recursive` unless it
        is empty)."""
        params = {"path": _check_path(path), "recursive": "true" if recursive else "false"}
        await self._call("DELETE", self._files(session_id) + "/content", None, params=params)

    async def workspace_download(
        self, session_id: str, out: IO[bytes], *, progress: Progress | None = None
    ) -> int:
        """Write the whole workspace to `out` as a tar.gz; returns its size in bytes."""
        path = f"/api/sessions/{_seg(session_id)}/workspace"
        return await self._download(path, None, out, progress)

    async def workspace_upload(
        self, session_id: str, archive: bytes | IO[bytes], *, progress: Progress | None = None
    ) -> WorkspaceUploaded:
        """Extract a tar.gz into the workspace. An archive with any unsafe member (absolute,
        `..`, a link pointing outside, a special file) is refused whole."""
        path = f"/api/sessions/{_seg(session_id)}/workspace"
        return await self._upload("POST", path, None, archive, "application/gzip",
                                  MAX_ARCHIVE_BYTES, WorkspaceUploaded, progress)  # fmt: skip

    @staticmethod
    def _files(session_id: str) -> str:
        return f"/api/sessions/{_seg(session_id)}/files"

    async def _download(
        self,
        path: str,
        params: dict[str, str] | None,
        out: IO[bytes],
        progress: Progress | None,
    ) -> int:
        done = 0
        try:
            async with await self._respond(
                "GET", self.base_url + path, params=params, headers=self._headers(),
                timeout=self._stream_timeout,
            ) as response:  # fmt: skip
                await _raise_for_status(response)
                total = response.content_length
                async for piece in response.content.iter_chunked(PIECE):
                    out.write(piece)
                    done += len(piece)
                    if progress is not None:
                        progress(done, total)
        except aiohttp.ClientPayloadError as exc:
            raise AshError(
                f"the download broke off after {done} bytes: {exc}",
                code=STREAM_CLOSED,
                retryable=True,
            ) from exc
        except aiohttp.ClientError as exc:
            raise self._transport_error(exc) from exc
        except TimeoutError as exc:
            raise AshTimeoutError(
                f"no data from the Ash server at {self.base_url} for too long during a download"
            ) from exc
        return done

    async def _upload(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None,
        data: bytes | IO[bytes],
        content_type: str,
        limit: int,
        type_: type[T],
        progress: Progress | None,
    ) -> T:
        size = len(data) if isinstance(data, bytes | bytearray | memoryview) else _size_left(data)
        if size is not None and size > limit:
            raise AshError(
                f"{size} bytes is more than the server accepts ({limit})",
                code=ErrorCode.payload_too_large,
            )
        source = io.BytesIO(data) if isinstance(data, bytes | bytearray | memoryview) else data
        start = _position(source)

        async def body() -> AsyncIterator[bytes]:
            sent = 0
            if start is not None:
                source.seek(start)  # a retry sends the same bytes again
            while piece := source.read(PIECE):
                sent += len(piece)
                if progress is not None:
                    progress(sent, size)
                yield piece

        headers = {"Content-Type": content_type}
        if size is not None:
            headers["Content-Length"] = str(size)
        # A body that cannot be read again (a pipe) is sent once: no retry could resend it.
        return await self._call(method, path, type_, params=params,
                                data=body if start is not None else body(), headers=headers,
                                timeout=self._stream_timeout)  # fmt: skip

    # -- plumbing --------------------------------------------------------------------------

    def _http(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("this AsyncClient is closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, headers={"User-Agent": USER_AGENT}
            )
        return self._session

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    async def _call(
        self,
        method: str,
        path: str,
        type_: type[T] | None,
        *,
        params: dict[str, str] | None = None,
        json: Any = None,
        data: bytes | AsyncIterator[bytes] | Callable[[], AsyncIterator[bytes]] | None = None,
        headers: dict[str, str] | None = None,
        timeout: aiohttp.ClientTimeout | None = None,
        safe: bool = False,
    ) -> T:
        """One request, tried again as `ash.retry` allows (`safe`: a POST whose 503 did
        nothing a repeat would duplicate). `data` may be a factory of a fresh body per try;
        a one-shot async iterator is sent once."""
        if json is not None:
            data = codec.encode(json)
            headers = {**(headers or {}), "Content-Type": "application/json"}
        idempotent = method in _IDEMPOTENT
        one_shot = data is not None and not isinstance(data, bytes) and not callable(data)
        attempt = 0
        while True:
            failure: Failure | None = None
            try:
                async with self._http().request(
                    method,
                    self.base_url + path,
                    params=params,
                    data=data() if callable(data) else data,
                    headers=self._headers(headers),
                    timeout=timeout or self._timeout,
                ) as response:
                    failure = failure_of_status(response.status)
                    wait = None
                    if failure is not None and not one_shot and self.retry.allows(
                        failure, idempotent=idempotent, safe=safe
                    ):
                        wait = self.retry.delay(attempt, random.random(),
                                                parse_retry_after(response.headers.get("Retry-After")))
                    if wait is None:
                        await _raise_for_status(response)
                        body = await response.read()
                        break
            except (aiohttp.ClientError, TimeoutError) as exc:
                failure = _failure_of(exc)
                wait = None
                if not one_shot and self.retry.allows(failure, idempotent=idempotent, safe=safe):
                    wait = self.retry.delay(attempt, random.random())
                if wait is None:
                    if isinstance(exc, aiohttp.ClientError):
                        raise self._transport_error(exc) from exc
                    raise AshTimeoutError(
                        f"the Ash server at {self.base_url} did not answer {method} {path} in time"
                    ) from exc
            await asyncio.sleep(wait)
            attempt += 1
        if type_ is None:
            return None  # type: ignore[return-value]
        try:
            return codec.decode_as(body, type_)
        except msgspec.DecodeError as exc:
            raise AshError(
                f"unexpected response to {method} {path}: {exc}",
                code=INVALID_RESPONSE,
                status=response.status,
            ) from exc

    async def _respond(
        self,
        method: str,
        url: str,
        *,
        params: dict[str, str] | None = None,
        data: bytes | None = None,
        headers: dict[str, str],
        timeout: aiohttp.ClientTimeout,
        safe: bool = False,
    ) -> aiohttp.ClientResponse:
        """The response to a streamed request once its headers arrive, tried again as
        `ash.retry` allows until then; the caller reads (and closes) it."""
        idempotent = method in _IDEMPOTENT
        attempt = 0
        while True:
            try:
                response = await self._http().request(
                    method, url, params=params, data=data, headers=headers, timeout=timeout
                )
            except (aiohttp.ClientError, TimeoutError) as exc:
                failure = _failure_of(exc)
                wait = (self.retry.delay(attempt, random.random())
                        if self.retry.allows(failure, idempotent=idempotent, safe=safe) else None)
                if wait is None:
                    raise
            else:
                failure = failure_of_status(response.status)
                if failure is None or not self.retry.allows(failure, idempotent=idempotent,
                                                            safe=safe):
                    return response
                wait = self.retry.delay(attempt, random.random(),
                                        parse_retry_after(response.headers.get("Retry-After")))
                if wait is None:
                    return response
                response.release()
            await asyncio.sleep(wait)
            attempt += 1

    def _transport_error(self, exc: aiohttp.ClientError) -> AshError:
        if isinstance(exc, aiohttp.ClientConnectorError):
            os_error = exc.os_error
            reason = (
                "connection refused"
                if isinstance(os_error, ConnectionRefusedError)
                else os_error.strerror or str(os_error)
            )
            return AshConnectionError(
                f"the Ash server is not reachable at {self.base_url} ({reason}); "
                "start a local one with `ash start`, or point --url / ASH_URL at yours"
            )
        if isinstance(exc, aiohttp.ServerTimeoutError):
            return AshTimeoutError(f"the Ash server at {self.base_url} did not answer in time")
        return AshConnectionError(
            f"the connection to the Ash server at {self.base_url} broke: {exc}"
        )


class Client:
    """The blocking twin of `AsyncClient`: same methods, same arguments, same errors.

    A context manager; `close()` is idempotent and stops the private loop thread.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        read_timeout: float = 300.0,
        retries: int = 3,
    ) -> None:
        self._async = AsyncClient(base_url, api_key, timeout=timeout,
                                  connect_timeout=connect_timeout, read_timeout=read_timeout,
                                  retries=retries)  # fmt: skip
        self.base_url = self._async.base_url
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="ash-client", daemon=True
        )
        self._thread.start()
        self._closed = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close connections and stop the loop thread. Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        try:
            self._run(self._async.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt while waiting: stop the work too
            raise

    def deploy(self, path: str | os.PathLike[str], name: str | None = None) -> AgentView:
        return self._run(self._async.deploy(path, name))

    def list_agents(self) -> list[AgentView]:
        return self._run(self._async.list_agents())

    def get_agent(self, name: str) -> AgentView:
        return self._run(self._async.get_agent(name))

    def delete_agent(self, name: str) -> None:
        self._run(self._async.delete_agent(name))

    def create_key(self, name: str, scopes: list[str], tenant: str | None = None) -> KeyCreated:
        return self._run(self._async.create_key(name, scopes, tenant))

    def list_keys(self, tenant: str | None = None) -> list[KeyView]:
        return self._run(self._async.list_keys(tenant))

    def revoke_key(self, key_id: str) -> KeyView:
        return self._run(self._async.revoke_key(key_id))

    def add_credential(
        self, name: str, value: str, kind: str = "anthropic_api_key"
    ) -> CredentialView:
        return self._run(self._async.add_credential(name, value, kind))

    def list_credentials(self) -> list[CredentialView]:
        return self._run(self._async.list_credentials())

    def delete_credential(self, name: str) -> None:
        self._run(self._async.delete_credential(name))

    def create_session(self, agent: str, **options: Any) -> SessionView:
        return self._run(self._async.create_session(agent, **options))

    def list_sessions(self, agent: str | None = None) -> list[SessionView]:
        return self._run(self._async.list_sessions(agent))

    def get_session(self, session_id: str) -> SessionView:
        return self._run(self._async.get_session(session_id))

    def end_session(self, session_id: str) -> SessionView:
        return self._run(self._async.end_session(session_id))

    def pause_session(self, session_id: str) -> SessionView:
        return self._run(self._async.pause_session(session_id))

    def resume_session(self, session_id: str) -> SessionView:
        return self._run(self._async.resume_session(session_id))

    def fork_session(self, session_id: str) -> SessionView:
        return self._run(self._async.fork_session(session_id))

    def messages(self, session_id: str) -> list[MessageView]:
        return self._run(self._async.messages(session_id))

    def health(self) -> Health:
        return self._run(self._async.health())

    def list_runners(self) -> list[RunnerView]:
        return self._run(self._async.list_runners())

    def logs(self, session_id: str, after: int = 0, *, follow: bool = False) -> Iterator[Event]:
        """A session's events after `after` (see `AsyncClient.logs`)."""
        yield from self._iterate(self._async.logs(session_id, after, follow=follow))

    def usage(self, **filters: Any) -> UsageReport:
        """See `AsyncClient.usage`."""
        return self._run(self._async.usage(**filters))

    def exec(
        self,
        session_id: str,
        command: str | Sequence[str],
        *,
        timeout_s: float = 60.0,
        env: Mapping[str, str] | None = None,
        encoding: Literal["utf-8", "base64"] = "utf-8",
    ) -> Iterator[ExecEvent]:
        """Yield the command's output events as they arrive; ends after `exec_exit`."""
        stream = self._async.exec(session_id, command, timeout_s=timeout_s, env=env,
                                  encoding=encoding)  # fmt: skip
        yield from self._iterate(stream)

    def files_list(self, session_id: str, path: str = "", *, recursive: bool = False) -> FileList:
        return self._run(self._async.files_list(session_id, path, recursive=recursive))

    def files_read(self, session_id: str, path: str) -> bytes:
        return self._run(self._async.files_read(session_id, path))

    def files_download(
        self, session_id: str, path: str, out: IO[bytes], *, progress: Progress | None = None
    ) -> int:
        return self._run(self._async.files_download(session_id, path, out, progress=progress))

    def files_write(
        self,
        session_id: str,
        path: str,
        data: bytes | IO[bytes],
        *,
        progress: Progress | None = None,
    ) -> FileWritten:
        return self._run(self._async.files_write(session_id, path, data, progress=progress))

    def files_delete(self, session_id: str, path: str, *, recursive: bool = False) -> None:
        self._run(self._async.files_delete(session_id, path, recursive=recursive))

    def workspace_download(
        self, session_id: str, out: IO[bytes], *, progress: Progress | None = None
    ) -> int:
        return self._run(self._async.workspace_download(session_id, out, progress=progress))

    def workspace_upload(
        self, session_id: str, archive: bytes | IO[bytes], *, progress: Progress | None = None
    ) -> WorkspaceUploaded:
        return self._run(self._async.workspace_upload(session_id, archive, progress=progress))

    def send(
        self, session_id: str, content: str, *, model: str | None = None, reattach: int = 5
    ) -> Iterator[Event]:
        """Yield the turn's events as they arrive; ends after `done`, re-attaching if the
        connection breaks mid-turn (see `AsyncClient.send`)."""
        stream = self._async.send(session_id, content, model=model, reattach=reattach)
        yield from self._iterate(stream)

    def stream(
        self,
        session_id: str,
        after: int | None = None,
        *,
        follow: Follow = "turn",
        reattach: int = 5,
    ) -> Iterator[Event]:
        """Re-attach to a session's events after seq `after` (see `AsyncClient.stream`)."""
        stream = self._async.stream(session_id, after, follow=follow, reattach=reattach)
        yield from self._iterate(stream)

    def interrupt(self, session_id: str) -> InterruptResult:
        return self._run(self._async.interrupt(session_id))

    def _iterate(self, stream: AsyncGenerator[Any, None]) -> Iterator[Any]:
        try:
            while True:
                try:
                    event = self._run(_anext(stream))
                except StopAsyncIteration:
                    return
                yield event
        finally:
            if self._closed:
                pass
            elif threading.current_thread() is self._thread:  # finalised by GC on the loop thread
                self._loop.create_task(stream.aclose())
            else:
                self._run(stream.aclose())


async def _anext(stream: AsyncIterator[T]) -> T:
    return await stream.__anext__()


_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


def _failure_of(exc: BaseException) -> Failure:
    """Whether a transport error happened before the request could reach the server."""
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return Failure.unsent
    return Failure.broken


def _position(f: IO[bytes]) -> int | None:
    """Where a seekable file object stands (a retry rewinds there), else None."""
    try:
        return f.tell() if f.seekable() else None
    except (OSError, ValueError, AttributeError):
        return None


def _check_path(path: str, *, allow_root: bool = False) -> str:
    """`path` if it is a plain workspace-relative path; else AshError(validation_failed)."""
    try:
        split_path(path, allow_root=allow_root)
    except PathError as exc:
        raise AshError(str(exc), code=ErrorCode.validation_failed) from None
    return path


def _size_left(f: IO[bytes]) -> int | None:
    """Bytes between a file object's position and its end, if it can tell (else None)."""
    try:
        here = f.tell()
        end = f.seek(0, os.SEEK_END)
        f.seek(here)
        return end - here
    except (OSError, ValueError, AttributeError):
        return None


def _decode_exec_event(data: str) -> ExecEvent:
    try:
        return codec.decode_exec_event(data.encode())
    except msgspec.DecodeError as exc:
        raise AshError(f"undecodable event from the server: {exc}", code=INVALID_RESPONSE) from exc


@dataclass(slots=True)
class _Cursor:
    """Where a turn's stream is: its id and the last seq yielded."""

    after: int | None = None
    turn_id: str | None = None


def check_agent_name(name: str) -> None:
    """Raise `AshError(validation_failed)` unless `name` is a valid agent name."""
    try:
        msgspec.convert(name, AgentName)
    except msgspec.ValidationError:
        raise AshError(
            f"invalid agent name {name!r}: use up to 63 letters, digits, '-' and '_', "
            "starting with a letter or digit",
            code=ErrorCode.validation_failed,
        ) from None


def _seg(value: str) -> str:
    """One URL path segment, escaped so an id can never change the route."""
    return quote(value, safe="")


def _decode_event(data: str) -> Event:
    try:
        return codec.decode_event(data.encode())
    except msgspec.DecodeError as exc:
        raise AshError(f"undecodable event from the server: {exc}", code=INVALID_RESPONSE) from exc


async def _raise_for_status(response: aiohttp.ClientResponse) -> None:
    if response.status < 400:
        return
    body = await response.read()
    try:
        info = codec.decode_as(body, ErrorBody).error
    except msgspec.DecodeError:
        text = body.decode("utf-8", "replace").strip()[:200]
        raise AshError(
            f"HTTP {response.status} {response.reason or ''}".rstrip()
            + (f": {text}" if text else ""),
            status=response.status,
            retryable=response.status in (502, 503, 504),
        ) from None
    raise AshError.from_info(info, status=response.status)
