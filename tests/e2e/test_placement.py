"""Placement on a real stack: two runners, one coordinator, and sessions landing where the
policy says.

Real nats-server, coordinator and runner processes, real bwrap sandboxes with the stand-in
CLI. The coordinator packs (the default) with a single choice, so that where a session goes
is exact: without a warm sandbox or a label to say otherwise, the fuller runner. The runners
advertise every 0.1 s, and warm sandboxes are made by sending WarmAgent to one runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import tarfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import nats
import pytest
from nats.js.kv import KeyValue

from ash.embedded_nats import start_nats
from protocol import codec, subjects
from protocol.commands import Accepted, AgentRef, WarmAgent
from protocol.runners import Resources, RunnerAdvert
from tests.procs import Stack

pytestmark = pytest.mark.e2e

A, B = "place-a", "place-b"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("placement")
    server = start_nats(tmp / "nats", log_path=tmp / "nats.log")
    stack = Stack(tmp, server.url)
    try:
        stack.start_coordinator(ASH_PLACEMENT_CHOICES="1")
        for name, zone in ((A, "a"), (B, "b")):
            stack.start_runner(name, ASH_CLI="standin", ASH_ADVERT_INTERVAL_S="0.1",
                               ASH_POOL_GENERIC="0", ASH_TMP_MB="16",
                               ASH_RUNNER_LABELS=f"zone={zone},tier=test")
        stack.wait_ready(runners=2)
        yield stack
    finally:
        stack.stop()
        server.stop()


@dataclass
class Rig:
    stack: Stack
    http: aiohttp.ClientSession
    nc: nats.NATS
    kv: KeyValue

    async def deploy(self, ash_toml: str = "") -> tuple[int, dict[str, Any]]:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for name, text in {"CLAUDE.md": "You are a test agent.\n", "ash.toml": ash_toml}.items():
                info = tarfile.TarInfo(name)
                info.size = len(text.encode())
                tar.addfile(info, io.BytesIO(text.encode()))
        async with self.http.post(f"{self.stack.url}/api/agents",
                                  params={"name": f"pl-{uuid.uuid4().hex[:8]}"},
                                  data=buf.getvalue(),
                                  headers={"Content-Type": "application/gzip"}) as r:
            return r.status, await r.json()

    async def create(self, agent: str) -> tuple[int, dict[str, Any]]:
        async with self.http.post(f"{self.stack.url}/api/sessions", json={"agent": agent}) as r:
            return r.status, await r.json()

    async def end(self, sid: str) -> None:
        async with self.http.delete(f"{self.stack.url}/api/sessions/{sid}") as r:
            assert r.status == 200, await r.text()

    async def warm(self, runner_id: str, agent: dict[str, Any]) -> None:
        """Have one runner fill the agent's warm pool (no session is placed by it)."""
        cmd = WarmAgent(agent=AgentRef(name=agent["name"], digest=agent["digest"]))
        msg = await self.nc.request(subjects.runner_commands(runner_id), codec.encode(cmd),
                                    timeout=30)
        assert isinstance(codec.decode_reply(msg.data), Accepted)

    async def advert(self, runner_id: str) -> tuple[int, RunnerAdvert]:
        entry = await self.kv.get(runner_id)
        return entry.revision or 0, codec.decode_advert(entry.value or b"")

    async def settled(self, runner_id: str, check: Callable[[RunnerAdvert], bool]) -> RunnerAdvert:
        """The runner's advert once `check` holds for two adverts in a row: the coordinator's
        watch has then seen the first of them (adverts come every 0.1 s)."""
        deadline = time.monotonic() + 30
        first: int | None = None
        while True:
            revision, advert = await self.advert(runner_id)
            if not check(advert):
                first = None
            elif first is None:
                first = revision
            elif revision > first:
                return advert
            assert time.monotonic() < deadline, f"{runner_id}: {advert}"
            await asyncio.sleep(0.05)  # poll the registry, written by another process


@contextlib.asynccontextmanager
async def open_rig(stack: Stack) -> AsyncIterator[Rig]:
    nc = await nats.connect(stack.nats_url)
    try:
        async with aiohttp.ClientSession() as http:
            yield Rig(stack, http, nc, await nc.jetstream().key_value(subjects.RUNNERS_BUCKET))
    finally:
        await nc.close()


@pytest.fixture
async def rig(stack: Stack) -> AsyncIterator[Rig]:
    async with open_rig(stack) as rig:
        yield rig


FILLER = "[limits]\nmemory_mb = 1536\ncpu_percent = 50\n[pool]\nwarm = 4\n"


@pytest.fixture(scope="module")
def filled(stack: Stack) -> RunnerAdvert:
    """Runner A holding four warm sandboxes of a filler agent (6 GB committed), so that it is
    the fuller runner, which packing prefers. Its advert once they show."""

    async def fill() -> RunnerAdvert:
        async with open_rig(stack) as rig:
            status, filler = await rig.deploy(FILLER)
            assert status == 201, filler
            await rig.warm(A, filler)
            return await rig.settled(A, lambda a: a.warm.get(filler["name"]) == 4)

    return asyncio.run(fill())


def test_a_runner_advertises_its_capacity_labels_and_what_its_sandboxes_commit(
    filled: RunnerAdvert,
) -> None:
    advert = filled
    assert advert.labels == {"zone": "a", "tier": "test"}
    # Its four warm sandboxes, by the limits of the agent's ash.toml: committed, not used.
    assert advert.committed == Resources(memory_mb=4 * 1536, cpu_percent=4 * 50)
    assert advert.sandbox == Resources(memory_mb=2048, cpu_percent=100)  # the runner's default
    assert advert.total is not None and advert.free is not None
    assert advert.total.memory_mb >= advert.free.memory_mb > 0 and advert.total.cpu_percent >= 100
    assert not advert.draining and advert.protocol == 1


async def test_a_session_goes_to_the_runner_with_a_warm_sandbox_of_its_agent(
    filled: RunnerAdvert, rig: Rig,
) -> None:
    # A is fuller (the filler's warm sandboxes): packing alone would choose it.
    _, agent = await rig.deploy()
    await rig.warm(B, agent)
    await rig.settled(B, lambda a: a.warm.get(agent["name"]) == 1)
    status, session = await rig.create(agent["name"])
    assert status == 201, session
    assert session["runner_id"] == B
    await rig.end(session["id"])
    # Without a warm sandbox anywhere, the fuller runner.
    _, cold = await rig.deploy()
    status, session = await rig.create(cold["name"])
    assert (status, session["runner_id"]) == (201, A)
    await rig.end(session["id"])


async def test_a_runner_without_the_agents_labels_is_never_chosen(
    filled: RunnerAdvert, rig: Rig,
) -> None:
    status, agent = await rig.deploy('[placement]\nlabels = { zone = "b" }\n')
    assert status == 201, agent
    # A holds a warm sandbox of it and is the fuller: it would win twice over, but lacks zone=b.
    await rig.warm(A, agent)
    await rig.settled(A, lambda a: a.warm.get(agent["name"]) == 1)
    sessions = []
    for _ in range(2):
        status, session = await rig.create(agent["name"])
        assert (status, session["runner_id"]) == (201, B), session
        sessions.append(session["id"])
    for sid in sessions:
        await rig.end(sid)


async def test_no_runner_with_the_labels_is_a_503_that_says_why(rig: Rig) -> None:
    _, agent = await rig.deploy('[placement]\nlabels = { zone = "c", tier = "test" }\n')
    status, body = await rig.create(agent["name"])
    assert status == 503
    error = body["error"]
    assert error["code"] == "no_runner" and error["retryable"] is True
    assert f"{A}: lacks label zone=c" in error["message"]
    assert f"{B}: lacks label zone=c" in error["message"]


async def test_a_bad_placement_table_is_refused_at_deploy(rig: Rig) -> None:
    status, body = await rig.deploy('[placement]\nlabels = { "zone a" = "b" }\n')
    assert status == 422
    assert "[placement] labels" in body["error"]["message"]
