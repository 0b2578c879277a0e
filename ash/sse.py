"""An incremental Server-Sent Events parser: bytes in, `SSEFrame`s out.

Follows the WHATWG event-stream rules: lines end in CRLF, LF or CR (a CRLF split across two
chunks counts once); `:` starts a comment (keep-alives); `data:` lines accumulate, joined by
newlines; a blank line dispatches the frame if it has data; `id:` persists across frames; a field
without a colon has an empty value; one leading space after the colon is dropped; a leading BOM is
ignored. Chunks may split the stream anywhere, including inside a multi-byte character. A frame
not ended by a blank line before the stream closes is discarded, as the spec says.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LINE_END = re.compile(rb"\r\n|\r|\n")
_BOM = "\ufeff"


@dataclass(slots=True, frozen=True)
class SSEFrame:
    """One dispatched event: its `id` (the last one seen, or None), `event` name and `data`."""

    id: str | None
    event: str
    data: str


class SSEParser:
    """Feed bytes as they arrive; get back the frames they complete.

    States: between frames (no data buffered) -> collecting (data buffered) -> blank line
    dispatches and returns to between frames. `comments` counts comment lines seen.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._skip_lf = False  # the last chunk ended in CR: a leading LF belongs to it
        self._first_line = True
        self._data: list[str] = []
        self._event = ""
        self._last_id: str | None = None
        self.comments = 0

    @property
    def last_id(self) -> str | None:
        """The last event id the stream set (what a client sends back as `Last-Event-ID`)."""
        return self._last_id

    def feed(self, chunk: bytes) -> list[SSEFrame]:
        """Consume `chunk`; return the frames it completed, in order."""
        if not chunk:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]
        buffer = self._buffer + chunk
        frames: list[SSEFrame] = []
        start = 0
        for match in _LINE_END.finditer(buffer):
            if match.group() == b"\r" and match.end() == len(buffer):
                self._skip_lf = True  # a CRLF may be split across chunks
            frame = self._line(buffer[start : match.start()].decode("utf-8", "replace"))
            if frame is not None:
                frames.append(frame)
            start = match.end()
        self._buffer = buffer[start:]
        return frames

    def _line(self, line: str) -> SSEFrame | None:
        if self._first_line:
            self._first_line = False
            if line.startswith(_BOM):
                line = line[1:]
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            self.comments += 1
            return None
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id" and "\0" not in value:
            self._last_id = value
        # `retry` and unknown fields are ignored: this client reconnects on its own terms.
        return None

    def _dispatch(self) -> SSEFrame | None:
        if not self._data:
            self._event = ""
            return None
        frame = SSEFrame(
            id=self._last_id, event=self._event or "message", data="\n".join(self._data)
        )
        self._data = []
        self._event = ""
        return frame
