"""Two coordinator processes on one Postgres database: any of them serves any request.

Real nats-server, two coordinators started at once on a fresh database of the local Postgres
(both migrate it on start: the advisory lock lets one do it), and a runner with the stand-in
CLI. An agent deployed through A is seen by B, a session created through B takes a turn
through A, the client drops A's stream mid-reply and re-attaches through B, and B serves the
history A's turn left.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from ash.bundle import pack
from ash.embedded_nats import start_nats
from coordinator.store import MIGRATIONS
from tests.coordinator.conftest import postgres_server, postgres_url  # noqa: F401
from tests.e2e.test_streams import contiguous, events_after, first, frames_until, of_turn
from tests.procs import ROOT, Stack

pytestmark = pytest.mark.e2e


@dataclass
class Rig:
    stack: Stack
    a: str  # coordinator A's url
    b: str  # coordinator B's url
    database_url: str


@pytest.fixture
def rig(tmp_path: Path, postgres_url: str) -> Iterator[Rig]:  # noqa: F811
    server = start_nats(tmp_path / "nats", log_path=tmp_path / "nats.log")
    stack = Stack(tmp_path, server.url)
    try:
        # Both at once, so that both find an empty database and race to migrate it.
        stack.start_coordinator("coordinator-a", ASH_DATABASE_URL=postgres_url)
        a = stack.url
        stack.start_coordinator("coordinator-b", ASH_DATABASE_URL=postgres_url)
        b = stack.url
        stack.start_runner("pg-runner", ASH_CLI="standin")
        stack.wait_ready()
        stack.url = a
        stack.wait_ready()
        yield Rig(stack, a, b, postgres_url)
    finally:
        stack.stop()
        server.stop()


async def test_two_coordinators_share_agents_sessions_turns_history_and_streams(rig: Rig) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{rig.a}/api/agents", params={"name": "pg-agent"},
                             data=pack(ROOT / "examples" / "hello")) as r:
            assert r.status == 201, await r.text()
            deployed = await r.json()
        async with http.get(f"{rig.b}/api/agents/pg-agent") as r:
            assert r.status == 200, await r.text()
            seen_by_b = await r.json()

        async with http.post(f"{rig.b}/api/sessions", json={"agent": "pg-agent"}) as r:
            assert r.status == 201, await r.text()
            sid = (await r.json())["id"]
        async with http.get(f"{rig.a}/api/sessions", params={"agent": "pg-agent"}) as r:
            listed_by_a = [s["id"] for s in (await r.json())["sessions"]]

        # A turn through A; the client leaves mid-reply and re-attaches through B.
        async with http.post(f"{rig.a}/api/sessions/{sid}/messages",
                             json={"content": "sleep:2 hello from A"}) as r:
            turn_id = r.headers["Ash-Turn-Id"]
            start = int(r.headers["Ash-Turn-After"])
            head = await frames_until(r, first("text_delta"))
        tail = await events_after(http, rig.b, sid, head[-1].id)
        whole = await events_after(http, rig.a, sid, start)

        async with http.get(f"{rig.b}/api/sessions/{sid}/messages") as r:
            assert r.status == 200, await r.text()
            history = (await r.json())["messages"]
        async with http.get(f"{rig.b}/api/sessions/{sid}") as r:
            session = await r.json()

    assert seen_by_b == deployed
    assert listed_by_a == [sid]
    assert head[-1].event == "text_delta" and tail[0].id == head[-1].id + 1
    assert contiguous(head + tail, start + 1)
    assert [f.data for f in head + tail] == [f.data for f in whole]
    assert tail[-1].event == "done" and tail[-1].data["reason"] == "completed"
    assert {f.data["turn_id"] for f in whole} == {turn_id}
    assert [m["role"] for m in of_turn(history, turn_id)] == ["user", "assistant", "result"]
    assert of_turn(history, turn_id)[0]["content"] == "sleep:2 hello from A"
    assert session["turns"] == 1 and session["last_seq"] >= history[-1]["seq"]

    # It all lives in Postgres, migrated once, and nowhere else.
    assert not (rig.stack.tmp / "ash.db").exists()
    conn = await asyncpg.connect(rig.database_url)
    try:
        versions = [r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")]
        stored = await conn.fetchrow("SELECT agent, turns FROM sessions WHERE id = $1", sid)
        rows = await conn.fetchval("SELECT count(*) FROM messages WHERE session_id = $1", sid)
    finally:
        await conn.close()
    assert sorted(versions) == [m.version for m in MIGRATIONS]
    migrated = [p.name for p in rig.stack.procs if "applied migration 1 " in p.tail(1000)]
    assert len(migrated) == 1, migrated  # one coordinator migrated; the other found it done
    assert stored is not None and tuple(stored) == ("pg-agent", 1)
    assert rows == len(history)
