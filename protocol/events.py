"""Events, runner -> JetStream -> coordinators -> SSE clients.

Every event carries `session_id`, `turn_id` and `seq`: a per-session counter that grows by
exactly one per event, across turns and across runners, so a client can resume with
`Last-Event-ID` and detect gaps. The SSE `event:` field is the tag, `id:` is `seq`.

A turn's events, in order:

    session_start -> user_message -> ( text_delta | thinking_delta | tool_use | tool_result
                                       | message | mcp_status )* -> turn_complete?
                  -> mcp_status? -> error? -> done

`mcp_status` reports every MCP server of the session (the agent's `.mcp.json` merged with the
session's own) and whether it connected: in the first turn of a CLI that has any, and again
whenever a status changes (after `turn_complete` when a server was still connecting at the
turn's start), so a server that failed is never silent. The session view keeps the
latest (`SessionView.mcp_servers`).

`message` passes the SDK's message through unchanged (as a dict), after the derived events for
it, so nothing the SDK says is lost. `done` always ends a turn, whatever happened.

One `error` is a warning, not a failure: the first turn after a session was resumed (or
forked) without its Claude conversation (no snapshot, or no transcript in it) carries an
`error` with code `conversation_not_restored` right after `user_message`, and goes on.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from protocol.errors import ErrorInfo


class _Event(msgspec.Struct, kw_only=True, frozen=True, tag_field="type"):
    session_id: str
    turn_id: str
    seq: int


class SessionStart(_Event, tag="session_start"):
    """The turn has reached a runner and its sandbox."""

    agent: str
    runner_id: str
    claude_session_id: str | None = None


class UserMessage(_Event, tag="user_message"):
    """The prompt of the turn, as the agent received it."""

    content: str


class TextDelta(_Event, tag="text_delta"):
    """A piece of the assistant's text, as the model streams it."""

    delta: str


class ThinkingDelta(_Event, tag="thinking_delta"):
    """A piece of the assistant's reasoning."""

    delta: str


class ToolUse(_Event, tag="tool_use"):
    """The agent calls a tool."""

    tool_use_id: str
    name: str
    input: dict[str, Any] = {}


class ToolResult(_Event, tag="tool_result"):
    """What a tool returned."""

    tool_use_id: str
    content: Any = None
    is_error: bool = False


class Message(_Event, tag="message"):
    """The SDK's own message, passed through as a dict with its `type`."""

    message: dict[str, Any]


class TurnComplete(_Event, tag="turn_complete"):
    """The agent finished the turn: its final text, cost and usage."""

    result: str | None = None
    is_error: bool = False
    num_turns: int = 0
    duration_ms: int = 0
    total_cost_usd: float | None = None
    usage: dict[str, Any] | None = None
    claude_session_id: str | None = None


class McpServerState(msgspec.Struct, kw_only=True, frozen=True):
    """One MCP server as the CLI reports it. `status`: connected, failed, pending,
    needs-auth or disabled (the CLI's words); `error` says why one failed."""

    name: str
    status: str
    transport: str | None = None  # stdio, http, sse
    error: str | None = None


class McpStatus(_Event, tag="mcp_status"):
    """The connection status of each of the session's MCP servers."""

    servers: list[McpServerState] = []


class Error(_Event, tag="error"):
    """The turn failed; `done` follows."""

    error: ErrorInfo


class TurnUsage(msgspec.Struct, kw_only=True, frozen=True):
    """What a turn used, as its runner measured it (carried by `done`).

    Tokens and `total_cost_usd` are the CLI's `result` (absent when the turn ended without
    one); `tool_calls` counts the turn's `tool_use` events; `cpu_s` is the CPU time the
    sandbox's cgroup used from the turn's start to its end (the CLI and every tool it ran),
    None where the runner has no cgroup accounting.
    """

    model: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    total_cost_usd: float | None = None
    tool_calls: int = 0
    cpu_s: float | None = None
    duration_ms: int = 0


class Done(_Event, tag="done"):
    """The end of a turn. `reason`: completed, interrupted, error or timeout. `usage`: what
    the turn used (None from runners that predate it)."""

    reason: str = "completed"
    usage: TurnUsage | None = None


Event = (
    SessionStart
    | UserMessage
    | TextDelta
    | ThinkingDelta
    | ToolUse
    | ToolResult
    | Message
    | TurnComplete
    | McpStatus
    | Error
    | Done
)

EVENT_TYPES: tuple[str, ...] = (
    "session_start",
    "user_message",
    "text_delta",
    "thinking_delta",
    "tool_use",
    "tool_result",
    "message",
    "turn_complete",
    "mcp_status",
    "error",
    "done",
)


# -- exec ------------------------------------------------------------------------------------
#
# The events of one `POST /api/sessions/{id}/exec`, streamed as SSE (`event:` is the tag, `id:`
# the seq). They are not part of the session's event log: an exec belongs to its HTTP request.
#
#     ( exec_stdout | exec_stderr )* -> exec_exit
#
# `seq` counts from 1 per exec. Output `data` is UTF-8 text (invalid bytes become U+FFFD; a
# character split across reads is kept whole) unless the request asked for base64, in which
# case `data` is the exact bytes, base64-encoded, and `encoding` says so.


class _ExecEvent(msgspec.Struct, kw_only=True, frozen=True, tag_field="type"):
    session_id: str
    exec_id: str
    seq: int


class ExecStdout(_ExecEvent, tag="exec_stdout"):
    """A piece of the command's standard output."""

    data: str
    encoding: Literal["utf-8", "base64"] = "utf-8"


class ExecStderr(_ExecEvent, tag="exec_stderr"):
    """A piece of the command's standard error."""

    data: str
    encoding: Literal["utf-8", "base64"] = "utf-8"


class ExecExit(_ExecEvent, tag="exec_exit"):
    """The end of an exec, always last.

    `exit_code` is the command's status (128+N when signal N killed it; 137 after the timeout
    or the output cap, which SIGKILL it and everything it started). `truncated`: the output
    passed `protocol.files.MAX_EXEC_OUTPUT` and the command was stopped there. `error` (and
    `exit_code` None) when the exec broke without an exit status, e.g. its runner was lost.
    """

    exit_code: int | None
    timed_out: bool = False
    truncated: bool = False
    duration_ms: int = 0
    error: ErrorInfo | None = None


ExecEvent = ExecStdout | ExecStderr | ExecExit

EXEC_EVENT_TYPES: tuple[str, ...] = ("exec_stdout", "exec_stderr", "exec_exit")
