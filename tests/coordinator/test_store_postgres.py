"""What is particular to the Postgres backend: URLs, the advisory lock around migrating, the
schema as other clients see it, and connection errors.

The behaviour every backend shares is in test_store.py; each test here gets a database of its
own on the real local server (`postgres_url`, conftest.py).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from coordinator.config import from_env
from coordinator.store import MIGRATIONS, PostgresStore, Store, StoreError, open_store
from coordinator.store.postgres import MIGRATION_LOCK
from protocol.config import ConfigError
from tests.procs import free_port

T0 = 1_700_000_000.0
DIGEST = "sha256:" + "a" * 64


async def eventually(condition: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)  # poll interval: the condition is another session's state


@pytest.mark.parametrize("scheme", ["postgres", "postgresql", "POSTGRES"])
def test_postgres_urls_make_a_postgres_store_that_never_shows_the_password(scheme: str) -> None:
    store = open_store(f"{scheme}://ash:s3cret@db.example:5432/ash?sslmode=require")

    assert isinstance(store, PostgresStore)
    assert store.where == f"{scheme.lower()}://ash@db.example:5432/ash"
    assert "s3cret" not in repr(store)


def test_the_pool_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="pool_size"):
        open_store("postgres://db.example/ash", pool_size=0)


async def test_an_unreachable_server_is_a_store_error_without_the_password() -> None:
    store = open_store(f"postgres://ash:s3cret@127.0.0.1:{free_port()}/ash")

    with pytest.raises(StoreError, match="cannot connect to Postgres") as caught:
        async with store:
            pass

    assert "s3cret" not in str(caught.value)
    with pytest.raises(StoreError):
        await store.list_agents()


async def test_a_missing_database_is_a_clear_error(postgres_url: str) -> None:
    missing = postgres_url.rsplit("/", 1)[0] + "/ash_no_such_database"

    with pytest.raises(StoreError, match="ash_no_such_database"):
        async with open_store(missing):
            pass


async def test_migrations_are_recorded_and_keys_use_the_c_collation(postgres_url: str) -> None:
    async with open_store(postgres_url):
        pass

    conn = await asyncpg.connect(postgres_url)
    try:
        versions = await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY 1")
        collations = await conn.fetch(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'public' AND collation_name = 'C' ORDER BY 1, 2"
        )
    finally:
        await conn.close()

    assert [tuple(r) for r in versions] == [(m.version, m.name) for m in MIGRATIONS]
    assert {tuple(r) for r in collations} >= {
        ("agents", "name"), ("agents", "tenant"), ("messages", "session_id"),
        ("sessions", "agent"), ("sessions", "id"), ("sessions", "tenant"),
        ("api_keys", "key_id"), ("api_keys", "tenant"),
    }


async def test_migrating_waits_for_the_advisory_lock(postgres_url: str) -> None:
    # Another coordinator is migrating this database: it holds the lock.
    holder = await asyncpg.connect(postgres_url)
    store = open_store(postgres_url)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
        opening = asyncio.create_task(store.__aenter__())

        async def waiting_for_the_lock() -> bool:
            waiting = await holder.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                " AND (classid::bigint << 32) | objid::bigint = $1",
                MIGRATION_LOCK,
            )
            return bool(waiting == 1)

        await eventually(waiting_for_the_lock)
        assert not opening.done()
        assert await holder.fetchval("SELECT to_regclass('schema_migrations')") is None

        await holder.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
        await opening

        assert await store.list_agents() == []
        assert await holder.fetchval("SELECT max(version) FROM schema_migrations") == len(
            MIGRATIONS
        )
    finally:
        await store.close()
        await holder.close()


async def test_another_client_reads_committed_writes_as_plain_sql(postgres_url: str) -> None:
    async with open_store(postgres_url) as store:
        await store.upsert_agent("echo", DIGEST, 1, 1, T0)
        await store.create_session("s1", "echo", DIGEST, None, {"a": 1}, T0)
        await store.append_messages("s1", [(1, "t1", "user", {"text": "hi"})], T0)

        conn = await asyncpg.connect(postgres_url)
        try:
            agents = await conn.fetch("SELECT name, version FROM agents")
            content = await conn.fetchval("SELECT content FROM messages")
            session = await conn.fetchrow("SELECT options, last_seq FROM sessions")
        finally:
            await conn.close()

    assert [tuple(r) for r in agents] == [("echo", 1)]
    assert content == '{"text":"hi"}'  # JSON as readable text
    assert session is not None and tuple(session) == ('{"a":1}', 1)


async def test_a_closed_store_gives_its_connections_back(postgres_url: str) -> None:
    async with open_store(postgres_url, pool_size=3) as store:
        await asyncio.gather(*(store.list_agents() for _ in range(10)))
    conn = await asyncpg.connect(postgres_url)
    try:
        # A backend leaves pg_stat_activity just after its client said goodbye.
        async def none_left() -> bool:
            others = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            return bool(others == 0)

        await eventually(none_left)
    finally:
        await conn.close()


def test_postgres_store_matches_the_store_protocol() -> None:
    wanted = {
        name
        for name, value in vars(Store).items()
        if callable(value) and (not name.startswith("_") or name in ("__aenter__", "__aexit__"))
    }
    assert {"upsert_agent", "append_messages", "transition", "close"} <= wanted
    for name in sorted(wanted):
        assert inspect.signature(getattr(PostgresStore, name)) == inspect.signature(
            getattr(Store, name)
        ), name


def test_the_pool_size_setting_is_read_and_checked() -> None:
    config = from_env({"ASH_DATABASE_URL": "postgres://db.example/ash",
                       "ASH_DATABASE_POOL_SIZE": "3"})
    assert (config.store_url, config.database_pool_size) == ("postgres://db.example/ash", 3)
    assert from_env({}).database_pool_size == 10
    with pytest.raises(ConfigError, match="ASH_DATABASE_POOL_SIZE"):
        from_env({"ASH_DATABASE_POOL_SIZE": "0"})
