"""Warm pools and ash.toml limits on a real stack with the stand-in CLI.

Real nats-server, coordinator and runner processes, real bwrap, cgroups and loop-mounted
disks; the CLI is the scripted stand-in (fast, and it records nothing: what it was started
with is read from the host's /proc, like an operator would). Whether a session got a warm
sandbox is told by when its CLI process started: before the session was asked for (warm)
or after (started for it).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import tarfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest

from ash.embedded_nats import start_nats
from protocol import codec, subjects
from protocol.commands import Accepted, AgentRef, CreateSession, EndSession, SessionOptions, WarmAgent
from tests.e2e.sse import Frame, read_turn, text_of
from tests.procs import Stack

pytestmark = pytest.mark.e2e

RUNNER = "pool-runner"
CLI_INSIDE = "/opt/ash/bin/cli"


@dataclass
class Rig:
    stack: Stack
    runner_dir: Path
    nc: nats.NATS

    @property
    def url(self) -> str:
        return self.stack.url


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Path]]:
    tmp = tmp_path_factory.mktemp("pool")
    server = start_nats(tmp / "nats", log_path=tmp / "nats.log")
    stack = Stack(tmp, server.url)
    try:
        stack.start_coordinator()
        stack.start_runner(RUNNER, ASH_CLI="standin", ASH_ADVERT_INTERVAL_S="0.1",
                           ASH_POOL_GENERIC="1", ASH_TMP_MB="16")
        stack.wait_ready()
        yield stack, tmp / RUNNER
    finally:
        stack.stop()
        server.stop()


@pytest.fixture
async def rig(stack: tuple[Stack, Path]) -> AsyncIterator[Rig]:
    nc = await nats.connect(stack[0].nats_url)
    try:
        yield Rig(stack[0], stack[1], nc)
    finally:
        await nc.close()


def bundle(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


async def deploy(http: aiohttp.ClientSession, rig: Rig, ash_toml: str | None = None,
                 name: str | None = None, claude_md: str = "You are a test agent.\n") -> dict[str, Any]:
    files = {"CLAUDE.md": claude_md}
    if ash_toml is not None:
        files["ash.toml"] = ash_toml
    name = name or f"pool-{uuid.uuid4().hex[:8]}"
    async with http.post(f"{rig.url}/api/agents", params={"name": name}, data=bundle(files),
                         headers={"Content-Type": "application/gzip"}) as r:
        body = await r.json()
        body["_status"] = r.status
        return body  # type: ignore[no-any-return]


async def create(http: aiohttp.ClientSession, rig: Rig, agent: str, **options: Any) -> str:
    async with http.post(f"{rig.url}/api/sessions", json={"agent": agent, **options}) as r:
        assert r.status == 201, await r.text()
        return str((await r.json())["id"])


async def turn(http: aiohttp.ClientSession, rig: Rig, sid: str, text: str) -> list[Frame]:
    async with http.post(f"{rig.url}/api/sessions/{sid}/messages", json={"content": text}) as r:
        return await read_turn(r)


async def end(http: aiohttp.ClientSession, rig: Rig, sid: str) -> None:
    async with http.delete(f"{rig.url}/api/sessions/{sid}") as r:
        assert r.status == 200, await r.text()


async def warm_count(rig: Rig, agent: str) -> int:
    kv = await rig.nc.jetstream().key_value(subjects.RUNNERS_BUCKET)
    entry = await kv.get(RUNNER)
    return codec.decode_advert(entry.value or b"{}").warm.get(agent, 0)


async def wait_warm(rig: Rig, agent: str, n: int = 1, timeout: float = 20.0) -> None:
    """Wait until the runner advertises `n` warm sandboxes for `agent` (its advert refreshes
    every 0.1 s; the warm-up itself takes a stand-in CLI start, ~60 ms)."""
    deadline = time.monotonic() + timeout
    while (got := await warm_count(rig, agent)) != n:
        assert time.monotonic() < deadline, f"{agent}: {got} warm, wanted {n}"
        await asyncio.sleep(0.05)


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll `check` (a condition of other processes) until it holds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.05)


def boot_time() -> float:
    """Now, on the clock /proc/<pid>/stat start times use (seconds since boot)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


@dataclass
class Cli:
    pid: int
    argv: list[str]
    env: dict[str, str]
    started: float  # seconds since boot


def session_cli(rig: Rig, sid: str) -> Cli:
    """The CLI process in the session's sandbox, as the host sees it."""
    slot = (rig.runner_dir / "sessions" / sid).resolve().parent.name
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if f"/{slot}-" not in Path(entry.path, "cgroup").read_text():
                continue
            argv = Path(entry.path, "cmdline").read_bytes().decode().split("\0")[:-1]
            if CLI_INSIDE not in argv[:2]:
                continue  # bwrap itself, or the wrapper shell
            environ = Path(entry.path, "environ").read_bytes().decode().split("\0")
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        started = int(stat.rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
        env = dict(kv.split("=", 1) for kv in environ if "=" in kv)
        found.append(Cli(int(entry.name), argv, env, started))
    assert len(found) == 1, f"expected one CLI in {slot}, found {found}"
    return found[0]


def flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


async def test_a_default_session_claims_a_cli_that_was_running_before_it_was_asked_for(
    rig: Rig,
) -> None:
    async with aiohttp.ClientSession() as http:
        agent = (await deploy(http, rig))["name"]
        asked = boot_time()
        first = await create(http, rig, agent)  # the runner sees the agent: miss, then warm-up
        assert session_cli(rig, first).started >= asked - 0.02, "nothing was warm yet"
        await wait_warm(rig, agent)
        asked = boot_time()
        second = await create(http, rig, agent)
        cli = session_cli(rig, second)
        assert cli.started < asked, "a default session must get the warm CLI"
        assert flag(cli.argv, "--model") is None and "PELICAN" not in cli.env
        # It is a working conversation of its own, and the pool refills behind it.
        assert text_of(await turn(http, rig, second, "Remember the word heron")) == \
            "I will remember the word heron."
        await wait_warm(rig, agent)
        for sid in (first, second):
            await end(http, rig, sid)


async def test_a_session_with_its_own_options_gets_a_cli_started_with_them_not_the_warm_one(
    rig: Rig,
) -> None:
    async with aiohttp.ClientSession() as http:
        agent = (await deploy(http, rig))["name"]
        await end(http, rig, await create(http, rig, agent))
        await wait_warm(rig, agent)
        warm_before = {c.pid for c in all_clis_on_host()}

        cases = [
            {"system_prompt": "You are a pelican."},
            {"model": "claude-pelican"},
            {"env": {"PELICAN": "yes"}},
        ]
        for options in cases:
            asked = boot_time()
            sid = await create(http, rig, agent, **options)
            cli = session_cli(rig, sid)
            assert cli.started >= asked - 0.02, f"{options}: got a CLI started before the request"
            assert cli.pid not in warm_before
            if "system_prompt" in options:
                assert flag(cli.argv, "--system-prompt") == "You are a pelican."
            if "model" in options:
                assert flag(cli.argv, "--model") == "claude-pelican"
                frames = await turn(http, rig, sid, "hello")
                models = {f.data["message"]["message"]["model"] for f in frames
                          if f.event == "message" and f.data["message"]["type"] == "assistant"}
                assert models == {"claude-pelican"}
            if "env" in options:
                assert cli.env.get("PELICAN") == "yes"
            await end(http, rig, sid)

        # The warm CLI was left alone all along, and a default session still gets it.
        assert await warm_count(rig, agent) == 1
        asked = boot_time()
        sid = await create(http, rig, agent)
        cli = session_cli(rig, sid)
        assert cli.started < asked and cli.pid in warm_before
        assert flag(cli.argv, "--model") is None and "PELICAN" not in cli.env
        await end(http, rig, sid)


def all_clis_on_host() -> list[Cli]:
    """Every sandboxed CLI process on this host (pids only matter: they are unique)."""
    clis = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            argv = Path(entry.path, "cmdline").read_bytes().decode().split("\0")[:-1]
        except OSError:
            continue
        if CLI_INSIDE in argv[:2]:
            clis.append(Cli(int(entry.name), argv, {}, 0.0))
    return clis


async def test_warm_agent_fills_the_pool_before_any_session_and_accepted_says_warm(rig: Rig) -> None:
    async with aiohttp.ClientSession() as http:
        deployed = await deploy(http, rig)
    ref = AgentRef(name=deployed["name"], digest=deployed["digest"])

    async def command(cmd: Any) -> Any:
        msg = await rig.nc.request(subjects.runner_commands(RUNNER), codec.encode(cmd), timeout=30)
        return codec.decode_reply(msg.data)

    assert isinstance(await command(WarmAgent(agent=ref)), Accepted)
    await wait_warm(rig, ref.name)
    hit = await command(CreateSession(session_id=uuid.uuid4().hex, agent=ref))
    other = await command(CreateSession(session_id=uuid.uuid4().hex, agent=ref,
                                        options=SessionOptions(system_prompt="other")))
    assert isinstance(hit, Accepted) and hit.warm
    assert isinstance(other, Accepted) and not other.warm
    for reply in (hit, other):
        assert reply.runner_id == RUNNER
    # Each says where the runner's time went: a hit only took its sandbox, a miss made one.
    assert_phases(hit.phases, {"bundle", "claim", "publisher"})
    assert_phases(other.phases, {"bundle", "slot", "workspace_copy", "network", "sandbox_prepare",
                                 "cli_spawn", "publisher"})


def assert_phases(phases: dict[str, float] | None, expected: set[str]) -> None:
    """`Accepted.phases` of a create: the phases that happened and the total, each >= 0; the
    phases do not overlap, so they add up to no more than the total."""
    assert phases is not None and set(phases) == expected | {"total"}, phases
    assert all(ms >= 0 for ms in phases.values()), phases
    assert phases.get("cli_spawn", 0.0) <= phases["total"]
    assert sum(ms for name, ms in phases.items() if name != "total") <= phases["total"] + 0.01


async def test_after_a_redeploy_no_session_gets_a_sandbox_of_the_old_version(rig: Rig) -> None:
    name = f"pool-{uuid.uuid4().hex[:8]}"
    async with aiohttp.ClientSession() as http:
        await deploy(http, rig, name=name, claude_md=f"{name} version one\n")
        await end(http, rig, await create(http, rig, name))
        await wait_warm(rig, name)
        (stale,) = clis_running(f"{name} version one\n")
        await deploy(http, rig, name=name, claude_md=f"{name} version two\n")
        asked = boot_time()
        sid = await create(http, rig, name)
        cli = session_cli(rig, sid)
        assert cli.started >= asked - 0.02 and cli.pid != stale
        workspace = rig.runner_dir / "sessions" / sid / "workspace"
        assert (workspace / "CLAUDE.md").read_text() == f"{name} version two\n"
        # The old version's warm sandbox is stopped; the new version's pool fills and is used.
        await wait_warm(rig, name)
        await eventually(lambda: clis_running(f"{name} version one\n") == [])
        asked = boot_time()
        hit = await create(http, rig, name)
        assert (rig.runner_dir / "sessions" / hit / "workspace" / "CLAUDE.md").read_text() == \
            f"{name} version two\n"
        assert session_cli(rig, hit).started < asked
        for s in (sid, hit):
            await end(http, rig, s)


def clis_running(claude_md: str) -> list[int]:
    """Pids of sandboxed CLIs whose workspace holds this CLAUDE.md (read through /proc, so it
    finds warm ones too, which have no session link)."""
    found = []
    for cli in all_clis_on_host():
        try:
            # Bytes: another session's CLAUDE.md may be anything (an agent wrote it).
            if Path("/proc", str(cli.pid), "cwd", "CLAUDE.md").read_bytes() == claude_md.encode():
                found.append(cli.pid)
        except OSError:
            continue
    return found


async def test_a_warm_sandboxs_workspace_is_a_fresh_copy_of_the_agent_folder(rig: Rig) -> None:
    async with aiohttp.ClientSession() as http:
        agent = (await deploy(http, rig, claude_md="pristine\n"))["name"]
        used = await create(http, rig, agent)
        workspace = rig.runner_dir / "sessions" / used / "workspace"
        (workspace / "CLAUDE.md").write_text("scribbled by a session\n")
        (workspace / "left-behind.txt").write_text("x")
        await end(http, rig, used)  # its slot is wiped and recycled
        await wait_warm(rig, agent)
        for _ in range(2):  # the warm one, then a freshly started one
            sid = await create(http, rig, agent)
            files = sorted(p.name for p in (rig.runner_dir / "sessions" / sid / "workspace").iterdir())
            assert files == ["CLAUDE.md"]
            assert (rig.runner_dir / "sessions" / sid / "workspace" / "CLAUDE.md").read_text() == \
                "pristine\n"


LIMITS = """
[limits]
memory_mb = 64
pids = 48
cpu_percent = 50
disk_mb = 24
turn_timeout_s = 0.5

[pool]
warm = 0
"""


async def test_ash_toml_limits_are_applied_to_the_sandbox(rig: Rig) -> None:
    async with aiohttp.ClientSession() as http:
        agent = (await deploy(http, rig, LIMITS))["name"]
        sid = await create(http, rig, agent)
        slot = (rig.runner_dir / "sessions" / sid).resolve().parent.name
        cgroup = Path("/proc", str(session_cli(rig, sid).pid), "cgroup").read_text()
        mem = next(line.split(":", 2)[2] for line in cgroup.splitlines() if ":memory:" in line)
        pids = next(line.split(":", 2)[2] for line in cgroup.splitlines() if ":pids:" in line)
        assert slot in mem
        assert Path(f"/sys/fs/cgroup/memory{mem}/memory.limit_in_bytes").read_text().strip() == \
            str(64 << 20)
        assert Path(f"/sys/fs/cgroup/pids{pids}/pids.max").read_text().strip() == "48"
        cpu = next(line.split(":", 2)[2] for line in cgroup.splitlines()
                   if line.split(":")[1].split(",").count("cpu"))
        assert Path(f"/sys/fs/cgroup/cpu{cpu}/cpu.cfs_quota_us").read_text().strip() == "50000"
        disk = os.statvfs(rig.runner_dir / "sessions" / sid)
        assert 16 << 20 < disk.f_blocks * disk.f_frsize <= 24 << 20
        # turn_timeout_s: a turn that would stream for 10 s is stopped after 0.5 s.
        t0 = time.monotonic()
        frames = await turn(http, rig, sid, "sleep:10 tell me a story")
        assert time.monotonic() - t0 < 8
        errors = [f.data["error"] for f in frames if f.event == "error"]
        assert errors and errors[0]["code"] == "turn_timeout" and "0.5 s" in errors[0]["message"]
        assert frames[-1].data["reason"] == "timeout"
        # warm = 0: nothing is kept warm for this agent.
        await asyncio.sleep(0.2)  # two adverts after the turn: time enough to have warmed one
        assert await warm_count(rig, agent) == 0
        await end(http, rig, sid)


async def test_a_cli_that_blows_its_memory_limit_is_killed_reported_and_the_session_goes_on(
    rig: Rig,
) -> None:
    async with aiohttp.ClientSession() as http:
        agent = (await deploy(http, rig, LIMITS.replace("turn_timeout_s = 0.5", "")))["name"]
        sid = await create(http, rig, agent)
        assert text_of(await turn(http, rig, sid, "Remember the word otter")) == \
            "I will remember the word otter."
        bomb = await turn(http, rig, sid, "eat:256 megabytes please")
        errors = [f.data["error"] for f in bomb if f.event == "error"]
        assert [e["code"] for e in errors] == ["out_of_memory"], errors
        assert "64 MB" in errors[0]["message"] and errors[0]["retryable"]
        assert bomb[-1].event == "done" and bomb[-1].data["reason"] == "error"
        # The bridge starts a new CLI on the same conversation: it still knows the word.
        assert text_of(await turn(http, rig, sid, "What was the word?")) == "The word was otter."
        await end(http, rig, sid)


async def test_an_invalid_ash_toml_is_refused_with_the_key_named(rig: Rig) -> None:
    async with aiohttp.ClientSession() as http:
        deployed = await deploy(http, rig, "[limits]\nmemroy_mb = 512\n")
    # The coordinator checks ash.toml at deploy, before any runner sees the agent.
    status, body = deployed["_status"], deployed
    assert status == 422, body
    assert body["error"]["code"] in ("validation_failed", "unprocessable")
    assert "memroy_mb" in body["error"]["message"] and "[limits]" in body["error"]["message"]
    assert not json.dumps(body).count("Traceback")
