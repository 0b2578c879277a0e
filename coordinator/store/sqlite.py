"""The SQLite backend of `Store`: one aiosqlite connection, WAL, explicit short transactions.

Lifecycle:

    created --__aenter__/open()--> open --close()--> closed
                  | (connect, pragmas, migrate; on failure the connection is closed)

One connection serves every coroutine, so an `asyncio.Lock` serialises the public methods:
without it two coroutines would interleave statements inside one transaction. Writes run in
`BEGIN IMMEDIATE` (take the write lock up front, so a read-then-write never upgrades into
SQLITE_BUSY); single-statement reads run in autocommit. The connection is in autocommit mode
(`isolation_level=None`) so the sqlite3 module never opens transactions behind our back.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from typing import Any, Self

import aiosqlite

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

MEMORY = ":memory:"


class SQLiteStore:
    """`Store` on a SQLite file (or `:memory:`). Enter it to connect and migrate."""

    def __init__(
        self,
        path: str,
        *,
        migrations: Sequence[Migration] = MIGRATIONS,
        busy_timeout_ms: int = 5000,
    ) -> None:
        self.path = path
        self._migrations = tuple(migrations)
        self._busy_timeout_ms = busy_timeout_ms
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "new" if self._db is None else "open"
        return f"<SQLiteStore {self.path!r} {state}>"

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Connect, set the pragmas and apply pending migrations."""
        if self._closed or self._db is not None:
            raise StoreError(f"{self!r} cannot be opened again")
        connecting = aiosqlite.connect(self.path, isolation_level=None)
        try:
            db = await connecting
        except sqlite3.Error as e:
            # aiosqlite stops its worker thread without waiting for it; wait here, or the
            # thread reports its stop to this event loop after the loop has closed.
            await asyncio.to_thread(connecting._thread.join, 5.0)
            raise StoreError(f"cannot open SQLite database at {self.path!r}: {e}") from e
        try:
            await self._configure(db)
            await self._migrate(db)
        except BaseException:
            await db.close()
            raise
        self._db = db

    async def close(self) -> None:
        """Wait for the running transaction, then close. Idempotent."""
        self._closed = True
        async with self._lock:
            db, self._db = self._db, None
            if db is not None:
                await db.close()

    async def _configure(self, db: aiosqlite.Connection) -> None:
        # busy_timeout first, so switching the journal mode waits for other connections.
        await db.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        rows = list(await db.execute_fetchall("PRAGMA journal_mode = WAL"))
        mode = rows[0][0] if rows else None
        expected = "memory" if self.path == MEMORY else "wal"
        if mode != expected:
            raise StoreError(
                f"SQLite database at {self.path!r} refused WAL mode (journal_mode={mode!r}); "
                "is it on a network filesystem?"
            )
        await db.execute("PRAGMA synchronous = NORMAL")
        await db.execute("PRAGMA foreign_keys = ON")

    async def _migrate(self, db: aiosqlite.Connection) -> None:
        await db.execute("BEGIN IMMEDIATE")
        try:
            await db.execute(SCHEMA_MIGRATIONS_DDL)
            rows = list(
                await db.execute_fetchall("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
            )
            todo = pending(rows[0][0], self._migrations)
            for migration in todo:
                for statement in split_statements(migration.sql_for("sqlite")):
                    await db.execute(statement)
                await db.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (?, ?)",
                    (migration.version, migration.name),
                )
            await db.execute("COMMIT")
        except BaseException:
            await asyncio.shield(_rollback(db))
            raise
        for migration in todo:
            log.info("applied migration %d %s to %s", migration.version, migration.name, self.path)

    # -- transactions ---------------------------------------------------------------------

    def _require_open(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError(f"{self!r} is not open")
        return self._db

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[aiosqlite.Connection]:
        """One read statement: serialised with the writes, autocommit."""
        async with self._lock:
            yield self._require_open()

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[aiosqlite.Connection]:
        """A write transaction, committed on success and rolled back on any exception."""
        async with self._lock:
            db = self._require_open()
            await db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                await db.execute("COMMIT")
            except BaseException:
                # Shielded: a second cancellation must not leave the transaction open.
                await asyncio.shield(_rollback(db))
                raise

    # -- agents ---------------------------------------------------------------------------

    async def upsert_agent(
        self, name: str, digest: str, files: int, size: int, now: float, *,
        tenant: str = DEFAULT_TENANT,
    ) -> AgentView:
        async with self._write() as db:
            await db.execute(
                f"INSERT INTO agents (tenant, {AGENT_COLUMNS}) VALUES (?, ?, ?, 1, ?, ?, ?, ?) "
                "ON CONFLICT (tenant, name) DO UPDATE SET "
                "digest = excluded.digest, version = agents.version + 1, "
                "files = excluded.files, size = excluded.size, updated_at = excluded.updated_at "
                "WHERE agents.digest <> excluded.digest",
                (tenant, name, digest, files, size, now, now),
            )
            rows = list(
                await db.execute_fetchall(
                    f"SELECT {AGENT_COLUMNS} FROM agents WHERE tenant = ? AND name = ?",
                    (tenant, name),
                )
            )
        return agent_view(rows[0])

    async def get_agent(self, name: str, *, tenant: str = DEFAULT_TENANT) -> AgentView | None:
        async with self._read() as db:
            rows = list(
                await db.execute_fetchall(
                    f"SELECT {AGENT_COLUMNS} FROM agents WHERE tenant = ? AND name = ?",
                    (tenant, name),
                )
            )
        return agent_view(rows[0]) if rows else None

    async def list_agents(self, *, tenant: str = DEFAULT_TENANT) -> list[AgentView]:
        async with self._read() as db:
            rows = await db.execute_fetchall(
                f"SELECT {AGENT_COLUMNS} FROM agents WHERE tenant = ? ORDER BY name", (tenant,)
            )
        return [agent_view(row) for row in rows]

    async def delete_agent(self, name: str, *, tenant: str = DEFAULT_TENANT) -> bool:
        async with self._write() as db:
            cursor = await db.execute(
                "DELETE FROM agents WHERE tenant = ? AND name = ?", (tenant, name)
            )
            return cursor.rowcount > 0

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
        async with self._write() as db:
            cursor = await db.execute(
                "INSERT INTO sessions (id, agent, agent_digest, status, model, options, "
                "created_at, updated_at, tenant) VALUES (?, ?, ?, 'starting', ?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO NOTHING",
                (id, agent, agent_digest, model, options_json, now, now, tenant),
            )
            if cursor.rowcount == 0:
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
        async with self._read() as db:
            return await _select_session(db, id, tenant)

    async def get_session_options(self, id: str) -> dict[str, Any]:
        async with self._read() as db:
            rows = list(
                await db.execute_fetchall("SELECT options FROM sessions WHERE id = ?", (id,))
            )
        if not rows:
            raise SessionNotFoundError(f"no session {id!r}")
        return decode_options(rows[0][0])

    async def list_sessions(
        self, agent: str | None = None, limit: int = 100, *, tenant: str | None = None
    ) -> list[SessionView]:
        check_limit(limit)
        conds = [(c, v) for c, v in (("agent = ?", agent), ("tenant = ?", tenant)) if v is not None]
        where = f"WHERE {' AND '.join(c for c, _ in conds)} " if conds else ""
        async with self._read() as db:
            rows = await db.execute_fetchall(
                f"SELECT {SESSION_COLUMNS} FROM sessions {where}"
                "ORDER BY created_at DESC, id DESC LIMIT ?",
                (*(v for _, v in conds), limit),
            )
        return [session_view(row) for row in rows]

    async def session_tenant(self, id: str) -> str | None:
        async with self._read() as db:
            rows = list(
                await db.execute_fetchall("SELECT tenant FROM sessions WHERE id = ?", (id,))
            )
        return rows[0][0] if rows else None

    # -- API keys -------------------------------------------------------------------------

    async def create_key(
        self, key_id: str, tenant: str, name: str, scopes: Collection[str], key_hash: str,
        now: float,
    ) -> KeyRow:
        row = KeyRow(key_id, tenant, name, tuple(sorted(scopes)), key_hash, now, None)
        async with self._write() as db:
            await db.execute(
                f"INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, NULL)",
                (key_id, tenant, name, " ".join(row.scopes), key_hash, now),
            )
        return row

    async def get_key(self, key_id: str) -> KeyRow | None:
        async with self._read() as db:
            rows = list(await db.execute_fetchall(
                f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,)))
        return key_row(rows[0]) if rows else None

    async def list_keys(self, tenant: str | None = None) -> list[KeyRow]:
        where, params = ("", ()) if tenant is None else ("WHERE tenant = ? ", (tenant,))
        async with self._read() as db:
            rows = await db.execute_fetchall(
                f"SELECT {KEY_COLUMNS} FROM api_keys {where}ORDER BY created_at, key_id", params)
        return [key_row(r) for r in rows]

    async def revoke_key(self, key_id: str, now: float, *, tenant: str | None = None) -> KeyRow | None:
        where, params = ("key_id = ?", (key_id,)) if tenant is None else (
            "key_id = ? AND tenant = ?", (key_id, tenant))
        async with self._write() as db:
            await db.execute(
                f"UPDATE api_keys SET revoked_at = ? WHERE {where} AND revoked_at IS NULL",
                (now, *params))
            rows = list(await db.execute_fetchall(
                f"SELECT {KEY_COLUMNS} FROM api_keys WHERE {where}", params))
        return key_row(rows[0]) if rows else None

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
        sets = ["updated_at = ?"]
        params: list[Any] = [now]
        if status is not UNSET:
            check_status(status)
            sets.append("status = ?")
            params.append(status)
        if runner_id is not UNSET:
            sets.append("runner_id = ?")
            params.append(runner_id)
        if claude_session_id is not UNSET:
            sets.append("claude_session_id = ?")
            params.append(claude_session_id)
        if turns_delta:
            sets.append("turns = turns + ?")
            params.append(turns_delta)
        params.append(id)
        async with self._write() as db:
            cursor = await db.execute(
                f"UPDATE sessions SET {', '.join(sets)} WHERE id = ?", params
            )
            if cursor.rowcount == 0:
                return None
            return await _select_session(db, id)

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
        allowed = sorted(set(from_statuses))
        marks = ", ".join("?" * len(allowed))
        sets, params = "status = ?, updated_at = ?", [to_status, now]
        if runner_id is not UNSET:
            sets += ", runner_id = ?"
            params.append(runner_id)
        where, where_params = f"id = ? AND status IN ({marks})", [id, *allowed]
        if on_runner is not UNSET:
            where += " AND runner_id IS NULL" if on_runner is None else " AND runner_id = ?"
            where_params += [] if on_runner is None else [on_runner]
        async with self._write() as db:
            cursor = await db.execute(
                f"UPDATE sessions SET {sets} WHERE {where}", (*params, *where_params)
            )
            if cursor.rowcount == 0:
                return None
            return await _select_session(db, id)

    async def sessions_with_status(
        self, statuses: Collection[SessionStatus], limit: int = 10_000
    ) -> list[SessionView]:
        check_from_statuses(statuses)
        check_limit(limit)
        wanted = sorted(set(statuses))
        marks = ", ".join("?" * len(wanted))
        async with self._read() as db:
            rows = await db.execute_fetchall(
                f"SELECT {SESSION_COLUMNS} FROM sessions WHERE status IN ({marks}) "
                "ORDER BY created_at, id LIMIT ?",
                (*wanted, limit),
            )
        return [session_view(row) for row in rows]

    # -- history --------------------------------------------------------------------------

    async def append_messages(self, session_id: str, rows: list[MessageRow], now: float) -> int:
        encoded = []
        for seq, turn_id, role, content in rows:
            if seq < 1:
                raise ValueError(f"message seq must be at least 1, got {seq}")
            check_role(role)
            encoded.append((session_id, seq, turn_id, role, encode_json(content), now))
        async with self._write() as db:
            found = list(
                await db.execute_fetchall("SELECT 1 FROM sessions WHERE id = ?", (session_id,))
            )
            if not found:
                raise SessionNotFoundError(f"no session {session_id!r}")
            if not encoded:
                return 0
            cursor = await db.executemany(
                "INSERT INTO messages (session_id, seq, turn_id, role, content, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (session_id, seq) DO NOTHING",
                encoded,
            )
            inserted = cursor.rowcount
            top = max(row[1] for row in encoded)
            await db.execute(
                "UPDATE sessions SET last_seq = ?, updated_at = ? WHERE id = ? AND last_seq < ?",
                (top, now, session_id, top),
            )
        return inserted

    async def list_messages(
        self, session_id: str, after_seq: int = 0, limit: int = 1000
    ) -> list[MessageView]:
        check_limit(limit)
        async with self._read() as db:
            rows = await db.execute_fetchall(
                f"SELECT {MESSAGE_COLUMNS} FROM messages "
                "WHERE session_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (session_id, after_seq, limit),
            )
        return [message_view(row) for row in rows]

    # -- MCP status, credentials ----------------------------------------------------------

    async def set_mcp_servers(self, id: str, servers: list[Any], now: float) -> bool:
        async with self._write() as db:
            cursor = await db.execute(
                "UPDATE sessions SET mcp_servers = ?, updated_at = ? WHERE id = ?",
                (encode_json(servers), now, id),
            )
            return cursor.rowcount > 0

    async def put_credential(
        self, tenant: str, name: str, kind: str, sealed: str, now: float
    ) -> tuple[CredentialRow, bool]:
        async with self._write() as db:
            existed = list(await db.execute_fetchall(
                "SELECT 1 FROM credentials WHERE tenant = ? AND name = ?", (tenant, name)))
            await db.execute(
                f"INSERT INTO credentials ({CREDENTIAL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (tenant, name) DO UPDATE SET kind = excluded.kind, "
                "sealed = excluded.sealed, updated_at = excluded.updated_at",
                (tenant, name, kind, sealed, now, now),
            )
            rows = list(await db.execute_fetchall(
                f"SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE tenant = ? AND name = ?",
                (tenant, name)))
        return CredentialRow(*rows[0]), not existed

    async def get_credential(self, tenant: str, name: str) -> CredentialRow | None:
        async with self._read() as db:
            rows = list(await db.execute_fetchall(
                f"SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE tenant = ? AND name = ?",
                (tenant, name)))
        return CredentialRow(*rows[0]) if rows else None

    async def list_credentials(self, tenant: str) -> list[CredentialRow]:
        async with self._read() as db:
            rows = await db.execute_fetchall(
                f"SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE tenant = ? ORDER BY name",
                (tenant,))
        return [CredentialRow(*row) for row in rows]

    async def delete_credential(self, tenant: str, name: str) -> bool:
        async with self._write() as db:
            cursor = await db.execute(
                "DELETE FROM credentials WHERE tenant = ? AND name = ?", (tenant, name))
            return cursor.rowcount > 0

    # -- usage ----------------------------------------------------------------------------

    async def record_usage(self, row: UsageRow) -> bool:
        async with self._write() as db:
            cursor = await db.execute(usage_sql.insert_sql(_mark), usage_sql.insert_params(row))
            return cursor.rowcount > 0

    async def usage(self, query: UsageQuery) -> list[UsageView]:
        sql, params = usage_sql.query_sql(query, _mark)
        async with self._read() as db:
            rows = await db.execute_fetchall(sql, params)
        return [usage_sql.usage_view(row) for row in rows]

    async def session_counts(self) -> dict[str, int]:
        async with self._read() as db:
            rows = await db.execute_fetchall(usage_sql.SESSION_COUNTS_SQL)
        return {status: int(count) for status, count in rows}


def _mark(index: int) -> str:
    return "?"


def split_statements(sql: str) -> list[str]:
    """Split a migration's SQL into statements (sqlite3's execute runs one at a time).

    Splits at each `;` that ends a complete statement per `sqlite3.complete_statement`, so a
    `;` inside a string literal, a comment or a trigger body does not split. The last
    statement's `;` is optional.
    """
    statements: list[str] = []
    pieces = sql.split(";")
    buffer = ""
    for piece in pieces[:-1]:
        buffer += piece + ";"
        if sqlite3.complete_statement(buffer):
            if buffer.strip() != ";":
                statements.append(buffer.strip())
            buffer = ""
    rest = (buffer + pieces[-1]).strip()
    if any(line.strip() and not line.strip().startswith("--") for line in rest.splitlines()):
        # The last statement may omit its `;`, but must otherwise be complete.
        if not sqlite3.complete_statement(rest + ";"):
            raise ValueError(f"incomplete SQL statement at the end of a migration: {rest!r}")
        statements.append(rest)
    return statements


async def _rollback(db: aiosqlite.Connection) -> None:
    try:
        await db.execute("ROLLBACK")
    except sqlite3.OperationalError:
        pass  # no transaction is active: it never began, or COMMIT already ended it


async def _select_session(
    db: aiosqlite.Connection, id: str, tenant: str | None = None
) -> SessionView | None:
    where, params = ("id = ?", (id,)) if tenant is None else ("id = ? AND tenant = ?", (id, tenant))
    rows = list(
        await db.execute_fetchall(f"SELECT {SESSION_COLUMNS} FROM sessions WHERE {where}", params)
    )
    return session_view(rows[0]) if rows else None

