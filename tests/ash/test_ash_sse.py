"""The incremental SSE parser: the WHATWG rules, whatever the chunking."""

from __future__ import annotations

import pytest

from ash.sse import SSEFrame, SSEParser


def _parse(*chunks: bytes) -> list[SSEFrame]:
    parser = SSEParser()
    frames: list[SSEFrame] = []
    for chunk in chunks:
        frames.extend(parser.feed(chunk))
    return frames


STREAM = (
    "\ufeff: keep-alive\r\n\r\n"
    'id: 1\r\nevent: text_delta\r\ndata: {"delta": "héllo ✓"}\r\n\r\n'
    ": keep-alive\n\n"
    "id: 2\revent: tool_use\rdata: line one\rdata: line two\r\r"
    "event: done\ndata:no-space\ndata:  two-spaces\n\n"
).encode()

EXPECTED = [
    SSEFrame(id="1", event="text_delta", data='{"delta": "héllo ✓"}'),
    SSEFrame(id="2", event="tool_use", data="line one\nline two"),
    SSEFrame(id="2", event="done", data="no-space\n two-spaces"),
]


def test_whole_stream() -> None:
    parser = SSEParser()
    assert parser.feed(STREAM) == EXPECTED
    assert parser.comments == 2 and parser.last_id == "2"


def test_every_two_way_split_gives_the_same_frames() -> None:
    for cut in range(len(STREAM) + 1):
        assert _parse(STREAM[:cut], STREAM[cut:]) == EXPECTED, f"split at byte {cut}"


def test_byte_by_byte() -> None:
    assert _parse(*(STREAM[i : i + 1] for i in range(len(STREAM)))) == EXPECTED


def test_crlf_split_across_chunks_is_one_line_end() -> None:
    # If the LF after a chunk-final CR were read as a blank line, "a" would dispatch alone.
    assert _parse(b"data: a\r", b"\ndata: b\r\n\r\n") == [SSEFrame(None, "message", "a\nb")]


def test_lone_cr_at_chunk_end_followed_by_text() -> None:
    assert _parse(b"data: a\r", b"data: b\r\r") == [SSEFrame(None, "message", "a\nb")]


def test_frames_complete_only_on_a_blank_line() -> None:
    parser = SSEParser()
    assert parser.feed(b"event: done\ndata: {}\n") == []
    assert parser.feed(b"\n") == [SSEFrame(None, "done", "{}")]


def test_unterminated_frame_at_end_is_not_emitted() -> None:
    assert _parse(b"data: complete\n\n", b"data: partial") == [
        SSEFrame(None, "message", "complete")
    ]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"data\n\n", [SSEFrame(None, "message", "")]),  # field without colon: empty value
        (b"data:\n\n", [SSEFrame(None, "message", "")]),
        (b"event: x\n\n", []),  # no data: nothing dispatched, and the event name resets
        (b"event: x\n\ndata: y\n\n", [SSEFrame(None, "message", "y")]),
        (b"retry: 10\nfoo: bar\ndata: z\n\n", [SSEFrame(None, "message", "z")]),
        (
            b"id: 5\ndata: a\n\ndata: b\n\n",
            [SSEFrame("5", "message", "a"), SSEFrame("5", "message", "b")],
        ),
        (
            b"id: 5\ndata: a\n\nid: x\0y\ndata: b\n\n",
            [SSEFrame("5", "message", "a"), SSEFrame("5", "message", "b")],
        ),
        (b"id\ndata: a\n\n", [SSEFrame("", "message", "a")]),
        (b"\n\n\n:c\n\n", []),
    ],
)
def test_field_rules(raw: bytes, expected: list[SSEFrame]) -> None:
    assert _parse(raw) == expected


def test_multibyte_character_split_between_chunks() -> None:
    payload = "data: ✓\n\n".encode()
    cut = payload.index("✓".encode()) + 1  # inside the three-byte sequence
    assert _parse(payload[:cut], payload[cut:]) == [SSEFrame(None, "message", "✓")]
