"""The fake Messages API over real HTTP: wire shapes, recording, side requests, standalone mode."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from runner.scripted import brain
from runner.scripted.model_api import ScriptedModelServer

REPO = Path(__file__).resolve().parents[2]


def body(text: str, **extra: object) -> dict:
    return {
        "model": "claude-test",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


def parse_sse(raw: str) -> list[tuple[str, dict]]:
    events = []
    for chunk in raw.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in chunk.splitlines())
        events.append((fields["event"], json.loads(fields["data"])))
    return events


@pytest.fixture
async def server():
    async with ScriptedModelServer() as srv:
        yield srv


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def post(http: aiohttp.ClientSession, url: str, payload: dict, **headers: str):
    async with http.post(url, json=payload, headers=headers) as resp:
        return resp.status, resp.headers.get("content-type", ""), await resp.text()


async def test_streamed_text_arrives_in_the_documented_event_order(server, http) -> None:
    status, ctype, raw = await post(
        http,
        server.url + "/v1/messages?beta=true",
        body("hi there, how are you today?", stream=True),
    )
    assert status == 200 and ctype.startswith("text/event-stream")
    events = parse_sse(raw)
    names = [name for name, _ in events]
    deltas = [d["delta"]["text"] for n, d in events if n == "content_block_delta"]
    assert names == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * len(deltas),
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert len(deltas) > 1
    assert "".join(deltas) == brain.HELLO + "hi there, how are you today?"
    assert all(name == data["type"] for name, data in events)
    start, end = events[0][1]["message"], events[-2][1]
    assert start["model"] == "claude-test" and start["usage"]["input_tokens"] > 0
    assert end["delta"]["stop_reason"] == "end_turn" and end["usage"]["output_tokens"] > 1


async def test_streamed_tool_call_input_reassembles_to_json(server, http) -> None:
    _, _, raw = await post(http, server.url + "/v1/messages", body("run: ls -la /tmp", stream=True))
    events = parse_sse(raw)
    start = events[1][1]["content_block"]
    partial = "".join(d["delta"]["partial_json"] for n, d in events if n == "content_block_delta")
    assert (start["type"], start["name"], start["input"]) == ("tool_use", "Bash", {})
    assert start["id"].startswith("toolu_")
    assert json.loads(partial) == {"command": "ls -la /tmp", "description": "Run a command"}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


async def test_non_streaming_answer_is_one_message(server, http) -> None:
    status, ctype, raw = await post(
        http, server.url + "/v1/messages", body("remember the word fig")
    )
    msg = json.loads(raw)
    assert status == 200 and ctype.startswith("application/json")
    assert msg["content"] == [{"type": "text", "text": "I will remember the word fig."}]
    assert msg["stop_reason"] == "end_turn" and msg["role"] == "assistant"


async def test_requests_are_recorded_with_the_credential_kept_apart(server, http) -> None:
    await post(
        http, server.url + "/v1/messages?beta=true", body("one"), **{"x-api-key": "sk-secret"}
    )
    await post(http, server.url + "/v1/messages", body("two"), Authorization="Bearer tok")
    async with http.get(server.url + "/_scripted/requests") as resp:
        listed = await resp.json()
    assert [(r["path"], r["credential"], r["purpose"]) for r in listed] == [
        ("/v1/messages?beta=true", "sk-secret", "conversation"),
        ("/v1/messages", "Bearer tok", "conversation"),
    ]
    assert listed[0]["body"]["messages"] == [{"role": "user", "content": "one"}]
    assert "sk-secret" not in json.dumps([r["headers"] for r in listed])
    assert "Bearer tok" not in json.dumps([r["headers"] for r in listed])
    assert server.requests[1].body["messages"][0]["content"] == "two"
    async with http.delete(server.url + "/_scripted/requests") as resp:
        assert resp.status == 200
    assert server.requests == []


async def test_count_tokens_grows_with_the_prompt(server, http) -> None:
    _, _, small = await post(http, server.url + "/v1/messages/count_tokens", body("hi"))
    _, _, big = await post(http, server.url + "/v1/messages/count_tokens", body("hi " * 400))
    assert 0 < json.loads(small)["input_tokens"] < json.loads(big)["input_tokens"]


async def test_unknown_endpoint_answers_404_in_anthropic_error_shape(server, http) -> None:
    async with http.get(server.url + "/v1/models/nope") as resp:
        assert resp.status == 404
        assert (await resp.json())["type"] == "error"
    assert [(r.method, r.path, r.purpose) for r in server.requests] == [
        ("GET", "/v1/models/nope", "unknown")
    ]


async def test_malformed_messages_request_is_a_400(server, http) -> None:
    status, _, raw = await post(http, server.url + "/v1/messages", {"model": "m"})
    assert status == 400 and json.loads(raw)["error"]["type"] == "invalid_request_error"


async def test_title_side_request_gets_a_schema_valid_title(server, http) -> None:
    # Captured from CLI 2.1.330 without CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC (system trimmed).
    schema = {
        "type": "object",
        "properties": {"title": {"type": "string"}},
        "required": ["title"],
        "additionalProperties": False,
    }
    payload = body(
        "<session>\nfix the flaky login test please\n</session>\n\nWrite the title...",
        tools=[],
        output_config={"effort": "medium", "format": {"type": "json_schema", "schema": schema}},
    )
    _, _, raw = await post(http, server.url + "/v1/messages", payload)
    assert json.loads(json.loads(raw)["content"][0]["text"]) == {
        "title": "Fix the flaky login test"
    }
    assert server.requests[-1].purpose == "title" and server.conversation() == []


async def test_one_token_probe_gets_a_short_answer(server, http) -> None:
    _, _, raw = await post(http, server.url + "/v1/messages", {**body("quota"), "max_tokens": 1})
    assert json.loads(raw)["content"] == [{"type": "text", "text": "ok"}]
    assert server.requests[-1].purpose == "probe"


async def test_connection_warmup_head_is_answered(server, http) -> None:
    async with http.head(server.url + "/api/hello") as resp:
        assert resp.status == 200


async def test_sleep_prompt_streams_slowly(server, http) -> None:
    async with http.post(
        server.url + "/v1/messages", json=body("sleep:30 slowly", stream=True)
    ) as resp:
        first = await resp.content.readuntil(b"\n\n")
        assert b"message_start" in first
        # The rest is paced over 30 s: nothing close to message_stop is ready yet.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await resp.content.read()


async def test_standalone_prints_url_serves_and_stops_on_sigterm(http) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "runner.scripted.model_api",
        "--port",
        "0",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(20):
            url = (await proc.stdout.readline()).decode().strip()
            assert url.startswith("http://127.0.0.1:")
            status, _, raw = await post(http, url + "/v1/messages", body("hello"))
            assert status == 200 and brain.HELLO in raw
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
