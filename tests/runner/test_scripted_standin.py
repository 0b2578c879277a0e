"""The stand-in CLI driven by the real SDK, exactly as a runner drives the real CLI."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from claude_agent_sdk import (
    AssistantMessage,
    ClaudeAgentOptions,
    ClaudeSDKClient,
    Message,
    ProcessError,
    ResultMessage,
    StreamEvent,
    TextBlock,
    ToolResultBlock,
    ToolUseBlock,
    UserMessage,
)
from claude_agent_sdk.types import PermissionResultAllow, PermissionResultDeny

from runner.scripted import brain

SCRIPTED = Path(__file__).resolve().parents[2] / "runner" / "scripted"
STANDIN = SCRIPTED / "standin_cli.py"
TIMEOUT = 30


@contextlib.asynccontextmanager
async def standin(
    home: Path, cli_path: Path = STANDIN, **options: Any
) -> AsyncIterator[ClaudeSDKClient]:
    """The stand-in, connected through the SDK, keeping its transcripts under `home`."""
    options["env"] = {"HOME": str(home), **options.get("env", {})}
    async with ClaudeSDKClient(ClaudeAgentOptions(cli_path=cli_path, **options)) as client:
        yield client


async def turn(client: ClaudeSDKClient, prompt: str) -> list[Message]:
    await client.query(prompt)
    async with asyncio.timeout(TIMEOUT):
        return [m async for m in client.receive_response()]


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


def text_deltas(messages: list[Message]) -> list[str]:
    return [
        m.event["delta"]["text"]
        for m in messages
        if isinstance(m, StreamEvent)
        and m.event["type"] == "content_block_delta"
        and m.event["delta"]["type"] == "text_delta"
    ]


async def test_connect_and_a_plain_turn(tmp_path: Path) -> None:
    async with standin(tmp_path) as client:
        info = await client.get_server_info()
        messages = await turn(client, "Hello there")
    assert info is not None and info["claude_code_version"] == "2.1.330"
    hello = brain.HELLO + "Hello there"
    assert texts(messages) == [hello]
    result = result_of(messages)
    assert (result.subtype, result.is_error, result.result, result.num_turns) == (
        "success",
        False,
        hello,
        1,
    )
    assert result.total_cost_usd and result.total_cost_usd > 0 and result.usage["output_tokens"] > 0
    assert not any(isinstance(m, StreamEvent) for m in messages)  # not asked for partial messages


async def test_partial_messages_stream_the_text_in_deltas(tmp_path: Path) -> None:
    async with standin(tmp_path, include_partial_messages=True) as client:
        messages = await turn(client, "Tell me something long enough to be chunked")
    deltas = text_deltas(messages)
    assert len(deltas) > 1
    assert "".join(deltas) == texts(messages)[0] == result_of(messages).result


async def test_interrupt_ends_a_sleeping_turn_and_the_session_goes_on(tmp_path: Path) -> None:
    async with standin(tmp_path, include_partial_messages=True) as client:
        await client.query("sleep:60 slow reply")
        async with asyncio.timeout(TIMEOUT):
            stream = client.receive_response()
            async for m in stream:
                if isinstance(m, StreamEvent) and m.event["type"] == "content_block_delta":
                    break
            await client.interrupt()
            rest = [m async for m in stream]
        after = await turn(client, "Hello again")
    result = result_of(rest)
    assert (result.subtype, result.is_error) == ("error_during_execution", True)
    assert any(
        isinstance(m, UserMessage) and m.content[0].text == "[Request interrupted by user]"
        for m in rest
    )
    assert texts(after) == [brain.HELLO + "Hello again"]


async def test_error_prompt_gives_an_error_result(tmp_path: Path) -> None:
    async with standin(tmp_path) as client:
        messages = await turn(client, "error please")
        after = await turn(client, "still there?")
    assert result_of(messages).is_error
    assert not result_of(after).is_error


async def test_crash_prompt_kills_the_cli_with_exit_code_3(tmp_path: Path) -> None:
    with pytest.raises(ProcessError) as caught:
        async with standin(tmp_path) as client:
            await turn(client, "crash now")
    assert caught.value.exit_code == 3


async def test_tool_call_asks_permission_and_returns_a_standin_result(tmp_path: Path) -> None:
    asked: list[tuple[str, dict[str, Any]]] = []

    async def allow(name: str, tool_input: dict[str, Any], _ctx: Any) -> PermissionResultAllow:
        asked.append((name, tool_input))
        return PermissionResultAllow()

    workspace = tmp_path / "ws"
    workspace.mkdir()
    async with standin(tmp_path, can_use_tool=allow, cwd=workspace) as client:
        messages = await turn(client, "write notes.txt: hello")
    assert asked == [("Write", {"file_path": f"{workspace}/notes.txt", "content": "hello"})]
    assert not (workspace / "notes.txt").exists()  # the stand-in never runs tools
    (use,) = [
        b
        for m in messages
        if isinstance(m, AssistantMessage)
        for b in m.content
        if isinstance(b, ToolUseBlock)
    ]
    (res,) = [
        b
        for m in messages
        if isinstance(m, UserMessage) and isinstance(m.content, list)
        for b in m.content
        if isinstance(b, ToolResultBlock)
    ]
    assert res.tool_use_id == use.id and not res.is_error and "stand-in" in str(res.content)
    result = result_of(messages)
    assert result.num_turns == 2 and result.result.startswith("Done. The tool said: Stand-in CLI")


async def test_denied_tool_call_gives_an_error_tool_result(tmp_path: Path) -> None:
    async def deny(_name: str, _input: dict[str, Any], _ctx: Any) -> PermissionResultDeny:
        return PermissionResultDeny(message="not in this sandbox")

    async with standin(tmp_path, can_use_tool=deny) as client:
        messages = await turn(client, "run: rm -rf /")
    (res,) = [
        b
        for m in messages
        if isinstance(m, UserMessage) and isinstance(m.content, list)
        for b in m.content
        if isinstance(b, ToolResultBlock)
    ]
    assert res.is_error and res.content == "not in this sandbox"
    assert result_of(messages).result == "Done. The tool said: not in this sandbox"


async def test_resume_continues_the_conversation_in_a_new_process(tmp_path: Path) -> None:
    async with standin(tmp_path) as client:
        first = await turn(client, "Remember the word pelican")
    session_id = result_of(first).session_id
    async with standin(tmp_path, resume=session_id) as client:
        resumed = await turn(client, "What was the word?")
    async with standin(tmp_path) as client:
        fresh = await turn(client, "What was the word?")
    assert texts(first) == ["I will remember the word pelican."]
    assert texts(resumed) == ["The word was pelican."]
    assert result_of(resumed).session_id == session_id
    assert texts(fresh) == [brain.NO_WORD]


async def test_fork_session_continues_the_history_under_a_new_id(tmp_path: Path) -> None:
    async with standin(tmp_path) as client:
        first = await turn(client, "Remember the word heron")
    original = result_of(first).session_id
    async with standin(tmp_path, resume=original, fork_session=True) as client:
        forked = await turn(client, "Which word was it?")
    assert texts(forked) == ["The word was heron."]
    assert result_of(forked).session_id != original


async def test_resume_of_an_unknown_session_fails_like_the_real_cli(tmp_path: Path) -> None:
    # A cold resume whose transcript was not restored must fail loudly, not start afresh.
    unknown = "00000000-0000-4000-8000-000000000000"
    with pytest.raises(ProcessError, match=f"No conversation found with session ID: {unknown}"):
        async with standin(tmp_path, resume=unknown) as client:
            await turn(client, "hi")


async def test_runs_from_a_sandbox_layout_with_ash_scripted_dir(tmp_path: Path) -> None:
    # As in the sandbox: the script alone at /opt/ash/bin/cli, brain.py and wire.py elsewhere.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    cli = bin_dir / "cli"
    shutil.copy2(STANDIN, cli)
    async with standin(tmp_path, cli_path=cli, env={"ASH_SCRIPTED_DIR": str(SCRIPTED)}) as client:
        messages = await turn(client, "remember the word kiwi")
    assert texts(messages) == ["I will remember the word kiwi."]


def test_is_an_executable_debian_python_script() -> None:
    assert STANDIN.read_text().startswith("#!/usr/bin/python3\n")
    assert os.access(STANDIN, os.X_OK)
    out = subprocess.run([STANDIN, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "2.1.330 (Claude Code)"
