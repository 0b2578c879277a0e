"""The SQLite backend of `Store`: one connection on one thread, WAL, one trip per method.

Lifecycle:

    created --__aenter__/open()--> open --close()--> closed
                  | (start the thread; connect, pragmas, migrate; on failure it is all closed)

One `sqlite3` connection lives on one thread of its own (`sqlite_thread.SQLiteThread`). Each public method
turns its whole body into one plain function of the connection and hands it to that thread,
so a method costs one cross-thread trip however many statements it runs: the thread runs the
function and wakes the awaiting coroutine once, with the result or the exception. Point reads
(a session, an agent, a key by its id) skip even that: they run on the loop, on a read-only
connection of its own (`_lookup`), which in WAL mode never waits for the writer. The thread
runs one function at a time in the order they were submitted, which serialises the methods
(two can never interleave statements inside one transaction) without a lock on the loop.

Writes run in `BEGIN IMMEDIATE` (take the write lock up front, so a read-then-write never
upgrades into SQLITE_BUSY) and end in COMMIT, or ROLLBACK on any exception; reads run in
autocommit. The connection is in autocommit mode (`isolation_level=None`) so the sqlite3
module never opens transactions behind our back. Cancelling the awaiting coroutine never
leaves a transaction open: a function the thread has not reached yet is skipped, and one it is
running goes on to its COMMIT or ROLLBACK regardless.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Collection, Sequence
from typing import Any, Self, TypeVar

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
from coordinator.store.sqlite_thread import Db, SQLiteThread
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

T = TypeVar("T")


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
        self._db: SQLiteThread | None = None
        self._reader: Db | None = None  # point reads on the loop (`_lookup`); not for :memory:
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
        db = SQLiteThread()
        try:
            applied = await db.open(self._connect)
            if self._closed:
                raise StoreError(f"{self!r} was closed while it was opening")
        except BaseException:
            await db.close()
            raise
        self._db = db
        if self.path != MEMORY:  # another connection to :memory: would be another database
            self._reader = self._open_reader()
        for migration in applied:
            log.info("applied migration %d %s to %s", migration.version, migration.name, self.path)

    async def close(self) -> None:
        """Wait for the work already submitted, then close. Idempotent."""
        self._closed = True
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()
        if self._db is not None:
            await self._db.close()

    def _open_reader(self) -> Db:
        """The loop's own read-only connection, for `_lookup` (WAL: readers never wait for
        the writer). Asked never to wait for a lock: a busy answer goes to the thread."""
        reader = sqlite3.connect(self.path, isolation_level=None)
        try:
            reader.execute("PRAGMA busy_timeout = 0")
            reader.execute("PRAGMA query_only = ON")
        except BaseException:
            reader.close()
            raise
        return reader

    def _connect(self) -> tuple[Db, list[Migration]]:
        # On the database thread: the connection is created, configured and migrated there.
        try:
            db = sqlite3.connect(self.path, isolation_level=None)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open SQLite database at {self.path!r}: {e}") from e
        try:
            self._configure(db)
            applied = _in_transaction(db, self._migrate)
        except BaseException:
            db.close()
            raise
        return db, applied

    def _configure(self, db: Db) -> None:
        # busy_timeout first, so switching the journal mode waits for other connections.
        db.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        rows = db.execute("PRAGMA journal_mode = WAL").fetchall()
        mode = rows[0][0] if rows else None
        expected = "memory" if self.path == MEMORY else "wal"
        if mode != expected:
            raise StoreError(
                f"SQLite database at {self.path!r} refused WAL mode (journal_mode={mode!r}); "
                "is it on a network filesystem?"
            )
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA foreign_keys = ON")

    def _migrate(self, db: Db) -> list[Migration]:
        db.execute(SCHEMA_MIGRATIONS_DDL)
        (current,) = _first(db, "SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        todo = pending(current, self._migrations)
        for migration in todo:
            for statement in split_statements(migration.sql_for("sqlite")):
                db.execute(statement)
            db.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (?, ?)",
                (migration.version, migration.name),
            )
        return todo

    # -- transactions ---------------------------------------------------------------------

    def _require_open(self) -> SQLiteThread:
        if self._closed or self._db is None:
            raise StoreError(f"{self!r} is not open")
        return self._db

    async def _read(self, body: Callable[..., T], *args: Any) -> T:
        """Run `body(db, *args)` in autocommit on the database thread: one trip."""
        return await self._require_open().run(body, *args)

    async def _lookup(self, body: Callable[..., T], *args: Any) -> T:
        """A point read (one row by its key, tens of microseconds) run right here on the
        loop's read-only connection: no trip, no wait for the thread's queue. It sees every
        write already committed (each write method returns after its COMMIT). Falls back to
        `_read` for `:memory:` and when SQLite answers busy (a WAL recovery)."""
        reader = self._reader
        if reader is not None and not self._closed:
            try:
                return body(reader, *args)
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e):
                    raise
        return await self._read(body, *args)

    async def _write(self, body: Callable[..., T], *args: Any) -> T:
        """Run `body(db, *args)` in one write transaction on the database thread: one trip.

        Committed when `body` returns, rolled back when it raises.
        """
        return await self._require_open().run(_in_transaction, body, *args)

    # -- agents ---------------------------------------------------------------------------

    async def upsert_agent(
        self, name: str, digest: str, files: int, size: int, now: float, *,
        tenant: str = DEFAULT_TENANT,
    ) -> AgentView:
        def body(db: Db) -> AgentView:
            db.execute(
                f"INSERT INTO agents (tenant, {AGENT_COLUMNS}) VALUES (?, ?, ?, 1, ?, ?, ?, ?) "
                "ON CONFLICT (tenant, name) DO UPDATE SET "
                "digest = excluded.digest, version = agents.version + 1, "
                "files = excluded.files, size = excluded.size, updated_at = excluded.updated_at "
                "WHERE agents.digest <> excluded.digest",
                (tenant, name, digest, files, size, now, now),
            )
            return agent_view(_first(db, _SELECT_AGENT, (tenant, name)))

        return await self._write(body)

    async def get_agent(self, name: str, *, tenant: str = DEFAULT_TENANT) -> AgentView | None:
        def body(db: Db) -> AgentView | None:
            row = _first(db, _SELECT_AGENT, (tenant, name))
            return agent_view(row) if row else None

        return await self._lookup(body)

    async def list_agents(self, *, tenant: str = DEFAULT_TENANT) -> list[AgentView]:
        def body(db: Db) -> list[AgentView]:
            rows = db.execute(
                f"SELECT {AGENT_COLUMNS} FROM agents WHERE tenant = ? ORDER BY name", (tenant,)
            ).fetchall()
            return [agent_view(row) for row in rows]

        return await self._read(body)

    async def delete_agent(self, name: str, *, tenant: str = DEFAULT_TENANT) -> bool:
        def body(db: Db) -> bool:
            cursor = db.execute("DELETE FROM agents WHERE tenant = ? AND name = ?", (tenant, name))
            return cursor.rowcount > 0

        return await self._write(body)

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

        def body(db: Db) -> None:
            cursor = db.execute(
                "INSERT INTO sessions (id, agent, agent_digest, status, model, options, "
                "created_at, updated_at, tenant) VALUES (?, ?, ?, 'starting', ?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO NOTHING",
                (id, agent, agent_digest, model, options_json, now, now, tenant),
            )
            if cursor.rowcount == 0:
                raise SessionExistsError(f"session {id!r} already exists")

        await self._write(body)
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
        return await self._lookup(_select_session, id, tenant)

    async def get_session_options(self, id: str) -> dict[str, Any]:
        row = await self._lookup(_first, "SELECT options FROM sessions WHERE id = ?", (id,))
        if row is None:
            raise SessionNotFoundError(f"no session {id!r}")
        return decode_options(row[0])

    async def list_sessions(
        self, agent: str | None = None, limit: int = 100, *, tenant: str | None = None
    ) -> list[SessionView]:
        check_limit(limit)
        conds = [(c, v) for c, v in (("agent = ?", agent), ("tenant = ?", tenant)) if v is not None]
        where = f"WHERE {' AND '.join(c for c, _ in conds)} " if conds else ""

        def body(db: Db) -> list[SessionView]:
            rows = db.execute(
                f"SELECT {SESSION_COLUMNS} FROM sessions {where}"
                "ORDER BY created_at DESC, id DESC LIMIT ?",
                (*(v for _, v in conds), limit),
            ).fetchall()
            return [session_view(row) for row in rows]

        return await self._read(body)

    async def session_tenant(self, id: str) -> str | None:
        row = await self._lookup(_first, "SELECT tenant FROM sessions WHERE id = ?", (id,))
        return row[0] if row else None

    # -- API keys -------------------------------------------------------------------------

    async def create_key(
        self, key_id: str, tenant: str, name: str, scopes: Collection[str], key_hash: str,
        now: float,
    ) -> KeyRow:
        row = KeyRow(key_id, tenant, name, tuple(sorted(scopes)), key_hash, now, None)

        def body(db: Db) -> None:
            db.execute(
                f"INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, NULL)",
                (key_id, tenant, name, " ".join(row.scopes), key_hash, now),
            )

        await self._write(body)
        return row

    async def get_key(self, key_id: str) -> KeyRow | None:
        def body(db: Db) -> KeyRow | None:
            row = _first(db, f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,))
            return key_row(row) if row else None

        return await self._lookup(body)

    async def list_keys(self, tenant: str | None = None) -> list[KeyRow]:
        where, params = ("", ()) if tenant is None else ("WHERE tenant = ? ", (tenant,))

        def body(db: Db) -> list[KeyRow]:
            rows = db.execute(
                f"SELECT {KEY_COLUMNS} FROM api_keys {where}ORDER BY created_at, key_id", params
            ).fetchall()
            return [key_row(r) for r in rows]

        return await self._read(body)

    async def revoke_key(self, key_id: str, now: float, *, tenant: str | None = None) -> KeyRow | None:
        where, params = ("key_id = ?", (key_id,)) if tenant is None else (
            "key_id = ? AND tenant = ?", (key_id, tenant))

        def body(db: Db) -> KeyRow | None:
            db.execute(
                f"UPDATE api_keys SET revoked_at = ? WHERE {where} AND revoked_at IS NULL",
                (now, *params))
            row = _first(db, f"SELECT {KEY_COLUMNS} FROM api_keys WHERE {where}", params)
            return key_row(row) if row else None

        return await self._write(body)

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
        sql = f"UPDATE sessions SET {', '.join(sets)} WHERE id = ?"
        return await self._write(_update_then_select, sql, params, id)

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
        sql = f"UPDATE sessions SET {sets} WHERE {where}"
        return await self._write(_update_then_select, sql, (*params, *where_params), id)

    async def sessions_with_status(
        self, statuses: Collection[SessionStatus], limit: int = 10_000
    ) -> list[SessionView]:
        check_from_statuses(statuses)
        check_limit(limit)
        wanted = sorted(set(statuses))
        marks = ", ".join("?" * len(wanted))

        def body(db: Db) -> list[SessionView]:
            rows = db.execute(
                f"SELECT {SESSION_COLUMNS} FROM sessions WHERE status IN ({marks}) "
                "ORDER BY created_at, id LIMIT ?",
                (*wanted, limit),
            ).fetchall()
            return [session_view(row) for row in rows]

        return await self._read(body)

    # -- history --------------------------------------------------------------------------

    async def append_messages(self, session_id: str, rows: list[MessageRow], now: float) -> int:
        encoded = []
        for seq, turn_id, role, content in rows:
            if seq < 1:
                raise ValueError(f"message seq must be at least 1, got {seq}")
            check_role(role)
            encoded.append((session_id, seq, turn_id, role, encode_json(content), now))

        def body(db: Db) -> int:
            if _first(db, "SELECT 1 FROM sessions WHERE id = ?", (session_id,)) is None:
                raise SessionNotFoundError(f"no session {session_id!r}")
            if not encoded:
                return 0
            cursor = db.executemany(
                "INSERT INTO messages (session_id, seq, turn_id, role, content, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (session_id, seq) DO NOTHING",
                encoded,
            )
            inserted = cursor.rowcount
            top = max(row[1] for row in encoded)
            db.execute(
                "UPDATE sessions SET last_seq = ?, updated_at = ? WHERE id = ? AND last_seq < ?",
                (top, now, session_id, top),
            )
            return inserted

        return await self._write(body)

    async def list_messages(
        self, session_id: str, after_seq: int = 0, limit: int = 1000
    ) -> list[MessageView]:
        check_limit(limit)

        def body(db: Db) -> list[MessageView]:
            rows = db.execute(
                f"SELECT {MESSAGE_COLUMNS} FROM messages "
                "WHERE session_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (session_id, after_seq, limit),
            ).fetchall()
            return [message_view(row) for row in rows]

        return await self._read(body)

    # -- MCP status, credentials ----------------------------------------------------------

    async def set_mcp_servers(self, id: str, servers: list[Any], now: float) -> bool:
        servers_json = encode_json(servers)

        def body(db: Db) -> bool:
            cursor = db.execute(
                "UPDATE sessions SET mcp_servers = ?, updated_at = ? WHERE id = ?",
                (servers_json, now, id),
            )
            return cursor.rowcount > 0

        return await self._write(body)

    async def put_credential(
        self, tenant: str, name: str, kind: str, sealed: str, now: float
    ) -> tuple[CredentialRow, bool]:
        def body(db: Db) -> tuple[CredentialRow, bool]:
            existed = _first(
                db, "SELECT 1 FROM credentials WHERE tenant = ? AND name = ?", (tenant, name)
            )
            db.execute(
                f"INSERT INTO credentials ({CREDENTIAL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (tenant, name) DO UPDATE SET kind = excluded.kind, "
                "sealed = excluded.sealed, updated_at = excluded.updated_at",
                (tenant, name, kind, sealed, now, now),
            )
            row = _first(db, _SELECT_CREDENTIAL, (tenant, name))
            return CredentialRow(*row), existed is None

        return await self._write(body)

    async def get_credential(self, tenant: str, name: str) -> CredentialRow | None:
        row = await self._read(_first, _SELECT_CREDENTIAL, (tenant, name))
        return CredentialRow(*row) if row else None

    async def list_credentials(self, tenant: str) -> list[CredentialRow]:
        def body(db: Db) -> list[CredentialRow]:
            rows = db.execute(
                f"SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE tenant = ? ORDER BY name",
                (tenant,),
            ).fetchall()
            return [CredentialRow(*row) for row in rows]

        return await self._read(body)

    async def delete_credential(self, tenant: str, name: str) -> bool:
        def body(db: Db) -> bool:
            cursor = db.execute(
                "DELETE FROM credentials WHERE tenant = ? AND name = ?", (tenant, name))
            return cursor.rowcount > 0

        return await self._write(body)

    # -- usage ----------------------------------------------------------------------------

    async def record_usage(self, row: UsageRow) -> bool:
        sql, params = usage_sql.insert_sql(_mark), usage_sql.insert_params(row)
        return await self._write(_changes, sql, params)

    async def usage(self, query: UsageQuery) -> list[UsageView]:
        sql, params = usage_sql.query_sql(query, _mark)

        def body(db: Db) -> list[UsageView]:
            return [usage_sql.usage_view(row) for row in db.execute(sql, params).fetchall()]

        return await self._read(body)

    async def session_counts(self) -> dict[str, int]:
        def body(db: Db) -> dict[str, int]:
            rows = db.execute(usage_sql.SESSION_COUNTS_SQL).fetchall()
            return {status: int(count) for status, count in rows}

        return await self._read(body)


def _in_transaction(db: Db, body: Callable[..., T], *args: Any) -> T:
    """`body(db, *args)` in BEGIN IMMEDIATE, committed on return, rolled back on any exception."""
    db.execute("BEGIN IMMEDIATE")
    try:
        result = body(db, *args)
        db.execute("COMMIT")
    except BaseException:
        _rollback(db)
        raise
    return result


def _rollback(db: Db) -> None:
    try:
        db.execute("ROLLBACK")
    except sqlite3.OperationalError:
        pass  # no transaction is active: COMMIT already ended it


def _first(db: Db, sql: str, params: Sequence[Any] = ()) -> Any:
    """The first row of a query, or None. Fetches all, so the statement ends and resets."""
    rows = db.execute(sql, params).fetchall()
    return rows[0] if rows else None


def _changes(db: Db, sql: str, params: Sequence[Any]) -> bool:
    """Whether one statement changed any row."""
    return db.execute(sql, params).rowcount > 0


_SELECT_AGENT = f"SELECT {AGENT_COLUMNS} FROM agents WHERE tenant = ? AND name = ?"
_SELECT_CREDENTIAL = f"SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE tenant = ? AND name = ?"


def _select_session(db: Db, id: str, tenant: str | None = None) -> SessionView | None:
    where, params = ("id = ?", (id,)) if tenant is None else ("id = ? AND tenant = ?", (id, tenant))
    row = _first(db, f"SELECT {SESSION_COLUMNS} FROM sessions WHERE {where}", params)
    return session_view(row) if row else None


def _update_then_select(db: Db, sql: str, params: Sequence[Any], id: str) -> SessionView | None:
    if db.execute(sql, params).rowcount == 0:
        return None
    return _select_session(db, id)


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
