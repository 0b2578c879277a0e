"""The fleet fixtures: one lab with every process per test module, and a client for each test."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import nats
import pytest
from nats.js.errors import KeyNotFoundError, NotFoundError

from ash.bundle import pack
from protocol import codec, subjects
from protocol.runners import RunnerAdvert
from protocol.snapshots import SnapshotManifest
from tests.e2e.sse import Frame, read_turn
from tests.fleet.harness import COORDINATORS, RUNNERS, Fleet, open_fleet
from tests.procs import ROOT

AGENT = "hello"
RUNNER_ENV = {
    "ASH_MAX_SESSIONS": "3", "ASH_POOL_GENERIC": "1", "ASH_POOL_WARM_MAX": "0",
    "ASH_SNAPSHOT_DEBOUNCE_S": "0.3", "ASH_DRAIN_TIMEOUT_S": "2",
}  # fmt: skip
# Placement as coordinator/placement.py has it, made deterministic: `pack`, and always the best
# runner rather than one of the best few at random (test_multihost asserts where sessions land).
COORDINATOR_ENV = {"ASH_PLACEMENT": "pack", "ASH_PLACEMENT_CHOICES": "1"}
POLL_S = 0.05  # poll interval of conditions kept by other processes


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    f = open_fleet(tmp_path_factory.mktemp("fleet"), RUNNER_ENV, COORDINATOR_ENV)
    try:
        request = urllib.request.Request(
            f"{f.url('c1')}/api/agents?name={AGENT}", data=pack(ROOT / "examples" / AGENT),
            headers={"Content-Type": "application/gzip"}, method="POST")
        with urllib.request.urlopen(request, timeout=30) as r:
            assert r.status == 201
        yield f
    finally:
        f.close()


@pytest.fixture(autouse=True)
def whole(fleet: Fleet) -> Iterator[None]:
    """Each test starts with every host on the network and both coordinators serving."""
    for name in RUNNERS:
        fleet.lab.link_up(name)
    for name in COORDINATORS:
        if not fleet.alive(name):
            fleet.start_coordinator(name)
    fleet.wait_coordinators()
    yield
    for name in RUNNERS:
        fleet.lab.link_up(name)


@dataclass
class Client:
    """What a test does to the fleet: HTTP to either coordinator, and a look at NATS."""

    fleet: Fleet
    http: aiohttp.ClientSession
    nc: nats.NATS

    async def call(self, via: str, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        async with self.http.request(method, self.fleet.url(via) + path, **kw) as r:
            return r.status, await r.json() if r.content_type == "application/json" else None

    async def create(self, via: str) -> dict[str, Any]:
        status, body = await self.call(via, "POST", "/api/sessions", json={"agent": AGENT})
        assert status == 201, body
        return body  # type: ignore[no-any-return]

    async def get(self, via: str, sid: str) -> dict[str, Any]:
        status, body = await self.call(via, "GET", f"/api/sessions/{sid}")
        assert status == 200, body
        return body  # type: ignore[no-any-return]

    async def end(self, via: str, sid: str) -> None:
        status, body = await self.call(via, "DELETE", f"/api/sessions/{sid}")
        assert status in (200, 204), body

    async def turn(self, via: str, sid: str, text: str) -> list[Frame]:
        async with self.http.post(f"{self.fleet.url(via)}/api/sessions/{sid}/messages",
                                  json={"content": text}) as r:  # fmt: skip
            return await read_turn(r)

    async def events_after(self, via: str, sid: str, after: int) -> list[Frame]:
        """Re-attach with `Last-Event-ID: after`, read to the turn's `done`."""
        async with self.http.get(f"{self.fleet.url(via)}/api/sessions/{sid}/events",
                                 headers={"Last-Event-ID": str(after)}) as r:  # fmt: skip
            return await read_turn(r)

    async def until(self, what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
        """Poll the coroutine function `check` until it returns something truthy."""
        deadline = time.monotonic() + timeout
        while True:
            got = await check()
            if got:
                return got
            assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
            await asyncio.sleep(POLL_S)

    # -- what is behind it --------------------------------------------------------------------

    async def advert(self, runner: str) -> tuple[RunnerAdvert, int] | None:
        """A runner's latest advert in the registry and its revision, if it has one."""
        kv = await self.nc.jetstream().key_value(subjects.RUNNERS_BUCKET)
        try:
            entry = await kv.get(runner)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        return codec.decode_advert(entry.value), int(entry.revision or 0)

    async def snapshot(self, sid: str) -> SnapshotManifest | None:
        store = await self.nc.jetstream().object_store(subjects.SNAPSHOTS_BUCKET)
        try:
            info = await store.get_info(sid)
        except NotFoundError:
            return None
        return codec.decode_as((info.description or "").encode(), SnapshotManifest)

    def conversation_requests(self, *markers: str) -> list[dict[str, Any]]:
        """The conversation requests the model received whose messages mention every marker."""
        return [r for r in self.fleet.model_requests()
                if r["purpose"] == "conversation"
                and all(m in json.dumps(r["body"]["messages"]) for m in markers)]  # fmt: skip


@pytest.fixture
async def client(fleet: Fleet) -> AsyncIterator[Client]:
    nc = await nats.connect(fleet.nats_url)
    try:
        async with aiohttp.ClientSession() as http:
            yield Client(fleet, http, nc)
    finally:
        await nc.close()
