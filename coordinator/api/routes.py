"""The route table: the single source of the HTTP surface and of `/openapi.json`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from coordinator import auth
from coordinator.api import agents, credentials, files, lifecycle, runners, sessions, system, turns
from coordinator.api import keys as keys_api
from coordinator.api import exec as exec_api
from coordinator.api import usage
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
    # Headers it reads or writes, for the docs: ("request" | "response", name, description).
    headers: tuple[tuple[str, str, str], ...] = field(default=())
    also: tuple[int, ...] = ()  # other success statuses, with the same body (e.g. 200 replaced)
    # The scope the caller's key needs (coordinator/auth.py); auth.PUBLIC for none. The
    # default is the strictest, so a route added without a thought is admin-only.
    scope: str = auth.ADMIN


ROUTES: tuple[Route, ...] = (
    Route("GET", "/health", system.health, "Liveness and what the coordinator can reach",
          response=api.Health, scope=auth.PUBLIC),
    Route("GET", "/openapi.json", system.openapi, "This API's OpenAPI document",
          response="application/json", scope=auth.PUBLIC),
    Route("GET", "/ready", system.ready,
          "Readiness: NATS connected, the store answering, a live runner (503 when not)",
          response=api.Ready, errors=(503,), scope=auth.PUBLIC),
    Route("GET", "/metrics", system.metrics, "Prometheus metrics of this coordinator",
          response="text/plain", scope=auth.METRICS_READ),
    Route("GET", "/api/usage", usage.get_usage,
          "Tokens, cost, tool calls and sandbox CPU seconds of turns, summed by group_by "
          "(turn, session, agent, tenant or day); since/until take epoch seconds, ISO 8601 or "
          "an age (24h, 7d); tenant is for admin keys", response=api.UsageReport,
          errors=(400, 403),
          query=(("group_by", "string", False), ("agent", "string", False),
                 ("session", "string", False), ("since", "string", False),
                 ("until", "string", False), ("tenant", "string", False),
                 ("limit", "integer", False)), scope=auth.SESSIONS_READ),
    Route("GET", "/docs", system.docs, "This API's reference, as one self-contained HTML page",
          response="text/html", scope=auth.PUBLIC),
    Route("GET", "/api/runners", runners.list_runners,
          "List the fleet's runners: sessions, capacity, draining, labels",
          response=api.RunnerList),
    Route("POST", "/api/agents", agents.deploy_agent, "Deploy or redeploy an agent folder",
          status=201, body="application/gzip", response=api.AgentView, errors=(400, 413, 422),
          query=(("name", "string", True),), scope=auth.DEPLOY),
    Route("GET", "/api/agents", agents.list_agents, "List agents", response=api.AgentList, scope=auth.SESSIONS_READ),
    Route("GET", "/api/agents/{name}", agents.get_agent, "Get an agent", response=api.AgentView,
          errors=(404,), scope=auth.SESSIONS_READ),
    Route("DELETE", "/api/agents/{name}", agents.delete_agent, "Delete an agent", status=204,
          errors=(404,), scope=auth.DEPLOY),
    Route("POST", "/api/sessions", sessions.create_session, "Create a session", status=201,
          body=api.CreateSessionRequest, response=api.SessionView, errors=(400, 404, 422, 429, 503),
          headers=(("response", "Retry-After", "on a 429: seconds until the key may create "
                                               "a session again"),), scope=auth.SESSIONS_WRITE),
    Route("GET", "/api/sessions", sessions.list_sessions, "List sessions",
          response=api.SessionList, query=(("agent", "string", False),), scope=auth.SESSIONS_READ),
    Route("GET", "/api/sessions/{id}", sessions.get_session, "Get a session",
          response=api.SessionView, errors=(404,), scope=auth.SESSIONS_READ),
    Route("DELETE", "/api/sessions/{id}", sessions.end_session, "End a session",
          response=api.SessionView, errors=(404,), scope=auth.SESSIONS_WRITE),
    Route("POST", "/api/sessions/{id}/pause", lifecycle.pause_session,
          "Pause: freeze the sandbox and snapshot its workspace and conversation",
          response=api.SessionView, errors=(404, 409, 410, 503), scope=auth.SESSIONS_WRITE),
    Route("POST", "/api/sessions/{id}/resume", lifecycle.resume_session,
          "Resume: thaw the sandbox (warm), or restore its snapshot on any runner (cold); "
          "header Ash-Resumed says which", response=api.SessionView,
          errors=(404, 409, 410, 503),
          headers=(("response", "Ash-Resumed", "warm, cold, or none (it was active)"),), scope=auth.SESSIONS_WRITE),
    Route("POST", "/api/sessions/{id}/fork", lifecycle.fork_session,
          "Fork: a new session with copies of this one's workspace and conversation",
          status=201, response=api.SessionView, errors=(404, 409, 410, 503), scope=auth.SESSIONS_WRITE),
    Route("POST", "/api/sessions/{id}/messages", turns.send_message,
          "Send a message; the turn's events stream back as SSE",
          body=api.SendMessageRequest, response="text/event-stream",
          errors=(400, 404, 409, 410, 422, 429, 503),
          headers=(("response", "Ash-Turn-Id", "the turn's id"),
                   ("response", "Retry-After", "on a 429: seconds to wait (the key runs its "
                                               "most turns at once)"),
                   ("response", "Ash-Turn-After", "the seq its events come after: re-attach "
                                                  "from it if the stream breaks early")), scope=auth.SESSIONS_WRITE),
    Route("GET", "/api/sessions/{id}/events", turns.stream_events,
          "Re-attach to the session's events as SSE: with Last-Event-ID (or after=N) exactly "
          "those with seq > N, then live; without, the running turn from its start. "
          "follow=turn (default) ends after the first done; follow=session goes on across turns",
          response="text/event-stream", errors=(400, 404, 422),
          query=(("after", "integer", False), ("follow", "string", False)),
          headers=(("request", "Last-Event-ID", "the last seq the client has; the stream "
                                                "starts after it (wins over `after`)"),), scope=auth.SESSIONS_READ),
    Route("POST", "/api/sessions/{id}/interrupt", turns.interrupt,
          "Stop the running turn (its done event says interrupted); answers once the turn "
          "has ended. 409 when no turn is running", response=api.InterruptResult,
          errors=(404, 409, 410, 503), scope=auth.SESSIONS_WRITE),
    Route("GET", "/api/sessions/{id}/messages", turns.list_messages, "The session's history",
          response=api.MessageList, errors=(400, 404),
          query=(("after", "integer", False), ("limit", "integer", False)), scope=auth.SESSIONS_READ),
    Route("POST", "/api/sessions/{id}/exec", exec_api.exec_command,
          "Run a command in the session's sandbox; stdout, stderr and the exit code stream "
          "back as SSE", body=api.ExecRequest, response="text/event-stream",
          events=ExecEvent, errors=(400, 404, 409, 410, 422, 503), scope=auth.SESSIONS_WRITE),
    Route("GET", "/api/sessions/{id}/files", files.list_files,
          "List a workspace directory (entries as lstat sees them)", response=api.FileList,
          errors=(400, 404, 409, 410, 422, 503),
          query=(("path", "string", False), ("recursive", "boolean", False)), scope=auth.SESSIONS_READ),
    Route("GET", "/api/sessions/{id}/files/content", files.read_file,
          "Read a regular file of the workspace", response="application/octet-stream",
          errors=(400, 404, 409, 410, 413, 422, 503), query=(("path", "string", True),), scope=auth.SESSIONS_READ),
    Route("PUT", "/api/sessions/{id}/files/content", files.write_file,
          "Write a file of the workspace (parent directories are made); 201 new, 200 replaced",
          status=201, body="application/octet-stream", response=api.FileWritten, also=(200,),
          errors=(400, 404, 409, 410, 413, 422, 503), query=(("path", "string", True),), scope=auth.SESSIONS_WRITE),
    Route("DELETE", "/api/sessions/{id}/files/content", files.delete_file,
          "Delete a file, a symlink (never its target) or a directory", status=204,
          errors=(400, 404, 409, 410, 422, 503),
          query=(("path", "string", True), ("recursive", "boolean", False)), scope=auth.SESSIONS_WRITE),
    Route("GET", "/api/sessions/{id}/workspace", files.download_workspace,
          "Download the workspace as a tar.gz", response="application/gzip",
          errors=(404, 409, 410, 503), scope=auth.SESSIONS_READ),
    Route("POST", "/api/sessions/{id}/workspace", files.upload_workspace,
          "Extract a tar.gz into the workspace (refused whole if any member is unsafe)",
          body="application/gzip", response=api.WorkspaceUploaded,
          errors=(400, 404, 409, 410, 413, 422, 503), scope=auth.SESSIONS_WRITE),
    Route("POST", "/api/keys", keys_api.create_key,
          "Create an API key (shown once; only its hash is kept). tenant: another tenant's "
          "key, for admins of the default tenant", status=201, body=api.CreateKeyRequest,
          response=api.KeyCreated, errors=(400, 403, 422)),
    Route("GET", "/api/keys", keys_api.list_keys,
          "List the tenant's API keys (never their secrets); tenant= for admins of the default "
          "tenant", response=api.KeyList, errors=(403, 422), query=(("tenant", "string", False),)),
    Route("DELETE", "/api/keys/{id}", keys_api.revoke_key,
          "Revoke an API key: later requests with it are 401", response=api.KeyView,
          errors=(403, 404)),
    Route("POST", "/api/credentials", credentials.put_credential,
          "Store a credential, sealed at rest (201), or replace one of the same name (200); "
          "its value is never shown again", status=201, body=api.CredentialCreate,
          response=api.CredentialView, errors=(400, 403, 422, 503), also=(200,),
          scope=auth.ADMIN),
    Route("GET", "/api/credentials", credentials.list_credentials,
          "List the tenant's credentials (names and kinds, never values)",
          response=api.CredentialList, errors=(403,), scope=auth.ADMIN),
    Route("DELETE", "/api/credentials/{name}", credentials.delete_credential,
          "Delete a credential", status=204, errors=(403, 404), scope=auth.ADMIN),
)


def add_routes(app: web.Application) -> None:
    seen = [(r.method, r.path) for r in ROUTES]
    if len(set(seen)) != len(seen):
        dups = sorted({k for k in seen if seen.count(k) > 1})
        raise ValueError(f"routes listed twice: {dups}")
    scopes: dict[tuple[str, str], str] = {}
    for r in ROUTES:
        app.router.add_route(r.method, r.path, r.handler)
        scopes[(r.method, r.path)] = r.scope
    app[auth.ROUTE_SCOPES] = scopes
