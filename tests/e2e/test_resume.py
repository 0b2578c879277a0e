"""Pause, warm and cold resume, and fork, on a real stack with the stand-in CLI.

Real nats-server, coordinator and runner processes (two of them, plus runners started to be
SIGKILLed), real bwrap, cgroups (the freezer), loop-mounted disks and the JetStream object
store; the CLI is the scripted stand-in, which keeps its conversation under
`$HOME/.claude-standin/<id>.jsonl` and honours `--resume` and `--fork-session` like the real
one (`test_resume_real_cli.py` does the same with the real CLI). A warm resume is told by the
CLI process: the same pid, frozen while paused; a cold one by the runner that holds it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
from nats.js.errors import KeyNotFoundError, NotFoundError

from ash.embedded_nats import start_nats
from protocol import codec, subjects
from protocol.commands import Accepted, AgentRef, CommandReply, CreateSession, EndSession
from protocol.snapshots import SnapshotManifest
from tests.e2e.sse import Frame, read_turn, text_of
from tests.e2e.test_pool import assert_phases, bundle
from tests.procs import Proc, Stack, clean_env

pytestmark = pytest.mark.e2e

CLI_INSIDE = "/opt/ash/bin/cli"
RUNNER_ENV = {"ASH_CLI": "standin", "ASH_ADVERT_INTERVAL_S": "0.1", "ASH_POOL_GENERIC": "1",
              "ASH_TMP_MB": "16", "ASH_SNAPSHOT_DEBOUNCE_S": "0.2"}


@dataclass
class Rig:
    stack: Stack
    nc: nats.NATS
    http: aiohttp.ClientSession
    agent: str

    @property
    def url(self) -> str:
        return self.stack.url

    # -- HTTP -------------------------------------------------------------------------------

    async def call(self, method: str, path: str, **kw: Any) -> tuple[int, dict[str, Any], Any]:
        async with self.http.request(method, self.url + path, **kw) as r:
            body = await r.json() if r.content_type == "application/json" else await r.read()
            return r.status, body, r.headers

    async def create(self) -> dict[str, Any]:
        status, body, _ = await self.call("POST", "/api/sessions", json={"agent": self.agent})
        assert status == 201, body
        return body  # type: ignore[no-any-return]

    async def get(self, sid: str) -> dict[str, Any]:
        status, body, _ = await self.call("GET", f"/api/sessions/{sid}")
        assert status == 200, body
        return body  # type: ignore[no-any-return]

    async def lifecycle(self, sid: str, action: str, want: int = 200) -> tuple[dict[str, Any], Any]:
        status, body, headers = await self.call("POST", f"/api/sessions/{sid}/{action}")
        assert status == want, body
        return body, headers

    async def turn(self, sid: str, text: str) -> list[Frame]:
        async with self.http.post(f"{self.url}/api/sessions/{sid}/messages",
                                  json={"content": text}) as r:
            return await read_turn(r)

    async def put_file(self, sid: str, path: str, data: bytes) -> None:
        status, body, _ = await self.call("PUT", f"/api/sessions/{sid}/files/content",
                                          params={"path": path}, data=data)
        assert status in (200, 201), body

    async def read_file(self, sid: str, path: str) -> bytes | None:
        status, body, _ = await self.call("GET", f"/api/sessions/{sid}/files/content",
                                          params={"path": path})
        return body if status == 200 else None

    # -- what is behind it --------------------------------------------------------------------

    async def command(self, runner_id: str, cmd: Any) -> CommandReply:
        """A command straight to a runner over NATS, as a coordinator sends it."""
        msg = await self.nc.request(subjects.runner_commands(runner_id), codec.encode(cmd),
                                    timeout=30)
        return codec.decode_reply(msg.data)

    async def snapshot(self, sid: str) -> SnapshotManifest | None:
        store = await self.nc.jetstream().object_store(subjects.SNAPSHOTS_BUCKET)
        try:
            info = await store.get_info(sid)
        except NotFoundError:
            return None
        return codec.decode_as((info.description or "").encode(), SnapshotManifest)

    async def wait_snapshot(
        self, sid: str, newer_than: float, timeout: float = 15.0
    ) -> SnapshotManifest:
        """Wait for a snapshot of `sid` begun after `newer_than` (epoch seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            snap = await self.snapshot(sid)
            if snap is not None and snap.taken_at > newer_than:
                return snap
            assert time.monotonic() < deadline, f"no snapshot of {sid} after {newer_than}: {snap}"
            await asyncio.sleep(0.05)  # a poll of the object store, written by another process

    async def ash(self, *args: str) -> tuple[int, str, str]:
        """Run the `ash` command line against this stack: (exit code, stdout, stderr)."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ash", "--url", self.url, *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=clean_env())
        out, err = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    def cli(self, sid: str, runner_id: str) -> int:
        """The pid of the CLI in the session's sandbox on `runner_id`."""
        slot = (self.stack.tmp / runner_id / "sessions" / sid).resolve().parent.name
        pids = [int(e.name) for e in os.scandir("/proc") if e.name.isdigit()
                and f"/{slot}-" in _read(Path(e.path, "cgroup"))
                and CLI_INSIDE in _read(Path(e.path, "cmdline")).split("\0")[:2]]
        assert len(pids) == 1, f"expected one CLI in {slot}: {pids}"
        return pids[0]


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def frozen(pid: int) -> bool:
    """Whether the cgroup freezer holds the process (v1 freezer.state, or v2 cgroup.events)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "freezer" in controllers.split(","):
            return Path(f"/sys/fs/cgroup/freezer{path}/freezer.state").read_text().strip() != "THAWED"
        if controllers == "" and Path(f"/sys/fs/cgroup{path}/cgroup.events").exists():
            events = Path(f"/sys/fs/cgroup{path}/cgroup.events").read_text()
            return "frozen 1" in events
    raise AssertionError("no freezer for the CLI's cgroup")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("resume")
    server = start_nats(tmp / "nats", log_path=tmp / "nats.log")
    stack = Stack(tmp, server.url)
    try:
        # Spread over the emptiest runner, with no random pick: a new runner (the victims below,
        # with 200 slots) is where the next session lands.
        stack.start_coordinator(ASH_PLACEMENT="spread", ASH_PLACEMENT_CHOICES="1")
        stack.start_runner("rs-a", ASH_MAX_SESSIONS="16", **RUNNER_ENV)
        stack.start_runner("rs-b", ASH_MAX_SESSIONS="8", **RUNNER_ENV)
        stack.wait_ready(runners=2)
        yield stack
    finally:
        stack.stop()
        server.stop()


@pytest.fixture
async def rig(stack: Stack) -> AsyncIterator[Rig]:
    nc = await nats.connect(stack.nats_url)
    async with aiohttp.ClientSession() as http:
        name = f"resume-{uuid.uuid4().hex[:8]}"
        async with http.post(f"{stack.url}/api/agents", params={"name": name},
                             data=bundle({"CLAUDE.md": "You are a test agent.\n"}),
                             headers={"Content-Type": "application/gzip"}) as r:
            assert r.status == 201, await r.text()
        try:
            yield Rig(stack, nc, http, name)
        finally:
            await nc.close()


async def test_pause_freezes_and_snapshots_and_resume_thaws_the_same_cli(rig: Rig) -> None:
    session = await rig.create()
    sid, runner = session["id"], session["runner_id"]
    assert runner == "rs-a"
    assert text_of(await rig.turn(sid, "Remember the word heron")) == "I will remember the word heron."
    pid = rig.cli(sid, runner)
    assert not frozen(pid)

    asked = time.time()
    code, out, _ = await rig.ash("pause", sid)  # the command line, as a person would
    assert (code, out) == (0, f"paused {sid} (runner {runner})\n")
    paused = await rig.get(sid)
    assert paused["status"] == "paused" and paused["runner_id"] == runner
    assert frozen(pid)
    snap = await rig.snapshot(sid)
    assert snap is not None and snap.taken_at >= asked - 1 and snap.reason in ("pause", "turn")
    assert snap.claude_session_id == paused["claude_session_id"] is not None
    again, _ = await rig.lifecycle(sid, "pause")  # pausing twice is fine
    assert again["status"] == "paused"
    # A paused session's workspace is not served (409), the session says why.
    status, body, _ = await rig.call("GET", f"/api/sessions/{sid}/files")
    assert status == 409 and "paused" in body["error"]["message"]

    resumed, headers = await rig.lifecycle(sid, "resume")
    assert headers["Ash-Resumed"] == "warm"
    assert resumed["status"] == "active" and resumed["runner_id"] == runner
    assert rig.cli(sid, runner) == pid and not frozen(pid)  # the very same process, thawed
    assert text_of(await rig.turn(sid, "What was the word?")) == "The word was heron."
    _, headers = await rig.lifecycle(sid, "resume")  # resuming an active session: nothing to do
    assert headers["Ash-Resumed"] == "none"


async def test_a_message_to_a_paused_session_resumes_it(rig: Rig) -> None:
    session = await rig.create()
    sid, runner = session["id"], session["runner_id"]
    await rig.turn(sid, "Remember the word ibis")
    pid = rig.cli(sid, runner)
    await rig.lifecycle(sid, "pause")
    assert frozen(pid)
    frames = await rig.turn(sid, "What was the word?")
    assert text_of(frames) == "The word was ibis."
    assert frames[-1].data["reason"] == "completed"
    view = await rig.get(sid)
    assert view["status"] == "active" and rig.cli(sid, runner) == pid and not frozen(pid)


async def test_pause_waits_for_no_turn_and_says_so(rig: Rig) -> None:
    sid = (await rig.create())["id"]
    slow = asyncio.create_task(rig.turn(sid, "sleep:2 tell me a story"))
    await asyncio.sleep(0.5)
    body, _ = await rig.lifecycle(sid, "pause", want=409)
    assert body["error"]["code"] == "conflict" and "turn is running" in body["error"]["message"]
    assert (await slow)[-1].data["reason"] == "completed"
    assert (await rig.get(sid))["status"] == "active"
    paused, _ = await rig.lifecycle(sid, "pause")
    assert paused["status"] == "paused"
    status, body, _ = await rig.call("POST", "/api/sessions/nope/pause")
    assert status == 404
    await rig.call("DELETE", f"/api/sessions/{sid}")
    body, _ = await rig.lifecycle(sid, "resume", want=410)
    assert body["error"]["code"] == "gone"
    assert await rig.snapshot(sid) is None  # an ended session's snapshot is deleted


async def test_a_fork_has_the_workspace_and_conversation_and_both_go_on_independently(
    rig: Rig,
) -> None:
    source = await rig.create()
    sid = source["id"]
    await rig.put_file(sid, "notes/plan.txt", b"the plan\n")
    await rig.turn(sid, "Remember the word alpha")

    fork, _ = await rig.lifecycle(sid, "fork", want=201)
    fid = fork["id"]
    assert fid != sid and fork["status"] == "active" and fork["agent"] == rig.agent
    assert await rig.read_file(fid, "notes/plan.txt") == b"the plan\n"
    # Each is told a word of its own; each remembers its own.
    await rig.turn(sid, "Remember the word bravo")
    frames = await rig.turn(fid, "Remember the word charlie")
    assert "error" not in [f.event for f in frames]  # the conversation came along
    assert text_of(await rig.turn(sid, "What was the word?")) == "The word was bravo."
    assert text_of(await rig.turn(fid, "What was the word?")) == "The word was charlie."
    # The fork's conversation is a new one (its Claude session id), with the source's past.
    src_view, fork_view = await rig.get(sid), await rig.get(fid)
    assert fork_view["claude_session_id"] and src_view["claude_session_id"]
    assert fork_view["claude_session_id"] != src_view["claude_session_id"]
    # Their workspaces are copies, not one: a file written in the fork is not in the source.
    await rig.put_file(fid, "only-in-fork.txt", b"x")
    assert await rig.read_file(sid, "only-in-fork.txt") is None

    # A paused session forks from its pause snapshot (here with `ash fork`, which prints the id).
    await rig.lifecycle(sid, "pause")
    code, out, _ = await rig.ash("fork", sid)
    assert code == 0
    second = await rig.get(out.strip())
    assert second["status"] == "active"
    assert text_of(await rig.turn(second["id"], "What was the word?")) == "The word was bravo."
    assert (await rig.get(sid))["status"] == "paused"  # the source is left as it was


async def test_a_cold_restore_on_this_or_another_runner_says_how_long_each_phase_took(
    rig: Rig,
) -> None:
    session = await rig.create()
    sid, home = session["id"], session["runner_id"]
    away = next(r for r in ("rs-a", "rs-b") if r != home)
    await rig.turn(sid, "Remember the word egret")
    await rig.lifecycle(sid, "pause")  # the snapshot: workspace and HOME, the transcript in it
    paused = await rig.get(sid)
    assert isinstance(await rig.command(home, EndSession(session_id=sid)), Accepted)
    restore = CreateSession(session_id=sid, restore=True,
                            agent=AgentRef(name=rig.agent, digest=paused["agent_digest"]))
    for runner in (home, away):
        reply = await rig.command(runner, restore)
        assert isinstance(reply, Accepted) and reply.runner_id == runner, reply
        assert not reply.warm and reply.warning is None
        assert reply.claude_session_id == paused["claude_session_id"] is not None  # resumed
        assert_phases(reply.phases, {"bundle", "snapshot_fetch", "slot", "untar", "network",
                                     "sandbox_prepare", "cli_spawn", "snapshot_claim",
                                     "publisher"})
        assert isinstance(await rig.command(runner, EndSession(session_id=sid)), Accepted)
    await rig.call("DELETE", f"/api/sessions/{sid}")


async def start_victim(rig: Rig, name: str, **env: str) -> Proc:
    """A runner that placement prefers (the emptiest, with the most free slots), to be killed."""
    proc = rig.stack.start_runner(name, **{**RUNNER_ENV, "ASH_MAX_SESSIONS": "200", **env})
    kv = await rig.nc.jetstream().key_value(subjects.RUNNERS_BUCKET)
    deadline = time.monotonic() + 60
    while True:
        assert proc.popen.poll() is None, proc.tail()
        try:
            if (await kv.get(name)).value:
                break
        except KeyNotFoundError:
            pass
        assert time.monotonic() < deadline, proc.tail()
        await asyncio.sleep(0.05)  # the runner's first advert, from another process
    await asyncio.sleep(0.3)  # and the coordinator's directory has seen it
    return proc


async def test_a_session_whose_runner_was_killed_resumes_cold_elsewhere_with_all_it_had(
    rig: Rig,
) -> None:
    victim = await start_victim(rig, "rs-victim")
    session = await rig.create()
    sid = session["id"]
    assert session["runner_id"] == "rs-victim"
    first = await rig.turn(sid, "Remember the word kestrel")
    await rig.put_file(sid, "keep.txt", b"survives\n")
    written = time.time()
    snap = await rig.wait_snapshot(sid, written)  # the debounced one after the file change
    claude_id = (await rig.get(sid))["claude_session_id"]
    assert snap.claude_session_id == claude_id is not None

    victim.popen.send_signal(signal.SIGKILL)
    victim.popen.wait(10)
    resumed, headers = await rig.lifecycle(sid, "resume")
    assert headers["Ash-Resumed"] == "cold"
    assert resumed["status"] == "active" and resumed["runner_id"] in ("rs-a", "rs-b")
    assert resumed["claude_session_id"] == claude_id
    second = await rig.turn(sid, "What was the word?")
    assert text_of(second) == "The word was kestrel."
    assert not [f for f in second if f.event == "error"]
    assert await rig.read_file(sid, "keep.txt") == b"survives\n"
    # One event log across both runners: the seqs go on where they stopped.
    assert second[0].id == first[-1].id + 1
    assert second[0].data["runner_id"] == resumed["runner_id"]
    # The restored sandbox owns the snapshot now.
    claimed = await rig.snapshot(sid)
    assert claimed is not None and claimed.runner_id == resumed["runner_id"]


async def test_a_session_that_was_never_snapshotted_resumes_in_a_new_conversation_and_says_so(
    rig: Rig,
) -> None:
    # This runner's debounce is an hour: its sessions have no snapshot when it dies.
    victim = await start_victim(rig, "rs-victim-2", ASH_SNAPSHOT_DEBOUNCE_S="3600",
                                ASH_MAX_SESSIONS="220")
    session = await rig.create()
    sid = session["id"]
    assert session["runner_id"] == "rs-victim-2"
    await rig.turn(sid, "Remember the word plover")
    assert await rig.snapshot(sid) is None
    victim.popen.send_signal(signal.SIGKILL)
    victim.popen.wait(10)

    code, out, _ = await rig.ash("resume", sid)
    assert code == 0 and out.startswith(f"active {sid} (runner rs-")
    frames = await rig.turn(sid, "What was the word?")
    assert [f.event for f in frames][:3] == ["session_start", "user_message", "error"]
    error = frames[2].data["error"]
    assert error["code"] == "conversation_not_restored" and "no snapshot" in error["message"]
    assert frames[-1].data["reason"] == "completed"  # the session goes on, it did not fail
    assert text_of(frames) == "You have not told me a word to remember."
    # Once said, not again; the new conversation remembers from here on. (`ash send` would
    # have shown it as a warning, not failed the turn.)
    code, out, err = await rig.ash("send", sid, "Remember the word avocet")
    assert code == 0 and out == "I will remember the word avocet.\n" and "warning" not in err
    later = await rig.turn(sid, "What was the word?")
    assert text_of(later) == "The word was avocet." and "error" not in [f.event for f in later]
