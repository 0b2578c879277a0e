"""Versioned schema migrations, shared by every backend.

`MIGRATIONS` is an append-only list of (version, name, SQL). A backend applies the ones newer
than the database's version, in order, inside one transaction, and records each in
`schema_migrations`. A database whose version is newer than the code's refuses to open
(`SchemaTooNewError`): old code must not write into a schema it does not understand.

Rules for adding one: append with the next version; never edit or renumber a released one.
The SQL must run on SQLite and Postgres alike (TEXT, INTEGER, BIGINT, DOUBLE PRECISION,
CHECK, `CREATE INDEX IF NOT EXISTS`); JSON lives in TEXT columns. If a change truly needs
per-dialect SQL, give `Migration` a per-dialect field then, not before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from coordinator.store.base import SchemaTooNewError

SCHEMA_MIGRATIONS_DDL = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    applied_at  TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
)
"""
"""Bootstrap table, created before anything else. `applied_at` comes from the database's clock:
it is for operators only and never read back by the code."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step. `sql` may hold several statements separated by `;`."""

    version: int
    name: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "initial",
        """
        CREATE TABLE agents (
            name        TEXT PRIMARY KEY,
            digest      TEXT NOT NULL,
            version     INTEGER NOT NULL,
            files       INTEGER NOT NULL,
            size        BIGINT NOT NULL,
            created_at  DOUBLE PRECISION NOT NULL,
            updated_at  DOUBLE PRECISION NOT NULL
        );

        -- `agent` is plain text, not a foreign key: deleting an agent keeps its sessions.
        CREATE TABLE sessions (
            id                 TEXT PRIMARY KEY,
            agent              TEXT NOT NULL,
            agent_digest       TEXT NOT NULL,
            status             TEXT NOT NULL
                CHECK (status IN ('starting', 'active', 'paused', 'ended', 'error')),
            runner_id          TEXT,
            claude_session_id  TEXT,
            last_seq           BIGINT NOT NULL DEFAULT 0,
            turns              INTEGER NOT NULL DEFAULT 0,
            model              TEXT,
            options            TEXT NOT NULL DEFAULT '{}',
            created_at         DOUBLE PRECISION NOT NULL,
            updated_at         DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX IF NOT EXISTS sessions_by_created ON sessions (created_at, id);
        CREATE INDEX IF NOT EXISTS sessions_by_agent ON sessions (agent, created_at, id);

        CREATE TABLE messages (
            session_id  TEXT NOT NULL REFERENCES sessions (id),
            seq         BIGINT NOT NULL CHECK (seq > 0),
            turn_id     TEXT NOT NULL,
            role        TEXT NOT NULL CHECK (role IN ('user', 'assistant', 'tool', 'result')),
            content     TEXT NOT NULL,
            created_at  DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (session_id, seq)
        );
        """,
    ),
)


def latest_version(migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """The schema version this code brings a database to."""
    return migrations[-1].version if migrations else 0


def validate(migrations: Sequence[Migration]) -> None:
    """Refuse a list whose versions are not 1, 2, 3, ... in order or whose names repeat."""
    for index, migration in enumerate(migrations, start=1):
        if migration.version != index:
            raise ValueError(
                f"migration {migration.name!r} has version {migration.version}, expected {index}"
            )
    names = [m.name for m in migrations]
    if len(set(names)) != len(names):
        raise ValueError(f"migration names repeat: {names}")


def pending(current: int, migrations: Sequence[Migration] = MIGRATIONS) -> list[Migration]:
    """The migrations to apply to a database at version `current`, in order.

    Raises `SchemaTooNewError` if `current` is beyond the newest migration known here.
    """
    validate(migrations)
    latest = latest_version(migrations)
    if current > latest:
        raise SchemaTooNewError(
            f"database schema is at version {current}, but this Ash knows versions up to "
            f"{latest}; it was migrated by a newer Ash. Upgrade Ash (or restore a backup) "
            "instead of opening it with this version."
        )
    return [m for m in migrations if m.version > current]
