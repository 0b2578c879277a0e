"""The wire contract: subjects, codec round trips, evolution, settings."""

from __future__ import annotations

import msgspec
import pytest

from coordinator.config import CoordinatorConfig
from protocol import codec, config, events, subjects
from protocol.commands import AgentRef, CreateSession, SendTurn
from runner.config import RunnerConfig, from_env


def test_subjects_build_and_parse() -> None:
    s = subjects.session_events("abc_1-2")
    assert s == "ash.v1.events.abc_1-2"
    assert subjects.parse_session_events(s) == "abc_1-2"
    assert subjects.runner_commands("r1") == "ash.v1.runner.r1.cmd"


@pytest.mark.parametrize("bad", ["", "a.b", "a*", "a>", "a b", "x" * 129])
def test_subject_tokens_are_validated(bad: str) -> None:
    with pytest.raises(subjects.SubjectError):
        subjects.session_events(bad)


def test_events_round_trip_with_their_tag() -> None:
    ev = events.ToolUse(session_id="s", turn_id="t", seq=7, tool_use_id="u", name="Bash",
                        input={"command": "ls"})
    data = codec.encode(ev)
    assert msgspec.json.decode(data)["type"] == "tool_use"
    assert codec.decode_event(data) == ev


def test_unknown_event_types_are_rejected_and_unknown_fields_tolerated() -> None:
    with pytest.raises(msgspec.ValidationError):
        codec.decode_event(b'{"type":"nope","session_id":"s","turn_id":"t","seq":1}')
    newer = b'{"type":"done","session_id":"s","turn_id":"t","seq":3,"reason":"completed","extra":1}'
    assert codec.decode_event(newer) == events.Done(session_id="s", turn_id="t", seq=3)


def test_commands_round_trip() -> None:
    cmd = CreateSession(session_id="s", agent=AgentRef(name="a", digest="d"))
    assert codec.decode_command(codec.encode(cmd)) == cmd
    turn = SendTurn(session_id="s", turn_id="t", content="hi")
    assert codec.decode_command(codec.encode(turn)) == turn


def test_every_setting_is_known_and_typos_fail() -> None:
    fields = {config.env_name(f) for t in (CoordinatorConfig, RunnerConfig)
              for f in t.__struct_fields__} - {"ASH_ANTHROPIC_API_KEY", "ASH_ANTHROPIC_BASE_URL"}
    assert fields <= config.ALL_SETTINGS
    assert config.ALL_SETTINGS - fields == {"ASH_URL", "ASH_API_KEY"}  # the client's
    with pytest.raises(config.ConfigError, match="did you mean ASH_MAX_SESSIONS"):
        from_env({"ASH_MAX_SESIONS": "3"})
    cfg = from_env({"ASH_MAX_SESSIONS": "3", "ASH_PORT": "1", "ANTHROPIC_API_KEY": "k"})
    assert cfg.max_sessions == 3 and cfg.anthropic_api_key == "k" and not cfg.uses_scripted_model
