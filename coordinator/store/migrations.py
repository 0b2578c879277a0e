"""Versioned schema migrations, one list for every backend.

`MIGRATIONS` is an append-only list of (version, name, SQL). A backend applies the ones newer
than the database's version, in order, inside one transaction, and records each in the
schema-version table `schema_migrations`. A database whose version is newer than the code's
refuses to open (`SchemaTooNewError`): old code must not write into a schema it does not
understand. Several processes may open one database at once (coordinators sharing Postgres):
each backend makes migrating exclusive (SQLite: `BEGIN IMMEDIATE`; Postgres: a transaction
advisory lock), so exactly one applies a migration and the others find it applied.

Rules for adding one: append with the next version; never edit or renumber a released one.
Write `sql` to run on SQLite and Postgres alike (TEXT, INTEGER, BIGINT, DOUBLE PRECISION,
CHECK, `CREATE INDEX IF NOT EXISTS`); JSON lives in TEXT columns. Where the dialects truly
differ, put that dialect's whole SQL in `dialects` (see `sql_for`); the step stays one version.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, TypeAlias

from coordinator.store.base import SchemaTooNewError
from coordinator.store.usage import USAGE_DDL as _USAGE  # one row per turn: tokens, cost, CPU

SCHEMA_MIGRATIONS_DDL = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    applied_at  TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
)
"""
"""Bootstrap table, created before anything else. `applied_at` comes from the database's clock:
it is for operators only and never read back by the code."""


Dialect: TypeAlias = Literal["sqlite", "postgres"]
DIALECTS: Final[frozenset[str]] = frozenset({"sqlite", "postgres"})


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step. `sql` may hold several statements separated by `;`.

    `dialects` maps a dialect to the SQL that replaces `sql` on it, for the steps where SQLite
    and Postgres cannot share one text.
    """

    version: int
    name: str
    sql: str
    dialects: Mapping[Dialect, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.dialects) - DIALECTS
        if unknown:
            raise ValueError(f"migration {self.name!r}: unknown dialects {sorted(unknown)}")

    def sql_for(self, dialect: Dialect) -> str:
        """The SQL this step runs on `dialect`."""
        return self.dialects.get(dialect, self.sql)


# Text that is compared or ordered (names, ids) sorts by code point on every backend, as
# SQLite's default BINARY collation does. A Postgres database's default collation follows its
# locale (en_US sorts "B" between "ab" and "é", and ignores "-" at first), so Postgres names
# the "C" collation (byte order of UTF-8 = code point order) on those columns; their indexes
# then serve the ORDER BYs as they are.
_INITIAL = """
        CREATE TABLE agents (
            name        {key} PRIMARY KEY,
            digest      TEXT NOT NULL,
            version     INTEGER NOT NULL,
            files       INTEGER NOT NULL,
            size        BIGINT NOT NULL,
            created_at  DOUBLE PRECISION NOT NULL,
            updated_at  DOUBLE PRECISION NOT NULL
        );

        -- `agent` is plain text, not a foreign key: deleting an agent keeps its sessions.
        CREATE TABLE sessions (
            id                 {key} PRIMARY KEY,
            agent              {key} NOT NULL,
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
            session_id  {key} NOT NULL REFERENCES sessions (id),
            seq         BIGINT NOT NULL CHECK (seq > 0),
            turn_id     TEXT NOT NULL,
            role        TEXT NOT NULL CHECK (role IN ('user', 'assistant', 'tool', 'result')),
            content     TEXT NOT NULL,
            created_at  DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (session_id, seq)
        );
"""

# Tenants and API keys (coordinator/auth.py): every agent and session belongs to a tenant;
# what existed before is the "default" tenant's. Agent names become unique per tenant, so the
# agents table is rebuilt with the key (tenant, name). Keys keep only a hash of their secret.
_TENANTS = """
        CREATE TABLE agents_by_tenant (
            tenant      {key} NOT NULL DEFAULT 'default',
            name        {key} NOT NULL,
            digest      TEXT NOT NULL,
            version     INTEGER NOT NULL,
            files       INTEGER NOT NULL,
            size        BIGINT NOT NULL,
            created_at  DOUBLE PRECISION NOT NULL,
            updated_at  DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (tenant, name)
        );
        INSERT INTO agents_by_tenant (tenant, name, digest, version, files, size, created_at,
                                      updated_at)
            SELECT 'default', name, digest, version, files, size, created_at, updated_at
            FROM agents;
        DROP TABLE agents;
        ALTER TABLE agents_by_tenant RENAME TO agents;

        ALTER TABLE sessions ADD COLUMN tenant {key} NOT NULL DEFAULT 'default';
        CREATE INDEX IF NOT EXISTS sessions_by_tenant ON sessions (tenant, created_at, id);

        CREATE TABLE api_keys (
            key_id      {key} PRIMARY KEY,
            tenant      {key} NOT NULL,
            name        TEXT NOT NULL,
            scopes      TEXT NOT NULL,
            key_hash    TEXT NOT NULL,
            created_at  DOUBLE PRECISION NOT NULL,
            revoked_at  DOUBLE PRECISION
        );
        CREATE INDEX IF NOT EXISTS api_keys_by_tenant ON api_keys (tenant, created_at, key_id)
"""

# Credentials (coordinator/credentials.py): secrets stored sealed with AES-GCM, per tenant, never
# in clear; and each session's latest MCP server statuses (the recorder keeps them from the
# `mcp_status` events), a JSON list shown in the session view.
_CREDENTIALS = """
        CREATE TABLE credentials (
            tenant      {key} NOT NULL,
            name        {key} NOT NULL,
            kind        TEXT NOT NULL,
            sealed      TEXT NOT NULL,
            created_at  DOUBLE PRECISION NOT NULL,
            updated_at  DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (tenant, name)
        );
        ALTER TABLE sessions ADD COLUMN mcp_servers TEXT NOT NULL DEFAULT '[]'
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "initial",
        _INITIAL.replace("{key}", "TEXT"),
        {"postgres": _INITIAL.replace("{key}", 'TEXT COLLATE "C"')},
    ),
    Migration(
        2,
        "tenants_and_api_keys",
        _TENANTS.replace("{key}", "TEXT"),
        {"postgres": _TENANTS.replace("{key}", 'TEXT COLLATE "C"')},
    ),
    Migration(
        3,
        "credentials_and_mcp_status",
        _CREDENTIALS.replace("{key}", "TEXT"),
        {"postgres": _CREDENTIALS.replace("{key}", 'TEXT COLLATE "C"')},
    ),
    Migration(
        4,
        "turn_usage",
        _USAGE.replace("{key}", "TEXT"),
        {"postgres": _USAGE.replace("{key}", 'TEXT COLLATE "C"')},
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
