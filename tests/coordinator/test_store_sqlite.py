"""What is particular to the SQLite backend and to `open_store`'s URL handling.

The behaviour every backend shares is in test_store.py.
"""

from __future__ import annotations

import inspect
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from coordinator.store import SQLiteStore, Store, StoreError, open_store
from coordinator.store.sqlite import split_statements

T0 = 1_700_000_000.0
DIGEST = "sha256:" + "a" * 64


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "ash.db"


async def test_the_database_file_is_in_wal_mode(db_path: Path) -> None:
    async with open_store(f"sqlite://{db_path}"):
        with sqlite3.connect(db_path) as raw:
            (mode,) = raw.execute("PRAGMA journal_mode").fetchone()
        raw.close()

    assert mode == "wal"


async def test_the_connection_pragmas_are_set(db_path: Path) -> None:
    async with SQLiteStore(str(db_path), busy_timeout_ms=1234) as store:
        db = store._db
        assert db is not None
        values = {}
        for pragma in ["foreign_keys", "synchronous", "busy_timeout"]:
            rows = list(await db.execute_fetchall(f"PRAGMA {pragma}"))
            values[pragma] = rows[0][0]

    assert values == {"foreign_keys": 1, "synchronous": 1, "busy_timeout": 1234}  # 1 = NORMAL


async def test_another_process_reads_committed_writes_while_the_store_is_open(
    db_path: Path,
) -> None:
    async with open_store(f"sqlite://{db_path}") as store:
        await store.upsert_agent("echo", DIGEST, 1, 1, T0)
        await store.create_session("s1", "echo", DIGEST, None, {}, T0)
        await store.append_messages("s1", [(1, "t1", "user", {"text": "hi"})], T0)

        raw = sqlite3.connect(db_path)
        try:
            agents = raw.execute("SELECT name, version FROM agents").fetchall()
            content = raw.execute("SELECT content FROM messages").fetchall()
            last_seq = raw.execute("SELECT last_seq FROM sessions").fetchall()
        finally:
            raw.close()

    assert agents == [("echo", 1)]
    assert content == [('{"text":"hi"}',)]  # JSON as readable text, not a blob
    assert last_seq == [(1,)]


async def test_migrations_are_recorded(db_path: Path) -> None:
    async with open_store(f"sqlite://{db_path}"):
        pass

    raw = sqlite3.connect(db_path)
    try:
        rows = raw.execute("SELECT version, name FROM schema_migrations ORDER BY 1").fetchall()
    finally:
        raw.close()
    from coordinator.store.migrations import MIGRATIONS

    assert rows[0] == (1, "initial")
    assert rows == [(m.version, m.name) for m in MIGRATIONS]


async def test_a_version_recorded_by_newer_code_refuses_to_open(db_path: Path) -> None:
    async with open_store(f"sqlite://{db_path}"):
        pass
    raw = sqlite3.connect(db_path)
    raw.execute("INSERT INTO schema_migrations (version, name) VALUES (99, 'future')")
    raw.commit()
    raw.close()

    with pytest.raises(StoreError, match="version 99"):
        async with open_store(f"sqlite://{db_path}"):
            pass


async def test_memory_databases_work_and_are_private(tmp_path: Path) -> None:
    async with open_store("sqlite:///:memory:") as one, open_store("sqlite:///:memory:") as two:
        await one.upsert_agent("echo", DIGEST, 1, 1, T0)

        assert [a.name for a in await one.list_agents()] == ["echo"]
        assert await two.list_agents() == []
    assert list(tmp_path.iterdir()) == []


async def test_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "ash.db"

    with pytest.raises(StoreError, match="missing"):
        async with open_store(f"sqlite://{path}"):
            pass


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///var/lib/ash/ash.db", "/var/lib/ash/ash.db"),
        ("sqlite:///:memory:", ":memory:"),
        ("SQLITE:///x.db", "/x.db"),
        ("sqlite:///with%20space.db", "/with space.db"),
    ],
)
def test_sqlite_urls(url: str, path: str) -> None:
    store = open_store(url)

    assert isinstance(store, SQLiteStore)
    assert store.path == path


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://relative.db",  # a host, not a path
        "sqlite://host/var/ash.db",
        "sqlite:relative.db",
        "sqlite:///",
        "sqlite:///tmp/ash.db?mode=ro",
        "mysql://localhost/ash",
        "/tmp/ash.db",
        "",
    ],
)
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        open_store(url)


def test_sqlite_store_matches_the_store_protocol() -> None:
    # Same public methods with the same signatures as the seam, so callers typed against
    # `Store` get what they were promised.
    wanted = {
        name
        for name, value in vars(Store).items()
        if callable(value) and (not name.startswith("_") or name in ("__aenter__", "__aexit__"))
    }
    assert {"upsert_agent", "append_messages", "transition", "close"} <= wanted
    for name in sorted(wanted):
        assert inspect.signature(getattr(SQLiteStore, name)) == inspect.signature(
            getattr(Store, name)
        ), name


@pytest.mark.parametrize(
    ("sql", "statements"),
    [
        ("CREATE TABLE a (x TEXT)", ["CREATE TABLE a (x TEXT)"]),
        ("CREATE TABLE a (x TEXT);\nCREATE TABLE b (y TEXT);", [
            "CREATE TABLE a (x TEXT);", "CREATE TABLE b (y TEXT);",
        ]),
        (
            "INSERT INTO a VALUES ('semi;colon'); -- trailing; comment\n",
            ["INSERT INTO a VALUES ('semi;colon');"],
        ),
        (
            "-- a; comment\nCREATE TABLE a (x TEXT);;",
            ["-- a; comment\nCREATE TABLE a (x TEXT);"],
        ),
        (
            "CREATE TRIGGER t AFTER INSERT ON a BEGIN UPDATE a SET x = 1; END;",
            ["CREATE TRIGGER t AFTER INSERT ON a BEGIN UPDATE a SET x = 1; END;"],
        ),
        ("  \n-- only a comment\n", []),
    ],
)
def test_split_statements(sql: str, statements: list[str]) -> None:
    assert split_statements(sql) == statements


def test_split_statements_refuses_an_incomplete_statement() -> None:
    with pytest.raises(ValueError, match="incomplete"):
        split_statements("CREATE TABLE a (x TEXT);\nINSERT INTO a VALUES ('unterminated")


async def test_statements_split_from_a_migration_run(tmp_path: Path) -> None:
    sql = "CREATE TABLE a (x TEXT); INSERT INTO a VALUES ('one;two'); INSERT INTO a VALUES ('3')"
    raw = sqlite3.connect(tmp_path / "x.db")
    try:
        for statement in split_statements(sql):
            raw.execute(statement)
        rows: list[Any] = raw.execute("SELECT x FROM a ORDER BY x").fetchall()
    finally:
        raw.close()

    assert rows == [("3",), ("one;two",)]
