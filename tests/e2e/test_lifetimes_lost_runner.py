"""What a client sees of a session whose runner dies, and of a paused session, with real
processes and the default lifetimes settings (ASH_RUNNER_TTL_S 4, ASH_ADVERT_INTERVAL_S 1,
ASH_REAP_INTERVAL_S 1):

- right after its runner is killed with SIGKILL, the session is still `active`: a message,
  an exec or a files call answers 503 `runner_unreachable` in the one JSON error shape,
  retryable (not a hang, not a 500), until the reaper pauses the session;
- the reaper pauses it within about one TTL and one sweep (the time is printed, never
  asserted); from then on exec and files answer 409 saying to resume first, and a message
  resumes it cold on a live runner, memory intact;
- a paused session (warm, after POST /pause) refuses exec and files the same way, and works
  again once resumed;
- a runner counts a turn and an exec as activity until they end, so the idle clock of a
  session starts at their end, not their start.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from protocol.errors import ErrorCode
from protocol.runners import SessionActivity
from tests.e2e.sse import read_turn, text_of
from tests.e2e.test_lifetimes import Rig, eventually, held, open_rig

pytestmark = pytest.mark.e2e

# No request may hang: every answer comes well within this (a hang would be the bus timeout).
ANSWER = aiohttp.ClientTimeout(total=10)


async def call(rig: Rig, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    """One request; the body decoded when it is JSON."""
    async with rig.http.request(method, rig.url + path, timeout=ANSWER, **kw) as r:
        if r.content_type == "application/json":
            return r.status, await r.json()
        return r.status, await r.read()


def assert_error(status: int, body: Any, want_status: int, code: str, retryable: bool) -> str:
    """The one error shape, with this status and code; returns the message."""
    assert status == want_status, body
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "retryable"}
    assert (body["error"]["code"], body["error"]["retryable"]) == (code, retryable), body
    return str(body["error"]["message"])


async def exec_and_files_refused_as_paused(rig: Rig, sid: str) -> None:
    """Exec and every files route answer 409, telling the client to resume first."""
    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", f"/api/sessions/{sid}/exec", {"json": {"command": "true"}}),
        ("GET", f"/api/sessions/{sid}/files", {}),
        ("GET", f"/api/sessions/{sid}/files/content", {"params": {"path": "CLAUDE.md"}}),
        ("PUT", f"/api/sessions/{sid}/files/content", {"params": {"path": "x.txt"}, "data": b"x"}),
        ("DELETE", f"/api/sessions/{sid}/files/content", {"params": {"path": "CLAUDE.md"}}),
        ("GET", f"/api/sessions/{sid}/workspace", {}),
    ]
    for method, path, kw in requests:
        message = assert_error(*await call(rig, method, path, **kw), 409, ErrorCode.conflict, False)
        assert "paused" in message and "resume it first" in message, (method, path, message)
        assert f"/api/sessions/{sid}/resume" in message


async def test_a_session_whose_runner_died_answers_503_until_paused_then_resumes_cold(
    tmp_path: Path,
) -> None:
    word = "egret" + uuid.uuid4().hex[:6]
    async with open_rig(tmp_path) as rig:  # the default TTL, advert interval and sweep
        r1 = rig.runner("lost-r1")
        await rig.ready()
        await rig.deploy()
        sid = (await rig.create())["id"]
        assert text_of(await rig.turn(sid, f"Remember the word {word}")) == \
            f"I will remember the word {word}."
        await eventually(lambda: rig.has_snapshot(sid), "the snapshot after the turn")
        rig.runner("lost-r2")
        await rig.ready(runners=2)

        r1.popen.kill()  # SIGKILL: no drain, no goodbye
        killed_at = time.monotonic()
        assert rig.forget(r1) == -9
        # At once (its advert is still fresh for seconds): the session is active on a runner
        # that is gone. A message and an exec are refused, retryably, and change nothing.
        status, body = await call(rig, "POST", f"/api/sessions/{sid}/messages",
                                  json={"content": "What was the word?"})
        message = assert_error(status, body, 503, ErrorCode.runner_unreachable, True)
        assert "lost-r1" in message and "retry" in message
        status, body = await call(rig, "POST", f"/api/sessions/{sid}/exec",
                                  json={"command": "true"})
        assert_error(status, body, 503, ErrorCode.runner_unreachable, True)

        # Until the reaper pauses it, every call that needs the sandbox says the same.
        answers: list[int] = []

        async def paused() -> dict[str, Any] | None:
            view = await rig.session(sid)
            if view["status"] == "paused":
                return view
            assert view["status"] == "active", view  # never anything else on the way
            status, body = await call(rig, "GET", f"/api/sessions/{sid}/files")
            if status != 409:  # 409: paused since the status was read
                assert_error(status, body, 503, ErrorCode.runner_unreachable, True)
                answers.append(status)
            return None
        view = await eventually(paused, "the reaper to pause the session of the dead runner")
        paused_after = time.monotonic() - killed_at
        print(f"\nsession paused {paused_after:.2f} s after its runner was killed "
              f"({len(answers)} files calls answered 503 meanwhile)")
        assert view["runner_id"] is None  # cold: its sandbox died with the runner
        assert answers  # the poll above saw the session active at least once

        await exec_and_files_refused_as_paused(rig, sid)
        # A message resumes it cold on the live runner, and the conversation goes on.
        async with rig.http.post(f"{rig.url}/api/sessions/{sid}/messages",
                                 json={"content": "What was the word?"}) as r:
            assert text_of(await read_turn(r)) == f"The word was {word}."
        view = await rig.session(sid)
        assert (view["status"], view["runner_id"]) == ("active", "lost-r2")
        status, body = await call(rig, "GET", f"/api/sessions/{sid}/files/content",
                                  params={"path": "CLAUDE.md"})
        assert status == 200 and body  # its workspace came along


async def test_exec_and_files_on_a_paused_session_say_to_resume_first(tmp_path: Path) -> None:
    async with open_rig(tmp_path) as rig:
        rig.runner("paused-r1")
        await rig.ready()
        await rig.deploy()
        sid = (await rig.create())["id"]
        status, _ = await call(rig, "PUT", f"/api/sessions/{sid}/files/content",
                               params={"path": "note.txt"}, data=b"kept\n")
        assert status == 201
        status, view = await call(rig, "POST", f"/api/sessions/{sid}/pause")
        assert status == 200 and (view["status"], view["runner_id"]) == ("paused", "paused-r1")

        await exec_and_files_refused_as_paused(rig, sid)
        status, _ = await call(rig, "GET", f"/api/sessions/{sid}/files/content",
                               params={"path": "note.txt"})
        assert status == 409  # refused, not served from the frozen sandbox

        status, view = await call(rig, "POST", f"/api/sessions/{sid}/resume")
        assert status == 200 and view["status"] == "active"
        status, body = await call(rig, "GET", f"/api/sessions/{sid}/files/content",
                                  params={"path": "note.txt"})
        assert (status, body) == (200, b"kept\n")
        async with rig.http.post(f"{rig.url}/api/sessions/{sid}/exec",
                                 json={"command": "cat note.txt"}) as r:
            frames = await read_turn(r)
        assert "".join(f.data["data"] for f in frames if f.event == "exec_stdout") == "kept\n"
        assert frames[-1].event == "exec_exit" and frames[-1].data["exit_code"] == 0


async def test_a_turn_and_an_exec_are_activity_until_they_end(tmp_path: Path) -> None:
    """The runner's report of a session's idleness counts from the end of its last turn or
    exec: a long one must not leave the session looking idle for as long as it ran."""
    async with open_rig(tmp_path) as rig:
        rig.runner("active-r1", ASH_ADVERT_INTERVAL_S="0.2")
        await rig.ready()
        await rig.deploy()
        sid = (await rig.create())["id"]

        async def report_after(wall: float) -> SessionActivity:
            async def check() -> SessionActivity | None:
                advert = await rig.advert("active-r1")
                return held(advert)[sid] if advert is not None and advert.ts > wall else None
            return await eventually(check, "an advert from after the end")

        for what, path, body in [
            ("turn", "messages", {"content": "sleep:3 tell me a story"}),
            ("exec", "exec", {"command": "sleep 3; echo done"}),
        ]:
            started = time.monotonic()
            async with rig.http.post(f"{rig.url}/api/sessions/{sid}/{path}", json=body) as r:
                frames = await read_turn(r)
            assert frames[-1].event in ("done", "exec_exit"), frames[-1]
            took = time.monotonic() - started
            seen = await report_after(time.time())
            # Idle only since it ended: counted from its start, idle_s would be more than it
            # took (at least 3 s); since its end, it is about one advert interval.
            assert not seen.busy, what
            assert seen.idle_s < took / 2, (what, seen, took)
        assert (await rig.session(sid))["status"] == "active"
