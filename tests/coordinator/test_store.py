"""The `Store` contract, run against every backend.

Every test takes `store` (an open store on a fresh, empty database) or `store_url` (the URL of
one, for tests that open and reopen it). To run the suite against another backend, add one
line to `BACKENDS`: the backend's name and the fixture that yields a fresh database's URL
(`postgres_url` is in conftest.py: a database of its own on a real local Postgres).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from coordinator.store import (
    MIGRATIONS,
    UNSET,
    Migration,
    SchemaTooNewError,
    SessionExistsError,
    SessionNotFoundError,
    Store,
    StoreError,
    open_store,
)
from protocol.api import AgentView, MessageView, SessionView

BACKENDS = {
    "sqlite": "sqlite_url",
    "postgres": "postgres_url",
}

T0 = 1_700_000_000.0
DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64


@pytest.fixture
def sqlite_url(tmp_path: Any) -> str:
    return f"sqlite://{tmp_path / 'ash.db'}"


@pytest.fixture(params=sorted(BACKENDS))
def store_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(BACKENDS[request.param])
    return url


@pytest.fixture
async def store(store_url: str) -> Any:
    async with open_store(store_url) as store:
        yield store


async def make_session(store: Store, id: str = "s1", agent: str = "echo", now: float = T0) -> None:
    await store.create_session(id, agent, DIGEST_A, None, {}, now)


def fields_of(view: SessionView) -> dict[str, Any]:
    return {name: getattr(view, name) for name in view.__struct_fields__}


# -- agents ---------------------------------------------------------------------------------


async def test_first_deploy_is_version_1(store: Store) -> None:
    view = await store.upsert_agent("echo", DIGEST_A, 3, 1200, T0)

    expected = AgentView(
        name="echo", digest=DIGEST_A, version=1, files=3, size=1200, created_at=T0, updated_at=T0
    )
    assert view == expected
    assert await store.get_agent("echo") == expected


async def test_new_digest_bumps_version_and_keeps_created_at(store: Store) -> None:
    await store.upsert_agent("echo", DIGEST_A, 3, 1200, T0)

    view = await store.upsert_agent("echo", DIGEST_B, 4, 1500, T0 + 10)

    assert view == AgentView(
        name="echo", digest=DIGEST_B, version=2, files=4, size=1500,
        created_at=T0, updated_at=T0 + 10,
    )
    assert await store.get_agent("echo") == view


async def test_redeploying_the_same_digest_changes_nothing(store: Store) -> None:
    first = await store.upsert_agent("echo", DIGEST_A, 3, 1200, T0)

    again = await store.upsert_agent("echo", DIGEST_A, 3, 1200, T0 + 10)

    assert again == first
    assert await store.get_agent("echo") == first


async def test_returning_to_an_earlier_digest_is_a_new_version(store: Store) -> None:
    await store.upsert_agent("echo", DIGEST_A, 3, 1200, T0)
    await store.upsert_agent("echo", DIGEST_B, 3, 1200, T0 + 1)

    view = await store.upsert_agent("echo", DIGEST_A, 3, 1200, T0 + 2)

    assert (view.digest, view.version) == (DIGEST_A, 3)


async def test_versions_are_per_agent(store: Store) -> None:
    await store.upsert_agent("echo", DIGEST_A, 1, 1, T0)
    await store.upsert_agent("echo", DIGEST_B, 1, 1, T0)

    other = await store.upsert_agent("other", DIGEST_A, 1, 1, T0)

    assert other.version == 1


async def test_unknown_agent_is_none(store: Store) -> None:
    assert await store.get_agent("nobody") is None


async def test_list_agents_is_ordered_by_name(store: Store) -> None:
    for name in ["mid", "alpha", "zulu"]:
        await store.upsert_agent(name, DIGEST_A, 1, 10, T0)

    assert [a.name for a in await store.list_agents()] == ["alpha", "mid", "zulu"]


async def test_list_agents_is_empty_on_a_fresh_store(store: Store) -> None:
    assert await store.list_agents() == []


async def test_delete_agent_keeps_its_sessions_and_history(store: Store) -> None:
    await store.upsert_agent("echo", DIGEST_A, 1, 10, T0)
    await make_session(store, "s1", agent="echo")
    await store.append_messages("s1", [(1, "t1", "user", "hi")], T0)

    assert await store.delete_agent("echo") is True

    assert await store.get_agent("echo") is None
    assert await store.list_agents() == []
    session = await store.get_session("s1")
    assert session is not None and session.agent == "echo"
    assert [s.id for s in await store.list_sessions(agent="echo")] == ["s1"]
    assert [m.content for m in await store.list_messages("s1")] == ["hi"]


async def test_delete_unknown_agent_is_false(store: Store) -> None:
    await store.upsert_agent("echo", DIGEST_A, 1, 10, T0)

    assert await store.delete_agent("nobody") is False
    assert await store.delete_agent("echo") is True
    assert await store.delete_agent("echo") is False


# -- sessions -------------------------------------------------------------------------------


async def test_create_session_starts_in_starting(store: Store) -> None:
    view = await store.create_session("s1", "echo", DIGEST_A, "claude-x", {"k": "v"}, T0)

    expected = SessionView(
        id="s1", agent="echo", agent_digest=DIGEST_A, status="starting", runner_id=None,
        claude_session_id=None, last_seq=0, turns=0, model="claude-x",
        created_at=T0, updated_at=T0,
    )
    assert view == expected
    assert await store.get_session("s1") == expected


async def test_create_session_with_a_taken_id_raises_and_keeps_the_first(store: Store) -> None:
    first = await store.create_session("s1", "echo", DIGEST_A, "m1", {"a": 1}, T0)

    with pytest.raises(SessionExistsError):
        await store.create_session("s1", "other", DIGEST_B, "m2", {"b": 2}, T0 + 1)

    assert await store.get_session("s1") == first
    assert await store.get_session_options("s1") == {"a": 1}


async def test_unknown_session_is_none_and_its_options_raise(store: Store) -> None:
    assert await store.get_session("nope") is None
    with pytest.raises(SessionNotFoundError):
        await store.get_session_options("nope")


async def test_options_round_trip_as_json(store: Store) -> None:
    options: dict[str, Any] = {
        "system_prompt": "Réponds en français ✓ \"quoted\" \\ back\nslash",
        "env": {"A": "1", "EMPTY": ""},
        "max_turns": 12,
        "temperature": 0.25,
        "big": 2**53 + 1,
        "flags": [True, False, None],
        "nested": {"list": [{"x": []}], "obj": {}},
    }
    await store.create_session("s1", "echo", DIGEST_A, None, options, T0)

    assert await store.get_session_options("s1") == options


async def test_list_sessions_newest_first_with_agent_filter_and_limit(store: Store) -> None:
    await make_session(store, "old", agent="echo", now=T0)
    await make_session(store, "new", agent="other", now=T0 + 20)
    await make_session(store, "mid", agent="echo", now=T0 + 10)
    # Same created_at: ties break by id, descending, so paging is stable.
    await make_session(store, "mid-b", agent="echo", now=T0 + 10)

    assert [s.id for s in await store.list_sessions()] == ["new", "mid-b", "mid", "old"]
    assert [s.id for s in await store.list_sessions(agent="echo")] == ["mid-b", "mid", "old"]
    assert [s.id for s in await store.list_sessions(limit=2)] == ["new", "mid-b"]
    assert [s.id for s in await store.list_sessions(agent="echo", limit=1)] == ["mid-b"]
    assert await store.list_sessions(agent="nobody") == []


async def test_list_sessions_rejects_a_limit_below_1(store: Store) -> None:
    with pytest.raises(ValueError):
        await store.list_sessions(limit=0)


async def test_update_session_changes_only_the_given_fields(store: Store) -> None:
    created = await store.create_session("s1", "echo", DIGEST_A, "m", {"a": 1}, T0)

    view = await store.update_session("s1", T0 + 5, runner_id="r1")

    assert view == SessionView(
        **{**fields_of(created), "runner_id": "r1", "updated_at": T0 + 5}
    )
    assert await store.get_session("s1") == view

    view = await store.update_session(
        "s1", T0 + 6, status="active", claude_session_id="c1", turns_delta=1
    )
    assert view is not None
    assert (view.status, view.runner_id, view.claude_session_id, view.turns) == (
        "active", "r1", "c1", 1,
    )
    assert (view.model, view.last_seq, view.created_at, view.updated_at) == ("m", 0, T0, T0 + 6)
    assert await store.get_session_options("s1") == {"a": 1}


async def test_update_session_writes_none(store: Store) -> None:
    await make_session(store)
    await store.update_session("s1", T0 + 1, runner_id="r1", claude_session_id="c1")

    view = await store.update_session("s1", T0 + 2, runner_id=None)

    assert view is not None
    assert (view.runner_id, view.claude_session_id) == (None, "c1")
    stored = await store.get_session("s1")
    assert stored is not None and stored.runner_id is None


async def test_update_session_turns_accumulate(store: Store) -> None:
    await make_session(store)
    for i in range(3):
        await store.update_session("s1", T0 + i, turns_delta=1)
    await store.update_session("s1", T0 + 9, turns_delta=2)

    view = await store.get_session("s1")
    assert view is not None and view.turns == 5


async def test_update_session_with_nothing_given_only_touches_updated_at(store: Store) -> None:
    created = await store.create_session("s1", "echo", DIGEST_A, "m", {}, T0)

    view = await store.update_session("s1", T0 + 3)

    assert view == SessionView(**{**fields_of(created), "updated_at": T0 + 3})


async def test_update_unknown_session_is_none(store: Store) -> None:
    assert await store.update_session("nope", T0, status="active") is None
    assert await store.get_session("nope") is None


async def test_update_session_rejects_bad_arguments_and_changes_nothing(store: Store) -> None:
    created = await store.create_session("s1", "echo", DIGEST_A, None, {}, T0)

    with pytest.raises(ValueError):
        await store.update_session("s1", T0 + 1, status="finished")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        await store.update_session("s1", T0 + 1, turns_delta=-1)

    assert await store.get_session("s1") == created


async def test_unset_is_not_none() -> None:
    assert UNSET is not None
    assert repr(UNSET) == "UNSET"


async def test_transition_from_an_allowed_status(store: Store) -> None:
    await make_session(store)

    view = await store.transition("s1", {"starting"}, "active", T0 + 1)

    assert view is not None
    assert (view.status, view.updated_at) == ("active", T0 + 1)
    assert await store.get_session("s1") == view


async def test_transition_refuses_from_the_wrong_status(store: Store) -> None:
    await make_session(store)
    ended = await store.transition("s1", {"starting"}, "ended", T0 + 1)

    refused = await store.transition("s1", {"active", "paused"}, "active", T0 + 2)

    assert refused is None
    assert await store.get_session("s1") == ended


async def test_transition_of_unknown_session_is_none(store: Store) -> None:
    assert await store.transition("nope", {"starting"}, "active", T0) is None


async def test_transition_rejects_bad_arguments(store: Store) -> None:
    await make_session(store)

    with pytest.raises(ValueError):
        await store.transition("s1", set(), "active", T0)
    with pytest.raises(TypeError):
        await store.transition("s1", "starting", "active", T0)
    with pytest.raises(ValueError):
        await store.transition("s1", {"starting"}, "finished", T0)  # type: ignore[arg-type]

    view = await store.get_session("s1")
    assert view is not None and view.status == "starting"


async def test_concurrent_transitions_have_exactly_one_winner(store: Store) -> None:
    await make_session(store)
    await store.transition("s1", {"starting"}, "active", T0)

    results = await asyncio.gather(
        *(store.transition("s1", {"active"}, "ended", T0 + i) for i in range(20))
    )

    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    assert await store.get_session("s1") == winners[0]


# -- history --------------------------------------------------------------------------------


async def test_messages_round_trip_in_seq_order(store: Store) -> None:
    await make_session(store)
    contents: list[Any] = [
        "hello ✓",
        {"type": "assistant", "content": [{"type": "text", "text": "hi"}], "usage": {"n": 1.5}},
        [1, "two", None, False],
        {"is_error": False, "result": "done", "cost": 0.0123},
    ]
    rows = [
        (3, "t1", "tool", contents[2]),
        (1, "t1", "user", contents[0]),
        (4, "t1", "result", contents[3]),
        (2, "t1", "assistant", contents[1]),
    ]

    inserted = await store.append_messages("s1", rows, T0 + 1)

    assert inserted == 4
    assert await store.list_messages("s1") == [
        MessageView(seq=1, turn_id="t1", role="user", content=contents[0], created_at=T0 + 1),
        MessageView(seq=2, turn_id="t1", role="assistant", content=contents[1], created_at=T0 + 1),
        MessageView(seq=3, turn_id="t1", role="tool", content=contents[2], created_at=T0 + 1),
        MessageView(seq=4, turn_id="t1", role="result", content=contents[3], created_at=T0 + 1),
    ]


async def test_append_is_idempotent_on_seq(store: Store) -> None:
    await make_session(store)
    await store.append_messages("s1", [(1, "t1", "user", "hi"), (2, "t1", "assistant", "yo")], T0)
    before = await store.get_session("s1")

    replayed = await store.append_messages(
        "s1", [(1, "t1", "user", "REPLAYED"), (2, "t1", "assistant", "REPLAYED")], T0 + 5
    )

    assert replayed == 0
    messages = await store.list_messages("s1")
    assert [(m.seq, m.content, m.created_at) for m in messages] == [(1, "hi", T0), (2, "yo", T0)]
    assert await store.get_session("s1") == before


async def test_append_inserts_only_the_new_rows_of_a_partial_replay(store: Store) -> None:
    await make_session(store)
    await store.append_messages("s1", [(1, "t1", "user", "a")], T0)

    inserted = await store.append_messages(
        "s1", [(1, "t1", "user", "a"), (2, "t1", "assistant", "b")], T0 + 1
    )

    assert inserted == 1
    assert [m.seq for m in await store.list_messages("s1")] == [1, 2]


async def test_last_seq_advances_and_never_goes_back(store: Store) -> None:
    await make_session(store)

    await store.append_messages("s1", [(5, "t1", "assistant", "five")], T0 + 1)
    after_five = await store.get_session("s1")
    await store.append_messages("s1", [(3, "t1", "assistant", "late three")], T0 + 2)
    after_three = await store.get_session("s1")
    await store.append_messages("s1", [(7, "t2", "user", "x"), (6, "t1", "result", "y")], T0 + 3)
    after_seven = await store.get_session("s1")

    assert after_five is not None and (after_five.last_seq, after_five.updated_at) == (5, T0 + 1)
    assert after_three == after_five
    assert after_seven is not None and (after_seven.last_seq, after_seven.updated_at) == (7, T0 + 3)
    assert [m.seq for m in await store.list_messages("s1")] == [3, 5, 6, 7]


async def test_seq_is_per_session(store: Store) -> None:
    await make_session(store, "s1")
    await make_session(store, "s2")

    assert await store.append_messages("s1", [(1, "t1", "user", "one")], T0) == 1
    assert await store.append_messages("s2", [(1, "t9", "user", "two")], T0) == 1

    assert [m.content for m in await store.list_messages("s1")] == ["one"]
    assert [m.content for m in await store.list_messages("s2")] == ["two"]


async def test_list_messages_after_seq_and_limit(store: Store) -> None:
    await make_session(store)
    await store.append_messages("s1", [(i, "t1", "assistant", i) for i in range(1, 11)], T0)

    assert [m.seq for m in await store.list_messages("s1", after_seq=7)] == [8, 9, 10]
    assert [m.seq for m in await store.list_messages("s1", after_seq=2, limit=3)] == [3, 4, 5]
    assert await store.list_messages("s1", after_seq=10) == []
    assert await store.list_messages("nope") == []
    with pytest.raises(ValueError):
        await store.list_messages("s1", limit=0)


async def test_append_to_unknown_session_raises_and_store_stays_usable(store: Store) -> None:
    with pytest.raises(SessionNotFoundError):
        await store.append_messages("nope", [(1, "t1", "user", "hi")], T0)

    assert await store.list_messages("nope") == []
    # The failed transaction was rolled back: the next write works.
    await make_session(store, "s1")
    assert await store.append_messages("s1", [(1, "t1", "user", "hi")], T0) == 1


async def test_append_rejects_bad_rows_and_writes_none_of_the_batch(store: Store) -> None:
    await make_session(store)
    before = await store.get_session("s1")

    with pytest.raises(ValueError):
        bad_role: Any = "system"
        await store.append_messages(
            "s1", [(1, "t1", "user", "ok"), (2, "t1", bad_role, "bad role")], T0
        )
    with pytest.raises(ValueError):
        await store.append_messages("s1", [(0, "t1", "user", "seq 0")], T0)
    with pytest.raises(TypeError):
        await store.append_messages("s1", [(1, "t1", "user", object())], T0)

    assert await store.list_messages("s1") == []
    assert await store.get_session("s1") == before


async def test_empty_append_changes_nothing(store: Store) -> None:
    await make_session(store)
    before = await store.get_session("s1")

    assert await store.append_messages("s1", [], T0 + 1) == 0

    assert await store.get_session("s1") == before


async def test_concurrent_appends_all_land(store: Store) -> None:
    await make_session(store)

    counts = await asyncio.gather(
        *(store.append_messages("s1", [(seq, "t1", "assistant", seq)], T0) for seq in range(1, 51))
    )

    assert sum(counts) == 50
    assert [m.seq for m in await store.list_messages("s1")] == list(range(1, 51))
    view = await store.get_session("s1")
    assert view is not None and view.last_seq == 50


# -- ordering -------------------------------------------------------------------------------

# Code point order: uppercase before lowercase, " " < "-" < letters, "é" after "z". A
# database whose collation follows a language (en: "a", "a b", "a-b", "ab", "B", ...) differs.
NAMES = ["ab", "a-b", "B", "a", "a b", "é", "z", "Z", "a1", "A"]


async def test_text_orders_by_code_point_on_every_backend(store: Store) -> None:
    for name in NAMES:
        await store.upsert_agent(name, DIGEST_A, 1, 1, T0)
        await make_session(store, name, agent="echo", now=T0)  # one created_at: ties by id

    assert [a.name for a in await store.list_agents()] == sorted(NAMES)
    assert [s.id for s in await store.list_sessions()] == sorted(NAMES, reverse=True)
    assert [s.id for s in await store.list_sessions(agent="echo", limit=3)] == sorted(
        NAMES, reverse=True
    )[:3]
    assert [s.id for s in await store.sessions_with_status(["starting"])] == sorted(NAMES)


# -- several processes on one database --------------------------------------------------------


async def test_two_stores_on_one_database_share_it(store_url: str) -> None:
    # Two coordinators: what one writes the other reads, a compare-and-set has one winner
    # across both, and replays of one batch in opposite orders land each row once.
    async with open_store(store_url) as one, open_store(store_url) as two:
        agent = await one.upsert_agent("echo", DIGEST_A, 1, 1, T0)
        assert await two.get_agent("echo") == agent
        await make_session(two, "s1")
        await one.transition("s1", {"starting"}, "active", T0)

        results = await asyncio.gather(
            *(store.transition("s1", {"active"}, "paused", T0 + i)
              for i, store in enumerate([one, two] * 5))
        )
        rows: list[Any] = [(seq, "t1", "assistant", seq) for seq in range(1, 1001)]
        counts = await asyncio.gather(
            *(store.append_messages("s1", batch, T0)
              for store, batch in [(one, rows), (two, rows[::-1])] * 3)
        )

        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        assert sum(counts) == 1000
        assert [m.seq for m in await one.list_messages("s1")] == list(range(1, 1001))
        view = await two.get_session("s1")
        assert view is not None and (view.status, view.last_seq) == ("paused", 1000)


# -- lifecycle and migrations ---------------------------------------------------------------


async def test_stores_opened_at_once_migrate_the_database_exactly_once(store_url: str) -> None:
    # Coordinators sharing a database start together. Neither step below may run twice: the
    # seed would break the primary key, and the bump would make files 2.
    seed = Migration(
        len(MIGRATIONS) + 1,
        "seed",
        f"INSERT INTO agents (name, digest, version, files, size, created_at, updated_at) "
        f"VALUES ('seeded', '{DIGEST_A}', 1, 0, 0, {T0}, {T0})",
    )
    bump = Migration(len(MIGRATIONS) + 2, "bump_files", "UPDATE agents SET files = files + 1")
    migrations = [*MIGRATIONS, seed, bump]

    async with contextlib.AsyncExitStack() as stack:
        stores = await asyncio.gather(
            *(stack.enter_async_context(open_store(store_url, migrations=migrations))
              for _ in range(4))
        )
        agents = await asyncio.gather(*(s.get_agent("seeded") for s in stores))

    assert [a.files if a else None for a in agents] == [1, 1, 1, 1]


async def test_a_migration_runs_the_sql_of_its_dialect(store_url: str) -> None:
    dialect = "sqlite" if store_url.startswith("sqlite") else "postgres"
    step = Migration(
        len(MIGRATIONS) + 1,
        "per_dialect",
        "UPDATE agents SET files = 100",
        {"postgres": "UPDATE agents SET files = 200"},
    )
    async with open_store(store_url) as store:
        await store.upsert_agent("echo", DIGEST_A, 1, 1, T0)

    async with open_store(store_url, migrations=[*MIGRATIONS, step]) as store:
        agent = await store.get_agent("echo")

    assert agent is not None
    assert agent.files == {"sqlite": 100, "postgres": 200}[dialect]




async def test_reopening_keeps_the_data(store_url: str) -> None:
    async with open_store(store_url) as store:
        agent = await store.upsert_agent("echo", DIGEST_A, 2, 20, T0)
        await store.create_session("s1", "echo", DIGEST_A, None, {"a": [1]}, T0)
        await store.append_messages("s1", [(1, "t1", "user", {"text": "hi"})], T0)

    async with open_store(store_url) as store:
        assert await store.get_agent("echo") == agent
        assert await store.get_session_options("s1") == {"a": [1]}
        assert [m.content for m in await store.list_messages("s1")] == [{"text": "hi"}]


async def test_reopening_applies_only_newer_migrations(store_url: str) -> None:
    # A migration whose effect is visible through the API and not idempotent: if it ran twice,
    # files would be 5, not 4.
    bump = Migration(len(MIGRATIONS) + 1, "bump_files", "UPDATE agents SET files = files + 1")
    async with open_store(store_url) as store:
        await store.upsert_agent("echo", DIGEST_A, 3, 20, T0)

    async with open_store(store_url, migrations=[*MIGRATIONS, bump]) as store:
        once = await store.get_agent("echo")
    async with open_store(store_url, migrations=[*MIGRATIONS, bump]) as store:
        still = await store.get_agent("echo")

    assert once is not None and once.files == 4
    assert still == once


async def test_a_schema_newer_than_the_code_refuses_to_open(store_url: str) -> None:
    future = Migration(len(MIGRATIONS) + 1, "from_the_future", "CREATE TABLE f (x INTEGER)")
    newer = [*MIGRATIONS, future]
    async with open_store(store_url, migrations=newer) as store:
        await store.upsert_agent("echo", DIGEST_A, 1, 1, T0)

    with pytest.raises(SchemaTooNewError) as caught:
        async with open_store(store_url):
            pass

    message = str(caught.value)
    assert f"version {len(newer)}" in message and str(len(MIGRATIONS)) in message
    assert "newer" in message
    # Refusing did not damage anything: the newer code still opens it.
    async with open_store(store_url, migrations=newer) as store:
        agent = await store.get_agent("echo")
        assert agent is not None


async def test_a_failing_migration_leaves_the_database_as_it_was(store_url: str) -> None:
    async with open_store(store_url) as store:
        await store.upsert_agent("echo", DIGEST_A, 3, 20, T0)
    broken = Migration(
        len(MIGRATIONS) + 1,
        "broken",
        "UPDATE agents SET files = 99; INSERT INTO no_such_table VALUES (1)",
    )

    with pytest.raises(Exception, match="no_such_table"):
        async with open_store(store_url, migrations=[*MIGRATIONS, broken]):
            pass

    # Still at the old version (not "too new" for the old code) with the old data.
    async with open_store(store_url) as store:
        agent = await store.get_agent("echo")
        assert agent is not None and agent.files == 3


async def test_close_is_idempotent_and_a_closed_store_refuses_work(store_url: str) -> None:
    store = open_store(store_url)
    async with store:
        await store.upsert_agent("echo", DIGEST_A, 1, 1, T0)
        await store.close()
        await store.close()

        with pytest.raises(StoreError):
            await store.get_agent("echo")
        with pytest.raises(StoreError):
            await store.upsert_agent("echo", DIGEST_B, 1, 1, T0)
    await store.close()


async def test_a_store_not_yet_opened_refuses_work(store_url: str) -> None:
    store = open_store(store_url)

    with pytest.raises(StoreError):
        await store.list_agents()


# -- tenants and API keys ---------------------------------------------------------------------


async def test_agents_are_per_tenant_and_sessions_scoped_by_tenant(store: Store) -> None:
    a = await store.upsert_agent("hello", "d-a", 1, 10, 1.0, tenant="acme")
    b = await store.upsert_agent("hello", "d-b", 1, 10, 2.0, tenant="globex")
    assert (a.version, b.version) == (1, 1)
    assert await store.get_agent("hello", tenant="acme") == a
    assert await store.get_agent("hello") is None  # the default tenant has none
    assert [x.digest for x in await store.list_agents(tenant="globex")] == ["d-b"]
    assert await store.delete_agent("hello", tenant="globex")
    assert await store.get_agent("hello", tenant="acme") == a

    s = await store.create_session("s1", "hello", "d-a", None, {}, 3.0, tenant="acme")
    assert s.tenant == "acme"
    assert await store.get_session("s1", tenant="acme") == s
    assert await store.get_session("s1", tenant="globex") is None
    assert await store.get_session("s1") == s  # no tenant: internal callers see all
    assert await store.session_tenant("s1") == "acme"
    assert [v.id for v in await store.list_sessions(tenant="acme")] == ["s1"]
    assert await store.list_sessions(tenant="globex") == []
    assert await store.list_sessions(agent="hello", tenant="globex") == []
    old = await store.create_session("s0", "hello", "d", None, {}, 4.0)
    assert old.tenant == "default"


async def test_api_keys_keep_a_hash_and_revoke_once(store: Store) -> None:
    row = await store.create_key("k1", "acme", "ci", ["sessions:write", "deploy"], "h1", 1.0)
    assert row.scopes == ("deploy", "sessions:write") and row.revoked_at is None
    assert await store.get_key("k1") == row
    assert await store.get_key("nope") is None
    await store.create_key("k2", "globex", "ops", ["admin"], "h2", 2.0)
    assert [k.key_id for k in await store.list_keys("acme")] == ["k1"]
    assert [k.key_id for k in await store.list_keys()] == ["k1", "k2"]
    assert await store.revoke_key("k1", 5.0, tenant="globex") is None  # not globex's
    revoked = await store.revoke_key("k1", 5.0, tenant="acme")
    assert revoked is not None and revoked.revoked_at == 5.0
    again = await store.revoke_key("k1", 9.0)
    assert again is not None and again.revoked_at == 5.0
    assert await store.revoke_key("nope", 9.0) is None
