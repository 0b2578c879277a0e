"""Persistence: the `Store` seam, its backends, and `open_store(url)` that picks one.

    async with open_store("sqlite:///var/lib/ash/ash.db") as store:
        agent = await store.upsert_agent("echo", digest, files, size, now)

SQLite is the embedded default (one coordinator); Postgres lets any number of coordinators
share one database. Both run the same migrations and pass the same test-suite.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import unquote, urlsplit

from coordinator.store.base import (
    UNSET,
    MessageRow,
    Role,
    SchemaTooNewError,
    SessionExistsError,
    SessionNotFoundError,
    Store,
    StoreError,
    Unset,
)
from coordinator.store.migrations import MIGRATIONS, Migration
from coordinator.store.postgres import DEFAULT_POOL_SIZE, PostgresStore
from coordinator.store.sqlite import MEMORY, SQLiteStore

__all__ = [
    "MIGRATIONS",
    "UNSET",
    "MessageRow",
    "Migration",
    "PostgresStore",
    "Role",
    "SQLiteStore",
    "SchemaTooNewError",
    "SessionExistsError",
    "SessionNotFoundError",
    "Store",
    "StoreError",
    "Unset",
    "open_store",
]


def open_store(
    url: str,
    *,
    migrations: Sequence[Migration] = MIGRATIONS,
    pool_size: int = DEFAULT_POOL_SIZE,
) -> Store:
    """The store for `url`, not yet connected: enter it (`async with`) to connect and migrate.

    - `sqlite:///abs/path.db`: a SQLite file at the absolute path `/abs/path.db`
      (`sqlite://` followed by the path);
    - `sqlite:///:memory:`: a private in-memory database, gone on close;
    - `postgres://user:password@host:5432/db` (or `postgresql://`): a Postgres database, any
      libpq URL asyncpg accepts (`?sslmode=require`, several hosts, ...), through a pool of
      at most `pool_size` connections. SQLite has one connection and ignores `pool_size`.

    `migrations` is for tests; the default is the schema this code ships.
    """
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    match scheme:
        case "sqlite":
            return SQLiteStore(_sqlite_path(url), migrations=migrations)
        case "postgres" | "postgresql":
            return PostgresStore(url, migrations=migrations, pool_size=pool_size)
        case _:
            raise ValueError(
                f"unsupported store URL scheme {scheme!r}; expected sqlite:///abs/path.db, "
                "sqlite:///:memory: or postgres://..."
            )


def _sqlite_path(url: str) -> str:
    parts = urlsplit(url)
    if parts.netloc or parts.query or parts.fragment or not parts.path.startswith("/"):
        raise ValueError(
            f"bad SQLite URL {url!r}: expected sqlite:///abs/path.db or sqlite:///:memory:"
        )
    if parts.path == "/" + MEMORY:
        return MEMORY
    path = unquote(parts.path)
    if path.endswith("/"):
        raise ValueError(f"bad SQLite URL {url!r}: the path names a directory, not a file")
    return path
