"""Escape attempts against processes, run by a hostile agent through its Bash tool.

Each test is one attempt, and each attempt must fail: seeing or signalling host processes,
ptrace of anything outside, a fork bomb, a CPU spin that starves other sessions. The agent is
the real Claude Code CLI in a real sandbox; the scripted model turns `run: CMD` into a Bash
tool call, so the commands below are exactly what a hostile agent would run.
"""

from __future__ import annotations

import asyncio
import json
import os
import textwrap
from typing import Any

import aiohttp
import pytest

from tests.e2e.conftest import E2E
from tests.e2e.sse import Frame, text_of
from tests.e2e.test_spine import deploy, new_session, turn

pytestmark = pytest.mark.e2e


def tool_output(frames: list[Frame]) -> str:
    results = [f.data for f in frames if f.event == "tool_result"]
    assert results, "the command never ran"
    return json.dumps(results[-1]["content"])


def runner_pid(e2e: E2E) -> int:
    return next(p.popen.pid for p in e2e.stack.procs if p.name == "runner")


async def run(e2e: E2E, http: aiohttp.ClientSession, sid: str, script: str) -> dict[str, Any]:
    """Put `script` in the session's workspace, have the agent run it with python3, and return
    the JSON object the script printed on its `RESULT` line."""
    name = f"attempt-{os.urandom(4).hex()}.py"
    (e2e.runner_dir / "sessions" / sid / "workspace" / name).write_text(textwrap.dedent(script))
    return result_of(await turn(http, e2e.url, sid, f"run: python3 {name}"))


def result_of(frames: list[Frame]) -> dict[str, Any]:
    """The JSON object a script printed on its `RESULT` line, from the turn's tool result."""
    out = json.loads(tool_output(frames))
    line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, out
    return json.loads(line[len("RESULT "):])  # type: ignore[no-any-return]


async def test_the_agent_sees_only_its_own_processes_and_cannot_signal_the_host(e2e: E2E) -> None:
    host_pid = runner_pid(e2e)
    async with aiohttp.ClientSession() as http:
        await deploy(http, e2e.url)
        sid = await new_session(http, e2e.url)
        out = await run(e2e, http, sid, f"""
            import json, os, signal
            pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
            cmdlines = [open(f"/proc/{{p}}/cmdline", "rb").read() for p in pids]
            try:
                os.kill({host_pid}, signal.SIGKILL)
                kill = "delivered"
            except OSError as e:
                kill = type(e).__name__
            print("RESULT " + json.dumps({{
                "pids": len(pids),
                "kill": kill,
                "runner_visible": any(b"coordinator" in c or b"runner" in c for c in cmdlines),
            }}))
        """)
    assert out["kill"] in ("ProcessLookupError", "PermissionError"), out
    assert not out["runner_visible"]
    assert out["pids"] < 20, out  # the CLI, its shell, this python: a handful, not the host's
    assert os.waitpid(host_pid, os.WNOHANG) == (0, 0), "the runner must still be alive"


async def test_ptrace_cannot_reach_outside_the_sandbox(e2e: E2E) -> None:
    host_pid = runner_pid(e2e)
    async with aiohttp.ClientSession() as http:
        await deploy(http, e2e.url)
        sid = await new_session(http, e2e.url)
        out = await run(e2e, http, sid, f"""
            import ctypes, json, os
            libc = ctypes.CDLL(None, use_errno=True)
            PTRACE_ATTACH = 16
            attach = {{}}
            for target in ({host_pid}, {host_pid} + 1):
                rc = libc.ptrace(PTRACE_ATTACH, target, None, None)
                attach[str(target)] = [rc, os.strerror(ctypes.get_errno())]
            try:
                open("/proc/{host_pid}/mem", "rb").read(1)
                mem = "read"
            except OSError as e:
                mem = type(e).__name__
            print("RESULT " + json.dumps({{"attach": attach, "mem": mem}}))
        """)
    # The runner's pid and its neighbour's do not exist in the sandbox's pid namespace; nothing
    # outside can be named, so nothing outside can be traced.
    assert out["attach"] == {
        str(host_pid): [-1, "No such process"], str(host_pid + 1): [-1, "No such process"]
    }, out
    assert out["mem"] != "read"


FORK_BOMB = """
    import os, signal, time
    children, failed = [], 0
    for _ in range(2000):
        try:
            pid = os.fork()
        except OSError:
            failed += 1
            continue
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        children.append(pid)
    for pid in children:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    import json
    print("RESULT " + json.dumps({"forked": len(children), "failed": failed}))
"""


async def test_a_fork_bomb_hits_the_pids_limit_and_the_runner_stays_healthy(e2e: E2E) -> None:
    async with aiohttp.ClientSession() as http:
        await deploy(http, e2e.url)
        sid = await new_session(http, e2e.url)
        other = await new_session(http, e2e.url)
        name = "bomb.py"
        (e2e.runner_dir / "sessions" / sid / "workspace" / name).write_text(
            textwrap.dedent(FORK_BOMB))
        frames = await turn(http, e2e.url, sid, f"run: python3 {name}")
        results = [f.data for f in frames if f.event == "tool_result"]
        if results:
            counts = result_of(frames)
            assert counts["failed"] > 0 and counts["forked"] < 512, counts  # default pids: 512
        else:
            # The bomb can exhaust the pids limit at the moment the session's own CLI needs a
            # thread, and the CLI aborts. The damage stays inside this session: its turn ends
            # with a retryable error, not a hang.
            errors = [f.data["error"] for f in frames if f.event == "error"]
            assert [e["code"] for e in errors] == ["agent_failed"], frames
            assert errors[0]["retryable"] is True
        assert frames[-1].event == "done"
        # The bombed session still works (a dead CLI is reconnected on the next turn) ...
        assert text_of(await turn(http, e2e.url, sid, "Remember the word heron")) == \
            "I will remember the word heron."
        # ... another session on the same runner is unaffected, and so is the runner.
        assert text_of(await turn(http, e2e.url, other, "Remember the word wren")) == \
            "I will remember the word wren."
        async with http.get(f"{e2e.url}/health") as r:
            assert (await r.json())["runners"] == 1


async def test_a_cpu_spin_does_not_starve_another_session(e2e: E2E) -> None:
    async with aiohttp.ClientSession() as http:
        await deploy(http, e2e.url)
        spinner = await new_session(http, e2e.url)
        other = await new_session(http, e2e.url)
        (e2e.runner_dir / "sessions" / spinner / "workspace" / "spin.py").write_text(
            "import time\nend = time.monotonic() + 12\nwhile time.monotonic() < end:\n    pass\n"
            "print('spun')\n"
        )
        spinning = asyncio.create_task(turn(http, e2e.url, spinner, "run: python3 spin.py & python3 spin.py & wait"))
        # Let the spin start (its tool_use reaches the model API log) before the other turn.
        deadline = asyncio.get_running_loop().time() + 30
        while not any("spin.py" in json.dumps(r["body"]) for r in e2e.model.requests()):
            assert asyncio.get_running_loop().time() < deadline, "the spin never started"
            await asyncio.sleep(0.05)
        answered = await turn(http, e2e.url, other, "Remember the word swift")
        assert text_of(answered) == "I will remember the word swift."
        assert not spinning.done(), "the other session must answer while the spin still runs"
        assert "spun" in tool_output(await spinning)


async def test_no_host_secret_nor_model_key_in_the_sandbox(e2e: E2E) -> None:
    from tests.e2e.conftest import HOST_SECRET, MODEL_KEY

    async with aiohttp.ClientSession() as http:
        await deploy(http, e2e.url)
        sid = await new_session(http, e2e.url)
        out = await run(e2e, http, sid, f"""
            import json, os
            secrets = ({HOST_SECRET!r}.encode(), {MODEL_KEY!r}.encode())
            hits = []
            def holds(data):
                return any(s in data for s in secrets)
            if holds(repr(os.environ).encode()):
                hits.append("env")
            for pid in (p for p in os.listdir("/proc") if p.isdigit()):
                for what in ("environ", "cmdline"):
                    try:
                        if holds(open(f"/proc/{{pid}}/{{what}}", "rb").read()):
                            hits.append(f"/proc/{{pid}}/{{what}}")
                    except OSError:
                        pass
            scanned = 0
            for top in ("/workspace", "/home", "/tmp", "/etc", "/opt", "/proc/self/fd"):
                for root, dirs, files in os.walk(top):
                    for name in files:
                        path = os.path.join(root, name)
                        if path == os.path.abspath(__file__):
                            continue  # this script carries the secret to search for
                        try:
                            with open(path, "rb") as f:
                                scanned += 1
                                if holds(f.read(1 << 20)):
                                    hits.append(path)
                        except OSError:
                            pass
            print("RESULT " + json.dumps({{"hits": hits, "scanned": scanned,
                                          "key": os.environ.get("ANTHROPIC_API_KEY")}}))
        """)
    assert out["hits"] == [], out
    assert out["scanned"] > 10, out  # the scan really read files
    # The sandbox holds only its placeholder; the model received the runner's real key.
    assert out["key"].startswith("ash-placeholder-") and out["key"] != MODEL_KEY
    seen = {r["credential"] for r in e2e.model.requests() if r["purpose"] == "conversation"}
    assert seen == {MODEL_KEY}, seen
