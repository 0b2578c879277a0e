"""The one module that imports `claude_agent_sdk`: a Claude conversation inside a sandbox.

The SDK runs here, in the runner; the CLI runs inside the session's sandbox. A transport
subclass swaps the CLI's argv for the sandbox's launcher, so the SDK's tool-permission
callbacks and hooks stay outside the sandbox where the agent cannot touch them.

SDK messages become protocol event drafts `(EventType, fields)`:

    stream_event text/thinking delta  -> text_delta / thinking_delta
    assistant                         -> tool_use per tool block, then message
    user (tool results)               -> tool_result per block, then message
    system                            -> message (init also tells the Claude session id)
                                         init listing MCP servers -> mcp_status first
    result                            -> turn_complete, then message

`message` carries the CLI's own JSON for that message, unchanged.

MCP: the CLI gets the session's servers (the agent's `.mcp.json` merged with the session's
own, `runner.agentconf`) as its only MCP config (`--mcp-config`, `--strict-mcp-config`), so
stdio servers run inside the sandbox. Every turn's `system/init` lists them with a status; the
bridge asks the CLI for the details (`mcp_status`: the error of a failed one, its transport)
and emits `mcp_status` when the statuses differ from the last it emitted (so the first turn
always reports them, and later turns only changes). A server still `pending` at init is asked
about again after the turn's result. An HTTP server whose host the egress proxy refuses is
reported `failed` with the proxy's reason (`AgentOptions.mcp_refused`; the CLI itself would
read the proxy's 403 as `needs-auth`).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import claude_agent_sdk as sdk
from claude_agent_sdk._internal.transport.subprocess_cli import SubprocessCLITransport

from protocol import events

logger = logging.getLogger(__name__)

Draft = tuple[type[events.Event], dict[str, Any]]

MCP_STATUS_TIMEOUT_S = 5.0  # for the CLI's answer about its MCP servers

# Types of CLI output the SDK consumes itself and never yields.
_NOT_YIELDED = {"control_request", "control_response", "control_cancel_request", "transcript_mirror"}


def bundled_cli() -> str:
    """The Claude Code CLI shipped inside the claude-agent-sdk wheel."""
    path = Path(sdk.__file__).parent / "_bundled" / "claude"
    if not path.is_file():
        raise FileNotFoundError(
            f"the claude-agent-sdk wheel has no bundled CLI at {path}; install the binary wheel"
        )
    return str(path)


class Launcher(Protocol):
    """What the bridge needs of a sandbox: the host argv that runs a command inside it."""

    def command(self, argv_inside: list[str]) -> list[str]: ...


class _SandboxTransport(SubprocessCLITransport):
    """The SDK's subprocess transport, launching the CLI through the sandbox and keeping
    each raw line so the bridge can pass the CLI's own JSON through."""

    def __init__(self, options: sdk.ClaudeAgentOptions, launcher: Launcher, cli_inside: str):
        super().__init__(prompt=_no_prompt(), options=options)
        self._launcher = launcher
        self._cli_inside = cli_inside
        self.raw: collections.deque[dict[str, Any]] = collections.deque(maxlen=4096)

    def _build_command(self) -> list[str]:
        cmd = super()._build_command()
        return self._launcher.command([self._cli_inside, *cmd[1:]])

    async def _read_messages_impl(self) -> AsyncIterator[dict[str, Any]]:
        async for data in super()._read_messages_impl():
            if data.get("type") not in _NOT_YIELDED and not data.get("sdk_host_only"):
                self.raw.append(data)
            yield data


async def _no_prompt() -> AsyncIterator[dict[str, Any]]:
    return
    yield {}  # pragma: no cover - makes this an async generator


@dataclasses.dataclass(slots=True, frozen=True)
class AgentOptions:
    """How to start the CLI for one session."""

    host_cli: str
    cli_inside: str
    workspace: str
    model: str | None = None
    system_prompt: str | None = None
    resume: str | None = None
    fork: bool = False  # with resume: continue the conversation under a new Claude session id
    mcp_servers: Mapping[str, Mapping[str, Any]] | None = None  # the merged MCP config
    mcp_refused: Mapping[str, str] | None = None  # servers the egress proxy refuses, and why


class Conversation:
    """One connected CLI in one sandbox: send turns, interrupt, close."""

    def __init__(self, options: AgentOptions, launcher: Launcher) -> None:
        self.options = options
        self.claude_session_id: str | None = options.resume
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=20)
        sdk_options = sdk.ClaudeAgentOptions(
            cli_path=options.host_cli,
            cwd=options.workspace,
            system_prompt=options.system_prompt
            if options.system_prompt is not None
            else {"type": "preset", "preset": "claude_code"},
            setting_sources=["project"],
            permission_mode="bypassPermissions",
            include_partial_messages=True,
            model=options.model,
            resume=options.resume,
            fork_session=options.fork,
            stderr=self._on_stderr,
            mcp_servers={  # type: ignore[misc]
                k: dict(v) for k, v in (options.mcp_servers or {}).items()},
            strict_mcp_config=True,  # exactly the merged servers: not the workspace's again
        )
        self._transport = _SandboxTransport(sdk_options, launcher, options.cli_inside)
        self._client = sdk.ClaudeSDKClient(sdk_options, transport=self._transport)
        self.broken = False
        self.mcp_reported: tuple[tuple[str, str, str | None], ...] | None = None

    async def connect(self) -> None:
        await self._client.connect()

    def _on_stderr(self, line: str) -> None:
        line = line.rstrip()
        if line:
            self.stderr_tail.append(line)
            logger.debug("cli: %s", line)

    async def close(self) -> None:
        try:
            await self._client.disconnect()
        except Exception as e:  # the CLI may already be dead; closing must not fail
            logger.debug("disconnect: %s", e)

    async def interrupt(self) -> None:
        await self._client.interrupt()

    async def turn(self, content: str, model: str | None = None) -> AsyncIterator[Draft]:
        """Send one user message and yield event drafts until the result."""
        if model is not None and model != self.options.model:
            await self._client.set_model(model)
        self._transport.raw.clear()
        try:
            await self._client.query(content)
            pending = False
            async for msg in self._client.receive_response():
                if (isinstance(msg, sdk.SystemMessage) and msg.subtype == "init"
                        and msg.data.get("mcp_servers")):
                    draft = await self._mcp_draft(msg.data["mcp_servers"])
                    if draft is not None:
                        yield draft
                    pending = any(s.get("status") == "pending" for s in msg.data["mcp_servers"])
                for draft in self._drafts(msg):
                    yield draft
            if pending:  # a server was still connecting at init: say how it ended up
                draft = await self._mcp_draft([])
                if draft is not None:
                    yield draft
        except Exception:
            self.broken = True
            raise

    async def _mcp_draft(self, listed: list[dict[str, Any]]) -> Draft | None:
        """An mcp_status draft from the CLI's details (`listed`, init's short list, if the CLI
        does not answer), or None when nothing changed since the last one."""
        servers = [events.McpServerState(name=str(s.get("name")), status=str(s.get("status")))
                   for s in listed if isinstance(s, dict)]
        try:
            async with asyncio.timeout(MCP_STATUS_TIMEOUT_S):
                answer = await self._client.get_mcp_status()
            servers = [
                events.McpServerState(
                    name=str(s.get("name")), status=str(s.get("status")),
                    transport=s.get("transport") or (s.get("config") or {}).get("type"),
                    error=s.get("error"))
                for s in answer.get("mcpServers", []) if isinstance(s, dict)
            ] or servers
        except Exception as e:  # an older CLI, or a busy one: the init list still tells
            logger.debug("mcp_status: %s", e)
        refused = self.options.mcp_refused or {}
        servers = [events.McpServerState(name=s.name, status="failed", transport=s.transport,
                                         error=refused[s.name])
                   if s.name in refused and s.status != "connected" else s for s in servers]
        key = tuple((s.name, s.status, s.error) for s in servers)
        if not servers or key == self.mcp_reported:
            return None
        self.mcp_reported = key
        for s in servers:
            if s.status == "failed":
                logger.info("MCP server %s failed: %s", s.name, s.error or "(no detail)")
        return events.McpStatus, {"servers": servers}

    def _raw_for(self, kind: str, msg: Any) -> dict[str, Any]:
        while self._transport.raw:
            raw = self._transport.raw.popleft()
            if raw.get("type") == kind:
                return raw
        return {"type": kind, **dataclasses.asdict(msg)}

    def _drafts(self, msg: Any) -> list[Draft]:
        out: list[Draft] = []
        match msg:
            case sdk.StreamEvent(event=ev):
                self._raw_for("stream_event", msg)
                delta = ev.get("delta") or {}
                if ev.get("type") == "content_block_delta":
                    if delta.get("type") == "text_delta":
                        out.append((events.TextDelta, {"delta": delta.get("text", "")}))
                    elif delta.get("type") == "thinking_delta":
                        out.append((events.ThinkingDelta, {"delta": delta.get("thinking", "")}))
                return out
            case sdk.AssistantMessage(content=blocks):
                for b in blocks:
                    if isinstance(b, sdk.ToolUseBlock):
                        out.append((events.ToolUse, {"tool_use_id": b.id, "name": b.name, "input": b.input}))
                kind = "assistant"
            case sdk.UserMessage(content=content):
                if isinstance(content, list):
                    for b in content:
                        if isinstance(b, sdk.ToolResultBlock):
                            out.append((events.ToolResult, {
                                "tool_use_id": b.tool_use_id,
                                "content": b.content,
                                "is_error": bool(b.is_error),
                            }))
                kind = "user"
            case sdk.SystemMessage(subtype=subtype, data=data):
                if subtype == "init" and data.get("session_id"):
                    self.claude_session_id = data["session_id"]
                kind = "system"
            case sdk.ResultMessage():
                self.claude_session_id = msg.session_id or self.claude_session_id
                out.append((events.TurnComplete, {
                    "result": msg.result,
                    "is_error": msg.is_error,
                    "num_turns": msg.num_turns,
                    "duration_ms": msg.duration_ms,
                    "total_cost_usd": msg.total_cost_usd,
                    "usage": msg.usage,
                    "claude_session_id": self.claude_session_id,
                }))
                kind = "result"
            case _:
                return out
        out.append((events.Message, {"message": self._raw_for(kind, msg)}))
        return out


def scripted_dir() -> str:
    """The folder of the scripted model and the stand-in CLI (bound into sandboxes)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripted")


ConversationFactory = Callable[[AgentOptions, Launcher], Conversation]
