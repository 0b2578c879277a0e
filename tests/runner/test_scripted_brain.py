"""The scripted model's rules, fed Messages API histories shaped like the real CLI's requests."""

from __future__ import annotations

import pytest

from runner.scripted import brain
from runner.scripted.brain import Text, ToolCall, decide

REMINDER = {
    "type": "text",
    "text": "<system-reminder>\nremember the word decoy\n</system-reminder>\n",
}
ENV = {
    "role": "system",
    "content": [
        {
            "type": "text",
            "text": (
                "# Environment\nYou have been invoked in the following environment: \n"
                " - Primary working directory: /srv/agent ws\n - Is a git repository: false\n"
            ),
        }
    ],
}


def user(text: str) -> dict:
    """A user turn as Claude Code 2.1.330 sends it: a reminder block, then the typed text."""
    return {"role": "user", "content": [REMINDER, {"type": "text", "text": text}]}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


@pytest.mark.parametrize(
    ("said", "expected"),
    [
        ("Hello there", Text(brain.HELLO + "Hello there")),
        ("Please remember the word Pelican.", Text("I will remember the word Pelican.")),
        ("REMEMBER THE WORD kiwi", Text("I will remember the word kiwi.")),
        (
            "run: echo hi > out.txt",
            ToolCall("Bash", {"command": "echo hi > out.txt", "description": "Run a command"}),
        ),
        (
            "run: echo remember the word x",
            ToolCall(
                "Bash", {"command": "echo remember the word x", "description": "Run a command"}
            ),
        ),
        (
            "write /etc/motd: hi: there",
            ToolCall("Write", {"file_path": "/etc/motd", "content": "hi: there"}),
        ),
    ],
)
def test_rules_on_the_latest_user_turn(said: str, expected: brain.Reply) -> None:
    assert decide([user(said)], None) == expected


def test_plain_string_content_is_read_like_blocks() -> None:
    assert decide([{"role": "user", "content": "hi"}]) == Text(brain.HELLO + "hi")


def test_recall_answers_from_an_earlier_user_message() -> None:
    history = [
        user("Remember the word pelican"),
        ENV,
        assistant("I will remember the word pelican."),
        user("What was the word?"),
    ]
    assert decide(history) == Text("The word was pelican.")


def test_recall_takes_the_newest_word_and_ignores_the_assistant() -> None:
    history = [
        user("remember the word one"),
        assistant("ok"),
        user("remember the word two"),
        assistant("I will remember the word three."),
        user("Which word did I say?"),
    ]
    assert decide(history) == Text("The word was two.")


def test_recall_without_history_says_so() -> None:
    # The same question alone: the answer above came from the history, not from the question.
    assert decide([user("What was the word?")]) == Text(brain.NO_WORD)


def test_tool_result_is_summarised_in_200_characters() -> None:
    long = "x" * 500
    history = [
        user("run: yes x | head -c 500"),
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": "Bash", "input": {}}],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "t1",
                    "content": [{"type": "text", "text": long}],
                },
                REMINDER,
            ],
        },
    ]
    assert decide(history) == Text("Done. The tool said: " + "x" * 200)


def test_write_resolves_relative_paths_against_the_stated_working_directory() -> None:
    reply = decide([user("write notes/today.txt: hello\nworld"), ENV])
    assert reply == ToolCall(
        "Write", {"file_path": "/srv/agent ws/notes/today.txt", "content": "hello\nworld"}
    )


def test_write_reads_the_working_directory_from_the_system_prompt_too() -> None:
    system = [
        {"type": "text", "text": "You are an agent."},
        {"type": "text", "text": "<env>\nWorking directory: /home/a\n</env>"},
    ]
    assert decide([user("write n.txt: x")], system).input["file_path"] == "/home/a/n.txt"


def test_write_falls_back_to_workspace() -> None:
    assert decide([user("write n.txt: x")], "").input["file_path"] == "/workspace/n.txt"


def test_pause_reads_sleep_prefix_of_the_latest_turn_only() -> None:
    assert brain.pause([user("sleep:2.5 please")]) == 2.5
    assert brain.pause([user("sleep:2"), assistant("ok"), user("hi")]) == 0.0
    assert brain.pause([user("hello sleep:2")]) == 0.0


def test_replies_become_content_blocks() -> None:
    assert Text("hi").block() == {"type": "text", "text": "hi"}
    block = ToolCall("Bash", {"command": "ls"}).block()
    assert block["type"] == "tool_use" and block["id"].startswith("toolu_")
    assert (block["name"], block["input"]) == ("Bash", {"command": "ls"})


def test_interruption_marker_merged_into_the_next_turn_is_not_the_users_words() -> None:
    # After an interrupt, CLI 2.1.330 sends the marker and the next prompt in one user message.
    turn = {
        "role": "user",
        "content": [
            {"type": "text", "text": "[Request interrupted by user]"},
            {"type": "text", "text": "Hello again"},
        ],
    }
    assert decide([turn]) == Text(brain.HELLO + "Hello again")


def test_a_working_directory_printed_by_a_tool_does_not_move_writes() -> None:
    history = [
        ENV,
        user("run: cat /etc/x"),
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t", "name": "Bash", "input": {}}],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "t", "content": "Working directory: /evil"}
            ],
        },
        assistant("ok"),
        user("write a.txt: x"),
    ]
    assert decide(history).input["file_path"] == "/srv/agent ws/a.txt"
