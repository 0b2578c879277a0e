"""A NATS restart is survived by coordinators and runners without anyone touching them.

nats-server is stopped and started again on the same port and JetStream directory, as after an
upgrade or a crash of the bus. The coordinator and the runner reconnect by themselves: the
session made before the restart takes another turn, a new session can be created and placed
(the registry watch came back), and the history of both is recorded (the recorder's durable
consumer came back).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from ash.bundle import pack
from ash.embedded_nats import NatsServer
from tests.e2e.sse import read_turn, text_of
from tests.procs import ROOT, Stack

pytestmark = pytest.mark.e2e

RUNNER_ENV = {"ASH_CLI": "standin", "ASH_POOL_GENERIC": "1", "ASH_POOL_WARM_MAX": "0"}


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[tuple[NatsServer, Stack, list[NatsServer]]]:
    nats = NatsServer(tmp_path / "nats", log_path=tmp_path / "nats.log").start()
    stack = Stack(tmp_path, nats.url)
    restarted: list[NatsServer] = []
    try:
        stack.start_coordinator()
        stack.start_runner("runner", **RUNNER_ENV)
        stack.wait_ready()
        yield nats, stack, restarted
    finally:
        stack.stop()
        for server in (nats, *restarted):
            server.stop()


async def turn(http: aiohttp.ClientSession, url: str, sid: str, text: str) -> str:
    async with http.post(f"{url}/api/sessions/{sid}/messages", json={"content": text}) as r:
        assert r.status == 200, await r.text()
        return text_of(await read_turn(r))


async def until(what: str, check: object, timeout: float = 60.0) -> None:
    """Poll the async predicate `check` until true (other processes reconnecting)."""
    deadline = time.monotonic() + timeout
    while not await check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        await asyncio.sleep(0.1)  # poll interval of a condition kept by other processes


async def test_coordinator_and_runner_survive_a_nats_restart(
    bus: tuple[NatsServer, Stack, list[NatsServer]],
) -> None:
    nats, stack, stop_later = bus
    url = stack.url
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/api/agents?name=hello", data=pack(ROOT / "examples" / "hello"),
                             headers={"Content-Type": "application/gzip"}) as r:
            assert r.status == 201, await r.text()
        async with http.post(f"{url}/api/sessions", json={"agent": "hello"}) as r:
            assert r.status == 201, await r.text()
            before = (await r.json())["id"]
        assert await turn(http, url, before, "Remember the word osprey") == \
            "I will remember the word osprey."

        nats.stop()
        again = NatsServer(nats.data_dir, port=nats.port, log_path=nats.log_path).start()
        stop_later.append(again)

        async def health() -> bool:
            async with http.get(f"{url}/health") as h:
                body = await h.json()
                return bool(body["nats"]) and body["runners"] == 1

        await until("the coordinator reconnecting and seeing the runner again", health)

        # The session from before the restart goes on, on the same runner.
        assert await turn(http, url, before, "What was the word?") == "The word was osprey."
        # A new session is placed and runs a turn.
        async with http.post(f"{url}/api/sessions", json={"agent": "hello"}) as r:
            assert r.status == 201, await r.text()
            after = (await r.json())["id"]
        assert await turn(http, url, after, "Remember the word tern") == \
            "I will remember the word tern."

        async def recorded() -> bool:
            counts = []
            for sid in (before, after):
                async with http.get(f"{url}/api/sessions/{sid}/messages") as m:
                    counts.append(len((await m.json())["messages"]))
            return counts[0] >= 6 and counts[1] >= 3

        # The recorder's durable consumer resumed: both turns after the restart are history.
        await until("the history of the turns after the restart", recorded)
