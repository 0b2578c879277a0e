"""Usage rows (one per turn) and the SQL both backends run for them.

The recorder writes one `UsageRow` when a turn's `done` arrives (`record_usage`; a row already
there is kept, so a redelivered `done` changes nothing). `GET /api/usage` sums them by turn,
session, agent, tenant or UTC day (`usage`). The SQL is shared; only the placeholders differ
(`?` on SQLite, `$n` on Postgres), so each backend passes its own `mark`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from protocol.api import UsageView

GROUPS: Final = ("turn", "session", "agent", "tenant", "day", "all")

USAGE_DDL = """
        CREATE TABLE turn_usage (
            session_id                   {key} NOT NULL,
            turn_id                      {key} NOT NULL,
            tenant                       {key} NOT NULL DEFAULT 'default',
            agent                        {key} NOT NULL,
            model                        TEXT,
            reason                       TEXT NOT NULL,
            input_tokens                 BIGINT NOT NULL DEFAULT 0,
            output_tokens                BIGINT NOT NULL DEFAULT 0,
            cache_creation_input_tokens  BIGINT NOT NULL DEFAULT 0,
            cache_read_input_tokens      BIGINT NOT NULL DEFAULT 0,
            cost_usd                     DOUBLE PRECISION NOT NULL DEFAULT 0,
            cost_estimated               INTEGER NOT NULL DEFAULT 0,
            tool_calls                   INTEGER NOT NULL DEFAULT 0,
            cpu_s                        DOUBLE PRECISION,
            duration_ms                  BIGINT NOT NULL DEFAULT 0,
            day                          TEXT NOT NULL,
            created_at                   DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (session_id, turn_id)
        );
        CREATE INDEX IF NOT EXISTS turn_usage_by_tenant ON turn_usage (tenant, created_at);
        CREATE INDEX IF NOT EXISTS turn_usage_by_agent ON turn_usage (tenant, agent, created_at)
"""
"""`{key}` is TEXT on SQLite and TEXT COLLATE "C" on Postgres (see migrations.py)."""


@dataclass(slots=True, frozen=True)
class UsageRow:
    """What one turn used (`cpu_s` None where the runner could not measure it)."""

    session_id: str
    turn_id: str
    tenant: str
    agent: str
    model: str | None
    reason: str
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    cost_usd: float
    cost_estimated: bool
    tool_calls: int
    cpu_s: float | None
    duration_ms: int
    day: str  # UTC YYYY-MM-DD of created_at
    created_at: float


@dataclass(slots=True, frozen=True)
class UsageQuery:
    """Which turns to sum and how to group them. `tenant` None: every tenant (admins)."""

    group_by: str = "session"
    tenant: str | None = None
    agent: str | None = None
    session_id: str | None = None
    since: float | None = None  # created_at >= since
    until: float | None = None  # created_at < until
    limit: int = 1000

    def __post_init__(self) -> None:
        if self.group_by not in GROUPS:
            raise ValueError(f"group_by must be one of {GROUPS}, not {self.group_by!r}")
        if self.limit < 1:
            raise ValueError(f"limit must be at least 1, got {self.limit}")


_COLUMNS = (
    "session_id, turn_id, tenant, agent, model, reason, input_tokens, output_tokens, "
    "cache_creation_input_tokens, cache_read_input_tokens, cost_usd, cost_estimated, "
    "tool_calls, cpu_s, duration_ms, day, created_at"
)


def insert_sql(mark: Callable[[int], str]) -> str:
    """INSERT of one `UsageRow` (its fields in order), keeping a row already there."""
    marks = ", ".join(mark(i) for i in range(1, 18))
    return (f"INSERT INTO turn_usage ({_COLUMNS}) VALUES ({marks}) "
            "ON CONFLICT (session_id, turn_id) DO NOTHING")


def insert_params(row: UsageRow) -> tuple[Any, ...]:
    return (row.session_id, row.turn_id, row.tenant, row.agent, row.model, row.reason,
            row.input_tokens, row.output_tokens, row.cache_creation_input_tokens,
            row.cache_read_input_tokens, float(row.cost_usd), int(row.cost_estimated),
            row.tool_calls, None if row.cpu_s is None else float(row.cpu_s), row.duration_ms,
            row.day, float(row.created_at))


# group -> (key, session_id, agent, GROUP BY, ORDER BY)
_GROUPING: Final[dict[str, tuple[str, str, str, str, str]]] = {
    "turn": ("turn_id", "session_id", "MIN(agent)", "GROUP BY session_id, turn_id",
             "ORDER BY MIN(created_at), turn_id"),
    "session": ("session_id", "session_id", "MIN(agent)", "GROUP BY session_id",
                "ORDER BY MIN(created_at), session_id"),
    "agent": ("agent", "NULL", "agent", "GROUP BY agent", "ORDER BY agent"),
    "tenant": ("tenant", "NULL", "NULL", "GROUP BY tenant", "ORDER BY tenant"),
    "day": ("day", "NULL", "NULL", "GROUP BY day", "ORDER BY day"),
    "all": ("'all'", "NULL", "NULL", "", ""),
}


def query_sql(query: UsageQuery, mark: Callable[[int], str]) -> tuple[str, list[Any]]:
    """The SELECT summing the turns `query` picks, and its parameters."""
    where: list[str] = []
    params: list[Any] = []
    for column, value, op in (("tenant", query.tenant, "="), ("agent", query.agent, "="),
                              ("session_id", query.session_id, "="),
                              ("created_at", query.since, ">="),
                              ("created_at", query.until, "<")):
        if value is not None:
            params.append(float(value) if column == "created_at" else value)
            where.append(f"{column} {op} {mark(len(params))}")
    key, session, agent, group, order = _GROUPING[query.group_by]
    params.append(query.limit)
    sql = (
        f"SELECT {key}, {session}, {agent}, COUNT(*), "
        "CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT), "
        "CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT), "
        "CAST(COALESCE(SUM(cache_creation_input_tokens), 0) AS BIGINT), "
        "CAST(COALESCE(SUM(cache_read_input_tokens), 0) AS BIGINT), "
        "COALESCE(SUM(cost_usd), 0), CAST(COALESCE(SUM(tool_calls), 0) AS BIGINT), "
        "COALESCE(SUM(cpu_s), 0), COALESCE(MIN(created_at), 0), COALESCE(MAX(created_at), 0) "
        f"FROM turn_usage {'WHERE ' + ' AND '.join(where) if where else ''} "
        f"{group} {order} LIMIT {mark(len(params))}"
    )
    return sql, params


def usage_view(row: Sequence[Any]) -> UsageView:
    (key, session_id, agent, turns, input_tokens, output_tokens, cache_creation, cache_read,
     cost, tool_calls, cpu_s, first_at, last_at) = row
    return UsageView(
        key=str(key), session_id=session_id, agent=agent, turns=int(turns),
        input_tokens=int(input_tokens), output_tokens=int(output_tokens),
        cache_creation_input_tokens=int(cache_creation), cache_read_input_tokens=int(cache_read),
        cost_usd=float(cost), tool_calls=int(tool_calls), cpu_s=float(cpu_s),
        first_at=float(first_at), last_at=float(last_at),
    )


SESSION_COUNTS_SQL = "SELECT status, COUNT(*) FROM sessions GROUP BY status"
