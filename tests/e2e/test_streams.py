"""Durable turns, resumable streams, interrupt and one turn at a time, on real processes.

Turns are server-side jobs: a client that leaves cancels nothing, the recorder keeps the
history whether or not anyone listens, and `GET /api/sessions/{id}/events` with
`Last-Event-ID` replays exactly the events after that id, then follows live, from any
coordinator. Two coordinators share one SQLite file and one NATS in each rig here.

The real Claude Code CLI (the package's `e2e` stack, plus a second coordinator) is used where
the conversation matters; the stand-in CLI (`ASH_CLI=standin`) where only timing does. Both
models' `sleep:<s>` prompts spread a reply over s seconds, so a turn is still running while a
test acts on it. Nothing here sleeps in place of a condition: tests wait on events (or poll
the history for one with a deadline).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from ash import AsyncClient, Client
from ash.bundle import pack
from ash.cli import main as ash_main
from ash.embedded_nats import start_nats
from protocol import events
from tests.e2e.conftest import E2E
from tests.e2e.sse import Frame, read_turn, text_of
from tests.procs import ROOT, Stack

pytestmark = pytest.mark.e2e


# -- helpers -----------------------------------------------------------------------------------


async def new_session(http: aiohttp.ClientSession, url: str, agent: str) -> str:
    async with http.post(f"{url}/api/agents", params={"name": agent},
                         data=pack(ROOT / "examples" / "hello")) as r:
        assert r.status == 201, await r.text()
    async with http.post(f"{url}/api/sessions", json={"agent": agent}) as r:
        assert r.status == 201, await r.text()
        return str((await r.json())["id"])


async def frames_until(resp: aiohttp.ClientResponse, stop: Callable[[Frame], bool]) -> list[Frame]:
    """Read frames up to and including the first one `stop` accepts (or to the end)."""
    assert resp.status == 200, await resp.text()
    out: list[Frame] = []
    fields: dict[str, str] = {}
    async for raw in resp.content:
        line = raw.decode().rstrip("\r\n")
        if line.startswith(":"):
            continue
        if not line:
            if fields:
                out.append(Frame(int(fields["id"]), fields["event"], json.loads(fields["data"])))
                fields = {}
                if stop(out[-1]):
                    return out
            continue
        key, _, value = line.partition(": ")
        fields[key] = value
    return out


def first(event: str, n: int = 1) -> Callable[[Frame], bool]:
    """Stop at the n-th frame of type `event`."""
    seen = [0]

    def stop(f: Frame) -> bool:
        seen[0] += f.event == event
        return seen[0] == n

    return stop


async def events_after(http: aiohttp.ClientSession, url: str, sid: str, after: int,
                       **params: str) -> list[Frame]:
    """Re-attach with `Last-Event-ID: after` and read the stream to its end."""
    async with http.get(f"{url}/api/sessions/{sid}/events", params=params,
                        headers={"Last-Event-ID": str(after)}) as r:
        return await read_turn(r)


async def history_when(http: aiohttp.ClientSession, url: str, sid: str,
                       done: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
    """The session's history once `done` holds for it (polled; fails after a minute)."""
    deadline = time.monotonic() + 60
    while True:
        async with http.get(f"{url}/api/sessions/{sid}/messages") as r:
            history: list[dict[str, Any]] = (await r.json())["messages"]
        if done(history):
            return history
        assert time.monotonic() < deadline, f"the history never got there: {history}"
        await asyncio.sleep(0.05)  # poll interval of the condition above


def contiguous(frames: list[Frame], start: int) -> bool:
    return [f.id for f in frames] == list(range(start, start + len(frames)))


def of_turn(history: list[dict[str, Any]], turn_id: str) -> list[dict[str, Any]]:
    return [m for m in history if m["turn_id"] == turn_id]


# -- the real CLI: the package's e2e stack and a second coordinator -----------------------------


@pytest.fixture(scope="module")
def second(e2e: E2E) -> Iterator[str]:
    """A second coordinator process on the e2e stack's SQLite file and NATS."""
    first_url = e2e.stack.url
    proc = e2e.stack.start_coordinator("coordinator-2")
    second_url = e2e.stack.url
    try:
        e2e.stack.wait_ready()
    finally:
        e2e.stack.url = first_url
    yield second_url
    proc.stop()
    e2e.stack.procs.remove(proc)


async def test_a_turn_outlives_its_client_and_another_coordinator_replays_the_rest_once(
    e2e: E2E, second: str
) -> None:
    word = "heron" + uuid.uuid4().hex[:6]
    async with aiohttp.ClientSession() as http:
        sid = await new_session(http, e2e.url, "hello")
        async with http.post(f"{e2e.url}/api/sessions/{sid}/messages",
                             json={"content": f"sleep:2 Remember the word {word}"}) as r:
            turn_id = r.headers["Ash-Turn-Id"]
            start = int(r.headers["Ash-Turn-After"])
            before = await frames_until(r, first("text_delta"))
        # The client has gone mid-reply. Nobody listens; the turn goes on and is recorded.
        history = await history_when(
            http, second, sid, lambda h: any(m["role"] == "result" for m in of_turn(h, turn_id)))
        rest = await events_after(http, second, sid, before[-1].id)
        full = await events_after(http, e2e.url, sid, start)

    reply = f"I will remember the word {word}."
    assert before[-1].event == "text_delta" and text_of(before) != reply  # left mid-reply
    # The rest, exactly once: from the next seq, gapless, to the turn's done.
    assert rest[0].id == before[-1].id + 1 and contiguous(before + rest, start + 1)
    assert rest[-1].event == "done" and rest[-1].data["reason"] == "completed"
    assert [f.data for f in before + rest] == [f.data for f in full]
    assert {f.data["turn_id"] for f in full} == {turn_id} and text_of(full) == reply
    # The history holds the whole turn, recorded with no client connected.
    turn = of_turn(history, turn_id)
    assert [m["role"] for m in turn] == ["user", "assistant", "result"]
    assert turn[-1]["content"]["result"] == reply and not turn[-1]["content"]["is_error"]


async def test_interrupt_stops_a_slow_turn_and_the_conversation_goes_on(
    e2e: E2E, second: str
) -> None:
    word = "plover" + uuid.uuid4().hex[:6]
    async with aiohttp.ClientSession() as http:
        sid = await new_session(http, e2e.url, "hello")
        async with http.post(f"{e2e.url}/api/sessions/{sid}/messages",
                             json={"content": f"sleep:60 Remember the word {word}"}) as r:
            head = await frames_until(r, first("text_delta"))
            async with http.post(f"{second}/api/sessions/{sid}/interrupt") as i:
                assert i.status == 200, await i.text()
                result = await i.json()
            tail = await frames_until(r, lambda f: False)
        async with http.post(f"{e2e.url}/api/sessions/{sid}/interrupt") as i:
            again = (i.status, await i.json())
        async with http.post(f"{second}/api/sessions/{sid}/messages",
                             json={"content": "What was the word?"}) as r:
            after = await read_turn(r)

    turn = head + tail
    done = turn[-1]
    assert done.event == "done" and done.data["reason"] == "interrupted"
    assert contiguous(turn, turn[0].id)
    # The call answered with the turn's own done, so the next message was taken at once.
    assert result == {"session_id": sid, "interrupted": True, "turn_id": done.data["turn_id"],
                      "done_seq": done.id, "reason": "interrupted"}
    # What the CLI said agrees: its result is an error, and no full reply was streamed.
    completes = [f.data for f in turn if f.event == "turn_complete"]
    assert completes and all(c["is_error"] for c in completes)
    assert text_of(turn) != f"I will remember the word {word}."
    assert "error" not in {f.event for f in turn}  # an interrupt is not a failure
    # Nothing runs now; the conversation goes on with the interrupted turn in it.
    assert again[0] == 409 and again[1]["error"]["code"] == "conflict"
    assert text_of(after) == f"The word was {word}."
    assert after[-1].data["reason"] == "completed" and after[0].id == done.id + 1


async def test_an_interrupt_as_soon_as_the_turn_starts_still_stops_it(e2e: E2E) -> None:
    # Before the CLI has begun the turn an interrupt is easily lost; it must not be.
    async with aiohttp.ClientSession() as http:
        sid = await new_session(http, e2e.url, "hello")
        for k in range(4):
            async with http.post(f"{e2e.url}/api/sessions/{sid}/messages",
                                 json={"content": f"sleep:5 Remember the word early{k}"}) as r:
                async with http.post(f"{e2e.url}/api/sessions/{sid}/interrupt") as i:
                    assert i.status == 200, await i.text()
                    result = await i.json()
                turn = await read_turn(r)
            assert turn[-1].data["reason"] == "interrupted" == result["reason"], turn[-1]
            assert not [f for f in turn if f.event == "turn_complete" and not f.data["is_error"]]
            assert text_of(turn) != f"I will remember the word early{k}."


# -- the stand-in CLI: two coordinators of their own ---------------------------------------------


@dataclass
class Rig:
    stack: Stack
    a: str  # coordinator A's url
    b: str  # coordinator B's url


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("streams")
    server = start_nats(tmp / "nats", log_path=tmp / "nats.log")
    stack = Stack(tmp, server.url)
    try:
        stack.start_coordinator("coordinator-a")
        a = stack.url
        stack.start_coordinator("coordinator-b")
        b = stack.url
        stack.start_runner("stream-runner", ASH_CLI="standin")
        stack.wait_ready()
        stack.url = a
        stack.wait_ready()
        yield Rig(stack, a, b)
    finally:
        stack.stop()
        server.stop()


async def test_a_dropped_client_re_attaches_live_through_the_other_coordinator(rig: Rig) -> None:
    async with aiohttp.ClientSession() as http:
        sid = await new_session(http, rig.a, "streams")
        async with http.post(f"{rig.a}/api/sessions/{sid}/messages",
                             json={"content": "sleep:3 hello there"}) as r:
            turn_id = r.headers["Ash-Turn-Id"]
            start = int(r.headers["Ash-Turn-After"])
            before = await frames_until(r, first("text_delta"))
        # Gone mid-reply; re-attach at once through B, which follows the turn live to its end.
        rest = await events_after(http, rig.b, sid, before[-1].id)
        full = await events_after(http, rig.a, sid, start)
        async with http.get(f"{rig.b}/api/sessions/{sid}/messages") as r:
            history = (await r.json())["messages"]

    assert rest[0].id == before[-1].id + 1 and contiguous(before + rest, start + 1)
    assert [f.data for f in before + rest] == [f.data for f in full]
    assert {f.data["turn_id"] for f in full} == {turn_id}
    assert rest[-1].event == "done" and rest[-1].data["reason"] == "completed"
    # B wrote done only once the history was recorded (by either coordinator's recorder).
    assert [m["role"] for m in of_turn(history, turn_id)] == ["user", "assistant", "result"]


async def test_attach_without_an_id_gets_the_running_turn_from_its_start(rig: Rig) -> None:
    async with aiohttp.ClientSession() as http:
        sid = await new_session(http, rig.a, "streams")
        async with http.post(f"{rig.a}/api/sessions/{sid}/messages", json={"content": "hi"}) as r:
            first_turn = await read_turn(r)
        async with http.post(f"{rig.a}/api/sessions/{sid}/messages",
                             json={"content": "sleep:2 second"}) as r:
            head = await frames_until(r, first("text_delta"))
            async with http.get(f"{rig.b}/api/sessions/{sid}/events") as attached:
                whole = await read_turn(attached)
            tail = await frames_until(r, lambda f: False)

    assert whole[0].event == "session_start" and whole[0].id == first_turn[-1].id + 1
    assert [f.data for f in whole] == [f.data for f in head + tail]


async def test_a_finished_turn_replays_to_its_done_and_an_idle_session_ends_at_once(rig: Rig) -> None:
    async with aiohttp.ClientSession() as http:
        sid = await new_session(http, rig.a, "streams")
        async with http.post(f"{rig.a}/api/sessions/{sid}/messages", json={"content": "hi"}) as r:
            one = await read_turn(r)
        async with http.post(f"{rig.a}/api/sessions/{sid}/messages", json={"content": "hey"}) as r:
            two = await read_turn(r)
        from_middle = await events_after(http, rig.b, sid, one[2].id)  # ends at turn one's done
        async with http.get(f"{rig.b}/api/sessions/{sid}/events",
                            params={"after": str(one[-1].id)}) as r:
            by_query = await read_turn(r)
        nothing = await events_after(http, rig.b, sid, two[-1].id)
        errors = []
        for headers, params in (({"Last-Event-ID": "x"}, {}), ({}, {"after": "-1"}),
                                ({}, {"follow": "forever"})):
            async with http.get(f"{rig.a}/api/sessions/{sid}/events", headers=headers,
                                params=params) as r:
                errors.append((r.status, (await r.json())["error"]["code"]))
        async with http.get(f"{rig.a}/api/sessions/nope/events") as r:
            missing = (r.status, (await r.json())["error"]["code"])

    assert [f.data for f in from_middle] == [f.data for f in one[3:]]
    assert [f.data for f in by_query] == [f.data for f in two]
    assert nothing == []
    assert errors == [(400, "bad_request")] * 3 and missing == (404, "not_found")


async def test_follow_session_streams_turn_after_turn(rig: Rig) -> None:
    async with aiohttp.ClientSession() as http:
        sid = await new_session(http, rig.a, "streams")
        async with http.get(f"{rig.b}/api/sessions/{sid}/events",
                            params={"follow": "session"}) as watch:
            turns = []
            for text in ("one", "two"):
                async with http.post(f"{rig.a}/api/sessions/{sid}/messages",
                                     json={"content": text}) as r:
                    turns += await read_turn(r)
            seen = await frames_until(watch, first("done", 2))

    assert [f.data for f in seen] == [f.data for f in turns]
    assert [f.event for f in seen].count("done") == 2 and contiguous(seen, 1)


async def test_interrupt_ends_the_turn_and_the_session_takes_the_next(rig: Rig) -> None:
    async with aiohttp.ClientSession() as http:
        sid = await new_session(http, rig.a, "streams")
        async with http.post(f"{rig.a}/api/sessions/{sid}/interrupt") as i:
            idle = (i.status, (await i.json())["error"])
        async with http.post(f"{rig.a}/api/sessions/{sid}/messages",
                             json={"content": "sleep:60 a long answer"}) as r:
            head = await frames_until(r, first("text_delta"))
            async with http.post(f"{rig.b}/api/sessions/{sid}/interrupt") as i:
                assert i.status == 200, await i.text()
                result = await i.json()
            tail = await frames_until(r, lambda f: False)
        async with http.post(f"{rig.a}/api/sessions/{sid}/messages", json={"content": "hi"}) as r:
            again = await read_turn(r)

    assert idle[0] == 409 and idle[1]["code"] == "conflict" and "no turn" in idle[1]["message"]
    assert tail[-1].event == "done" and tail[-1].data["reason"] == "interrupted"
    assert result["done_seq"] == tail[-1].id and result["reason"] == "interrupted"
    assert contiguous(head + tail, head[0].id)
    assert again[-1].data["reason"] == "completed" and again[0].id == tail[-1].id + 1


async def test_a_second_message_while_a_turn_runs_is_a_409(rig: Rig) -> None:
    async with aiohttp.ClientSession() as http:
        sid = await new_session(http, rig.a, "streams")
        async with http.post(f"{rig.a}/api/sessions/{sid}/messages",
                             json={"content": "sleep:2 first"}) as r:
            await frames_until(r, first("user_message"))
            async with http.post(f"{rig.b}/api/sessions/{sid}/messages",
                                 json={"content": "second"}) as second:
                refused = (second.status, await second.json())
            rest = await frames_until(r, lambda f: False)
        async with http.post(f"{rig.a}/api/sessions/{sid}/messages", json={"content": "hi"}) as r:
            later = await read_turn(r)

    status, body = refused
    assert status == 409 and body["error"]["code"] == "conflict", body
    assert "running" in body["error"]["message"] and "interrupt" in body["error"]["message"]
    assert body["error"]["retryable"] is True
    # The refused message did not disturb the running turn, and once it ended a message works.
    assert rest[-1].event == "done" and rest[-1].data["reason"] == "completed"
    assert later[-1].data["reason"] == "completed" and later[0].id == rest[-1].id + 1


# -- the client and the CLI --------------------------------------------------------------------


class CuttingProxy:
    """A loopback TCP forwarder that cuts each connection after `limit` response bytes."""

    def __init__(self, target_port: int, limit: int) -> None:
        self.target_port, self.limit, self.cuts = target_port, limit, 0
        self.server: asyncio.AbstractServer | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.close()
        for w in self.writers:
            with contextlib.suppress(OSError):
                await w.wait_closed()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers += [writer, up_w]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, limit: int | None) -> None:
            sent = 0
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    if limit is not None and sent + len(data) > limit:
                        dst.write(data[: limit - sent])
                        self.cuts += 1
                        break
                    dst.write(data)
                    sent += len(data)
            dst.close()

        # Each direction ends when its source ends; a cut closes both.
        await asyncio.gather(pipe(up_r, writer, self.limit), pipe(reader, up_w, None))


async def test_the_client_re_attaches_when_its_connection_breaks_mid_turn(rig: Rig) -> None:
    port = int(rig.a.rsplit(":", 1)[1])
    async with aiohttp.ClientSession() as http:
        sid = await new_session(http, rig.a, "streams")
    # Every connection through the proxy is cut after 1.5 KB of response: the turn's stream
    # breaks after its first events, and so do the re-attaches; the client still yields every
    # event of the turn exactly once.
    proxy = CuttingProxy(port, 1500)
    async with proxy as url, AsyncClient(url) as client:
        got = [ev async for ev in client.send(sid, "sleep:1 hello through a bad link")]
    async with AsyncClient(rig.a) as client:
        full = [ev async for ev in client.stream(sid, after=got[0].seq - 1)]
    assert proxy.cuts >= 2
    assert got == full and [e.seq for e in got] == list(range(got[0].seq, got[-1].seq + 1))
    assert isinstance(got[0], events.SessionStart)
    assert isinstance(got[-1], events.Done) and got[-1].reason == "completed"


def test_blocking_client_streams_and_interrupts(rig: Rig) -> None:
    with Client(rig.b) as ash:
        ash.deploy(ROOT / "examples" / "hello", "streams")
        session = ash.create_session("streams")
        turn = ash.send(session.id, "sleep:60 slowly")
        head = [next(turn), next(turn)]
        result = ash.interrupt(session.id)
        tail = list(turn)
        replay = list(ash.stream(session.id, head[0].seq - 1))
    assert isinstance(tail[-1], events.Done) and tail[-1].reason == "interrupted"
    assert (result.interrupted, result.done_seq, result.reason) == (True, tail[-1].seq, "interrupted")
    assert replay == head + tail


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = ash_main(list(argv))
    return code, out.getvalue(), err.getvalue()


async def test_cli_attach_and_interrupt(rig: Rig) -> None:
    async with AsyncClient(rig.a) as client:
        await client.deploy(ROOT / "examples" / "hello", "streams")
        sid = (await client.create_session("streams")).id
        turn = [ev async for ev in client.send(sid, "Hello there")]
    code, out, _ = await asyncio.to_thread(
        run_cli, "attach", sid, "--after", str(turn[0].seq - 1), "--url", rig.b, "--json")
    assert code == 0
    assert [json.loads(line)["seq"] for line in out.splitlines()] == [e.seq for e in turn]
    code, out, _ = await asyncio.to_thread(run_cli, "attach", sid, "--after", str(turn[1].seq),
                                           "--url", rig.b)
    assert code == 0 and out == "Hello! I am Ash's offline scripted model (no ANTHROPIC_API_KEY " \
                                 "is set). You said: Hello there\n"
    code, _, err = await asyncio.to_thread(run_cli, "interrupt", sid, "--url", rig.a)
    assert code == 1 and "no turn is running" in err
