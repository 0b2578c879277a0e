"""Anthropic Messages API response shapes for a scripted reply: whole message, or streaming events.

Standard library only, like `brain.py`: the fake Messages API serves these shapes over SSE and the
stand-in CLI forwards them as `stream_event`s, so both stream exactly the same way.
"""

from __future__ import annotations

import json
import math
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

CHUNK_CHARS = 24  # text and tool input are streamed in deltas of about this many characters
USD_PER_INPUT_TOKEN = 3e-6  # list prices of a mid-size model, so costs look like real ones
USD_PER_OUTPUT_TOKEN = 15e-6


def new_id(prefix: str) -> str:
    """An id in Anthropic's style, e.g. `msg_0123...` or `toolu_...`."""
    return f"{prefix}_{os.urandom(12).hex()}"


def estimate_tokens(*parts: Any) -> int:
    """About four characters per token, a rough stand-in for the real tokenizer."""
    chars = sum(len(json.dumps(p)) for p in parts if p)
    return max(1, math.ceil(chars / 4))


def usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def cost_usd(input_tokens: int, output_tokens: int) -> float:
    return input_tokens * USD_PER_INPUT_TOKEN + output_tokens * USD_PER_OUTPUT_TOKEN


def message(block: dict[str, Any], model: str, input_tokens: int) -> dict[str, Any]:
    """A complete non-streaming Messages API response holding one content block."""
    return {
        "id": new_id("msg"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [block],
        "stop_reason": "tool_use" if block["type"] == "tool_use" else "end_turn",
        "stop_sequence": None,
        "usage": usage(input_tokens, estimate_tokens(block)),
    }


def stream_events(msg: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The streaming events of a `message()`, in the order the real API sends them.

    Each event's `type` is also its SSE event name.
    """
    block = msg["content"][0]
    start = {
        **msg,
        "content": [],
        "stop_reason": None,
        "usage": usage(msg["usage"]["input_tokens"], 1),
    }
    yield {"type": "message_start", "message": start}
    if block["type"] == "text":
        yield {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "text", "text": ""},
        }
        for piece in _chunks(block["text"]):
            yield {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": piece},
            }
    else:
        yield {"type": "content_block_start", "index": 0, "content_block": {**block, "input": {}}}
        for piece in _chunks(json.dumps(block["input"])):
            yield {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "input_json_delta", "partial_json": piece},
            }
    yield {"type": "content_block_stop", "index": 0}
    yield {
        "type": "message_delta",
        "delta": {"stop_reason": msg["stop_reason"], "stop_sequence": None},
        "usage": {"output_tokens": msg["usage"]["output_tokens"]},
    }
    yield {"type": "message_stop"}


def _chunks(text: str) -> list[str]:
    return [text[i : i + CHUNK_CHARS] for i in range(0, len(text), CHUNK_CHARS)] or [""]
