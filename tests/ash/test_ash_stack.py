"""The local stack supervisor, with small stand-in children in place of coordinator and runner.

The stand-in coordinator serves `/health` on ASH_HOST:ASH_PORT, reporting `nats: true` only if it
can reach ASH_NATS_URL and a runner once the stand-in runner has written ASH_RUNNER_DIR/ready.
Both record their environment and the order in which they are stopped.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ash import launcher
from ash.cli import main
from ash.errors import StackError
from ash.process import pid_alive
from ash.stack import ChildSpec, StackConfig, child_env, default_children, read_state, running_pid
from tests.ash.fake_server import free_port

COORDINATOR = """
import http.server, json, os, pathlib, signal, socket, sys
home = pathlib.Path(os.environ["ASH_HOME"])
nats_host, nats_port = os.environ["ASH_NATS_URL"].removeprefix("nats://").rsplit(":", 1)
ready = pathlib.Path(os.environ["ASH_RUNNER_DIR"]) / "ready"
(home / "coordinator-env.json").write_text(json.dumps(dict(os.environ)))

def nats_up():
    try:
        socket.create_connection((nats_host, int(nats_port)), timeout=1).close()
        return True
    except OSError:
        return False

class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"status": "ok", "version": "stand-in", "nats": nats_up(),
                           "runners": 1 if ready.exists() else 0,
                           "scripted_model": "ANTHROPIC_API_KEY" not in os.environ}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

def on_term(*_):
    with open(home / "stops.log", "a") as f:
        f.write(f"coordinator nats_up={nats_up()}\\n")
    os._exit(0)

signal.signal(signal.SIGTERM, on_term)
server = http.server.HTTPServer((os.environ["ASH_HOST"], int(os.environ["ASH_PORT"])), Health)
print("stand-in coordinator listening", flush=True)
server.serve_forever()
"""

RUNNER = """
import os, pathlib, signal
home = pathlib.Path(os.environ["ASH_HOME"])
ready = pathlib.Path(os.environ["ASH_RUNNER_DIR"]) / "ready"

def on_term(*_):
    with open(home / "stops.log", "a") as f:
        f.write("runner\\n")
    ready.unlink()
    os._exit(0)

signal.signal(signal.SIGTERM, on_term)
ready.write_text(str(os.getpid()))
while True:
    signal.pause()
"""

FAILING = "import sys; print('boom: cannot open the database', file=sys.stderr); sys.exit(3)"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "ash home"
    # The detached supervisor must import this checkout's `ash` wherever pytest runs from.
    repo = str(Path(__file__).resolve().parents[2])
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))
    )
    monkeypatch.setenv("ASH_HOME", str(home))
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.setenv("ASH_URL", "http://127.0.0.1:1")  # client-only: must not reach children
    yield home
    if running_pid(home):  # a failed test must not leave a stack behind
        launcher.stop(home, timeout=30)
    state = read_state(home)
    for child in state.children if state else []:
        if pid_alive(child.pid):
            os.kill(child.pid, signal.SIGKILL)


def _config(home: Path, tmp_path: Path, coordinator: str = COORDINATOR) -> StackConfig:
    scripts = {}
    for name, source in (("coordinator", coordinator), ("runner", RUNNER)):
        scripts[name] = tmp_path / f"{name}_stand_in.py"
        scripts[name].write_text(textwrap.dedent(source))
    return StackConfig(
        home=str(home),
        port=free_port(),
        children=[
            ChildSpec(name="coordinator", argv=[sys.executable, str(scripts["coordinator"])]),
            ChildSpec(name="runner", argv=[sys.executable, str(scripts["runner"])]),
        ],
        stop_timeout=5.0,
    )


def _wait_stopped(home: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while running_pid(home) is not None:
        assert time.monotonic() < deadline, "the supervisor did not stop"
        time.sleep(0.05)


async def test_start_waits_for_a_runner_then_stop_stops_in_reverse(
    home: Path, tmp_path: Path
) -> None:
    config = _config(home, tmp_path)
    out = io.StringIO()
    started = await launcher.start(config, out=out, deadline=30)
    assert not started.already_running and started.url == config.url
    assert started.health is not None and started.health.runners == 1 and started.health.nats
    assert started.health.scripted_model  # no ANTHROPIC_API_KEY in the children's environment
    assert out.getvalue().startswith(f"starting ash in {home}")

    state = read_state(home)
    assert state is not None and state.state == "running" and running_pid(home) == started.pid
    assert [c.name for c in state.children] == ["nats", "coordinator", "runner"]
    env = json.loads((home / "coordinator-env.json").read_text())
    assert env["ASH_NATS_URL"] == state.nats_url
    assert (env["ASH_HOST"], env["ASH_PORT"]) == ("127.0.0.1", str(config.port))
    assert env["ASH_HOME"] == str(home) and env["ASH_RUNNER_DIR"] == str(home / "runner")
    assert env["ASH_DATABASE_URL"] == f"sqlite:///{home}/ash.db"
    assert "ASH_URL" not in env
    assert "stand-in coordinator listening" in (home / "logs" / "coordinator.log").read_text()

    again = await launcher.start(config, out=io.StringIO(), deadline=30)
    assert again.already_running and again.pid == started.pid

    pids = [c.pid for c in state.children]
    assert launcher.stop(home) == started.pid
    assert (home / "stops.log").read_text().splitlines() == ["runner", "coordinator nats_up=True"]
    assert [pid for pid in [started.pid, *pids] if pid_alive(pid)] == []
    assert not (home / "ash.pid").exists()
    final = read_state(home)
    assert final is not None and final.state == "stopped" and final.failed is None
    assert launcher.stop(home) is None  # nothing left to stop


async def test_the_api_key_passes_through_to_the_children(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")
    started = await launcher.start(_config(home, tmp_path), out=io.StringIO(), deadline=30)
    try:
        assert started.health is not None and not started.health.scripted_model
        env = json.loads((home / "coordinator-env.json").read_text())
        assert (env["ANTHROPIC_API_KEY"], env["ANTHROPIC_BASE_URL"]) == (
            "sk-test",
            "http://127.0.0.1:9",
        )
    finally:
        launcher.stop(home)


async def test_a_dying_child_stops_the_whole_stack(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await launcher.start(_config(home, tmp_path), out=io.StringIO(), deadline=30)
    state = read_state(home)
    assert state is not None
    pids = {c.name: c.pid for c in state.children}
    os.kill(pids["runner"], signal.SIGKILL)
    _wait_stopped(home)
    final = read_state(home)
    assert final is not None and final.state == "stopped"
    assert final.failed == "runner" and final.failure == "runner exited with code -9"
    assert not pid_alive(pids["coordinator"]) and not pid_alive(pids["nats"])
    assert not (home / "ash.pid").exists()
    assert main(["status"]) == 3
    out = capsys.readouterr().out
    assert out.splitlines() == [
        f"ash is not running (home {home})",
        "last run stopped because runner exited with code -9",
    ]


async def test_a_child_failing_at_start_is_reported_with_its_log(
    home: Path, tmp_path: Path
) -> None:
    out = io.StringIO()
    with pytest.raises(StackError) as caught:
        await launcher.start(_config(home, tmp_path, coordinator=FAILING), out=out, deadline=30)
    message = caught.value.message
    assert message.startswith("coordinator exited with code 3; last lines of ")
    assert "boom: cannot open the database" in message
    assert running_pid(home) is None
    state = read_state(home)
    assert state is not None and state.state == "stopped"
    assert not any(pid_alive(c.pid) for c in state.children)


async def test_a_stack_that_never_gets_a_runner_times_out_and_is_stopped(
    home: Path, tmp_path: Path
) -> None:
    config = _config(home, tmp_path)
    never_ready = tmp_path / "runner_stand_in.py"
    never_ready.write_text("import signal\nwhile True:\n    signal.pause()\n")
    out = io.StringIO()
    with pytest.raises(StackError) as caught:
        await launcher.start(config, out=out, deadline=8)
    assert caught.value.message.startswith(
        "the stack did not become ready within 8 s (no runner registered)"
    )
    assert "stand-in coordinator listening" in caught.value.message  # the children's log tails
    assert "coordinator is up; waiting for a runner to register" in out.getvalue()
    assert running_pid(home) is None
    state = read_state(home)
    assert state is not None and state.state == "stopped"
    assert not any(pid_alive(c.pid) for c in state.children)


async def test_a_taken_port_is_refused_before_anything_starts(home: Path, tmp_path: Path) -> None:
    config = _config(home, tmp_path)
    refused = rf"cannot listen on 127.0.0.1:{config.port}.*--port"
    with socket.create_server(("127.0.0.1", config.port)), pytest.raises(StackError, match=refused):
        await launcher.start(config, out=io.StringIO(), deadline=30)
    assert not (home / "logs" / "stack.log").exists()


def test_cli_status_start_and_stop_with_a_running_stack(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started = asyncio.run(launcher.start(_config(home, tmp_path), out=io.StringIO(), deadline=30))
    assert main(["status"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"ash is running at {started.url} (pid {started.pid}, home {home})"
    assert [line.split()[:4] for line in out[1:]] == [
        [name, "pid", str(c.pid), "up"]
        for name, c in zip(["nats", "coordinator", "runner"], read_state(home).children)  # type: ignore[union-attr]
    ]
    assert main(["start"]) == 0  # already running: says so, starts nothing
    assert (
        capsys.readouterr().out == f"ash is already running at {started.url} (pid {started.pid})\n"
    )
    assert main(["stop"]) == 0
    assert capsys.readouterr().out == f"stopped ash (pid {started.pid})\n"
    assert main(["stop"]) == 0
    assert capsys.readouterr().out == "ash is not running\n"


def test_child_env_and_default_children() -> None:
    config = StackConfig(home="/h", host="0.0.0.0", port=4200, python="/py")
    env = child_env(config, "nats://127.0.0.1:5", {"PATH": "/bin", "ASH_URL": "x", "ASH_API_KEY": "k", "ASH_DEBUG": "1",
                                                   "ANTHROPIC_API_KEY": "sk", "ASH_LOG_LEVEL": "debug"})  # fmt: skip
    assert env == {
        "PATH": "/bin", "ANTHROPIC_API_KEY": "sk", "ASH_LOG_LEVEL": "debug",
        "ASH_NATS_URL": "nats://127.0.0.1:5", "ASH_HOME": "/h", "ASH_HOST": "0.0.0.0",
        "ASH_PORT": "4200", "ASH_DATABASE_URL": "sqlite:////h/ash.db", "ASH_RUNNER_DIR": "/h/runner",
        "PYTHONUNBUFFERED": "1", "ASH_LOG_FORMAT": "text",  # people read `ash start`'s logs
    }  # fmt: skip
    assert config.url == "http://127.0.0.1:4200"
    assert [(c.name, c.argv) for c in default_children(config)] == [
        ("coordinator", ["/py", "-m", "coordinator"]),
        ("runner", ["/py", "-m", "runner"]),
    ]


def test_the_pid_file_is_owned_only_while_locked(tmp_path: Path) -> None:
    from ash import pidfile

    path = tmp_path / "sub" / "ash.pid"
    assert pidfile.holder(path) is None
    fd = pidfile.acquire(path)
    assert fd is not None
    try:
        assert pidfile.holder(path) == os.getpid()
        assert pidfile.acquire(path) is None  # a second owner is refused
    finally:
        pidfile.release(path, fd)
    assert not path.exists() and pidfile.holder(path) is None
    path.write_text("12345\n")  # left behind by a process that died: nobody holds the lock
    assert pidfile.holder(path) is None
