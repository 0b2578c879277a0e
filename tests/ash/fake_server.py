"""A small real aiohttp server that speaks the coordinator's HTTP contract, for client tests.

It runs on its own event loop in a thread, so both the async and the blocking client (and the CLI,
which runs its own loop) talk to it over real sockets. It keeps state in memory and streams turns
from a per-test script of events; `hold_after_first` makes it wait after the first event until the
test calls `release()`, which proves the client hands events over while the turn is still going.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import socket
import tarfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import msgspec
from aiohttp import web

from protocol import codec
from protocol.api import (
    AgentList,
    AgentView,
    CreateSessionRequest,
    ErrorBody,
    Health,
    MessageList,
    MessageView,
    SendMessageRequest,
    SessionList,
    SessionView,
)
from protocol.errors import ErrorInfo
from protocol.events import (
    Done,
    Event,
    SessionStart,
    TextDelta,
    ToolResult,
    ToolUse,
    TurnComplete,
    UserMessage,
)

Script = Callable[[str, str, str, int], list[Event]]


def default_script(session_id: str, turn_id: str, content: str, seq: int) -> list[Event]:
    """A turn that says "Hello world" around one Bash call."""
    ids = {"session_id": session_id, "turn_id": turn_id}
    events: list[Event] = [
        SessionStart(**ids, seq=seq, agent="hello", runner_id="r1"),
        UserMessage(**ids, seq=seq + 1, content=content),
        TextDelta(**ids, seq=seq + 2, delta="Hello"),
        ToolUse(**ids, seq=seq + 3, tool_use_id="t1", name="Bash", input={"command": "ls -la"}),
        ToolResult(**ids, seq=seq + 4, tool_use_id="t1", content="CLAUDE.md"),
        TextDelta(**ids, seq=seq + 5, delta=" world"),
        TurnComplete(**ids, seq=seq + 6, result="Hello world", num_turns=1),
        Done(**ids, seq=seq + 7, reason="completed"),
    ]
    return events


def _error(status: int, code: str, message: str, retryable: bool = False) -> web.Response:
    body = codec.encode(ErrorBody(error=ErrorInfo(code=code, message=message, retryable=retryable)))
    return web.Response(status=status, body=body, content_type="application/json")


def _json(value: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=codec.encode(value), content_type="application/json")


class FakeAsh:
    """The contract's routes over in-memory state."""

    def __init__(self) -> None:
        self.url = ""
        self.agents: dict[str, AgentView] = {}
        self.bundles: dict[str, bytes] = {}
        self.sessions: dict[str, SessionView] = {}
        self.history: dict[str, list[MessageView]] = {}
        self.script: Script = default_script
        self.api_key: str | None = None
        self.hold_after_first = False
        self.split_frames = True
        self.close_before_done = False
        self.extra_frames: list[bytes] = []
        self.scripted_model = True
        self.turn_finished = threading.Event()
        self.requests: list[str] = []
        self._next_failure: web.Response | None = None
        self._release: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- test controls --------------------------------------------------------------------

    def release(self) -> None:
        """Let a held turn continue."""
        assert self._loop is not None and self._release is not None
        self._loop.call_soon_threadsafe(self._release.set)

    def fail_next(self, status: int, body: bytes, content_type: str) -> None:
        self._next_failure = web.Response(status=status, body=body, content_type=content_type)

    # -- the app ----------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_post("/api/agents", self.deploy)
        app.router.add_get("/api/agents", self.list_agents)
        app.router.add_get("/api/agents/{name}", self.get_agent)
        app.router.add_delete("/api/agents/{name}", self.delete_agent)
        app.router.add_post("/api/sessions", self.create_session)
        app.router.add_get("/api/sessions", self.list_sessions)
        app.router.add_get("/api/sessions/{id}", self.get_session)
        app.router.add_delete("/api/sessions/{id}", self.end_session)
        app.router.add_post("/api/sessions/{id}/messages", self.send)
        app.router.add_get("/api/sessions/{id}/messages", self.messages)
        app.router.add_get("/health", self.health)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler):  # type: ignore[no-untyped-def]
        self.requests.append(f"{request.method} {request.path_qs}")
        if self._next_failure is not None:
            response, self._next_failure = self._next_failure, None
            return response
        if self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _error(401, "unauthorized", "a valid API key is required")
        return await handler(request)

    async def deploy(self, request: web.Request) -> web.Response:
        name = request.query.get("name", "")
        if request.content_type != "application/gzip":
            return _error(400, "bad_request", "expected application/gzip")
        body = await request.read()
        with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
            members = tar.getmembers()
        if "CLAUDE.md" not in {m.name for m in members}:
            return _error(422, "unprocessable", "the bundle has no CLAUDE.md at its root")
        previous = self.agents.get(name)
        now = time.time()
        agent = AgentView(
            name=name,
            digest="sha256:" + hashlib.sha256(body).hexdigest(),
            version=previous.version + 1 if previous else 1,
            files=sum(1 for m in members if m.isfile()),
            size=sum(m.size for m in members),
            created_at=previous.created_at if previous else now,
            updated_at=now,
        )
        self.agents[name] = agent
        self.bundles[name] = body
        return _json(agent, 201)

    async def list_agents(self, request: web.Request) -> web.Response:
        return _json(AgentList(agents=sorted(self.agents.values(), key=lambda a: a.name)))

    async def get_agent(self, request: web.Request) -> web.Response:
        agent = self.agents.get(request.match_info["name"])
        if agent is None:
            return _error(404, "not_found", f"no agent named {request.match_info['name']!r}")
        return _json(agent)

    async def delete_agent(self, request: web.Request) -> web.Response:
        if self.agents.pop(request.match_info["name"], None) is None:
            return _error(404, "not_found", "no such agent")
        return web.Response(status=204)

    async def create_session(self, request: web.Request) -> web.Response:
        try:
            req = codec.decode_as(await request.read(), CreateSessionRequest)
        except msgspec.DecodeError as exc:
            return _error(422, "validation_failed", str(exc))
        agent = self.agents.get(req.agent)
        if agent is None:
            return _error(404, "not_found", f"no agent named {req.agent!r}")
        now = time.time()
        session = SessionView(
            id="s_" + uuid.uuid4().hex[:12], agent=req.agent, agent_digest=agent.digest,
            status="active", runner_id="r1", claude_session_id=None, last_seq=0, turns=0,
            model=req.model, created_at=now, updated_at=now,
        )  # fmt: skip
        self.sessions[session.id] = session
        self.history[session.id] = []
        return _json(session, 201)

    async def list_sessions(self, request: web.Request) -> web.Response:
        agent = request.query.get("agent")
        found = [s for s in self.sessions.values() if agent is None or s.agent == agent]
        return _json(SessionList(sessions=found))

    async def get_session(self, request: web.Request) -> web.Response:
        session = self.sessions.get(request.match_info["id"])
        if session is None:
            return _error(404, "not_found", "no such session")
        return _json(session)

    async def end_session(self, request: web.Request) -> web.Response:
        session = self.sessions.get(request.match_info["id"])
        if session is None:
            return _error(404, "not_found", "no such session")
        ended = msgspec.structs.replace(session, status="ended", updated_at=time.time())
        self.sessions[ended.id] = ended
        return _json(ended)

    async def send(self, request: web.Request) -> web.StreamResponse:
        session = self.sessions.get(request.match_info["id"])
        if session is None:
            return _error(404, "not_found", "no such session")
        if session.status == "ended":
            return _error(409, "conflict", f"session {session.id} has ended")
        try:
            req = codec.decode_as(await request.read(), SendMessageRequest)
        except msgspec.DecodeError as exc:
            return _error(422, "validation_failed", str(exc))
        turn_id = "t_" + uuid.uuid4().hex[:8]
        events = self.script(session.id, turn_id, req.content, session.last_seq + 1)
        self.history[session.id].append(
            MessageView(seq=events[0].seq, turn_id=turn_id, role="user", content=req.content,
                        created_at=time.time())
        )  # fmt: skip
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b": keep-alive\n\n")
        for i, event in enumerate(events):
            if self.close_before_done and isinstance(event, Done):
                return response  # the stream ends without the turn's end
            frame = f"id: {event.seq}\nevent: {type(event).__struct_config__.tag}\n".encode()
            frame += b"data: " + codec.encode(event) + b"\n\n"
            if self.split_frames:  # a frame split across writes, mid-JSON
                await response.write(frame[: len(frame) // 2])
                await response.write(frame[len(frame) // 2 :])
            else:
                await response.write(frame)
            if i == 0:
                for extra in self.extra_frames:
                    await response.write(extra)
            if i == 0 and self.hold_after_first:
                assert self._release is not None
                await response.write(b": keep-alive\n\n")
                await asyncio.wait_for(self._release.wait(), 10)
            if isinstance(event, TurnComplete) and event.result:
                self.history[session.id].append(
                    MessageView(seq=event.seq, turn_id=turn_id, role="result",
                                content={"result": event.result}, created_at=time.time())
                )  # fmt: skip
        self.sessions[session.id] = msgspec.structs.replace(
            session, last_seq=events[-1].seq, turns=session.turns + 1
        )
        self.turn_finished.set()
        await response.write_eof()
        return response

    async def messages(self, request: web.Request) -> web.Response:
        found = self.history.get(request.match_info["id"])
        if found is None:
            return _error(404, "not_found", "no such session")
        return _json(MessageList(messages=found))

    async def health(self, request: web.Request) -> web.Response:
        return _json(
            Health(status="ok", version="0.1.0", nats=True, runners=1,
                   scripted_model=self.scripted_model)
        )  # fmt: skip

    # -- running in a thread --------------------------------------------------------------

    def serve_in_thread(self) -> Iterator[FakeAsh]:
        started = threading.Event()
        stop: list[asyncio.Event] = []

        async def serve() -> None:
            self._loop = asyncio.get_running_loop()
            self._release = asyncio.Event()
            runner = web.AppRunner(self.app())
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            self.url = f"http://127.0.0.1:{port}"
            stop.append(asyncio.Event())
            started.set()
            try:
                await stop[0].wait()
            finally:
                await runner.cleanup()

        thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
        thread.start()
        assert started.wait(10), "the fake server did not start"
        try:
            yield self
        finally:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(stop[0].set)
            thread.join(10)


def free_port() -> int:
    """A port nothing listens on (right now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
