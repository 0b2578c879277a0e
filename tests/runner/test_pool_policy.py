"""The warm pool's pure decisions, table-tested: matching, eviction, refill, backoff."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from protocol.commands import SessionOptions
from runner.pool_policy import (
    MAX_BACKOFF_S,
    AgentView,
    PoolState,
    WarmView,
    backoff_s,
    idle_victims,
    lru_victim,
    refills,
    warm_key,
)

DEFAULT = warm_key("d1", SessionOptions())


@pytest.mark.parametrize(
    ("digest", "options", "resume", "fits"),
    [
        ("d1", SessionOptions(), None, True),
        ("d1", SessionOptions(env={}), None, True),  # an empty env is the default
        ("d1", SessionOptions(model=None, system_prompt=None), None, True),
        ("d2", SessionOptions(), None, False),  # another version of the agent
        ("d1", SessionOptions(model="claude-x"), None, False),
        ("d1", SessionOptions(system_prompt="be terse"), None, False),
        ("d1", SessionOptions(system_prompt=""), None, False),  # "" is not "unset"
        ("d1", SessionOptions(env={"A": "1"}), None, False),
        ("d1", SessionOptions(env={"A": ""}), None, False),
        ("d1", SessionOptions(), "claude-conversation-id", False),  # a resume
    ],
)
def test_a_warm_sandbox_fits_only_a_request_for_the_same_digest_and_default_options(
    digest: str, options: SessionOptions, resume: str | None, fits: bool
) -> None:
    assert (warm_key(digest, options, resume) == DEFAULT) is fits


def test_the_key_does_not_depend_on_env_order_but_on_every_value() -> None:
    a = warm_key("d", SessionOptions(env={"A": "1", "B": "2"}))
    assert a == warm_key("d", SessionOptions(env={"B": "2", "A": "1"}))
    assert a != warm_key("d", SessionOptions(env={"A": "1", "B": "3"}))
    assert hash(a) == hash(warm_key("d", SessionOptions(env={"B": "2", "A": "1"})))


# A non-default value for every field of SessionOptions. A field added later without a value
# here fails the next test: whoever adds it must decide it, and it then counts in the key.
NON_DEFAULT: dict[str, Any] = {"model": "m", "system_prompt": "p", "env": {"K": "v"},
                               "mcp_servers": {"s": {"command": "python3"}}}


def test_every_session_option_takes_part_in_the_key() -> None:
    fields = set(SessionOptions.__struct_fields__)
    assert fields <= NON_DEFAULT.keys(), f"give {fields - NON_DEFAULT.keys()} a value here"
    for name in fields:
        options = msgspec.structs.replace(SessionOptions(), **{name: NON_DEFAULT[name]})
        assert warm_key("d1", options) != DEFAULT, name


def agent(name: str, *, target: int = 1, warm: int = 0, warming: int = 0, seen: float = 0.0,
          failures: int = 0, failed_at: float = 0.0) -> AgentView:
    return AgentView(name, target, warm, warming, seen, failures, failed_at)


@pytest.mark.parametrize(
    ("warm", "seen", "now", "victims"),
    [
        ([WarmView(1, "a", since=0)], 0, 99, []),  # not idle long enough
        ([WarmView(1, "a", since=0)], 0, 100, [1]),  # exactly idle_s
        ([WarmView(1, "a", since=0)], 50, 120, []),  # the agent was used since
        ([WarmView(1, "a", since=90)], 0, 150, []),  # the sandbox itself is young
        ([WarmView(1, "a", since=0), WarmView(2, "a", since=60)], 0, 100, [1]),
    ],
)
def test_idle_sweep_takes_sandboxes_whose_agent_and_themselves_were_idle_long_enough(
    warm: list[WarmView], seen: float, now: float, victims: list[int]
) -> None:
    state = PoolState(capacity=10, claimed=0, agents=(agent("a", warm=len(warm), seen=seen),),
                      warm=tuple(warm))
    assert idle_victims(state, now, idle_s=100) == victims


@pytest.mark.parametrize(
    ("agents", "warm", "victim"),
    [
        ((), (), None),
        ((agent("a", seen=5),), (WarmView(1, "a", since=1),), 1),
        # the agent used longest ago loses its sandbox, whatever the sandbox's own age
        ((agent("a", seen=5), agent("b", seen=9)),
         (WarmView(1, "b", since=0), WarmView(2, "a", since=4)), 2),
        # one agent: its oldest sandbox first
        ((agent("a", seen=5),), (WarmView(3, "a", since=4), WarmView(4, "a", since=2)), 4),
    ],
)
def test_lru_eviction_takes_the_least_recently_used_agents_oldest_sandbox(
    agents: tuple[AgentView, ...], warm: tuple[WarmView, ...], victim: int | None
) -> None:
    assert lru_victim(PoolState(capacity=10, claimed=0, agents=agents, warm=warm)) == victim


@pytest.mark.parametrize(
    ("capacity", "claimed", "agents", "now", "want"),
    [
        (10, 0, (agent("a", target=2),), 10, ["a", "a"]),
        (10, 0, (agent("a", target=2, warm=1),), 10, ["a"]),
        (10, 0, (agent("a", target=2, warming=1, warm=1),), 10, []),  # full with one in flight
        (10, 0, (agent("a", target=0),), 10, []),  # pool disabled
        (10, 0, (agent("a", target=3),), 10, ["a", "a"]),  # at most 2 warm-ups in flight
        (10, 9, (agent("a", target=3),), 10, ["a"]),  # only into free room
        (10, 10, (agent("a", target=1),), 10, []),  # no room at all
        (10, 0, (agent("a", seen=0),), 100, []),  # idle agents are not refilled
        (10, 0, (agent("old", seen=1), agent("new", seen=5)), 10, ["new", "old"]),  # recent first
        (10, 0, (agent("a", failures=3, failed_at=8),), 10, []),  # backing off (4 s)
        (10, 0, (agent("a", failures=3, failed_at=8),), 12, ["a"]),  # backoff over
    ],
)
def test_refill_starts_warm_ups_for_recent_agents_into_free_room(
    capacity: int, claimed: int, agents: tuple[AgentView, ...], now: float, want: list[str]
) -> None:
    state = PoolState(capacity=capacity, claimed=claimed, agents=agents)
    assert refills(state, now, idle_s=100, max_warming=2) == want


def test_backoff_doubles_up_to_a_ceiling() -> None:
    assert [backoff_s(n) for n in range(5)] == [0.0, 1.0, 2.0, 4.0, 8.0]
    assert backoff_s(100) == MAX_BACKOFF_S


def test_used_counts_claimed_warm_and_warming() -> None:
    state = PoolState(capacity=9, claimed=2, agents=(agent("a", warm=1, warming=2),
                                                     agent("b", warm=3)))
    assert state.used == 8
