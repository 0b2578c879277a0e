"""The route table: the single source of the HTTP surface and of `/openapi.json`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from coordinator.api import agents, files, lifecycle, sessions, system, turns
from coordinator.api import exec as exec_api
from coordinator.api.common import Handler
from protocol import api
from protocol.events import ExecEvent


@dataclass(slots=True, frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    status: int = 200
    body: Any = None  # a Struct type, or a content type string for raw bodies
    response: Any = None  # a Struct type, "text/event-stream", or None for no body
    errors: tuple[int, ...] = ()
    query: tuple[tuple[str, str, bool], ...] = field(default=())  # (name, type, required)
    events: Any = None  # for "text/event-stream": the event union (default: a turn's Event)


ROUTES: tuple[Route, ...] = (
    Route("GET", "/health", system.health, "Liveness and what the coordinator can reach",
          response=api.Health),
    Route("GET", "/openapi.json", system.openapi, "This API's OpenAPI document",
          response="application/json"),
    Route("POST", "/api/agents", agents.deploy_agent, "Deploy or redeploy an agent folder",
          status=201, body="application/gzip", response=api.AgentView, errors=(400, 413, 422),
          query=(("name", "string", True),)),
    Route("GET", "/api/agents", agents.list_agents, "List agents", response=api.AgentList),
    Route("GET", "/api/agents/{name}", agents.get_agent, "Get an agent", response=api.AgentView,
          errors=(404,)),
    Route("DELETE", "/api/agents/{name}", agents.delete_agent, "Delete an agent", status=204,
          errors=(404,)),
    Route("POST", "/api/sessions", sessions.create_session, "Create a session", status=201,
          body=api.CreateSessionRequest, response=api.SessionView, errors=(400, 404, 422, 503)),
    Route("GET", "/api/sessions", sessions.list_sessions, "List sessions",
          response=api.SessionList, query=(("agent", "string", False),)),
    Route("GET", "/api/sessions/{id}", sessions.get_session, "Get a session",
          response=api.SessionView, errors=(404,)),
    Route("DELETE", "/api/sessions/{id}", sessions.end_session, "End a session",
          response=api.SessionView, errors=(404,)),
    Route("POST", "/api/sessions/{id}/pause", lifecycle.pause_session,
          "Pause: freeze the sandbox and snapshot its workspace and conversation",
          response=api.SessionView, errors=(404, 409, 410, 503)),
    Route("POST", "/api/sessions/{id}/resume", lifecycle.resume_session,
          "Resume: thaw the sandbox (warm), or restore its snapshot on any runner (cold); "
          "header Ash-Resumed says which", response=api.SessionView,
          errors=(404, 409, 410, 503)),
    Route("POST", "/api/sessions/{id}/fork", lifecycle.fork_session,
          "Fork: a new session with copies of this one's workspace and conversation",
          status=201, response=api.SessionView, errors=(404, 409, 410, 503)),
    Route("POST", "/api/sessions/{id}/messages", turns.send_message,
          "Send a message; the turn's events stream back as SSE",
          body=api.SendMessageRequest, response="text/event-stream",
          errors=(400, 404, 409, 410, 422, 503)),
    Route("GET", "/api/sessions/{id}/events", turns.stream_events,
          "Re-attach to the session's events as SSE: with Last-Event-ID (or after=N) exactly "
          "those with seq > N, then live; without, the running turn from its start. "
          "follow=turn (default) ends after the first done; follow=session goes on across turns",
          response="text/event-stream", errors=(400, 404, 422),
          query=(("after", "integer", False), ("follow", "string", False))),
    Route("POST", "/api/sessions/{id}/interrupt", turns.interrupt,
          "Stop the running turn (its done event says interrupted); answers once the turn "
          "has ended. 409 when no turn is running", response=api.InterruptResult,
          errors=(404, 409, 410, 503)),
    Route("GET", "/api/sessions/{id}/messages", turns.list_messages, "The session's history",
          response=api.MessageList, errors=(400, 404),
          query=(("after", "integer", False), ("limit", "integer", False))),
    Route("POST", "/api/sessions/{id}/exec", exec_api.exec_command,
          "Run a command in the session's sandbox; stdout, stderr and the exit code stream "
          "back as SSE", body=api.ExecRequest, response="text/event-stream",
          events=ExecEvent, errors=(400, 404, 409, 410, 422, 503)),
    Route("GET", "/api/sessions/{id}/files", files.list_files,
          "List a workspace directory (entries as lstat sees them)", response=api.FileList,
          errors=(400, 404, 409, 410, 422, 503),
          query=(("path", "string", False), ("recursive", "boolean", False))),
    Route("GET", "/api/sessions/{id}/files/content", files.read_file,
          "Read a regular file of the workspace", response="application/octet-stream",
          errors=(400, 404, 409, 410, 413, 422, 503), query=(("path", "string", True),)),
    Route("PUT", "/api/sessions/{id}/files/content", files.write_file,
          "Write a file of the workspace (parent directories are made); 201 new, 200 replaced",
          status=201, body="application/octet-stream", response=api.FileWritten,
          errors=(400, 404, 409, 410, 413, 422, 503), query=(("path", "string", True),)),
    Route("DELETE", "/api/sessions/{id}/files/content", files.delete_file,
          "Delete a file, a symlink (never its target) or a directory", status=204,
          errors=(400, 404, 409, 410, 422, 503),
          query=(("path", "string", True), ("recursive", "boolean", False))),
    Route("GET", "/api/sessions/{id}/workspace", files.download_workspace,
          "Download the workspace as a tar.gz", response="application/gzip",
          errors=(404, 409, 410, 503)),
    Route("POST", "/api/sessions/{id}/workspace", files.upload_workspace,
          "Extract a tar.gz into the workspace (refused whole if any member is unsafe)",
          body="application/gzip", response=api.WorkspaceUploaded,
          errors=(400, 404, 409, 410, 413, 422, 503)),
)


def add_routes(app: web.Application) -> None:
    seen = [(r.method, r.path) for r in ROUTES]
    if len(set(seen)) != len(seen):
        dups = sorted({k for k in seen if seen.count(k) > 1})
        raise ValueError(f"routes listed twice: {dups}")
    for r in ROUTES:
        app.router.add_route(r.method, r.path, r.handler)
