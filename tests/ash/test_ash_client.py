"""AsyncClient and Client against a real HTTP server speaking the coordinator's contract."""

from __future__ import annotations

import asyncio
import gzip
import io
import tarfile
from contextlib import aclosing
from pathlib import Path

import pytest

from ash import AshConnectionError, AshError, AsyncClient, BundleError, Client
from protocol.api import AgentView, Health, SessionView
from protocol.errors import ErrorInfo
from protocol.events import (
    Done,
    Error,
    SessionStart,
    TextDelta,
    ToolResult,
    ToolUse,
    TurnComplete,
    UserMessage,
)
from tests.ash.fake_server import FakeAsh, free_port

EXPECTED_TYPES = [
    SessionStart, UserMessage, TextDelta, ToolUse, ToolResult, TextDelta, TurnComplete, Done,
]  # fmt: skip


async def test_deploy_sends_the_packed_folder_and_returns_the_view(
    fake_ash: FakeAsh, agent_dir: Path
) -> None:
    async with AsyncClient(fake_ash.url) as ash:
        first = await ash.deploy(agent_dir)
        second = await ash.deploy(agent_dir, "hello")
    assert isinstance(first, AgentView)
    assert (first.name, first.version, second.version) == ("hello", 1, 2)
    assert first.digest == second.digest  # same content, same bytes
    assert fake_ash.requests[0] == "POST /api/agents?name=hello"
    with tarfile.open(fileobj=io.BytesIO(fake_ash.bundles["hello"]), mode="r:gz") as tar:
        names = tar.getnames()
    assert names == [".claude", ".claude/skills", ".claude/skills/greet",
                     ".claude/skills/greet/SKILL.md", "CLAUDE.md"]  # fmt: skip


async def test_agents_list_get_delete(fake_ash: FakeAsh, agent_dir: Path) -> None:
    async with AsyncClient(fake_ash.url) as ash:
        await ash.deploy(agent_dir, "one")
        await ash.deploy(agent_dir, "two")
        assert [a.name for a in await ash.list_agents()] == ["one", "two"]
        assert (await ash.get_agent("two")).name == "two"
        await ash.delete_agent("one")
        with pytest.raises(AshError) as caught:
            await ash.get_agent("one")
    assert (caught.value.status, caught.value.code) == (404, "not_found")
    assert "one" in caught.value.message and caught.value.retryable is False


async def test_deploy_refuses_before_any_request(fake_ash: FakeAsh, tmp_path: Path) -> None:
    (tmp_path / "bad name").mkdir()
    (tmp_path / "bad name" / "CLAUDE.md").write_text("x")
    (tmp_path / "empty").mkdir()
    async with AsyncClient(fake_ash.url) as ash:
        with pytest.raises(AshError) as bad_name:
            await ash.deploy(tmp_path / "bad name")
        with pytest.raises(BundleError, match="no CLAUDE.md"):
            await ash.deploy(tmp_path / "empty")
    assert bad_name.value.code == "validation_failed"
    assert "'bad name'" in bad_name.value.message
    assert fake_ash.requests == []


async def test_sessions_roundtrip(fake_ash: FakeAsh, agent_dir: Path) -> None:
    async with AsyncClient(fake_ash.url) as ash:
        await ash.deploy(agent_dir, "hello")
        await ash.deploy(agent_dir, "other")
        session = await ash.create_session("hello", model="claude-x", env={"A": "1"})
        await ash.create_session("other")
        assert isinstance(session, SessionView) and session.model == "claude-x"
        assert [s.id for s in await ash.list_sessions(agent="hello")] == [session.id]
        assert len(await ash.list_sessions()) == 2
        assert (await ash.get_session(session.id)).status == "active"
        ended = await ash.end_session(session.id)
        assert ended.status == "ended"
        health = await ash.health()
    assert isinstance(health, Health) and health.runners == 1 and health.scripted_model


async def test_events_arrive_before_the_turn_finishes(fake_ash: FakeAsh, agent_dir: Path) -> None:
    fake_ash.hold_after_first = True
    async with AsyncClient(fake_ash.url) as ash:
        await ash.deploy(agent_dir, "hello")
        session = await ash.create_session("hello")
        async with aclosing(ash.send(session.id, "hi there")) as stream:
            first = await asyncio.wait_for(anext(stream), 5)
            assert isinstance(first, SessionStart)
            assert not fake_ash.turn_finished.is_set()  # the server is still inside the turn
            fake_ash.release()
            rest = [event async for event in stream]
        history = await ash.messages(session.id)
    events = [first, *rest]
    assert [type(e) for e in events] == EXPECTED_TYPES
    assert [e.seq for e in events] == list(range(1, 9))
    assert all(e.session_id == session.id for e in events)
    assert events[1].content == "hi there"  # type: ignore[union-attr]
    assert events[3].input == {"command": "ls -la"}  # type: ignore[union-attr]
    assert fake_ash.turn_finished.is_set()
    assert [(m.role, m.content) for m in history] == [
        ("user", "hi there"),
        ("result", {"result": "Hello world"}),
    ]


def test_blocking_client_yields_events_as_they_arrive(fake_ash: FakeAsh, agent_dir: Path) -> None:
    fake_ash.hold_after_first = True
    with Client(fake_ash.url) as ash:
        ash.deploy(agent_dir, "hello")
        session = ash.create_session("hello")
        stream = ash.send(session.id, "hi")
        first = next(stream)
        assert isinstance(first, SessionStart)
        assert not fake_ash.turn_finished.is_set()
        fake_ash.release()
        rest = list(stream)
        assert [type(e) for e in [first, *rest]] == EXPECTED_TYPES
        assert ash.get_session(session.id).turns == 1
        assert [a.name for a in ash.list_agents()] == ["hello"]


async def test_leaving_a_stream_early_closes_it_and_the_client_still_works(
    fake_ash: FakeAsh, agent_dir: Path
) -> None:
    async with AsyncClient(fake_ash.url) as ash:
        await ash.deploy(agent_dir, "hello")
        session = await ash.create_session("hello")
        async with aclosing(ash.send(session.id, "hi")) as stream:
            async for event in stream:
                if isinstance(event, TextDelta):
                    break
        assert (await ash.health()).status == "ok"


def test_blocking_client_can_leave_a_stream_early(fake_ash: FakeAsh, agent_dir: Path) -> None:
    with Client(fake_ash.url) as ash:
        ash.deploy(agent_dir, "hello")
        session = ash.create_session("hello")
        for event in ash.send(session.id, "hi"):
            if isinstance(event, TextDelta):
                break
        assert ash.health().status == "ok"
    ash.close()  # idempotent


async def test_unknown_event_types_are_skipped_and_comments_ignored(
    fake_ash: FakeAsh, agent_dir: Path
) -> None:
    fake_ash.extra_frames = [
        b'id: 99\nevent: brand_new_thing\ndata: {"type":"brand_new_thing"}\n\n',
        b": keep-alive\n\n",
    ]
    async with AsyncClient(fake_ash.url) as ash:
        await ash.deploy(agent_dir, "hello")
        session = await ash.create_session("hello")
        events = [e async for e in ash.send(session.id, "hi")]
    assert [type(e) for e in events] == EXPECTED_TYPES


async def test_a_stream_that_ends_without_done_is_an_error(
    fake_ash: FakeAsh, agent_dir: Path
) -> None:
    fake_ash.close_before_done = True
    seen = []
    async with AsyncClient(fake_ash.url) as ash:
        await ash.deploy(agent_dir, "hello")
        session = await ash.create_session("hello")
        with pytest.raises(AshError) as caught:
            async for event in ash.send(session.id, "hi"):
                seen.append(event)
    assert caught.value.code == "stream_closed" and caught.value.retryable
    assert "7" in caught.value.message  # the last event id it saw
    assert isinstance(seen[-1], TurnComplete)


async def test_error_bodies_become_ash_errors(fake_ash: FakeAsh, agent_dir: Path) -> None:
    async with AsyncClient(fake_ash.url, retries=0) as ash:
        with pytest.raises(AshError) as missing:
            await ash.create_session("nobody")
        await ash.deploy(agent_dir, "hello")
        session = await ash.create_session("hello")
        await ash.end_session(session.id)
        with pytest.raises(AshError) as ended:
            async for _ in ash.send(session.id, "hi"):
                pass
        fake_ash.fail_next(502, b"<html>Bad Gateway</html>", "text/html")
        with pytest.raises(AshError) as proxy:
            await ash.list_agents()
    assert (missing.value.status, missing.value.code) == (404, "not_found")
    assert "nobody" in missing.value.message
    assert (ended.value.status, ended.value.code) == (409, "conflict")
    assert "has ended" in ended.value.message
    assert (proxy.value.status, proxy.value.code, proxy.value.retryable) == (
        502,
        "http_error",
        True,
    )
    assert "Bad Gateway" in proxy.value.message


async def test_api_key_is_sent_as_bearer_token(fake_ash: FakeAsh) -> None:
    fake_ash.api_key = "sekrit"
    async with AsyncClient(fake_ash.url) as anonymous:
        with pytest.raises(AshError) as caught:
            await anonymous.health()
    assert (caught.value.status, caught.value.code) == (401, "unauthorized")
    async with AsyncClient(fake_ash.url, api_key="sekrit") as ash:
        assert (await ash.health()).status == "ok"


async def test_connection_refused_says_where_and_what_to_do() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with AsyncClient(url) as ash:
        with pytest.raises(AshConnectionError) as caught:
            await ash.health()
        with pytest.raises(AshConnectionError):
            async for _ in ash.send("s_1", "hi"):
                pass
    message = caught.value.message
    assert f"not reachable at {url}" in message and "ash start" in message
    assert caught.value.status is None and caught.value.retryable


def test_blocking_client_raises_the_same_errors() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url) as ash:
        with pytest.raises(AshConnectionError, match="ash start"):
            ash.list_agents()
        with pytest.raises(AshConnectionError):
            list(ash.send("s_1", "hi"))


async def test_error_events_decode_with_their_error_info(
    fake_ash: FakeAsh, agent_dir: Path
) -> None:
    def failing(session_id: str, turn_id: str, content: str, seq: int) -> list:  # type: ignore[type-arg]
        ids = {"session_id": session_id, "turn_id": turn_id}
        info = ErrorInfo(code="agent_failed", message="the CLI crashed", retryable=True)
        return [
            SessionStart(**ids, seq=seq, agent="hello", runner_id="r1"),
            Error(**ids, seq=seq + 1, error=info),
            Done(**ids, seq=seq + 2, reason="error"),
        ]

    fake_ash.script = failing
    async with AsyncClient(fake_ash.url) as ash:
        await ash.deploy(agent_dir, "hello")
        session = await ash.create_session("hello")
        events = [e async for e in ash.send(session.id, "hi")]
    assert isinstance(events[1], Error) and events[1].error.code == "agent_failed"
    assert isinstance(events[2], Done) and events[2].reason == "error"


def test_gzip_header_is_deterministic(agent_dir: Path) -> None:
    from ash import pack

    data = pack(agent_dir)
    assert data[:2] == b"\x1f\x8b" and data[4:8] == b"\0\0\0\0"  # gzip magic, mtime zero
    assert gzip.decompress(data)  # and it is a valid gzip stream
