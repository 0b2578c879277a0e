"""How things read on a terminal: tool calls and history items, tables, sizes and ages.

History content is whatever the server stored (a prompt string, an SDK message dict, a list of
content blocks); rendering is best effort and never fails: unknown shapes print as compact JSON.
"""

from __future__ import annotations

import json
import time
from typing import Any, TextIO

# The input field that says the most about a call, for Claude Code's built-in tools and most MCP
# tools; the first one present wins.
_SUMMARY_KEYS = ("command", "file_path", "path", "pattern", "url", "query", "description", "prompt")


def tool_summary(tool_input: dict[str, Any], limit: int = 120) -> str:
    """One line saying what a tool call does, e.g. the command of a Bash call."""
    for key in _SUMMARY_KEYS:
        value = tool_input.get(key)
        if isinstance(value, str) and value:
            return one_line(value, limit)
    if not tool_input:
        return "(no input)"
    return one_line(_json(tool_input), limit)


def render_content(content: Any, limit: int | None = None) -> str:
    """Readable text for a message's content; one line of at most `limit` chars if given."""
    text = _text(content)
    return one_line(text, limit) if limit is not None else text


def one_line(text: str, limit: int) -> str:
    """`text` on one line, cut to `limit` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: max(0, limit - 1)] + "…"


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(part for part in (_block(b) for b in content) if part)
    if isinstance(content, dict):
        for key in ("content", "message"):
            if key in content:
                return _text(content[key])
        for key in ("result", "text"):
            if isinstance(content.get(key), str):
                return str(content[key])
    return _json(content)


def _block(block: Any) -> str:
    if not isinstance(block, dict):
        return _text(block)
    match block.get("type"):
        case "text":
            return str(block.get("text", ""))
        case "thinking":
            return ""
        case "tool_use":
            tool_input = block.get("input")
            summary = tool_summary(tool_input) if isinstance(tool_input, dict) else ""
            return f"[tool] {block.get('name', '?')}: {summary}"
        case "tool_result":
            return f"[tool result] {one_line(_text(block.get('content')), 200)}"
    return _json(block)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def table(out: TextIO, headers: list[str] | None, rows: list[list[str]], indent: str = "") -> None:
    """Rows as left-aligned columns, two spaces apart; `headers` first if given."""
    all_rows = ([headers] if headers else []) + rows
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(all_rows[0]))] if all_rows else []
    out.writelines(
        indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() + "\n"
        for row in all_rows
    )


def short_digest(digest: str) -> str:
    """The first 12 hex digits of a `sha256:...` digest."""
    return digest.split(":", 1)[-1][:12]


def human_size(n: int) -> str:
    """Bytes in B, kB, MB or GB (powers of 1000)."""
    if n < 1000:
        return f"{n} B"
    value = float(n)
    for unit in ("kB", "MB", "GB"):
        value /= 1000
        if value < 1000:
            break
    return f"{value:.1f} {unit}"


def ago(ts: float, now: float | None = None) -> str:
    """How long ago `ts` (epoch seconds) was, e.g. `3m ago`."""
    seconds = max(0, int((now if now is not None else time.time()) - ts))
    for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= span:
            return f"{seconds // span}{unit} ago"
    return f"{seconds}s ago"
