"""The real bundled Claude Code CLI, driven by the real SDK, against the scripted Messages API.

Nothing is faked but the model: the CLI runs its real tools in a temporary workspace.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from claude_agent_sdk import (
    AssistantMessage,
    ClaudeAgentOptions,
    ClaudeSDKClient,
    Message,
    ResultMessage,
    StreamEvent,
    TextBlock,
    ToolUseBlock,
)
from claude_agent_sdk.types import PermissionResultAllow

from runner.scripted import brain
from runner.scripted.model_api import ScriptedModelServer, cli_env

TURN_TIMEOUT = 60  # the CLI retries an unreachable API for minutes; fail well before that


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The CLI inherits our environment: a proxy or a real credential must not steer it.
    for name in (
        "ANTHROPIC_AUTH_TOKEN",
        "CLAUDE_CONFIG_DIR",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)


@dataclass(slots=True)
class Harness:
    """One real CLI session: its workspace, the model API it talks to, the permissions it asked."""

    srv: ScriptedModelServer
    client: ClaudeSDKClient
    workspace: Path
    asked: list[tuple[str, dict[str, Any]]]

    async def turn(self, prompt: str) -> list[Message]:
        await self.client.query(prompt)
        async with asyncio.timeout(TURN_TIMEOUT):
            return [m async for m in self.client.receive_response()]


@contextlib.asynccontextmanager
async def real_cli(tmp_path: Path) -> AsyncIterator[Harness]:
    """The bundled CLI, connected through the SDK, with HOME and cwd in `tmp_path`."""
    workspace, home = tmp_path / "workspace", tmp_path / "home"
    workspace.mkdir()
    home.mkdir()
    asked: list[tuple[str, dict[str, Any]]] = []

    async def allow(name: str, tool_input: dict[str, Any], _ctx: Any) -> PermissionResultAllow:
        asked.append((name, tool_input))
        return PermissionResultAllow()

    async with ScriptedModelServer() as srv:
        options = ClaudeAgentOptions(
            cwd=workspace,
            env={**cli_env(srv.url), "HOME": str(home)},
            can_use_tool=allow,
            include_partial_messages=True,
        )
        async with ClaudeSDKClient(options) as client:
            yield Harness(srv, client, workspace, asked)


def texts(messages: list[Message]) -> list[str]:
    return [
        b.text
        for m in messages
        if isinstance(m, AssistantMessage)
        for b in m.content
        if isinstance(b, TextBlock)
    ]


def result_of(messages: list[Message]) -> ResultMessage:
    assert isinstance(messages[-1], ResultMessage)
    return messages[-1]


async def test_plain_turn_returns_the_hello_text_and_a_result(tmp_path: Path) -> None:
    async with real_cli(tmp_path) as cli:
        messages = await cli.turn("Hello there")
    hello = brain.HELLO + "Hello there"
    assert texts(messages) == [hello]
    result = result_of(messages)
    assert (result.is_error, result.result, result.num_turns) == (False, hello, 1)
    assert result.usage["input_tokens"] > 1000  # Claude Code's own prompt and tools are counted
    deltas = [
        e.event["delta"]["text"]
        for e in messages
        if isinstance(e, StreamEvent) and e.event["type"] == "content_block_delta"
    ]
    assert len(deltas) > 1 and "".join(deltas) == hello
    (request,) = cli.srv.conversation()
    assert request.credential == "placeholder"
    assert "placeholder" not in str(request.headers)


async def test_second_turn_answers_from_the_history_the_model_received(tmp_path: Path) -> None:
    async with real_cli(tmp_path) as cli:
        first = await cli.turn("Remember the word pelican")
        second = await cli.turn("What was the word?")
    assert texts(first) == ["I will remember the word pelican."]
    assert texts(second) == ["The word was pelican."]
    turn2 = cli.srv.conversation()[-1].body["messages"]
    said = [brain.user_text(m["content"]) for m in turn2 if m["role"] == "user"]
    assert said == ["Remember the word pelican", "What was the word?"]


async def test_run_command_executes_in_the_workspace(tmp_path: Path) -> None:
    async with real_cli(tmp_path) as cli:
        messages = await cli.turn("run: echo hi > out.txt")
    assert (cli.workspace / "out.txt").read_text() == "hi\n"
    tool_uses = [
        b
        for m in messages
        if isinstance(m, AssistantMessage)
        for b in m.content
        if isinstance(b, ToolUseBlock)
    ]
    assert [(b.name, b.input["command"]) for b in tool_uses] == [("Bash", "echo hi > out.txt")]
    assert cli.asked == [("Bash", {"command": "echo hi > out.txt", "description": "Run a command"})]
    result = result_of(messages)
    assert not result.is_error and result.num_turns == 2
    assert result.result.startswith("Done. The tool said:")


async def test_write_creates_the_file_relative_to_the_workspace(tmp_path: Path) -> None:
    async with real_cli(tmp_path) as cli:
        messages = await cli.turn("write notes.txt: hello")
    assert (cli.workspace / "notes.txt").read_text() == "hello"
    assert [name for name, _ in cli.asked] == ["Write"]
    assert not result_of(messages).is_error


async def test_interrupt_stops_a_slow_reply_and_the_session_goes_on(tmp_path: Path) -> None:
    async with real_cli(tmp_path) as cli:
        await cli.client.query("sleep:60 take your time")
        async with asyncio.timeout(TURN_TIMEOUT):
            stream = cli.client.receive_response()
            async for m in stream:
                if isinstance(m, StreamEvent) and m.event["type"] == "content_block_delta":
                    break
            await cli.client.interrupt()
            rest = [m async for m in stream]
        after = await cli.turn("Hello again")
    result = result_of(rest)
    assert result.is_error and result.subtype == "error_during_execution"
    assert texts(after) == [brain.HELLO + "Hello again"]
