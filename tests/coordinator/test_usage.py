"""Usage: the price table, the row a turn's `done` becomes, and the store's sums on SQLite and
Postgres alike (the same fixtures as the store suite)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from coordinator.store import Store, open_store
from coordinator.store.usage import UsageQuery, UsageRow
from coordinator.usage import DEFAULT_PRICE, PRICES, cost_of, price_of, usage_row
from protocol import events
from tests.coordinator.test_store import BACKENDS, DIGEST_A, sqlite_url  # noqa: F401

T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
DAY = 86_400.0


@pytest.fixture(params=sorted(BACKENDS))
def store_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(BACKENDS[request.param])
    return url


@pytest.fixture
async def store(store_url: str) -> Any:
    async with open_store(store_url) as store:
        yield store


# -- prices and rows -------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "key"), [
    ("claude-sonnet-4-5-20250929", "claude-sonnet-4"),
    ("claude-opus-4-5", "claude-opus-4-5"),
    ("claude-opus-4-1-20250805", "claude-opus-4"),
    ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
    ("Haiku", "haiku"),
])
def test_a_model_is_priced_by_the_longest_name_it_starts_with(model: str, key: str) -> None:
    assert price_of(model) is PRICES[key]


@pytest.mark.parametrize("model", [None, "", "some-other-model"])
def test_an_unknown_model_gets_the_default_price(model: str | None) -> None:
    assert price_of(model) is DEFAULT_PRICE


def test_the_cli_cost_wins_and_otherwise_tokens_are_priced() -> None:
    reported = events.TurnUsage(model="claude-opus-4", input_tokens=10**6, total_cost_usd=0.25)
    assert cost_of(reported) == (0.25, False)
    tokens = events.TurnUsage(model="claude-opus-4", input_tokens=10**6, output_tokens=10**6,
                              cache_creation_input_tokens=10**6, cache_read_input_tokens=10**6)
    assert cost_of(tokens) == (pytest.approx(15 + 75 + 18.75 + 1.5), True)


def test_a_done_becomes_one_row_with_its_usage_and_day() -> None:
    done = events.Done(session_id="s1", turn_id="t1", seq=9, reason="interrupted",
                       usage=events.TurnUsage(model="claude-sonnet-4", input_tokens=1000,
                                              output_tokens=100, tool_calls=2, cpu_s=0.5,
                                              duration_ms=1234))
    row = usage_row(done, tenant="acme", agent="echo", now=T0)
    assert row == UsageRow(
        session_id="s1", turn_id="t1", tenant="acme", agent="echo", model="claude-sonnet-4",
        reason="interrupted", input_tokens=1000, output_tokens=100,
        cache_creation_input_tokens=0, cache_read_input_tokens=0,
        cost_usd=pytest.approx((1000 * 3 + 100 * 15) / 1e6), cost_estimated=True,
        tool_calls=2, cpu_s=0.5, duration_ms=1234, day="2023-11-14", created_at=T0)


def test_a_done_without_usage_is_a_row_of_zeros() -> None:
    done = events.Done(session_id="s1", turn_id="t1", seq=3)
    row = usage_row(done, tenant="default", agent="echo", now=T0)
    assert (row.input_tokens, row.tool_calls, row.cpu_s, row.cost_usd) == (0, 0, None, 0.0)


# -- the store ---------------------------------------------------------------------------------


def row(session: str, turn: str, *, tenant: str = "default", agent: str = "echo",
        at: float = T0, tokens: int = 100, tools: int = 1, cpu: float | None = 0.5,
        cost: float = 0.01) -> UsageRow:
    return UsageRow(
        session_id=session, turn_id=turn, tenant=tenant, agent=agent, model="claude-sonnet-4",
        reason="completed", input_tokens=tokens, output_tokens=tokens // 10,
        cache_creation_input_tokens=1, cache_read_input_tokens=2, cost_usd=cost,
        cost_estimated=False, tool_calls=tools, cpu_s=cpu, duration_ms=10,
        day=time.strftime("%Y-%m-%d", time.gmtime(at)), created_at=at)


async def fill(store: Store) -> None:
    for r in (row("s1", "t1"), row("s1", "t2", at=T0 + 1, tokens=200, tools=0, cpu=None),
              row("s2", "t1", agent="other", at=T0 + DAY, tokens=50),
              row("s3", "t1", tenant="acme", at=T0 + 2, tokens=1000, tools=5)):
        assert await store.record_usage(r)


async def test_a_turn_is_recorded_once(store: Store) -> None:
    assert await store.record_usage(row("s1", "t1"))
    assert not await store.record_usage(row("s1", "t1", tokens=999))
    [total] = await store.usage(UsageQuery(group_by="all"))
    assert (total.turns, total.input_tokens) == (1, 100)


async def test_usage_sums_by_each_group(store: Store) -> None:
    await fill(store)

    turns = await store.usage(UsageQuery(group_by="turn", tenant="default"))
    assert [(u.session_id, u.key, u.agent, u.input_tokens) for u in turns] == [
        ("s1", "t1", "echo", 100), ("s1", "t2", "echo", 200), ("s2", "t1", "other", 50)]
    sessions = await store.usage(UsageQuery(group_by="session", tenant="default"))
    assert [(u.key, u.turns, u.input_tokens, u.output_tokens, u.tool_calls) for u in sessions] == [
        ("s1", 2, 300, 30, 1), ("s2", 1, 50, 5, 1)]
    assert sessions[0].cpu_s == pytest.approx(0.5)  # a turn without CPU accounting adds none
    assert sessions[0].cost_usd == pytest.approx(0.02)
    assert (sessions[0].first_at, sessions[0].last_at) == (T0, T0 + 1)
    agents = await store.usage(UsageQuery(group_by="agent", tenant="default"))
    assert [(u.key, u.agent, u.session_id, u.turns) for u in agents] == [
        ("echo", "echo", None, 2), ("other", "other", None, 1)]
    days = await store.usage(UsageQuery(group_by="day", tenant="default"))
    assert [(u.key, u.turns) for u in days] == [("2023-11-14", 2), ("2023-11-15", 1)]
    tenants = await store.usage(UsageQuery(group_by="tenant"))
    assert [(u.key, u.turns, u.tool_calls) for u in tenants] == [("acme", 1, 5), ("default", 3, 2)]


async def test_usage_filters_by_tenant_agent_session_and_time(store: Store) -> None:
    await fill(store)

    async def total(**filters: Any) -> tuple[int, int]:
        [u] = await store.usage(UsageQuery(group_by="all", **filters))
        return u.turns, u.input_tokens

    assert await total() == (4, 1350)
    assert await total(tenant="acme") == (1, 1000)
    assert await total(tenant="nobody") == (0, 0)
    assert await total(tenant="default", agent="echo") == (2, 300)
    assert await total(session_id="s1") == (2, 300)
    assert await total(since=T0 + 1) == (3, 1250)
    assert await total(until=T0 + 1) == (1, 100)  # until is exclusive
    assert await total(since=T0, until=T0 + DAY) == (3, 1300)
    assert len(await store.usage(UsageQuery(group_by="turn", limit=2))) == 2


async def test_session_counts_by_status(store: Store) -> None:
    await store.create_session("a", "echo", DIGEST_A, None, {}, T0)
    await store.create_session("b", "echo", DIGEST_A, None, {}, T0)
    await store.transition("b", ["starting"], "active", T0)
    assert await store.session_counts() == {"starting": 1, "active": 1}


def test_a_query_refuses_an_unknown_group_or_a_bad_limit() -> None:
    with pytest.raises(ValueError):
        UsageQuery(group_by="week")
    with pytest.raises(ValueError):
        UsageQuery(limit=0)
