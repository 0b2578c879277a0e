"""The public HTTP contract: request bodies (unknown fields forbidden) and response views.

The coordinator serves these and generates `/openapi.json` from them; the `ash` client decodes
them. Every error body is `ErrorBody`: `{"error": {"code", "message", "retryable"}}`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from protocol.errors import ErrorInfo
from protocol.files import (
    DEFAULT_EXEC_TIMEOUT_S,
    ENV_KEY_PATTERN,
    MAX_EXEC_TIMEOUT_S,
    FileEntry,
)

AgentName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")]
Prompt = Annotated[str, msgspec.Meta(min_length=1, max_length=500_000)]
SessionStatus = Literal["starting", "active", "paused", "ended", "error"]


# Re-attaching to a session's event stream (`GET /api/sessions/{id}/events`). A client resumes
# with the standard `Last-Event-ID` header (or `?after=N`): the events with seq > N follow.
LAST_EVENT_ID_HEADER = "Last-Event-ID"
# The answer to `POST /api/sessions/{id}/messages` names its turn and the seq its events come
# after, so a client whose stream breaks before the first event can still re-attach exactly.
TURN_ID_HEADER = "Ash-Turn-Id"
TURN_AFTER_HEADER = "Ash-Turn-After"
Follow = Literal["turn", "session"]
"""How long an event stream follows: to the first `done` after the start, or until the client
leaves (or the session ends)."""


class ErrorBody(msgspec.Struct, kw_only=True, frozen=True):
    """The body of every HTTP error response."""

    error: ErrorInfo


class AgentView(msgspec.Struct, kw_only=True, frozen=True):
    """A deployed agent: its current bundle's digest and version."""

    name: str
    digest: str
    version: int
    files: int
    size: int
    created_at: float
    updated_at: float


class AgentList(msgspec.Struct, kw_only=True, frozen=True):
    agents: list[AgentView]


class CreateSessionRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """`POST /api/sessions`: which agent, and options that override its defaults."""

    agent: AgentName
    model: str | None = None
    system_prompt: Annotated[str, msgspec.Meta(max_length=1_000_000)] | None = None
    env: dict[str, str] = {}


class SessionView(msgspec.Struct, kw_only=True, frozen=True):
    """A session as the API shows it."""

    id: str
    agent: str
    agent_digest: str
    status: SessionStatus
    runner_id: str | None
    claude_session_id: str | None
    last_seq: int
    turns: int
    model: str | None
    created_at: float
    updated_at: float


class SessionList(msgspec.Struct, kw_only=True, frozen=True):
    sessions: list[SessionView]


# `POST /api/sessions/{id}/resume` says how it resumed: `warm` (thawed where it was), `cold`
# (restored from its snapshot on a runner) or `none` (it was active).
RESUMED_HEADER = "Ash-Resumed"


class SendMessageRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """`POST /api/sessions/{id}/messages`: the user's message."""

    content: Prompt
    model: str | None = None


class MessageView(msgspec.Struct, kw_only=True, frozen=True):
    """One persisted history item: the user's prompt, an assistant message, or a turn result."""

    seq: int
    turn_id: str
    role: Literal["user", "assistant", "tool", "result"]
    content: Any
    created_at: float


class MessageList(msgspec.Struct, kw_only=True, frozen=True):
    messages: list[MessageView]


class InterruptResult(msgspec.Struct, kw_only=True, frozen=True):
    """`POST /api/sessions/{id}/interrupt`: the running turn was told to stop. Its `done`
    event (reason `interrupted`) ends the turn's stream and `GET .../events`.

    The call answers once that `done` is published (bounded wait), so the session takes the
    next message at once: `turn_id`, `done_seq` and `reason` are the `done` event's. They are
    None when it did not come in time; it then follows on the streams.
    """

    session_id: str
    interrupted: bool = True
    turn_id: str | None = None
    done_seq: int | None = None
    reason: str | None = None


class Health(msgspec.Struct, kw_only=True, frozen=True):
    """`GET /health`."""

    status: Literal["ok", "degraded"]
    version: str
    nats: bool
    runners: int
    scripted_model: bool = False


# -- exec and files --------------------------------------------------------------------------

EnvKey = Annotated[str, msgspec.Meta(pattern=ENV_KEY_PATTERN, max_length=256)]
_NO_NUL = r"^[^\x00]*$"
EnvValue = Annotated[str, msgspec.Meta(pattern=_NO_NUL, max_length=100_000)]
ExecArg = Annotated[str, msgspec.Meta(pattern=_NO_NUL, max_length=100_000)]
ExecCommand = (
    Annotated[str, msgspec.Meta(min_length=1, max_length=100_000, pattern=_NO_NUL)]
    | Annotated[list[ExecArg], msgspec.Meta(min_length=1, max_length=4096)]
)


class ExecRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """`POST /api/sessions/{id}/exec`: run a command in the session's sandbox.

    `command`: a string runs via `/bin/bash -lc` (a login shell: /etc/profile may reset PATH);
    a list is the argv itself (argv[0] looked up on the sandbox's PATH). `timeout_s`: the
    command and everything it started are killed after this long. `env` adds variables on top
    of the sandbox's own. `encoding`: how output `data` is sent, `utf-8` text (undecodable bytes
    become U+FFFD) or exact bytes as `base64`.
    """

    command: ExecCommand
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=MAX_EXEC_TIMEOUT_S)] = DEFAULT_EXEC_TIMEOUT_S
    env: dict[EnvKey, EnvValue] = {}
    encoding: Literal["utf-8", "base64"] = "utf-8"


class FileList(msgspec.Struct, kw_only=True, frozen=True):
    """`GET /api/sessions/{id}/files`: entries under a directory, paths relative to the
    workspace; `truncated` when the listing stopped at its limit."""

    entries: list[FileEntry]
    truncated: bool = False


class FileWritten(msgspec.Struct, kw_only=True, frozen=True):
    """`PUT /api/sessions/{id}/files/content`: the file now holds `size` bytes."""

    path: str
    size: int
    created: bool


class WorkspaceUploaded(msgspec.Struct, kw_only=True, frozen=True):
    """`POST /api/sessions/{id}/workspace`: what the archive put into the workspace."""

    files: int
    dirs: int
    symlinks: int
    size: int
