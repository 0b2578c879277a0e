"""The Postgres backend of `Store`: an asyncpg pool shared by every coroutine, short transactions.

Lifecycle:

    created --__aenter__/open()--> open --close()--> closed
                  | (pool, migrate under the advisory lock; on failure the pool is closed)

Several coordinators share one database, so nothing here relies on being the only writer:

- Migrating takes a transaction-scoped advisory lock (`MIGRATION_LOCK`) before it even creates
  `schema_migrations`: coordinators that start at once queue on the lock, the first applies
  the pending steps, the others find them applied. The lock is keyed per database and goes
  with the transaction, so a coordinator that dies while migrating leaves neither a lock nor a
  half-applied step (Postgres DDL is transactional).
- Compare-and-set (`transition`) and the other updates are one `UPDATE ... RETURNING`: under
  READ COMMITTED a concurrent update of the same row waits, then re-checks its WHERE against
  the winner's row, so exactly one of several racing transitions succeeds.
- `append_messages` first locks its session's row (`FOR NO KEY UPDATE`), which serialises the
  appends of one session as SQLite's single writer does (no deadlock between two replays that
  overlap in a different order; `last_seq` only moves forward) and leaves other sessions free.

Text that is compared or ordered uses the "C" collation (see migrations.py), so every ORDER BY
gives the order SQLite gives.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, Self
from urllib.parse import urlsplit

import asyncpg

from coordinator.store.base import (
    CREDENTIAL_COLUMNS,
    CredentialRow,
    DEFAULT_TENANT,
    UNSET,
    KeyRow,
    MessageRow,
    SessionExistsError,
    SessionNotFoundError,
    StoreError,
    Unset,
    check_from_statuses,
    check_limit,
    check_role,
    check_status,
)
from coordinator.store import usage as usage_sql
from coordinator.store.usage import UsageQuery, UsageRow
from coordinator.store.migrations import MIGRATIONS, SCHEMA_MIGRATIONS_DDL, Migration, pending
from coordinator.store.rows import (
    AGENT_COLUMNS,
    KEY_COLUMNS,
    MESSAGE_COLUMNS,
    SESSION_COLUMNS,
    agent_view,
    decode_options,
    encode_json,
    key_row,
    message_view,
    session_view,
)
from protocol.api import AgentView, MessageView, SessionStatus, SessionView, UsageView

log = logging.getLogger(__name__)

MIGRATION_LOCK: Final = 0x61736873_63686D61  # "ashschma": the advisory lock key for migrating
"""Advisory lock keys are per database: coordinators of other databases never wait on it."""

DEFAULT_POOL_SIZE: Final = 10


class PostgresStore:
    """`Store` on a Postgres database, through an asyncpg pool. Enter it to connect and migrate.

    `dsn` is a libpq-style URL (`postgres://user:password@host:5432/db`); it is never logged
    or shown, only `where` (the URL without its password).
    """

    def __init__(
        self,
        dsn: str,
        *,
        migrations: Sequence[Migration] = MIGRATIONS,
        pool_size: int = DEFAULT_POOL_SIZE,
        connect_timeout_s: float = 10.0,
    ) -> None:
        if pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, got {pool_size}")
        self._dsn = dsn
        self.where = redact(dsn)
        self._migrations = tuple(migrations)
        self._pool_size = pool_size
        self._connect_timeout_s = connect_timeout_s
        self._pool: asyncpg.Pool | None = None
        self._opened = False
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self._pool is not None else "new"
        return f"<PostgresStore {self.where!r} {state}>"

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Create the pool and apply pending migrations."""
        if self._closed or self._opened:
            raise StoreError(f"{self!r} cannot be opened again")
        self._opened = True
        try:
            pool = await asyncpg.create_pool(
                self._dsn, min_size=1, max_size=self._pool_size,
                timeout=self._connect_timeout_s,
            )
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            raise StoreError(f"cannot connect to Postgres at {self.where}: {e}") from e
        try:
            await self._migrate(pool)
        except BaseException:
            await asyncio.shield(_close_pool(pool))
            raise
        self._pool = pool

    async def close(self) -> None:
        """Wait for the running transactions (their connections' release), then close.
        Idempotent."""
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            await _close_pool(pool)

    async def _migrate(self, pool: asyncpg.Pool) -> None:
        async with pool.acquire() as conn, conn.transaction():
            # First: two coordinators starting at once must not both create the tables.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await conn.execute(SCHEMA_MIGRATIONS_DDL)
            current = await conn.fetchval(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations"
            )
            todo = pending(current, self._migrations)
            for migration in todo:
                # No arguments: the simple query protocol, which runs several statements.
                await conn.execute(migration.sql_for("postgres"))
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version, migration.name,
                )
        for migration in todo:
            log.info("applied migration %d %s to %s", migration.version, migration.name,
                     self.where)

    # -- connections and transactions -----------------------------------------------------

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection in autocommit: for single statements."""
        pool = self._pool
        if pool is None:
            raise StoreError(f"{self!r} is not open")
        try:
            conn = await pool.acquire()
        except asyncpg.InterfaceError as e:  # closed between the check and the acquire
            raise StoreError(f"{self!r} is not open") from e
        try:
            yield conn
        finally:
            await pool.release(conn)

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[asyncpg.Connection]:
        """A transaction, committed on success and rolled back on any exception."""
        async with self._conn() as conn, conn.transaction():
            yield conn

    # -- agents ---------------------------------------------------------------------------

    async def upsert_agent(
        self, name: str, digest: str, files: int, size: int, now: float, *,
        tenant: str = DEFAULT_TENANT,
    ) -> AgentView:
        async with self._write() as conn:
            # With the WHERE false (same digest) nothing is returned, but the row is locked
            # all the same, so the SELECT reads what this deploy left.
            row = await conn.fetchrow(
                f"INSERT INTO agents (tenant, {AGENT_COLUMNS}) "
                "VALUES ($6, $1, $2, 1, $3, $4, $5, $5) "
                "ON CONFLICT (tenant, name) DO UPDATE SET "
                "digest = excluded.digest, version = agents.version + 1, "
                "files = excluded.files, size = excluded.size, updated_at = excluded.updated_at "
                f"WHERE agents.digest <> excluded.digest RETURNING {AGENT_COLUMNS}",
                name, digest, files, size, float(now), tenant,
            )
            if row is None:
                row = await conn.fetchrow(
                    f"SELECT {AGENT_COLUMNS} FROM agents WHERE tenant = $1 AND name = $2",
                    tenant, name,
                )
        return agent_view(row)

    async def get_agent(self, name: str, *, tenant: str = DEFAULT_TENANT) -> AgentView | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(
                f"SELECT {AGENT_COLUMNS} FROM agents WHERE tenant = $1 AND name = $2", tenant, name
            )
        return agent_view(row) if row is not None else None

    async def list_agents(self, *, tenant: str = DEFAULT_TENANT) -> list[AgentView]:
        async with self._conn() as conn:
            rows = await conn.fetch(
                f"SELECT {AGENT_COLUMNS} FROM agents WHERE tenant = $1 ORDER BY name", tenant
            )
        return [agent_view(row) for row in rows]

    async def delete_agent(self, name: str, *, tenant: str = DEFAULT_TENANT) -> bool:
        async with self._conn() as conn:
            status = await conn.execute(
                "DELETE FROM agents WHERE tenant = $1 AND name = $2", tenant, name
            )
        return _rowcount(status) > 0

    # -- sessions -------------------------------------------------------------------------

    async def create_session(
        self,
        id: str,
        agent: str,
        agent_digest: str,
        model: str | None,
        options: dict[str, Any],
        now: float,
        *,
        tenant: str = DEFAULT_TENANT,
    ) -> SessionView:
        options_json = encode_json(options)
        async with self._conn() as conn:
            status = await conn.execute(
                "INSERT INTO sessions (id, agent, agent_digest, status, model, options, "
                "created_at, updated_at, tenant) VALUES ($1, $2, $3, 'starting', $4, $5, $6, $6, $7) "
                "ON CONFLICT (id) DO NOTHING",
                id, agent, agent_digest, model, options_json, float(now), tenant,
            )
        if _rowcount(status) == 0:
            raise SessionExistsError(f"session {id!r} already exists")
        return SessionView(
            id=id,
            agent=agent,
            agent_digest=agent_digest,
            status="starting",
            runner_id=None,
            claude_session_id=None,
            last_seq=0,
            turns=0,
            model=model,
            created_at=now,
            updated_at=now,
            tenant=tenant,
        )

    async def get_session(self, id: str, *, tenant: str | None = None) -> SessionView | None:
        async with self._conn() as conn:
            if tenant is None:
                row = await conn.fetchrow(
                    f"SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1", id)
            else:
                row = await conn.fetchrow(
                    f"SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1 AND tenant = $2",
                    id, tenant)
        return session_view(row) if row is not None else None

    async def get_session_options(self, id: str) -> dict[str, Any]:
        async with self._conn() as conn:
            text = await conn.fetchval("SELECT options FROM sessions WHERE id = $1", id)
        if text is None:
            raise SessionNotFoundError(f"no session {id!r}")
        return decode_options(text)

    async def list_sessions(
        self, agent: str | None = None, limit: int = 100, *, tenant: str | None = None
    ) -> list[SessionView]:
        check_limit(limit)
        given = [(c, v) for c, v in (("agent", agent), ("tenant", tenant)) if v is not None]
        conds = [f"{c} = ${i}" for i, (c, _) in enumerate(given, start=2)]
        where = f"WHERE {' AND '.join(conds)} " if conds else ""
        async with self._conn() as conn:
            rows = await conn.fetch(
                f"SELECT {SESSION_COLUMNS} FROM sessions {where}"
                "ORDER BY created_at DESC, id DESC LIMIT $1",
                limit, *(v for _, v in given),
            )
        return [session_view(row) for row in rows]

    async def session_tenant(self, id: str) -> str | None:
        async with self._conn() as conn:
            return await conn.fetchval("SELECT tenant FROM sessions WHERE id = $1", id)

    # -- API keys -------------------------------------------------------------------------

    async def create_key(
        self, key_id: str, tenant: str, name: str, scopes: Collection[str], key_hash: str,
        now: float,
    ) -> KeyRow:
        row = KeyRow(key_id, tenant, name, tuple(sorted(scopes)), key_hash, float(now), None)
        async with self._conn() as conn:
            await conn.execute(
                f"INSERT INTO api_keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, NULL)",
                key_id, tenant, name, " ".join(row.scopes), key_hash, float(now),
            )
        return row

    async def get_key(self, key_id: str) -> KeyRow | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(
                f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_id = $1", key_id)
        return key_row(row) if row is not None else None

    async def list_keys(self, tenant: str | None = None) -> list[KeyRow]:
        async with self._conn() as conn:
            if tenant is None:
                rows = await conn.fetch(
                    f"SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, key_id")
            else:
                rows = await conn.fetch(
                    f"SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant = $1 "
                    "ORDER BY created_at, key_id", tenant)
        return [key_row(r) for r in rows]

    async def revoke_key(
        self, key_id: str, now: float, *, tenant: str | None = None
    ) -> KeyRow | None:
        async with self._write() as conn:
            await conn.execute(
                "UPDATE api_keys SET revoked_at = $2 WHERE key_id = $1 AND revoked_at IS NULL "
                "AND ($3::text IS NULL OR tenant = $3)", key_id, float(now), tenant)
            row = await conn.fetchrow(
                f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_id = $1 "
                "AND ($2::text IS NULL OR tenant = $2)", key_id, tenant)
        return key_row(row) if row is not None else None

    async def update_session(
        self,
        id: str,
        now: float,
        *,
        status: SessionStatus | Unset = UNSET,
        runner_id: str | None | Unset = UNSET,
        claude_session_id: str | None | Unset = UNSET,
        turns_delta: int = 0,
    ) -> SessionView | None:
        if turns_delta < 0:
            raise ValueError(f"turns_delta must not be negative, got {turns_delta}")
        params: list[Any] = [id, float(now)]
        sets = ["updated_at = $2"]
        if status is not UNSET:
            check_status(status)
            params.append(status)
            sets.append(f"status = ${len(params)}")
        if runner_id is not UNSET:
            params.append(runner_id)
            sets.append(f"runner_id = ${len(params)}")
        if claude_session_id is not UNSET:
            params.append(claude_session_id)
            sets.append(f"claude_session_id = ${len(params)}")
        if turns_delta:
            params.append(turns_delta)
            sets.append(f"turns = turns + ${len(params)}")
        async with self._conn() as conn:
            row = await conn.fetchrow(
                f"UPDATE sessions SET {', '.join(sets)} WHERE id = $1 "
                f"RETURNING {SESSION_COLUMNS}",
                *params,
            )
        return session_view(row) if row is not None else None

    async def transition(
        self,
        id: str,
        from_statuses: Collection[SessionStatus],
        to_status: SessionStatus,
        now: float,
        *,
        on_runner: str | None | Unset = UNSET,
        runner_id: str | None | Unset = UNSET,
    ) -> SessionView | None:
        check_from_statuses(from_statuses)
        check_status(to_status)
        params: list[Any] = [id, sorted(set(from_statuses)), to_status, float(now)]
        sets = "status = $3, updated_at = $4"
        if runner_id is not UNSET:
            params.append(runner_id)
            sets += f", runner_id = ${len(params)}"
        where = "id = $1 AND status = ANY($2::text[])"
        if on_runner is None:
            where += " AND runner_id IS NULL"
        elif on_runner is not UNSET:
            params.append(on_runner)
            where += f" AND runner_id = ${len(params)}"
        async with self._conn() as conn:
            row = await conn.fetchrow(
                f"UPDATE sessions SET {sets} WHERE {where} RETURNING {SESSION_COLUMNS}", *params
            )
        return session_view(row) if row is not None else None

    async def sessions_with_status(
        self, statuses: Collection[SessionStatus], limit: int = 10_000
    ) -> list[SessionView]:
        check_from_statuses(statuses)
        check_limit(limit)
        async with self._conn() as conn:
            rows = await conn.fetch(
                f"SELECT {SESSION_COLUMNS} FROM sessions WHERE status = ANY($1::text[]) "
                "ORDER BY created_at, id LIMIT $2",
                sorted(set(statuses)), limit,
            )
        return [session_view(row) for row in rows]

    # -- history --------------------------------------------------------------------------

    async def append_messages(self, session_id: str, rows: list[MessageRow], now: float) -> int:
        seqs: list[int] = []
        turn_ids: list[str] = []
        roles: list[str] = []
        contents: list[str] = []
        for seq, turn_id, role, content in sorted(rows, key=lambda row: row[0]):
            if seq < 1:
                raise ValueError(f"message seq must be at least 1, got {seq}")
            check_role(role)
            contents.append(encode_json(content))
            seqs.append(seq)
            turn_ids.append(turn_id)
            roles.append(role)
        async with self._write() as conn:
            found = await conn.fetchval(
                "SELECT 1 FROM sessions WHERE id = $1 FOR NO KEY UPDATE", session_id
            )
            if found is None:
                raise SessionNotFoundError(f"no session {session_id!r}")
            if not seqs:
                return 0
            # One statement for the batch; a seq already stored (or twice in the batch) is
            # skipped, and the status tag counts what was new.
            status = await conn.execute(
                "INSERT INTO messages (session_id, seq, turn_id, role, content, created_at) "
                "SELECT $1, seq, turn_id, role, content, $6 "
                "FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[]) "
                "AS batch (seq, turn_id, role, content) "
                "ORDER BY seq ON CONFLICT (session_id, seq) DO NOTHING",
                session_id, seqs, turn_ids, roles, contents, float(now),
            )
            top = seqs[-1]
            await conn.execute(
                "UPDATE sessions SET last_seq = $1, updated_at = $2 "
                "WHERE id = $3 AND last_seq < $1",
                top, float(now), session_id,
            )
        return _rowcount(status)

    async def list_messages(
        self, session_id: str, after_seq: int = 0, limit: int = 1000
    ) -> list[MessageView]:
        check_limit(limit)
        async with self._conn() as conn:
            rows = await conn.fetch(
                f"SELECT {MESSAGE_COLUMNS} FROM messages "
                "WHERE session_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                session_id, after_seq, limit,
            )
        return [message_view(row) for row in rows]

    # -- MCP status, credentials ----------------------------------------------------------

    async def set_mcp_servers(self, id: str, servers: list[Any], now: float) -> bool:
        async with self._conn() as conn:
            status = await conn.execute(
                "UPDATE sessions SET mcp_servers = $1, updated_at = $2 WHERE id = $3",
                encode_json(servers), now, id,
            )
        return _rowcount(status) > 0

    async def put_credential(
        self, tenant: str, name: str, kind: str, sealed: str, now: float
    ) -> tuple[CredentialRow, bool]:
        async with self._conn() as conn:
            row = await conn.fetchrow(
                f"INSERT INTO credentials ({CREDENTIAL_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $5) "
                "ON CONFLICT (tenant, name) DO UPDATE SET kind = excluded.kind, "
                "sealed = excluded.sealed, updated_at = excluded.updated_at "
                f"RETURNING {CREDENTIAL_COLUMNS}, (xmax = 0) AS inserted",
                tenant, name, kind, sealed, now,
            )
        assert row is not None
        return CredentialRow(*tuple(row)[:6]), bool(row["inserted"])

    async def get_credential(self, tenant: str, name: str) -> CredentialRow | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(
                f"SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE tenant = $1 AND name = $2",
                tenant, name,
            )
        return CredentialRow(*tuple(row)) if row is not None else None

    async def list_credentials(self, tenant: str) -> list[CredentialRow]:
        async with self._conn() as conn:
            rows = await conn.fetch(
                f"SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE tenant = $1 ORDER BY name",
                tenant,
            )
        return [CredentialRow(*tuple(row)) for row in rows]

    async def delete_credential(self, tenant: str, name: str) -> bool:
        async with self._conn() as conn:
            status = await conn.execute(
                "DELETE FROM credentials WHERE tenant = $1 AND name = $2", tenant, name,
            )
        return _rowcount(status) > 0

    # -- usage ----------------------------------------------------------------------------

    async def record_usage(self, row: UsageRow) -> bool:
        async with self._conn() as conn:
            status = await conn.execute(usage_sql.insert_sql(_mark), *usage_sql.insert_params(row))
        return _rowcount(status) > 0

    async def usage(self, query: UsageQuery) -> list[UsageView]:
        sql, params = usage_sql.query_sql(query, _mark)
        async with self._conn() as conn:
            rows = await conn.fetch(sql, *params)
        return [usage_sql.usage_view(tuple(row)) for row in rows]

    async def session_counts(self) -> dict[str, int]:
        async with self._conn() as conn:
            rows = await conn.fetch(usage_sql.SESSION_COUNTS_SQL)
        return {row[0]: int(row[1]) for row in rows}


def _mark(index: int) -> str:
    return f"${index}"


def redact(dsn: str) -> str:
    """The URL without its password (and query), fit for logs and errors."""
    try:
        parts = urlsplit(dsn)
        host = parts.netloc.rpartition("@")[2]
        user = parts.username
    except ValueError:
        return "postgres://?"
    return f"{parts.scheme}://{user + '@' if user else ''}{host}{parts.path}"


def _rowcount(status: str) -> int:
    """The row count of a command status tag such as 'INSERT 0 3' or 'DELETE 1'."""
    return int(status.rsplit(" ", 1)[-1])


async def _close_pool(pool: asyncpg.Pool) -> None:
    try:
        await pool.close()
    except BaseException:
        pool.terminate()
        raise
