"""A runner's drain on SIGTERM, with real processes: it advertises `draining` and refuses new
sessions (placement sends them elsewhere), lets a running turn finish, interrupts one that
outlasts ASH_DRAIN_TIMEOUT_S saying why, snapshots, leaves the registry and exits; its sessions
become paused and resume cold on another runner with everything said up to the drain. A second
signal forces the stop."""

from __future__ import annotations

import json
import signal
import time
import uuid
from pathlib import Path

import aiohttp
import pytest

from protocol.commands import CreateSession, Rejected
from protocol.errors import ErrorCode
from protocol.runners import RunnerAdvert
from tests.e2e.sse import Frame, text_of
from tests.e2e.test_lifetimes import DEADLINE_S, Rig, eventually, frames, held, open_rig
from tests.procs import Proc, free_port

pytestmark = pytest.mark.e2e

COORDINATOR = {"ASH_RUNNER_TTL_S": "2", "ASH_REAP_INTERVAL_S": "0.2"}
RUNNER = {"ASH_ADVERT_INTERVAL_S": "0.2"}


async def draining(rig: Rig, runner_id: str) -> RunnerAdvert:
    async def check() -> RunnerAdvert | None:
        advert = await rig.advert(runner_id)
        return advert if advert is not None and advert.draining else None
    return await eventually(check, f"{runner_id} to advertise draining")


async def endless_turn_cut_by_sigterm(rig: Rig, sid: str, proc: Proc) -> list[Frame]:
    """Send `sid` an endless turn and SIGTERM its runner at the first text; every frame read."""
    got: list[Frame] = []
    async with rig.http.post(f"{rig.url}/api/sessions/{sid}/messages",
                             json={"content": "sleep:120 an endless story"}) as resp:
        async for f in frames(resp):
            got.append(f)
            if f.event == "text_delta" and proc.popen.returncode is None and \
                    sum(x.event == "text_delta" for x in got) == 1:
                proc.popen.send_signal(signal.SIGTERM)
    return got


def shutdown_lines(proc: Proc) -> list[str]:
    """The runner's log from its drain on: each close step says how it ended."""
    lines = []
    for raw in proc.log.read_text(errors="replace").splitlines():
        try:
            lines.append(json.loads(raw)["msg"])
        except (ValueError, KeyError):
            continue
    start = next(i for i, line in enumerate(lines) if " draining: " in line)
    return lines[start:]


async def test_sigterm_lets_the_running_turn_finish_then_the_session_resumes_elsewhere(
    tmp_path: Path,
) -> None:
    word = "plover" + uuid.uuid4().hex[:6]
    later = "curlew" + uuid.uuid4().hex[:6]
    async with open_rig(tmp_path, **COORDINATOR) as rig:
        # No snapshot after a turn for a minute: what the turn during the drain says can only
        # reach the next runner through the drain's own snapshot.
        old = rig.runner("drain-a", ASH_DRAIN_TIMEOUT_S="60", ASH_SNAPSHOT_DEBOUNCE_S="60",
                         **RUNNER)
        await rig.ready()
        ref = await rig.deploy()
        sid = (await rig.create())["id"]
        assert text_of(await rig.turn(sid, f"Remember the word {word}")) == \
            f"I will remember the word {word}."
        rig.runner("drain-b", **RUNNER)
        await rig.ready(runners=2)

        got: list[Frame] = []
        async with rig.http.post(f"{rig.url}/api/sessions/{sid}/messages",
                                 json={"content": f"sleep:3 remember the word {later}"}) as resp:
            async for f in frames(resp):
                got.append(f)
                if f.event != "text_delta" or sum(x.event == "text_delta" for x in got) > 1:
                    continue
                # First text of the turn: stop the runner while the turn runs.
                old.popen.send_signal(signal.SIGTERM)
                advert = await draining(rig, "drain-a")
                assert sid in held(advert) and held(advert)[sid].busy
                # New sessions are refused there (retryable), and placed on the other runner.
                refused = await rig.command("drain-a", CreateSession(
                    session_id=uuid.uuid4().hex, agent=ref))
                assert isinstance(refused, Rejected)
                assert (refused.error.code, refused.error.retryable) == (ErrorCode.runner_busy, True)
                assert (await rig.create())["runner_id"] == "drain-b"

        # The turn ran to its end: the drain waited for it.
        assert got[-1].event == "done" and got[-1].data["reason"] == "completed"
        assert "error" not in {f.event for f in got}
        assert text_of(got) == f"I will remember the word {later}."
        assert await rig.wait_exit(old) == 0
        assert await rig.advert("drain-a") is None  # it left the registry
        view = await rig.wait_status(sid, "paused")
        assert view["runner_id"] is None
        # Cold-resumable: the next message resumes it on the other runner, with the whole
        # conversation, the turn that finished during the drain included.
        assert text_of(await rig.turn(sid, "What was the word?")) == f"The word was {later}."
        assert (await rig.session(sid))["runner_id"] == "drain-b"
        history = await rig.history(sid)
        assert [m["content"] for m in history if m["role"] == "user"] == [
            f"Remember the word {word}", f"sleep:3 remember the word {later}",
            "What was the word?"]


async def test_a_turn_past_the_drain_deadline_is_interrupted_and_says_why(tmp_path: Path) -> None:
    word = "avocet" + uuid.uuid4().hex[:6]
    async with open_rig(tmp_path, **COORDINATOR) as rig:
        proc = rig.runner("deadline-a", ASH_DRAIN_TIMEOUT_S="1", **RUNNER)
        await rig.ready()
        await rig.deploy()
        sid = (await rig.create())["id"]
        assert text_of(await rig.turn(sid, f"Remember the word {word}")) == \
            f"I will remember the word {word}."
        got = await endless_turn_cut_by_sigterm(rig, sid, proc)
        assert [f.event for f in got[-2:]] == ["error", "done"]
        error = got[-2].data["error"]
        assert error["code"] == ErrorCode.interrupted and error["retryable"] is True
        assert "shutting down" in error["message"] and "1 s" in error["message"]
        assert got[-1].data["reason"] == "interrupted"
        assert await rig.wait_exit(proc) == 0
        assert (await rig.wait_status(sid, "paused"))["runner_id"] is None
        # Cold-resumable on a new runner, the conversation before the cut kept.
        rig.runner("deadline-b", **RUNNER)
        await rig.ready()
        assert text_of(await rig.turn(sid, "Which word?")) == f"The word was {word}."
        assert (await rig.session(sid))["runner_id"] == "deadline-b"


async def test_a_second_signal_stops_the_runner_without_waiting(tmp_path: Path) -> None:
    async with open_rig(tmp_path, **COORDINATOR) as rig:
        proc = rig.runner("force-a", ASH_DRAIN_TIMEOUT_S="600", **RUNNER)
        await rig.ready()
        await rig.deploy()
        sid = (await rig.create())["id"]
        got: list[Frame] = []
        async with rig.http.post(f"{rig.url}/api/sessions/{sid}/messages",
                                 json={"content": "sleep:120 an endless story"}) as resp:
            async for f in frames(resp):
                got.append(f)
                if f.event == "text_delta" and sum(x.event == "text_delta" for x in got) == 1:
                    proc.popen.send_signal(signal.SIGTERM)
                    await draining(rig, "force-a")
                    signalled = time.monotonic()
                    proc.popen.send_signal(signal.SIGINT)  # an impatient operator's Ctrl-C
        # Far sooner than the drain deadline (600 s) or the turn (120 s) would allow.
        assert await rig.wait_exit(proc, timeout=DEADLINE_S) == 0
        assert time.monotonic() - signalled < DEADLINE_S
        assert got[-1].event == "done" and got[-1].data["reason"] == "interrupted"
        assert "second time" in got[-2].data["error"]["message"]
        assert (await rig.wait_status(sid, "paused"))["runner_id"] is None


async def test_a_drained_runner_exits_with_a_metrics_client_connected_and_a_turn_running(
    tmp_path: Path,
) -> None:
    async with open_rig(tmp_path, **COORDINATOR) as rig:
        port = free_port()
        proc = rig.runner("exit-a", ASH_DRAIN_TIMEOUT_S="1", ASH_RUNNER_METRICS_PORT=str(port),
                          **RUNNER)
        await rig.ready()
        await rig.deploy()
        sid = (await rig.create())["id"]
        # A scraper that keeps its connection to the metrics server open (HTTP keep-alive),
        # as Prometheus does, across the whole shutdown.
        async with aiohttp.ClientSession() as scraper:
            async with scraper.get(f"http://127.0.0.1:{port}/metrics") as r:
                assert r.status == 200 and "ash_runner_sessions" in await r.text()
            got = await endless_turn_cut_by_sigterm(rig, sid, proc)
            assert got[-1].event == "done" and got[-1].data["reason"] == "interrupted"
            assert await rig.wait_exit(proc) == 0, proc.tail()
        assert await rig.advert("exit-a") is None  # it left the registry
        assert (await rig.wait_status(sid, "paused"))["runner_id"] is None
        # Every close ended well within its budget, and the log names each one.
        lines = shutdown_lines(proc)
        closed = [line.split()[2] for line in lines if line.startswith("shutdown: closed ")]
        for name in ("intake", "sessions", "heartbeat", "metrics", "warm", "nats"):
            assert name in closed, lines
        assert not [line for line in lines if line.startswith("shutdown: ") and
                    not line.startswith("shutdown: closed ")], lines
        assert lines[-1] == "runner exit-a stopped", lines
