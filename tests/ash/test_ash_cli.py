"""The `ash` command line against a real server speaking the contract: what people see."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from ash.cli import main
from protocol.codec import decode_event
from protocol.errors import ErrorInfo
from protocol.events import Done, Error, SessionStart, TextDelta, ToolUse
from tests.ash.fake_server import FakeAsh, free_port


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("ASH_URL", "ASH_API_KEY", "ASH_DEBUG", "NO_COLOR"):
        monkeypatch.delenv(var, raising=False)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _session(fake: FakeAsh, agent_dir: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert _run(capsys, "--url", fake.url, "deploy", str(agent_dir))[0] == 0
    code, out, _ = _run(capsys, "--url", fake.url, "session", "create", "hello")
    assert code == 0
    return out.strip()


def test_deploy_prints_name_version_and_digest(
    fake_ash: FakeAsh, agent_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(capsys, "deploy", str(agent_dir), "--url", fake_ash.url)
    assert code == 0 and err == ""
    agent = fake_ash.agents["hello"]
    digest = agent.digest.removeprefix("sha256:")[:12]
    assert agent.size == 38  # CLAUDE.md and SKILL.md
    assert out == f"deployed hello v1 (2 files, 38 B, digest {digest})\n"
    code, out, _ = _run(
        capsys, "--url", fake_ash.url, "deploy", str(agent_dir), "--name", "greeter"
    )
    assert code == 0 and out.startswith("deployed greeter v1 ")
    code, out, _ = _run(capsys, "--url", fake_ash.url, "--json", "deploy", str(agent_dir))
    assert code == 0 and json.loads(out)["version"] == 2


def test_deploy_refusal_is_one_error_line_and_a_hint(
    fake_ash: FakeAsh, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "no agent").mkdir()
    code, out, err = _run(capsys, "--url", fake_ash.url, "deploy", str(tmp_path / "no agent"))
    assert code == 1 and out == ""
    lines = err.splitlines()
    assert lines[0].startswith("error: invalid agent name 'no agent'")
    assert lines[1] == "hint: pass a valid agent name with --name"
    code, _, err = _run(capsys, "--url", fake_ash.url, "deploy", str(tmp_path / "no agent"),
                        "--name", "ok")  # fmt: skip
    assert code == 1 and "has no CLAUDE.md" in err and "Traceback" not in err
    assert fake_ash.requests == []


def test_agents_prints_an_aligned_table(
    fake_ash: FakeAsh, agent_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, "--url", fake_ash.url, "agents")
    assert code == 0 and "no agents deployed yet" in out
    for name in ("hello", "a-much-longer-agent-name"):
        _run(capsys, "--url", fake_ash.url, "deploy", str(agent_dir), "--name", name)
    _run(capsys, "--url", fake_ash.url, "deploy", str(agent_dir), "--name", "hello")
    code, out, _ = _run(capsys, "--url", fake_ash.url, "agents")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["NAME", "VERSION", "FILES", "SIZE", "DIGEST", "UPDATED"]
    assert [r.split()[:2] for r in rows] == [["a-much-longer-agent-name", "1"], ["hello", "2"]]
    column = header.index("VERSION")
    assert all(r[column - 2 : column] == "  " and r[column] != " " for r in rows)
    code, out, _ = _run(capsys, "--url", fake_ash.url, "agents", "--json")
    assert [a["name"] for a in json.loads(out)] == ["a-much-longer-agent-name", "hello"]
    code, out, _ = _run(capsys, "--url", fake_ash.url, "agents", "delete", "hello")
    assert code == 0 and out == "deleted hello\n"
    code, _, err = _run(capsys, "--url", fake_ash.url, "agents", "get", "hello")
    assert code == 1 and err.startswith("error: no agent named 'hello'\nhint: ")


def test_send_streams_text_to_stdout_and_tools_to_stderr(
    fake_ash: FakeAsh, agent_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    session = _session(fake_ash, agent_dir, capsys)
    code, out, err = _run(capsys, "--url", fake_ash.url, "send", session, "list files")
    assert code == 0
    assert out == "Hello world\n"
    assert err == "[tool] Bash: ls -la\n"


def test_send_prints_text_before_the_turn_ends(
    fake_ash: FakeAsh, agent_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    session = _session(fake_ash, agent_dir, capsys)

    def hello_first(session_id: str, turn_id: str, content: str, seq: int) -> list:  # type: ignore[type-arg]
        ids = {"session_id": session_id, "turn_id": turn_id}
        return [TextDelta(**ids, seq=seq, delta="Hel"), TextDelta(**ids, seq=seq + 1, delta="lo"),
                Done(**ids, seq=seq + 2)]  # fmt: skip

    fake_ash.script = hello_first
    fake_ash.hold_after_first = True
    result: list[int] = []
    thread = threading.Thread(
        target=lambda: result.append(main(["--url", fake_ash.url, "send", session, "x"]))
    )
    thread.start()
    seen = ""
    deadline = time.monotonic() + 5
    while "Hel" not in seen and time.monotonic() < deadline:
        seen += capsys.readouterr().out
        time.sleep(0.01)
    assert seen == "Hel" and not fake_ash.turn_finished.is_set()
    fake_ash.release()
    thread.join(10)
    assert result == [0]
    assert seen + capsys.readouterr().out == "Hello\n"


def test_send_exits_nonzero_when_the_turn_fails(
    fake_ash: FakeAsh, agent_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    session = _session(fake_ash, agent_dir, capsys)

    def failing(session_id: str, turn_id: str, content: str, seq: int) -> list:  # type: ignore[type-arg]
        ids = {"session_id": session_id, "turn_id": turn_id}
        return [
            TextDelta(**ids, seq=seq, delta="Working on"),
            Error(
                **ids, seq=seq + 1, error=ErrorInfo(code="agent_failed", message="the CLI crashed")
            ),
            Done(**ids, seq=seq + 2, reason="error"),
        ]

    fake_ash.script = failing
    code, out, err = _run(capsys, "--url", fake_ash.url, "send", session, "go")
    assert code == 1
    assert out == "Working on\n"
    assert err == "error: the CLI crashed (agent_failed)\n"


def test_send_json_prints_one_event_per_line(
    fake_ash: FakeAsh, agent_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    session = _session(fake_ash, agent_dir, capsys)
    code, out, _ = _run(capsys, "--url", fake_ash.url, "send", session, "hi", "--json")
    events = [decode_event(line.encode()) for line in out.splitlines()]
    assert code == 0 and isinstance(events[0], SessionStart) and isinstance(events[-1], Done)
    assert any(isinstance(e, ToolUse) for e in events)


def test_send_to_an_ended_session(
    fake_ash: FakeAsh, agent_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    session = _session(fake_ash, agent_dir, capsys)
    assert _run(capsys, "--url", fake_ash.url, "session", "end", session)[1] == f"ended {session}\n"
    code, out, err = _run(capsys, "--url", fake_ash.url, "send", session, "hi")
    assert code == 1 and out == ""
    assert err.splitlines() == [
        f"error: session {session} has ended",
        (
            "hint: `ash session get ID` shows the session's state; "
            "`ash session create AGENT` starts a new one"
        ),
    ]


def test_chat_creates_a_session_and_says_how_to_continue(
    fake_ash: FakeAsh, agent_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _run(capsys, "--url", fake_ash.url, "deploy", str(agent_dir))
    code, out, err = _run(capsys, "--url", fake_ash.url, "chat", "hello", "hi")
    assert code == 0 and out == "Hello world\n"
    [session_id] = fake_ash.sessions
    assert f"session {session_id}: continue with `ash send {session_id} TEXT`" in err


def test_sessions_history_and_health(
    fake_ash: FakeAsh,
    agent_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ASH_URL", fake_ash.url)  # the URL from the environment this time
    session = _session(fake_ash, agent_dir, capsys)
    _run(capsys, "send", session, "hi")
    code, out, _ = _run(capsys, "session", "list", "--agent", "hello")
    header, row = out.splitlines()
    assert header.split() == ["ID", "AGENT", "STATUS", "TURNS", "MODEL", "UPDATED"]
    assert row.split()[:4] == [session, "hello", "active", "1"]
    code, out, _ = _run(capsys, "session", "get", session)
    assert code == 0 and out.splitlines()[2].split() == ["status", "active"]
    code, out, _ = _run(capsys, "history", session)
    assert code == 0
    assert [line.split(None, 2)[1:] for line in out.splitlines()] == [
        ["user", "hi"], ["result", "Hello world"],
    ]  # fmt: skip
    code, out, _ = _run(capsys, "health")
    assert code == 0
    assert out.startswith(f"ok: version 0.1.0, nats up, 1 runner(s) at {fake_ash.url}\n")
    assert "offline scripted model" in out


def test_connection_refused_tells_the_user_to_start_ash(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, out, err = _run(capsys, "--url", url, "agents")
    assert code == 1 and out == ""
    first, hint = err.splitlines()
    assert first.startswith(f"error: the Ash server is not reachable at {url}")
    assert "`ash start`" in first and hint.startswith("hint: ")


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["session"]) == 2
    assert main(["bogus"]) == 2
    assert "usage: ash" in capsys.readouterr().err
