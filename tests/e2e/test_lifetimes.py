"""Lifetimes across real processes: a runner killed with SIGKILL (its sessions become paused,
no committed event is lost, a turn it was running ends with `runner_lost`, the session resumes
cold elsewhere), a runner restarted under the same id, idle auto-pause, session TTL, and
orphaned sandboxes.

Each test gets its own nats-server, store, coordinator and runners (separate processes that
talk only over NATS): a shared registry would let one test's coordinator reap another's
sessions. The CLI is the scripted stand-in; `sleep:<s>` prompts make slow turns.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import nats
import pytest
from nats.js.errors import NotFoundError

from ash.bundle import pack
from ash.embedded_nats import start_nats
from protocol import codec, events, subjects
from protocol.commands import AgentRef, CreateSession, Rejected
from protocol.errors import ErrorCode
from protocol.runners import RunnerAdvert, SessionActivity
from tests.e2e.sse import Frame, read_turn, text_of
from tests.procs import ROOT, Proc, Stack

pytestmark = pytest.mark.e2e

T = TypeVar("T")
DEADLINE_S = 30.0
FAST_RUNNER = {"ASH_CLI": "standin", "ASH_TMP_MB": "16", "ASH_POOL_GENERIC": "1",
               "ASH_SNAPSHOT_DEBOUNCE_S": "0.1"}


def held(advert: RunnerAdvert) -> dict[str, SessionActivity]:
    """The sessions a runner says it holds a sandbox for."""
    assert advert.activity is not None, "this runner does not report its sessions"
    return advert.activity


async def eventually(check: Callable[[], Awaitable[T]], what: str,
                     timeout: float = DEADLINE_S) -> T:
    """Poll `check` until it returns something truthy; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        got = await check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)  # poll interval of the condition above


@dataclass
class Rig:
    stack: Stack
    nc: nats.NATS
    http: aiohttp.ClientSession
    tmp: Path

    @property
    def url(self) -> str:
        return self.stack.url

    def runner(self, name: str, **env: str) -> Proc:
        return self.stack.start_runner(name, **{**FAST_RUNNER, **env})

    async def ready(self, runners: int = 1) -> None:
        await asyncio.to_thread(self.stack.wait_ready, runners)

    def forget(self, proc: Proc) -> int:
        """Reap a process this test stopped on purpose, so the rig does not take it for a crash."""
        proc.popen.wait(15)
        self.stack.procs.remove(proc)
        return proc.popen.returncode

    async def deploy(self, name: str = "hello") -> AgentRef:
        async with self.http.post(f"{self.url}/api/agents", params={"name": name},
                                  data=pack(ROOT / "examples" / "hello"),
                                  headers={"Content-Type": "application/gzip"}) as r:
            assert r.status == 201, await r.text()
            body = await r.json()
        return AgentRef(name=body["name"], digest=body["digest"])

    async def create(self, agent: str = "hello") -> dict[str, Any]:
        async with self.http.post(f"{self.url}/api/sessions", json={"agent": agent}) as r:
            assert r.status == 201, await r.text()
            return await r.json()  # type: ignore[no-any-return]

    async def session(self, sid: str) -> dict[str, Any]:
        async with self.http.get(f"{self.url}/api/sessions/{sid}") as r:
            assert r.status == 200, await r.text()
            return await r.json()  # type: ignore[no-any-return]

    async def turn(self, sid: str, text: str) -> list[Frame]:
        async with self.http.post(f"{self.url}/api/sessions/{sid}/messages",
                                  json={"content": text}) as r:
            return await read_turn(r)

    async def history(self, sid: str) -> list[dict[str, Any]]:
        async with self.http.get(f"{self.url}/api/sessions/{sid}/messages") as r:
            assert r.status == 200, await r.text()
            return (await r.json())["messages"]  # type: ignore[no-any-return]

    async def advert(self, runner_id: str) -> RunnerAdvert | None:
        kv = await self.nc.jetstream().key_value(subjects.RUNNERS_BUCKET)
        try:
            entry = await kv.get(runner_id)
        except NotFoundError:
            return None
        return codec.decode_advert(entry.value) if entry.value else None

    async def command(self, runner_id: str, command: Any) -> Any:
        msg = await self.nc.request(subjects.runner_commands(runner_id), codec.encode(command),
                                    timeout=30)
        return codec.decode_reply(msg.data)

    async def log(self, sid: str) -> list[events.Event]:
        """The session's whole event log, from JetStream."""
        js = self.nc.jetstream()
        sub = await js.subscribe(subjects.session_events(sid), ordered_consumer=True)
        out: list[events.Event] = []
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=1)
                except nats.errors.TimeoutError:
                    return out
                out.append(codec.decode_event(msg.data))
        finally:
            await sub.unsubscribe()

    async def has_snapshot(self, sid: str) -> bool:
        store = await self.nc.jetstream().object_store("ash_snapshots")
        try:
            await store.get_info(sid)
        except NotFoundError:
            return False
        return True

    async def wait_status(self, sid: str, status: str, timeout: float = DEADLINE_S) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            view = await self.session(sid)
            return view if view["status"] == status else None
        return await eventually(check, f"session {sid} to become {status}", timeout)

    async def wait_exit(self, proc: Proc, timeout: float = DEADLINE_S) -> int:
        async def check() -> bool:
            return proc.popen.poll() is not None
        await eventually(check, f"{proc.name} to exit", timeout)
        return self.forget(proc)


@contextlib.asynccontextmanager
async def open_rig(tmp: Path, **coordinator_env: str) -> AsyncIterator[Rig]:
    server = start_nats(tmp / "nats", log_path=tmp / "nats.log")
    stack = Stack(tmp, server.url)
    try:
        stack.start_coordinator(**coordinator_env)
        nc = await nats.connect(server.url)
        try:
            async with aiohttp.ClientSession() as http:
                yield Rig(stack, nc, http, tmp)
        finally:
            await nc.close()
    finally:
        await asyncio.to_thread(stack.stop)
        server.stop()


async def frames(resp: aiohttp.ClientResponse) -> AsyncIterator[Frame]:
    """A turn's SSE frames as they arrive."""
    assert resp.status == 200, await resp.text()
    fields: dict[str, str] = {}
    async for raw in resp.content:
        line = raw.decode().rstrip("\r\n")
        if line.startswith(":"):
            continue
        if line == "":
            if fields:
                yield Frame(int(fields["id"]), fields["event"], json.loads(fields["data"]))
                fields = {}
            continue
        key, _, value = line.partition(": ")
        fields[key] = value


# -- SIGKILL ---------------------------------------------------------------------------------------


async def test_a_killed_runner_loses_no_committed_event_and_its_session_resumes_elsewhere(
    tmp_path: Path,
) -> None:
    """Default TTL and advert interval: the session is paused within a few seconds."""
    word = "heron" + uuid.uuid4().hex[:6]
    async with open_rig(tmp_path, ASH_REAP_INTERVAL_S="0.2") as rig:
        r1 = rig.runner("kill-r1", ASH_ADVERT_INTERVAL_S="1")
        await rig.ready()
        await rig.deploy()
        sid = (await rig.create())["id"]
        first = await rig.turn(sid, f"Remember the word {word}")
        assert text_of(first) == f"I will remember the word {word}."
        await eventually(lambda: rig.has_snapshot(sid), "the snapshot after turn 1")

        seen: list[Frame] = []
        async with rig.http.post(f"{rig.url}/api/sessions/{sid}/messages",
                                 json={"content": "sleep:60 tell me a long story"}) as resp:
            async with asyncio.timeout(DEADLINE_S):
                async for f in frames(resp):
                    seen.append(f)
                    if f.event == "text_delta" and r1.popen.poll() is None:
                        r1.popen.kill()  # SIGKILL: no drain, no goodbye
        assert rig.forget(r1) == -9

        # The stream ended instead of hanging until the turn deadline, saying why.
        assert [f.event for f in seen[-2:]] == ["error", "done"]
        assert seen[-2].data["error"]["code"] == ErrorCode.runner_lost
        assert seen[-2].data["error"]["retryable"] is True
        assert seen[-1].data["reason"] == "error"
        view = await rig.wait_status(sid, "paused")
        assert view["runner_id"] is None  # cold: resumable on any runner

        # Every event acked before the kill is in the log: gapless, and all the client saw.
        log = await rig.log(sid)
        assert [e.seq for e in log] == list(range(1, len(log) + 1))
        assert {f.id for f in first + seen} <= {e.seq for e in log}
        assert sum(isinstance(e, events.TextDelta) and e.turn_id == seen[0].data["turn_id"]
                   for e in log) >= 1
        # ... and the history holds turn 1 whole and turn 2's message.
        history = await rig.history(sid)
        assert [m["role"] for m in history] == ["user", "assistant", "result", "user"]
        assert history[0]["content"] == f"Remember the word {word}"

        # A new runner serves new sessions, and the paused session resumes there with its memory.
        rig.runner("kill-r2")
        await rig.ready()
        assert (await rig.create())["runner_id"] == "kill-r2"
        recall = await rig.turn(sid, "What was the word?")
        assert text_of(recall) == f"The word was {word}."
        view = await rig.session(sid)
        assert (view["status"], view["runner_id"]) == ("active", "kill-r2")


async def test_a_runner_restarted_under_the_same_id_gives_up_its_old_sessions(tmp_path: Path) -> None:
    async with open_rig(tmp_path, ASH_RUNNER_TTL_S="2", ASH_REAP_INTERVAL_S="0.2") as rig:
        r1 = rig.runner("same-r1", ASH_ADVERT_INTERVAL_S="0.2")
        await rig.ready()
        await rig.deploy()
        sid = (await rig.create())["id"]
        await rig.turn(sid, "Remember the word osprey")
        async def holds_it() -> RunnerAdvert | None:
            advert = await rig.advert("same-r1")
            return advert if advert is not None and sid in held(advert) else None
        before = await eventually(holds_it, "the runner to advertise the session")
        await eventually(lambda: rig.has_snapshot(sid), "the snapshot after the turn")
        r1.popen.kill()
        rig.forget(r1)
        rig.runner("same-r1", ASH_ADVERT_INTERVAL_S="0.2")

        async def restarted() -> RunnerAdvert | None:
            advert = await rig.advert("same-r1")
            return advert if advert is not None and advert.started_at > before.started_at else None
        advert = await eventually(restarted, "the runner to come back")
        assert sid not in held(advert)
        view = await rig.wait_status(sid, "paused")
        assert view["runner_id"] is None
        assert text_of(await rig.turn(sid, "Which word?")) == "The word was osprey."


# -- idle pause, TTL ---------------------------------------------------------------------------------


async def test_an_idle_session_is_paused_warm_and_a_running_turn_is_activity(tmp_path: Path) -> None:
    async with open_rig(tmp_path, ASH_IDLE_PAUSE_S="1.5", ASH_RUNNER_TTL_S="2",
                        ASH_REAP_INTERVAL_S="0.2") as rig:
        rig.runner("idle-r1", ASH_ADVERT_INTERVAL_S="0.2")
        await rig.ready()
        await rig.deploy()
        sid = (await rig.create())["id"]

        statuses: set[str] = set()
        busy: list[bool] = []
        async with rig.http.post(f"{rig.url}/api/sessions/{sid}/messages",
                                 json={"content": "sleep:4 take your time"}) as resp:
            async for f in frames(resp):
                statuses.add((await rig.session(sid))["status"])
                advert = await rig.advert("idle-r1")
                if advert is not None and sid in held(advert):
                    busy.append(held(advert)[sid].busy)
        # The turn ran for longer than the idle time, and counted as activity throughout.
        assert f.event == "done" and f.data["reason"] == "completed"
        assert statuses == {"active"}
        assert True in busy  # the runner said so while the turn ran

        view = await rig.wait_status(sid, "paused")
        assert view["runner_id"] == "idle-r1"  # warm: its sandbox stays, frozen

        async def frozen() -> bool:
            advert = await rig.advert("idle-r1")
            return advert is not None and sid in held(advert) and held(advert)[sid].frozen
        await eventually(frozen, "the runner to report the sandbox frozen")

        # A message resumes it (warm) and it answers.
        answer = await rig.turn(sid, "Remember the word wren")
        assert text_of(answer) == "I will remember the word wren."


async def test_sessions_past_their_ttl_are_ended_and_their_sandbox_destroyed(tmp_path: Path) -> None:
    async with open_rig(tmp_path, ASH_SESSION_TTL_S="3", ASH_REAP_INTERVAL_S="0.2") as rig:
        rig.runner("ttl-r1", ASH_ADVERT_INTERVAL_S="0.2")
        await rig.ready()
        await rig.deploy()
        sid = (await rig.create())["id"]
        await rig.wait_status(sid, "ended")

        async def sandbox_gone() -> bool:
            advert = await rig.advert("ttl-r1")
            return advert is not None and sid not in held(advert)
        await eventually(sandbox_gone, "the runner to drop the ended session's sandbox")
        assert not (rig.tmp / "ttl-r1" / "sessions" / sid).exists()
        async with rig.http.post(f"{rig.url}/api/sessions/{sid}/messages",
                                 json={"content": "hello?"}) as r:
            assert r.status == 410


# -- orphans -----------------------------------------------------------------------------------------


async def test_sandboxes_without_a_live_session_are_destroyed(tmp_path: Path) -> None:
    async with open_rig(tmp_path, ASH_RUNNER_TTL_S="2", ASH_REAP_INTERVAL_S="0.2") as rig:
        rig.runner("orphan-r1", ASH_ADVERT_INTERVAL_S="0.2")
        await rig.ready()
        ref = await rig.deploy()
        keep = (await rig.create())["id"]
        ended = (await rig.create())["id"]
        # The store ends a session but its EndSession never reaches the runner (as if the
        # coordinator died between the two): done here by hand, in the store's file.
        with sqlite3.connect(rig.tmp / "ash.db") as db:
            db.execute("UPDATE sessions SET status = 'ended' WHERE id = ?", (ended,))
        # A sandbox for a session the store has never heard of.
        stranger = uuid.uuid4().hex
        assert not isinstance(await rig.command("orphan-r1", CreateSession(
            session_id=stranger, agent=ref)), Rejected)
        links = rig.tmp / "orphan-r1" / "sessions"
        assert {keep, ended, stranger} <= {p.name for p in links.iterdir()}

        async def reaped() -> bool:
            advert = await rig.advert("orphan-r1")
            return (advert is not None and not {ended, stranger} & set(held(advert))
                    and not (links / ended).exists() and not (links / stranger).exists())
        await eventually(reaped, "the orphaned sandboxes to be destroyed")
        advert = await rig.advert("orphan-r1")
        assert advert is not None and keep in held(advert)  # the live session keeps its own
        assert (links / keep).exists()
        assert (await rig.session(keep))["status"] == "active"
