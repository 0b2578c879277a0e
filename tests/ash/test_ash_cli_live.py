"""The `ash` command, as a subprocess, against a real stack: every command group, people's
output (tables, hints) and scripts' output (`--json`)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.ash.conftest import LiveAsh
from tests.procs import ROOT

pytestmark = pytest.mark.e2e
ASH = [sys.executable, "-m", "ash"]


def ash(live: LiveAsh, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    run = subprocess.run([*ASH, *argv], env=live.env(), cwd=ROOT, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    if check:
        assert run.returncode == 0, f"ash {' '.join(argv)}: {run.returncode}\n{run.stderr}"
    return run


@pytest.fixture(scope="module")
def session(live_ash: LiveAsh) -> str:
    ash(live_ash, "deploy", "examples/hello", "--name", "cli-hello")
    return ash(live_ash, "session", "create", "cli-hello").stdout.strip()


def test_agents_deploy_list_get_delete(live_ash: LiveAsh) -> None:
    out = ash(live_ash, "deploy", "examples/hello", "--name", "cli-agent").stdout
    assert out.startswith("deployed cli-agent v1 (")
    header, *rows = ash(live_ash, "agents").stdout.splitlines()
    assert header.split() == ["NAME", "VERSION", "FILES", "SIZE", "DIGEST", "UPDATED"]
    assert any(r.split()[0] == "cli-agent" for r in rows)
    got = json.loads(ash(live_ash, "--json", "agents", "get", "cli-agent").stdout)
    assert (got["name"], got["version"]) == ("cli-agent", 1)
    assert ash(live_ash, "agents", "delete", "cli-agent").stdout == "deleted cli-agent\n"
    gone = ash(live_ash, "agents", "get", "cli-agent", check=False)
    assert gone.returncode == 1
    assert gone.stderr.splitlines()[0].startswith("error: ")
    assert gone.stderr.splitlines()[1].startswith("hint: ")


def test_sessions_send_chat_history_and_logs(live_ash: LiveAsh, session: str) -> None:
    reply = ash(live_ash, "send", session, "remember the word pelican").stdout
    assert "pelican" in reply
    header, *rows = ash(live_ash, "session", "list", "--agent", "cli-hello").stdout.splitlines()
    assert header.split()[:3] == ["ID", "AGENT", "STATUS"] and any(session in r for r in rows)
    view = json.loads(ash(live_ash, "--json", "session", "get", session).stdout)
    assert view["status"] == "active" and view["turns"] >= 1
    chat = ash(live_ash, "chat", "cli-hello", "hello there")
    assert "hello there" in chat.stdout and chat.stderr.startswith("session ")
    history = ash(live_ash, "history", session).stdout
    assert "pelican" in history
    # logs: every event from the session's start, one line each; --json one object a line
    lines = ash(live_ash, "logs", session).stdout.splitlines()
    assert lines[0].split()[:2] == ["#1", "session_start"]
    assert lines[-1].split()[1:] == ["done", "completed"]
    events = [json.loads(x) for x in ash(live_ash, "--json", "logs", session, "--after", "2")
              .stdout.splitlines()]  # fmt: skip
    assert events[0]["seq"] == 3 and [e["seq"] for e in events] == list(range(3, 3 + len(events)))
    empty = ash(live_ash, "logs", session, "--after", str(events[-1]["seq"]))
    assert empty.stdout == "" and "-f" in empty.stderr


def test_logs_follow_prints_new_turns_as_they_run(live_ash: LiveAsh, session: str) -> None:
    last = json.loads(ash(live_ash, "--json", "logs", session).stdout.splitlines()[-1])["seq"]
    follow = subprocess.Popen([*ASH, "logs", session, "--after", str(last), "-f"],
                              env=live_ash.env(), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        ash(live_ash, "send", session, "what was the word?")
        assert follow.stdout is not None
        seen = []
        for line in follow.stdout:  # ends when the turn's done is printed (or the pipe breaks)
            seen.append(line.split()[1])
            if seen[-1] == "done":
                break
        assert seen[0] == "session_start" and seen[-1] == "done" and "user_message" in seen
    finally:
        follow.terminate()
        follow.communicate(timeout=10)


def test_pause_resume_fork_interrupt(live_ash: LiveAsh, session: str) -> None:
    assert ash(live_ash, "pause", session).stdout.startswith(f"paused {session}")
    resumed = json.loads(ash(live_ash, "--json", "resume", session).stdout)
    assert resumed["status"] == "active"
    forked = ash(live_ash, "fork", session).stdout.strip().split()[-1]
    assert len(forked) == 32 and forked != session
    assert "pelican" in ash(live_ash, "send", forked, "what was the word?").stdout
    idle = ash(live_ash, "interrupt", session, check=False)
    assert idle.returncode == 1 and "hint: nothing to stop" in idle.stderr
    ended = ash(live_ash, "session", "end", forked).stdout
    assert ended == f"ended {forked}\n"


def test_exec_files_and_workspace(live_ash: LiveAsh, session: str, tmp_path: Path) -> None:
    run = ash(live_ash, "exec", session, "--", "echo out; echo err >&2; exit 7", check=False)
    assert (run.returncode, run.stdout, run.stderr) == (7, "out\n", "err\n")
    src = tmp_path / "data.bin"
    src.write_bytes(b"x" * 300_000)
    put = ash(live_ash, "files", "put", session, str(src), "dir/data.bin", "--progress")
    assert put.stdout == "created dir/data.bin (300.0 kB)\n"
    assert "300.0 kB / 300.0 kB  100%" in put.stderr  # progress, drawn on stderr
    listing = ash(live_ash, "files", "ls", session, "dir").stdout.splitlines()
    assert listing[0].split() == ["TYPE", "SIZE", "MODIFIED", "PATH"]
    assert listing[1].split()[0] == "file" and listing[1].endswith("dir/data.bin")
    got = tmp_path / "back.bin"
    ash(live_ash, "files", "get", session, "dir/data.bin", "-o", str(got))
    assert got.read_bytes() == src.read_bytes()
    archive = tmp_path / "ws.tar.gz"
    ash(live_ash, "workspace", "download", session, str(archive))
    with tarfile.open(archive) as tar:
        assert any(n.endswith("dir/data.bin") for n in tar.getnames())
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("up/hello.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    upload = tmp_path / "up.tar.gz"
    upload.write_bytes(buf.getvalue())
    up = json.loads(ash(live_ash, "--json", "workspace", "upload", session, str(upload)).stdout)
    assert up["files"] == 1
    assert ash(live_ash, "files", "rm", session, "dir", "-r").stdout == "deleted dir\n"


def test_runners_and_health(live_ash: LiveAsh) -> None:
    header, *rows = ash(live_ash, "runners").stdout.splitlines()
    assert header.split() == ["ID", "STATE", "SESSIONS", "WARM", "MEMORY", "CPU", "LABELS", "SEEN"]
    assert rows[0].split()[:2] == ["live-runner", "live"]
    runners = json.loads(ash(live_ash, "--json", "runners").stdout)
    assert runners[0]["runner_id"] == "live-runner" and runners[0]["max_sessions"] > 0
    assert not runners[0]["draining"]
    assert ash(live_ash, "health").stdout.startswith("ok: ")


def test_a_missing_key_says_what_to_do(live_ash: LiveAsh) -> None:
    env = live_ash.env()
    env.pop("ASH_API_KEY")
    run = subprocess.run([*ASH, "agents"], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert run.returncode == 1
    assert "hint: set ASH_API_KEY or pass --api-key" in run.stderr
