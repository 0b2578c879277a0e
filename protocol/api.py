"""The public HTTP contract: request bodies (unknown fields forbidden) and response views.

The coordinator serves these and generates `/openapi.json` from them; the `ash` client decodes
them. Every error body is `ErrorBody`: `{"error": {"code", "message", "retryable"}}`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from protocol.errors import ErrorInfo
from protocol.events import McpServerState
from protocol.files import (
    DEFAULT_EXEC_TIMEOUT_S,
    ENV_KEY_PATTERN,
    MAX_EXEC_TIMEOUT_S,
    FileEntry,
)
from protocol.runners import Resources

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


McpServerName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]
CredentialName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")]
CredentialKind = Literal["anthropic_api_key", "anthropic_auth_token"]
"""`anthropic_api_key` goes to the model API as `x-api-key`, `anthropic_auth_token` as
`authorization: Bearer`."""


class McpServerSpec(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True,
                    omit_defaults=True):
    """One MCP server, as in `.mcp.json`: `stdio` runs `command` inside the session's sandbox;
    `http` and `sse` connect to `url` through the egress proxy, so its host must be on the
    agent's `[network] allow` list."""

    type: Literal["stdio", "http", "sse"] = "stdio"
    command: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)] | None = None
    args: list[str] = []
    env: dict[str, str] = {}
    url: Annotated[str, msgspec.Meta(pattern=r"^https?://[^\s]+$", max_length=4096)] | None = None
    headers: dict[str, str] = {}

    def __post_init__(self) -> None:
        if self.type == "stdio" and (self.command is None or self.url is not None):
            raise ValueError("a stdio MCP server needs a `command` and no `url`")
        if self.type != "stdio" and (self.url is None or self.command is not None):
            raise ValueError(f"an {self.type} MCP server needs a `url` and no `command`")


class CreateSessionRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """`POST /api/sessions`: which agent, and options that override its defaults.

    `mcp_servers` are merged over the agent's `.mcp.json` (same name: this one wins).
    `credential` names a stored credential (`POST /api/credentials`) used as this session's
    model key instead of the agent's (`ash.toml` `[credentials] model`) or the runner's."""

    agent: AgentName
    model: str | None = None
    system_prompt: Annotated[str, msgspec.Meta(max_length=1_000_000)] | None = None
    env: dict[str, str] = {}
    mcp_servers: Annotated[dict[McpServerName, McpServerSpec], msgspec.Meta(max_length=64)] = {}
    credential: CredentialName | None = None


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
    mcp_servers: list[McpServerState] = []  # the latest status of each MCP server (mcp_status)
    tenant: str = "default"  # the tenant it belongs to (its key's)


class SessionList(msgspec.Struct, kw_only=True, frozen=True):
    sessions: list[SessionView]


# -- credentials -----------------------------------------------------------------------------


class CredentialCreate(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """`POST /api/credentials`: store (or replace) a secret, sealed at rest; it is never shown
    again, and reaches only the egress proxy of the sessions that name it."""

    name: CredentialName
    kind: CredentialKind = "anthropic_api_key"
    value: Annotated[str, msgspec.Meta(min_length=8, max_length=8192, pattern=r"^[^\r\n\x00]*$")]

    def __repr__(self) -> str:
        return f"CredentialCreate(name={self.name!r}, kind={self.kind!r}, value=***)"


class CredentialView(msgspec.Struct, kw_only=True, frozen=True):
    """A stored credential, without its value."""

    name: str
    kind: str
    created_at: float
    updated_at: float


class CredentialList(msgspec.Struct, kw_only=True, frozen=True):
    credentials: list[CredentialView]


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


class Ready(msgspec.Struct, kw_only=True, frozen=True):
    """`GET /ready`: what the coordinator needs to serve, each checked now (503 when not)."""

    status: Literal["ready"] = "ready"
    nats: bool
    store: bool
    runners: int


# -- usage -----------------------------------------------------------------------------------

UsageGroup = Literal["turn", "session", "agent", "tenant", "day"]


class UsageView(msgspec.Struct, kw_only=True, frozen=True):
    """What a group of turns used. `key` is the group's turn id, session id, agent, tenant or
    UTC day (YYYY-MM-DD); `session_id` and `agent` are set when the group has one of each.
    `cost_usd` is the CLI's reported cost, else an estimate from the model's list price."""

    key: str
    session_id: str | None = None
    agent: str | None = None
    turns: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cost_usd: float = 0.0
    tool_calls: int = 0
    cpu_s: float = 0.0
    first_at: float = 0.0
    last_at: float = 0.0


class UsageReport(msgspec.Struct, kw_only=True, frozen=True):
    """`GET /api/usage`: the groups (at most `limit`, oldest first for turns and sessions,
    else by key) and the total of every matching turn."""

    group_by: UsageGroup
    usage: list[UsageView]
    total: UsageView


# -- runners ---------------------------------------------------------------------------------


class RunnerView(msgspec.Struct, kw_only=True, frozen=True):
    """A runner of the fleet as the registry shows it (`GET /api/runners`).

    `live`: its advert is within the TTL (placement only uses live runners). `seen_s`: seconds
    since its last advert reached this coordinator. `sessions` / `max_sessions`: sandboxes it
    holds for sessions and its cap (0: no cap). `warm`: ready sandboxes by agent. `total`,
    `free` and `committed` are its capacity (None from a runner too old to say).
    """

    runner_id: str
    version: str
    live: bool
    draining: bool
    sessions: int
    max_sessions: int
    labels: dict[str, str] = {}
    warm: dict[str, int] = {}
    scripted_model: bool = False
    started_at: float = 0.0
    seen_s: float = 0.0
    total: Resources | None = None
    free: Resources | None = None
    committed: Resources | None = None


class RunnerList(msgspec.Struct, kw_only=True, frozen=True):
    runners: list[RunnerView]


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


KeyScope = Literal["admin", "deploy", "sessions:read", "sessions:write", "metrics:read"]
TenantId = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")]


class CreateKeyRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """`POST /api/keys`: a new API key. `tenant` (default: the caller's) may name another
    tenant only for admins of the `default` tenant (operators); a new tenant id comes into
    being with its first key."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    scopes: Annotated[list[KeyScope], msgspec.Meta(min_length=1)]
    tenant: TenantId | None = None


class KeyView(msgspec.Struct, kw_only=True, frozen=True):
    """An API key as listed: never its secret."""

    id: str
    tenant: str
    name: str
    scopes: list[str]
    created_at: float
    revoked_at: float | None = None


class KeyCreated(msgspec.Struct, kw_only=True, frozen=True):
    """`POST /api/keys`: the key, shown this once (only its hash is kept), and its row."""

    key: str
    info: KeyView


class KeyList(msgspec.Struct, kw_only=True, frozen=True):
    keys: list[KeyView]
