"""How things read on a terminal: pure functions, table-tested."""

from __future__ import annotations

import io

import pytest

from ash.render import ago, human_size, render_content, short_digest, table, tool_summary


@pytest.mark.parametrize(
    ("tool_input", "expected"),
    [
        ({"command": "ls -la\n  /tmp", "description": "list"}, "ls -la /tmp"),
        ({"file_path": "/w/CLAUDE.md", "content": "x"}, "/w/CLAUDE.md"),
        ({"pattern": "*.py"}, "*.py"),
        ({}, "(no input)"),
        ({"b": 1, "a": [1, 2]}, '{"a": [1, 2], "b": 1}'),
        ({"command": "x" * 200}, "x" * 119 + "…"),
    ],
)
def test_tool_summary(tool_input: dict[str, object], expected: str) -> None:
    assert tool_summary(tool_input) == expected


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("plain prompt", "plain prompt"),
        (None, ""),
        ({"result": "done"}, "done"),
        (
            {"content": [{"type": "text", "text": "Hi"}, {"type": "thinking", "thinking": "hm"},
                         {"type": "tool_use", "name": "Bash", "input": {"command": "ls"}}]},
            "Hi\n[tool] Bash: ls",
        ),
        ({"message": {"content": [{"type": "tool_result", "content": "a\nb"}]}}, "[tool result] a b"),
        ({"other": 1}, '{"other": 1}'),
    ],
)  # fmt: skip
def test_render_content(content: object, expected: str) -> None:
    assert render_content(content) == expected


def test_render_content_on_one_line() -> None:
    assert render_content("a\nb  c", limit=4) == "a b…"


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1.0 kB"),
        (1_234_567, "1.2 MB"),
        (5 * 10**12, "5000.0 GB"),
    ],
)
def test_human_size(n: int, expected: str) -> None:
    assert human_size(n) == expected


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(-5, "0s ago"), (59, "59s ago"), (60, "1m ago"), (7200, "2h ago"), (3 * 86400, "3d ago")],
)
def test_ago(seconds: int, expected: str) -> None:
    assert ago(1000.0, now=1000.0 + seconds) == expected


def test_short_digest_and_table() -> None:
    assert short_digest("sha256:0123456789abcdef") == "0123456789ab"
    out = io.StringIO()
    table(out, ["NAME", "V"], [["a", "1"], ["longer", "22"]])
    assert out.getvalue() == "NAME    V\na       1\nlonger  22\n"
