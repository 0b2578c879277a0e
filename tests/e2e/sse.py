"""Reading a turn's SSE stream in tests: frames as (id, event, data) with data decoded."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiohttp


@dataclass
class Frame:
    id: int
    event: str
    data: dict[str, Any]


async def read_turn(resp: aiohttp.ClientResponse) -> list[Frame]:
    """All frames of one streamed turn, through `done`."""
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    frames: list[Frame] = []
    fields: dict[str, str] = {}
    async for raw in resp.content:
        line = raw.decode().rstrip("\r\n")
        if line.startswith(":"):
            continue
        if line == "":
            if fields:
                frames.append(Frame(int(fields["id"]), fields["event"], json.loads(fields["data"])))
                fields = {}
            continue
        key, _, value = line.partition(": ")
        fields[key] = value
    return frames


def text_of(frames: list[Frame]) -> str:
    return "".join(f.data["delta"] for f in frames if f.event == "text_delta")
