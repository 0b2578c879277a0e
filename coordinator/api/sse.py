"""Server-sent events: framing and a response that sends keep-alive comments while idle."""

from __future__ import annotations

from aiohttp import web

KEEPALIVE = b": keep-alive\n\n"


def frame(seq: int, event_type: str, data: bytes) -> bytes:
    """One SSE frame; `data` is one line of JSON (msgspec never emits raw newlines)."""
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, event_type.encode(), data)


async def open_stream(
    request: web.Request, extra_headers: dict[str, str] | None = None
) -> web.StreamResponse:
    """Start a `text/event-stream` response (headers flushed at once)."""
    resp = web.StreamResponse(
        status=200,
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            **(extra_headers or {}),
        },
    )
    await resp.prepare(request)
    return resp
