"""NATS users and subject permissions (`deploy/nats_auth.py`, `protocol/access.py`), for real.

A nats-server runs the generated configuration; a real coordinator and a real runner log in
with their own users and serve a session (deploy, turn, exec, files, pause, fork: commands,
events, adverts, streams, bundles and snapshots) without the server refusing them anything.
Then a raw client logged in as another runner tries what a compromised runner would: read
the live runner's commands, send it one, forge its advert, plant an agent bundle, attach to the
event log, delete the stream; the server refuses each, and the session is unharmed.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import nats
import pytest

from ash.bundle import pack
from coordinator.recorder import DURABLE
from deploy import nats_auth
from protocol import access, codec, subjects
from protocol.commands import EndSession
from tests.deploy.natsproc import ConfNats
from tests.e2e.sse import Frame, read_turn
from tests.procs import ROOT, Stack

pytestmark = pytest.mark.e2e

VICTIM, INTRUDER = "rb", "ra"
# host network: these tests are about the bus; sandbox networking has its own tests
RUNNER_ENV = {"ASH_CLI": "standin", "ASH_SANDBOX_NET": "host", "ASH_ADVERT_INTERVAL_S": "0.2",
              "ASH_POOL_GENERIC": "1", "ASH_TMP_MB": "16", "ASH_SNAPSHOT_DEBOUNCE_S": "0.2"}
# As the client hears it (nats-py lower-cases the server's -ERR), and as the server logs it.
REFUSAL = re.compile(r'permissions violation for (subscription|publish) to "([^"]+)"')
LOGGED = re.compile(r'"[^"/]+/user:([^"]+)" - (Subscription|Publish) Violation - Subject "([^"]+)"')


def env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines()
                if line and not line.startswith("#"))


@dataclass
class Fleet:
    out: Path
    nats: ConfNats
    stack: Stack

    def login(self, runner_id: str) -> dict[str, str]:
        env = env_file(self.out / f"runner-{runner_id}.env")
        return {"user": env["ASH_NATS_USER"], "password": env["ASH_NATS_PASSWORD"]}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("natsauth")
    out = tmp / "nats"
    nats_auth.write(out, nats_auth.Plan(runners=[INTRUDER, VICTIM], listen="127.0.0.1:-1",
                                        store_dir=str(tmp / "js")))
    server = ConfNats(out / "nats-server.conf", tmp / "nats.log").start()
    stack = Stack(tmp, server.url)
    try:
        stack.start_coordinator(**env_file(out / "coordinator.env"))
        stack.start_runner(VICTIM, **RUNNER_ENV, **env_file(out / f"runner-{VICTIM}.env"))
        stack.wait_ready()
        yield Fleet(out, server, stack)
    finally:
        stack.stop()
        server.stop()


async def call(http: aiohttp.ClientSession, method: str, url: str, **kw: object) -> dict:
    async with http.request(method, url, **kw) as r:  # type: ignore[arg-type]
        body = await r.json()
        assert r.status in (200, 201), (r.status, body)
        return body  # type: ignore[no-any-return]


async def turn(http: aiohttp.ClientSession, url: str, sid: str, text: str) -> list[Frame]:
    async with http.post(f"{url}/api/sessions/{sid}/messages", json={"content": text}) as r:
        return await read_turn(r)


async def a_session(http: aiohttp.ClientSession, url: str) -> str:
    async with http.post(f"{url}/api/agents", params={"name": "hello"},
                         data=pack(ROOT / "examples" / "hello"),
                         headers={"Content-Type": "application/gzip"}) as r:
        assert r.status == 201, await r.text()
    return str((await call(http, "POST", f"{url}/api/sessions", json={"agent": "hello"}))["id"])


async def test_coordinator_and_runner_serve_a_session_within_their_permissions(
    fleet: Fleet,
) -> None:
    url = fleet.stack.url
    async with aiohttp.ClientSession() as http:
        sid = await a_session(http, url)  # placement, create command, bundle fetch
        frames = await turn(http, url, sid, "Hello")  # events, recorder
        assert frames[-1].event == "done" and frames[-1].data["reason"] == "completed"
        async with http.post(f"{url}/api/sessions/{sid}/exec",
                             json={"command": "echo from-the-sandbox"}) as r:
            exec_frames = await read_turn(r)  # the runner -> coordinator byte stream
        assert "from-the-sandbox" in "".join(f.data.get("data", "") for f in exec_frames)
        async with http.get(f"{url}/api/sessions/{sid}/files/content",
                            params={"path": "CLAUDE.md"}) as r:
            assert r.status == 200 and (await r.read())
        await call(http, "POST", f"{url}/api/sessions/{sid}/pause")  # snapshot put
        await call(http, "POST", f"{url}/api/sessions/{sid}/resume")
        fork = (await call(http, "POST", f"{url}/api/sessions/{sid}/fork"))["id"]  # snapshot get
        frames = await turn(http, url, fork, "Hello again")
        assert frames[-1].event == "done" and frames[-1].data["reason"] == "completed"
        async with http.get(f"{url}/api/sessions/{sid}/events", params={"after": "0"}) as r:
            replay = await read_turn(r)  # the event log read back by a consumer
        assert replay[0].event == "session_start"

    assert fleet.nats.violations() == []


async def test_a_runner_cannot_read_or_send_another_runners_commands(fleet: Fleet) -> None:
    url = fleet.stack.url
    async with aiohttp.ClientSession() as http:
        sid = await a_session(http, url)
    refused: list[tuple[str, str]] = []

    async def on_error(e: Exception) -> None:
        if m := REFUSAL.search(str(e)):
            refused.append((m.group(1), m.group(2)))

    intruder = await nats.connect(fleet.nats.url, error_cb=on_error, **access.connect_options(
        inbox_prefix=subjects.runner_inbox(INTRUDER), **fleet.login(INTRUDER)))
    try:
        # What a runner needs of its own works (the checks below can tell allowed from refused).
        own = await intruder.subscribe(subjects.runner_commands(INTRUDER))
        await intruder.subscribe(f"{subjects.runner_inbox(INTRUDER)}.>")
        await intruder.publish(subjects.stream("no-listener"), b"")
        await intruder.flush()
        assert refused == []

        stolen = {s: await intruder.subscribe(s) for s in [
            subjects.runner_commands(VICTIM),             # its user messages and session env
            subjects.RUNNER_COMMANDS_WILDCARD,
            ">",
            subjects.EVENTS_WILDCARD,                     # every session's live events
            f"{subjects.runner_inbox(VICTIM)}.>",          # its replies
            f"{subjects.coordinator_inbox()}.>",           # the coordinators' replies
            "_INBOX.>",
            subjects.STREAMS_WILDCARD,                     # exec output and downloads
        ]}
        forged = [
            subjects.runner_commands(VICTIM),               # a command, as a coordinator
            f"$KV.{subjects.RUNNERS_BUCKET}.{VICTIM}",      # the victim's advert
            f"$O.{subjects.BUNDLES_BUCKET}.C.planted",      # agent code every runner would run
            f"$JS.API.STREAM.DELETE.{subjects.EVENTS_STREAM}",
            f"$JS.API.STREAM.PURGE.{subjects.EVENTS_STREAM}",
            f"$JS.API.STREAM.UPDATE.{subjects.EVENTS_STREAM}",
            f"$JS.API.CONSUMER.CREATE.{subjects.EVENTS_STREAM}",  # read the event log
            f"$JS.API.CONSUMER.DURABLE.CREATE.{subjects.EVENTS_STREAM}.{DURABLE}",
            f"$JS.API.STREAM.CREATE.SIDE_CHANNEL",
        ]
        end = codec.encode(EndSession(session_id=sid))
        for subject in forged:
            await intruder.publish(subject, end)
        await intruder.flush()
        deadline = time.monotonic() + 10
        want = {("Subscription", s) for s in stolen} | {("Publish", s) for s in forged}
        heard = {(kind.lower(), s.lower()) for kind, s in want}
        while not heard <= set(refused) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)  # errors arrive on the client's reader task
        assert heard <= set(refused), heard - set(refused)
        assert intruder.is_connected  # refusals do not cost the connection
        assert own.pending_msgs == 0 and all(s.pending_msgs == 0 for s in stolen.values())
    finally:
        await intruder.close()

    # The end command never reached the runner: the session lives and takes a turn.
    async with aiohttp.ClientSession() as http:
        assert (await call(http, "GET", f"{url}/api/sessions/{sid}"))["status"] == "active"
        frames = await turn(http, url, sid, "Still here?")
        assert frames[-1].data["reason"] == "completed"
    # The server logged each refusal against the intruder's user, and none against the others.
    logged = [m.groups() for line in fleet.nats.violations() if (m := LOGGED.search(line))]
    assert len(logged) == len(fleet.nats.violations())
    assert {user for user, _, _ in logged} == {nats_auth.runner_user(INTRUDER)}
    assert want <= {(kind, subject) for _, kind, subject in logged}


def hello(url: str, **login: str) -> bytes:
    """Log in on a raw socket (CONNECT, PING) and return the server's answer line."""
    host, port = url.removeprefix("nats://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock, sock.makefile("rb") as rd:
        assert rd.readline().startswith(b"INFO ")
        connect = {"verbose": False, "pedantic": False, "name": "probe", **login}
        sock.sendall(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
        return rd.readline()


def test_only_the_configured_users_may_log_in(fleet: Fleet) -> None:
    login = fleet.login(VICTIM)
    login = {"user": login["user"], "pass": login["password"]}  # CONNECT's field names
    assert hello(fleet.nats.url, **login).startswith(b"PONG")
    for wrong in ({**login, "pass": "wrong"}, {"user": "runner-nobody", "pass": "x"}, {}):
        assert b"Authorization Violation" in hello(fleet.nats.url, **wrong)
