"""`GET /api/usage`: tokens, cost, tool calls and sandbox CPU, summed by turn, session, agent,
tenant or day, for the caller's tenant (admins: any tenant, or all of them)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import time

from aiohttp import web

from coordinator import auth
from coordinator.api.common import json_response, services
from coordinator.errors import ApiError
from coordinator.store.usage import UsageQuery
from protocol.api import UsageReport
from protocol.errors import ErrorCode

GROUPS = ("turn", "session", "agent", "tenant", "day")
MAX_LIMIT = 10_000
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(name: str, text: str | None, now: float) -> float | None:
    """Epoch seconds from `1700000000`, ISO 8601 (`2026-01-31`, `2026-01-31T12:00:00Z`; UTC
    when no offset is given) or an age (`30m`, `24h`, `7d`: that long before now)."""
    if text is None or text == "":
        return None
    if m := _RELATIVE.match(text):
        return now - float(m.group(1)) * _UNIT_S[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, ErrorCode.bad_request,
                       f"{name} must be epoch seconds, ISO 8601 or an age like 24h, not {text!r}"
                       ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def _caller(request: web.Request) -> auth.Principal:
    if request.get(auth.PRINCIPAL) is None:
        return auth.ANONYMOUS  # no auth in front of this app (auth off)
    return auth.require(request, auth.SESSIONS_READ)


async def get_usage(request: web.Request) -> web.Response:
    caller = _caller(request)
    q = request.query
    group_by = q.get("group_by", "session")
    if group_by not in GROUPS:
        raise ApiError(400, ErrorCode.bad_request, f"group_by must be one of {', '.join(GROUPS)}")
    try:
        limit = int(q.get("limit", "1000"))
    except ValueError:
        raise ApiError(400, ErrorCode.bad_request, "limit must be an integer") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise ApiError(400, ErrorCode.bad_request, f"limit must be 1-{MAX_LIMIT}")
    tenant: str | None = q.get("tenant") or None
    if not auth.is_operator(caller):  # only admins of the default tenant see other tenants
        if tenant is not None and tenant != caller.tenant:
            raise ApiError(403, ErrorCode.forbidden, "only an admin key of the default tenant "
                           "may read another tenant's usage")
        tenant = caller.tenant
    now = time.time()
    base = UsageQuery(
        tenant=tenant, agent=q.get("agent") or None, session_id=q.get("session") or None,
        since=parse_time("since", q.get("since"), now),
        until=parse_time("until", q.get("until"), now), limit=limit,
    )
    store = services(request).store
    groups = await store.usage(dataclasses.replace(base, group_by=group_by))
    total = (await store.usage(dataclasses.replace(base, group_by="all", limit=1)))[0]
    report = UsageReport(group_by=group_by, usage=groups, total=total)  # type: ignore[arg-type]
    return json_response(report)
