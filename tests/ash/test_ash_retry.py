"""The client's retry policy: the decision table, the backoff, and what a real HTTP server sees."""

from __future__ import annotations

from pathlib import Path

import pytest

from ash.client import AsyncClient
from ash.errors import AshConnectionError, AshError
from ash.retry import Failure, RetryPolicy, failure_of_status, parse_retry_after
from tests.ash.fake_server import FakeAsh, free_port

F = Failure


@pytest.mark.parametrize(
    ("failure", "idempotent", "safe", "retried"),
    [
        (F.unsent, False, False, True),  # never reached the server: any request
        (F.throttled, False, False, True),  # 429 is refused before anything is done
        (F.unavailable, True, False, True),
        (F.unavailable, False, True, True),  # create session, send, exec, pause, resume
        (F.unavailable, False, False, False),  # deploy, fork, upload: not on 503
        (F.gateway, True, False, True),
        (F.gateway, False, True, False),  # a proxy's 502/504: the server may have acted
        (F.broken, True, False, True),
        (F.broken, False, True, False),
    ],
)
def test_which_failures_are_retried(failure: Failure, idempotent: bool, safe: bool,
                                    retried: bool) -> None:  # fmt: skip
    assert RetryPolicy().allows(failure, idempotent=idempotent, safe=safe) is retried


def test_backoff_doubles_to_a_cap_with_jitter_and_honours_retry_after() -> None:
    policy = RetryPolicy(attempts=8, base_s=0.25, cap_s=4.0, max_retry_after_s=30.0)
    assert [policy.delay(n, 0.0) for n in range(7)] == [0.125, 0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    assert policy.delay(0, 0.999999) == pytest.approx(0.25)
    assert policy.delay(7, 0.5) is None  # the last try failed: no more
    assert policy.delay(0, 0.5, retry_after=3.0) == 3.0  # the server's hint wins when longer
    assert policy.delay(3, 0.5, retry_after=0.1) == pytest.approx(1.5)  # step 2 s: 1 + 0.5
    assert policy.delay(0, 0.5, retry_after=60.0) is None  # too long to sit in a call
    assert RetryPolicy(attempts=1).delay(0, 0.5) is None
    assert [failure_of_status(s) for s in (429, 503, 502, 504, 500, 404)] == [
        F.throttled, F.unavailable, F.gateway, F.gateway, None, None]
    assert (parse_retry_after("2"), parse_retry_after("x"), parse_retry_after(None)) == (2.0, None, None)


async def test_a_503_is_retried_for_reads_and_safe_posts_but_not_for_a_deploy(
    fake_ash: FakeAsh, agent_dir: Path
) -> None:
    unavailable = b'{"error":{"code":"runner_unreachable","message":"gone","retryable":true}}'
    async with AsyncClient(fake_ash.url) as ash:
        await ash.deploy(agent_dir, "hello")
        fake_ash.fail_next(503, unavailable, "application/json")
        assert [a.name for a in await ash.list_agents()] == ["hello"]
        fake_ash.fail_next(503, unavailable, "application/json")
        session = await ash.create_session("hello")
        assert session.agent == "hello"
        fake_ash.fail_next(503, unavailable, "application/json")
        with pytest.raises(AshError) as refused:
            await ash.deploy(agent_dir, "hello")
    assert (refused.value.status, refused.value.code, refused.value.retryable) == (
        503, "runner_unreachable", True)
    assert fake_ash.agents["hello"].version == 1  # the refused deploy was not sent again


async def test_a_refused_connection_is_retried_then_reported() -> None:
    port = free_port()  # nothing listens there
    async with AsyncClient(f"http://127.0.0.1:{port}", retries=2) as ash:
        with pytest.raises(AshConnectionError) as e:
            await ash.list_agents()
    assert "not reachable" in e.value.message and "ash start" in e.value.message


def test_api_key_and_url_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASH_API_KEY", "ash_from_env")
    monkeypatch.setenv("ASH_URL", "http://127.0.0.1:9/")
    client = AsyncClient()
    assert client.base_url == "http://127.0.0.1:9"
    assert client._headers()["Authorization"] == "Bearer ash_from_env"
    explicit = AsyncClient("http://h:1", "ash_given")
    assert explicit._headers()["Authorization"] == "Bearer ash_given"
