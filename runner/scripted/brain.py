"""A deterministic stand-in for the model: Anthropic Messages API history in, one reply out.

Standard library only. Two processes load this file: the fake Messages API (`model_api.py`,
which the real Claude Code CLI talks to) and the stand-in CLI (`standin_cli.py`), which runs
under Debian's `/usr/bin/python3` inside a sandbox with this directory bound read-only.

`decide(messages, system)` reads the latest user turn and applies the first rule that matches:

| latest user turn                   | reply                                                        |
|------------------------------------|--------------------------------------------------------------|
| holds a `tool_result` block        | text `Done. The tool said: <first 200 chars of the result>`  |
| starts with `run: <command>`       | tool call `Bash {"command", "description"}`                  |
| starts with `write <path>: <text>` | tool call `Write {"file_path": <absolute>, "content"}`       |
| contains `remember the word X`     | text `I will remember the word X.`                           |
| contains `what/which word`         | text `The word was X.` from an *earlier* user message, or    |
|                                    | `You have not told me a word to remember.`                   |
| anything else                      | text `Hello! I am Ash's offline scripted model ...`          |

The two anchored commands come first so that `run: echo remember the word x` runs. The recall
rule looks only at earlier user messages, so its answer proves the history reached the model.

A relative `write` path is resolved against the working directory the Claude Code CLI states
in its request ("Primary working directory: /path", sent as a `system` entry inside `messages`
by CLI 2.1.330, or in the system prompt), falling back to `/workspace`. Text the CLI adds around
the user's words (`<system-reminder>` blocks, `[Request interrupted by user]`) is ignored.
"""

from __future__ import annotations

import json
import os
import re
from collections import namedtuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_CWD = "/workspace"
SUMMARY_CHARS = 200
HELLO = "Hello! I am Ash's offline scripted model (no ANTHROPIC_API_KEY is set). You said: "
NO_WORD = "You have not told me a word to remember."

_REMEMBER = re.compile(r"remember the word\s+[\"'`]?([\w][\w'-]*)", re.IGNORECASE)
_RECALL = re.compile(r"\b(what|which)\s+(was\s+the\s+)?word\b", re.IGNORECASE)
_RUN = re.compile(r"^run:\s*(.+)$", re.IGNORECASE | re.DOTALL)
_WRITE = re.compile(r"^write\s+(.+?):\s(.*)$", re.IGNORECASE | re.DOTALL)
_SLEEP = re.compile(r"^sleep:\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
_CLI_NOTES = re.compile(
    r"<system-reminder>.*?</system-reminder>|^\[Request interrupted by user[^\]\n]*\]$",
    re.DOTALL | re.MULTILINE,
)
_CWD = re.compile(
    r"^\s*-?\s*(?:Primary working directory|Working directory):\s*(\S.*?)\s*$", re.MULTILINE
)


# Named tuples rather than dataclasses: `dataclasses` imports `inspect`, about 15 ms of the stand-in
# CLI's start-up, while `collections` is already loaded by `re`.
class Text(namedtuple("Text", "text")):
    """A plain text answer."""

    __slots__ = ()

    def block(self) -> dict[str, Any]:
        """As a Messages API content block."""
        return {"type": "text", "text": self.text}


class ToolCall(namedtuple("ToolCall", "name input")):
    """A request to run one tool; `input` is the tool's JSON input (a dict)."""

    __slots__ = ()

    def block(self) -> dict[str, Any]:
        """As a Messages API `tool_use` block with a fresh id."""
        return {
            "type": "tool_use",
            "id": f"toolu_{os.urandom(12).hex()}",
            "name": self.name,
            "input": self.input,
        }


Reply = Text | ToolCall


def decide(
    messages: list[dict[str, Any]],
    system: str | list[dict[str, Any]] | None = None,
) -> Reply:
    """Return the scripted reply to the latest user turn of a Messages API conversation.

    `system` is the request's system prompt, as a string or a list of text blocks.
    """
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    if not users:
        return Text(HELLO.rstrip())
    latest = messages[users[-1]]
    results = [b for b in _blocks(latest.get("content")) if b.get("type") == "tool_result"]
    if results:
        said = _flatten(results[-1].get("content")).strip()
        return Text(f"Done. The tool said: {said[:SUMMARY_CHARS]}")
    said = user_text(latest.get("content")).strip()
    if m := _RUN.match(said):
        return ToolCall("Bash", {"command": m.group(1).strip(), "description": "Run a command"})
    if m := _WRITE.match(said):
        path = m.group(1).strip()
        if not path.startswith("/"):
            path = working_directory(messages, system).rstrip("/") + "/" + path
        return ToolCall("Write", {"file_path": path, "content": m.group(2)})
    if m := _REMEMBER.search(said):
        return Text(f"I will remember the word {m.group(1)}.")
    if _RECALL.search(said):
        earlier = (user_text(messages[i].get("content")) for i in reversed(users[:-1]))
        for text in earlier:
            if m := _REMEMBER.search(text):
                return Text(f"The word was {m.group(1)}.")
        return Text(NO_WORD)
    return Text(HELLO + said)


def user_text(content: Any) -> str:
    """The words a user typed: text blocks joined, minus the CLI's `<system-reminder>` blocks."""
    if isinstance(content, str):
        return _strip_reminders(content)
    parts = [b.get("text", "") for b in _blocks(content) if b.get("type") == "text"]
    return "\n".join(p for p in (_strip_reminders(t) for t in parts) if p)


def working_directory(messages: list[dict[str, Any]], system: Any = None) -> str:
    """The working directory the CLI told the model about; the newest statement wins.

    Read from the system prompt, `system` entries and the text of user turns, never from tool
    results, whose output the agent does not control.
    """
    found = _CWD.findall(_flatten(system))
    for m in messages:
        content = m.get("content")
        if m.get("role") == "user" and not isinstance(content, str):
            content = [b for b in _blocks(content) if b.get("type") == "text"]
        if m.get("role") in ("system", "user"):
            found += _CWD.findall(_flatten(content))
    return found[-1] if found else DEFAULT_CWD


def _strip_reminders(text: str) -> str:
    """Drop what the CLI writes into user turns itself: reminders and interruption markers."""
    return _CLI_NOTES.sub("", text).strip()


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, list):
        return [b for b in content if isinstance(b, dict)]
    return []


def _flatten(content: Any) -> str:
    """Text of a string, a list of blocks (text, nested tool_result content) or None."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(_flatten(b) for b in content)
    if isinstance(content, dict):
        if "text" in content:
            return str(content["text"])
        if "content" in content:
            return _flatten(content["content"])
        return json.dumps(content)
    return str(content)


def pause(messages: list[dict[str, Any]]) -> float:
    """Seconds to spread a reply over when the latest user turn starts with `sleep:<seconds>`.

    Not a rule of what to say: it lets tests interrupt a reply that is still streaming.
    """
    users = [m for m in messages if m.get("role") == "user"]
    if not users or any(b.get("type") == "tool_result" for b in _blocks(users[-1].get("content"))):
        return 0.0
    m = _SLEEP.match(user_text(users[-1].get("content")))
    return min(float(m.group(1)), 600.0) if m else 0.0
