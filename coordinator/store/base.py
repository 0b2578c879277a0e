"""The persistence seam: the `Store` Protocol every backend implements, and its errors.

The coordinator talks to the database only through `Store`. Backends (SQLite, Postgres)
implement it with the same behaviour and are held to it by one shared test-suite.

Rules every backend keeps:

- Times are float epoch seconds passed in by the caller as `now`; a store never reads the clock.
- Every public method is one short transaction, and correct with other processes writing the
  same database at once (coordinators sharing Postgres).
- Text orders by code point (SQLite's BINARY, Postgres's "C" collation), whatever the
  database's locale.
- JSON columns (`sessions.options`, `messages.content`) round-trip through msgspec.
- Sessions keep their agent's name as plain text: deleting an agent leaves its sessions and
  their history alone.

Session status is a column, not a state machine enforced here; callers that must not race
(refusing a message to an ended session, pausing only what is active) use `transition`, a
compare-and-set on the status:

    starting -> active <-> paused -> ended
                   \\-> error

Errors:

    StoreError                 base of everything this package raises on purpose
     +-- SchemaTooNewError     the database was migrated by newer code; refuse to open
     +-- SessionExistsError    create_session with an id already in use
     +-- SessionNotFoundError  an operation that needs the session found none

Bad arguments (an unknown status or role, a limit below 1) raise `ValueError` before any SQL
runs, so every backend rejects them the same way.
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol, Self, TypeAlias, get_args

from coordinator.store.usage import UsageQuery, UsageRow
from protocol.api import AgentView, MessageView, SessionStatus, SessionView, UsageView

Role: TypeAlias = Literal["user", "assistant", "tool", "result"]
MessageRow: TypeAlias = tuple[int, str, Role, Any]
"""One history item to append: (seq, turn_id, role, content); content is any JSON value."""

STATUSES: Final[frozenset[str]] = frozenset(get_args(SessionStatus))
ROLES: Final[frozenset[str]] = frozenset(get_args(Role))


class Unset(enum.Enum):
    """The type of `UNSET`: "this argument was not given", distinct from None."""

    token = enum.auto()

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = Unset.token

DEFAULT_TENANT: Final = "default"
"""The tenant of everything made before tenants existed, and of calls that name none."""


@dataclass(slots=True, frozen=True)
class KeyRow:
    """An API key as stored: never the secret, only its sha256 (`key_hash`)."""

    key_id: str
    tenant: str
    name: str
    scopes: tuple[str, ...]
    key_hash: str
    created_at: float
    revoked_at: float | None


class StoreError(Exception):
    """Base of the errors a store raises on purpose."""


class SchemaTooNewError(StoreError):
    """The database's schema version is newer than any migration this code knows."""


class SessionExistsError(StoreError):
    """A session with this id already exists."""


class SessionNotFoundError(StoreError):
    """No session has this id."""


class Store(Protocol):
    """Persistence of agents, sessions and session history.

    An async context manager: entering opens the connection and applies pending migrations;
    `close()` is idempotent. Methods called on a store that is not open raise `StoreError`.
    """

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc_info: object) -> None: ...

    async def close(self) -> None:
        """Close the connection. Safe to call more than once."""
        ...

    # -- agents ---------------------------------------------------------------------------

    # Agents belong to a tenant and their names are unique per tenant; `tenant` defaults to
    # DEFAULT_TENANT. Sessions carry their tenant; `tenant=None` on a session read means
    # "any tenant" (the reaper, the recorder), a tenant means "only if it is this tenant's".

    async def upsert_agent(
        self, name: str, digest: str, files: int, size: int, now: float, *,
        tenant: str = DEFAULT_TENANT,
    ) -> AgentView:
        """Record a deploy. A new name starts at version 1; a different digest bumps the
        version and replaces files/size/updated_at; the same digest changes nothing."""
        ...

    async def get_agent(self, name: str, *, tenant: str = DEFAULT_TENANT) -> AgentView | None:
        """The agent, or None."""
        ...

    async def list_agents(self, *, tenant: str = DEFAULT_TENANT) -> list[AgentView]:
        """Every agent of the tenant, ordered by name."""
        ...

    async def delete_agent(self, name: str, *, tenant: str = DEFAULT_TENANT) -> bool:
        """Forget the agent (its sessions and history stay). False if there was none."""
        ...

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
        """Create a session of `tenant` in status `starting`. Raises `SessionExistsError` if the id is
        taken."""
        ...

    async def get_session(self, id: str, *, tenant: str | None = None) -> SessionView | None:
        """The session (only if it is `tenant`'s, when given), or None."""
        ...

    async def get_session_options(self, id: str) -> dict[str, Any]:
        """The options the session was created with. Raises `SessionNotFoundError`."""
        ...

    async def list_sessions(
        self, agent: str | None = None, limit: int = 100, *, tenant: str | None = None
    ) -> list[SessionView]:
        """Sessions, newest first (by created_at, then id), optionally of one agent and/or
        one tenant only."""
        ...

    async def session_tenant(self, id: str) -> str | None:
        """The tenant a session belongs to, or None if there is no such session."""
        ...

    # -- API keys -------------------------------------------------------------------------

    async def create_key(
        self, key_id: str, tenant: str, name: str, scopes: Collection[str], key_hash: str,
        now: float,
    ) -> KeyRow:
        """Store a new key (its id must be new)."""
        ...

    async def get_key(self, key_id: str) -> KeyRow | None:
        """The key, revoked or not, or None."""
        ...

    async def list_keys(self, tenant: str | None = None) -> list[KeyRow]:
        """Keys (of one tenant, when given), oldest first, revoked ones included."""
        ...

    async def revoke_key(
        self, key_id: str, now: float, *, tenant: str | None = None
    ) -> KeyRow | None:
        """Mark the key revoked (once: a second revoke keeps the first time). None if there is
        no such key (of `tenant`, when given)."""
        ...

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
        """Change only the fields given (None is a value: it clears the field), add
        `turns_delta` to turns, set updated_at to `now`. None if there is no such session."""
        ...

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
        """Compare-and-set: move to `to_status` only if the current status is one of
        `from_statuses` (which must not be empty) and, when `on_runner` is given, the session
        is on that runner (None: on none). `runner_id`, when given, is set in the same step.
        The new view on success; None if refused or there is no session."""
        ...

    async def sessions_with_status(
        self, statuses: Collection[SessionStatus], limit: int = 10_000
    ) -> list[SessionView]:
        """Sessions whose status is one of `statuses` (not empty), oldest first (by
        created_at, then id), at most `limit`: what the reaper sweeps."""
        ...

    # -- history --------------------------------------------------------------------------

    async def append_messages(self, session_id: str, rows: list[MessageRow], now: float) -> int:
        """Append history items; a (session_id, seq) already stored is skipped, so replays are
        harmless. Advances the session's last_seq to the highest seq given (never backwards)
        and its updated_at with it. Returns how many rows were new. Raises
        `SessionNotFoundError`."""
        ...

    async def list_messages(
        self, session_id: str, after_seq: int = 0, limit: int = 1000
    ) -> list[MessageView]:
        """History items with seq > after_seq, in seq order, at most `limit`."""
        ...

    # -- MCP status -----------------------------------------------------------------------

    async def set_mcp_servers(self, id: str, servers: list[Any], now: float) -> bool:
        """Keep the session's latest MCP server statuses (shown in its view as
        `mcp_servers`). False if there is no such session."""
        ...

    # -- credentials (sealed by coordinator/credentials.py; the store never sees clear text) --

    async def put_credential(
        self, tenant: str, name: str, kind: str, sealed: str, now: float
    ) -> tuple[CredentialRow, bool]:
        """Store or replace the tenant's credential `name`; True when it is new."""
        ...

    async def get_credential(self, tenant: str, name: str) -> CredentialRow | None:
        """The tenant's credential, or None."""
        ...

    async def list_credentials(self, tenant: str) -> list[CredentialRow]:
        """The tenant's credentials, by name."""
        ...

    async def delete_credential(self, tenant: str, name: str) -> bool:
        """Forget the tenant's credential; False if there was none."""
        ...

    # -- usage (coordinator/store/usage.py) -----------------------------------------------

    async def record_usage(self, row: UsageRow) -> bool:
        """Keep what one turn used; a (session, turn) already recorded is left as it is
        (False), so a redelivered `done` counts once."""
        ...

    async def usage(self, query: UsageQuery) -> list[UsageView]:
        """The recorded turns `query` picks, summed per group (group "all": one total)."""
        ...

    async def session_counts(self) -> dict[str, int]:
        """How many sessions are in each status (statuses with none are absent)."""
        ...


@dataclass(slots=True, frozen=True)
class CredentialRow:
    """A stored credential: `sealed` is its AES-GCM ciphertext (coordinator/credentials.py)."""

    tenant: str
    name: str
    kind: str
    sealed: str
    created_at: float
    updated_at: float

    def __repr__(self) -> str:
        return f"CredentialRow(tenant={self.tenant!r}, name={self.name!r}, kind={self.kind!r})"


CREDENTIAL_COLUMNS = "tenant, name, kind, sealed, created_at, updated_at"


def check_status(status: str) -> None:
    if status not in STATUSES:
        raise ValueError(f"unknown session status {status!r}; expected one of {sorted(STATUSES)}")


def check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"unknown message role {role!r}; expected one of {sorted(ROLES)}")


def check_limit(limit: int) -> None:
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")


def check_from_statuses(from_statuses: Collection[str]) -> None:
    if isinstance(from_statuses, str):
        raise TypeError("from_statuses must be a collection of statuses, not a string")
    if not from_statuses:
        raise ValueError("from_statuses must not be empty")
    for status in from_statuses:
        check_status(status)

