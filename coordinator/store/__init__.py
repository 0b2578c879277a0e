"""Persistence: the `Store` seam, its backends, and `open_store(url)` that picks one.

    async with open_store("sqlite:///var/lib/ash/ash.db") as store:
        agent = await store.upsert_agent("echo", digest, files, size, now)
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
from coordinator.store.sqlite import MEMORY, SQLiteStore

__all__ = [
    "MIGRATIONS",
    "UNSET",
    "MessageRow",
    "Migration",
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


def open_store(url: str, *, migrations: Sequence[Migration] = MIGRATIONS) -> Store:
    """The store for `url`, not yet connected: enter it (`async with`) to connect and migrate.

    - `sqlite:///abs/path.db`: a SQLite file at the absolute path `/abs/path.db`
      (`sqlite://` followed by the path);
    - `sqlite:///:memory:`: a private in-memory database, gone on close;
    - `postgres://...` / `postgresql://...`: not implemented yet.

    `migrations` is for tests; the default is the schema this code ships.
    """
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    match scheme:
        case "sqlite":
            return SQLiteStore(_sqlite_path(url), migrations=migrations)
        case "postgres" | "postgresql":
            # The URL is not echoed: it may hold a password.
            raise NotImplementedError(
                "the Postgres store is not implemented yet; use a sqlite:/// URL for now"
            )
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
