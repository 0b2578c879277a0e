"""Just enough HTTP/1.1 for a relaying proxy: parse heads strictly, relay bodies as they come.

Bodies are relayed with their framing intact (a chunked body goes out chunked, chunk by chunk),
so the proxy never buffers a stream: each chunk is written and drained as soon as it arrives,
which is what server-sent events need. The framing is still parsed, to know where one message
ends and the next begins on a kept-alive connection.

Anything ambiguous is refused rather than guessed (request smuggling lives in the guesses):
both Content-Length and Transfer-Encoding, differing Content-Length values, a transfer coding
other than `chunked`, header names or values with forbidden bytes, oversized heads.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field

MAX_HEAD = 64 * 1024  # bytes of request line or status line plus headers
MAX_HEADERS = 128
MAX_CHUNK_LINE = 4096
READ_SIZE = 64 * 1024

# Hop-by-hop headers (RFC 9110 7.6.1) plus the proxy-only ones; never forwarded. The framing
# headers (Content-Length, Transfer-Encoding) are forwarded as they are, with the body.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
    }
)

_TOKEN_RE = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_BAD_VALUE_RE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


class HttpError(Exception):
    """A message we cannot relay; `status` is what the client gets (400, 431, 501, 502)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(slots=True)
class Head:
    """A request or response head. For a request, `method` and `target` are set; for a
    response, `status` and `reason`. Header names keep their case; lookups ignore it."""

    version: str
    headers: list[tuple[str, str]]
    method: str = ""
    target: str = ""
    status: int = 0
    reason: str = ""
    _index: dict[str, list[str]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for name, value in self.headers:
            self._index.setdefault(name.lower(), []).append(value)

    def get(self, name: str) -> str | None:
        """The header's value, repeated values joined with ", "; None if absent."""
        values = self._index.get(name.lower())
        return ", ".join(values) if values else None

    def connection_tokens(self) -> set[str]:
        return {t.strip().lower() for t in (self.get("connection") or "").split(",") if t.strip()}

    def keep_alive(self) -> bool:
        """Whether the sender allows another message on this connection after this one."""
        tokens = self.connection_tokens()
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens

    def end_to_end(self, drop: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
        """The headers without hop-by-hop ones, those the Connection header names, and `drop`."""
        skip = HOP_BY_HOP | self.connection_tokens() | drop
        return [(n, v) for n, v in self.headers if n.lower() not in skip]


async def read_head(reader: asyncio.StreamReader, *, request: bool) -> Head | None:
    """Read and parse one head; None on a clean EOF before its first byte.

    The reader must have been created with `limit >= MAX_HEAD` (a longer head is a 431).
    """
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if not e.partial.strip():
            return None
        raise HttpError(400, "the connection closed in the middle of a message head") from e
    except asyncio.LimitOverrunError as e:
        raise HttpError(431, "the message head is too large") from e
    if len(raw) > MAX_HEAD:
        raise HttpError(431, "the message head is too large")
    lines = raw[:-4].split(b"\r\n")
    start, header_lines = lines[0], lines[1:]
    if len(header_lines) > MAX_HEADERS:
        raise HttpError(431, "too many headers")
    headers: list[tuple[str, str]] = []
    for line in header_lines:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN_RE.match(name):
            raise HttpError(400, "malformed header line")
        value = value.strip(b" \t")
        if _BAD_VALUE_RE.search(value):
            raise HttpError(400, "forbidden byte in a header value")
        headers.append((name.decode("ascii"), value.decode("latin-1")))
    try:
        text = start.decode("ascii")
    except UnicodeDecodeError as e:
        raise HttpError(400, "the start line is not ASCII") from e
    if request:
        parts = text.split(" ")
        if len(parts) != 3 or not _TOKEN_RE.match(parts[0].encode()) or not parts[1]:
            raise HttpError(400, "malformed request line")
        method, target, version = parts
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            raise HttpError(505, f"{version} is not supported")
        return Head(version=version, headers=headers, method=method, target=target)
    version, _, rest = text.partition(" ")
    code, _, reason = rest.partition(" ")
    if version not in ("HTTP/1.1", "HTTP/1.0") or not (code.isdigit() and len(code) == 3):
        raise HttpError(502, "the upstream sent a malformed status line")
    return Head(version=version, headers=headers, status=int(code), reason=reason)


def encode_request(method: str, target: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", *(f"{n}: {v}" for n, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def encode_response(status: int, reason: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}", *(f"{n}: {v}" for n, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@dataclass(frozen=True, slots=True)
class Framing:
    """How a body ends: `none`, `length` (exactly `length` bytes), `chunked`, or `close`."""

    kind: str
    length: int = 0


def request_framing(head: Head) -> Framing:
    return _framing(head, allow_close=False)


def response_framing(head: Head, request_method: str) -> Framing:
    if request_method == "HEAD" or head.status in (204, 304) or 100 <= head.status < 200:
        return Framing("none")
    return _framing(head, allow_close=True)


def _framing(head: Head, *, allow_close: bool) -> Framing:
    te, cl = head.get("transfer-encoding"), head.get("content-length")
    if te is not None:
        if cl is not None:
            raise HttpError(400, "both Transfer-Encoding and Content-Length")
        if te.strip().lower() != "chunked":
            raise HttpError(501, f"transfer coding {te!r} is not supported")
        return Framing("chunked")
    if cl is not None:
        values = {v.strip() for v in cl.split(",")}
        if len(values) != 1 or not (v := values.pop()).isdigit() or len(v) > 18:
            raise HttpError(400, "bad Content-Length")
        n = int(v)
        return Framing("length", n) if n else Framing("none")
    return Framing("close") if allow_close else Framing("none")


async def relay_body(
    framing: Framing, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Copy one body from `reader` to `writer` with its framing, draining after every piece.

    Raises HttpError(502) if the source ends early or sends broken chunk framing.
    """
    if framing.kind == "none":
        return
    if framing.kind == "length":
        left = framing.length
        while left:
            data = await reader.read(min(left, READ_SIZE))
            if not data:
                raise HttpError(502, "the body ended early")
            left -= len(data)
            writer.write(data)
            await writer.drain()
    elif framing.kind == "chunked":
        await _relay_chunked(reader, writer)
    else:  # close-delimited: everything until EOF
        while data := await reader.read(READ_SIZE):
            writer.write(data)
            await writer.drain()


async def _relay_chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        line = await _chunk_line(reader)
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError as e:
            raise HttpError(502, "bad chunk size") from e
        if size_text.startswith((b"-", b"+")) or len(size_text) > 16:
            raise HttpError(502, "bad chunk size")
        writer.write(line)
        if size == 0:
            break
        left = size
        while left:
            data = await reader.read(min(left, READ_SIZE))
            if not data:
                raise HttpError(502, "the body ended inside a chunk")
            left -= len(data)
            writer.write(data)
        try:
            crlf = await reader.readexactly(2)
        except asyncio.IncompleteReadError as e:
            raise HttpError(502, "the body ended inside a chunk") from e
        if crlf != b"\r\n":
            raise HttpError(502, "chunk data is not followed by CRLF")
        writer.write(crlf)
        await writer.drain()
    while True:  # trailers, then the empty line
        line = await _chunk_line(reader)
        writer.write(line)
        if line == b"\r\n":
            break
    await writer.drain()


async def _chunk_line(reader: asyncio.StreamReader) -> bytes:
    try:
        line = await reader.readuntil(b"\r\n")
    except asyncio.IncompleteReadError as e:
        raise HttpError(502, "the body ended inside chunk framing") from e
    except asyncio.LimitOverrunError as e:
        raise HttpError(502, "chunk framing line too long") from e
    if len(line) > MAX_CHUNK_LINE:
        raise HttpError(502, "chunk framing line too long")
    return line


REASONS = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 408: "Request Timeout",
           413: "Content Too Large", 431: "Request Header Fields Too Large",
           501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
           504: "Gateway Timeout", 505: "HTTP Version Not Supported"}  # fmt: skip


def split_authority(authority: str, default_port: int | None = None) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port); HttpError(400) when malformed."""
    bad = HttpError(400, f"malformed authority {authority[:100]!r}")
    if authority.startswith("["):
        host, sep, rest = authority[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise bad
        port_text = rest[1:]
    else:
        host, sep, port_text = authority.rpartition(":")
        if not sep:
            host, port_text = authority, ""
        if ":" in host:
            raise bad
    if not port_text and default_port is not None:
        port_text = str(default_port)
    if not port_text.isdigit() or not host:
        raise bad
    return host, int(port_text)


def split_url(url: str) -> tuple[str, int, str, str]:
    """`http://host[:port][/path]` -> (host, port, authority, origin-form path)."""
    if not url.lower().startswith("http://"):
        raise HttpError(400, f"cannot proxy a request for {url[:100]!r}")
    authority, slash, path = url[len("http://") :].partition("/")
    if "@" in authority:
        raise HttpError(400, "user info in the URL is not supported")
    host, port = split_authority(authority, default_port=80)
    return host, port, authority, "/" + path if slash else "/"
