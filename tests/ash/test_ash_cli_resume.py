"""`ash send` after a resume that lost the conversation: a warning, not a failed turn."""

from __future__ import annotations

from pathlib import Path

import pytest

from ash.cli import main
from protocol.errors import ErrorCode, ErrorInfo
from protocol.events import Done, Error, Event, SessionStart, TextDelta, UserMessage
from tests.ash.fake_server import FakeAsh

NOTICE = ErrorInfo(code=ErrorCode.conversation_not_restored,
                   message="the Claude conversation c-1 could not be restored (no snapshot)")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("ASH_URL", "ASH_API_KEY", "ASH_DEBUG", "NO_COLOR"):
        monkeypatch.delenv(var, raising=False)


def test_a_conversation_not_restored_is_a_warning_and_the_turn_still_succeeds(
    fake_ash: FakeAsh, agent_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--url", fake_ash.url, "deploy", str(agent_dir)]) == 0
    assert main(["--url", fake_ash.url, "session", "create", "hello"]) == 0
    session = capsys.readouterr().out.splitlines()[-1]

    def after_cold_resume(session_id: str, turn_id: str, content: str, seq: int) -> list[Event]:
        ids = {"session_id": session_id, "turn_id": turn_id}
        return [SessionStart(**ids, seq=seq, agent="hello", runner_id="r2"),
                UserMessage(**ids, seq=seq + 1, content=content),
                Error(**ids, seq=seq + 2, error=NOTICE),
                TextDelta(**ids, seq=seq + 3, delta="You have not told me a word."),
                Done(**ids, seq=seq + 4)]  # fmt: skip

    fake_ash.script = after_cold_resume
    code = main(["--url", fake_ash.url, "send", session, "What was the word?"])
    out, err = capsys.readouterr()
    assert code == 0
    assert out == "You have not told me a word.\n"
    assert err == f"warning: {NOTICE.message}\n"
