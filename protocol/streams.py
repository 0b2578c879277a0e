"""Byte streams from a runner to one coordinator: exec output and file or workspace downloads.

    coordinator                                  runner
    subscribe subjects.stream(id)        (1)
    request runner_commands: StartExec / ReadFile / ReadWorkspace  --->  open, reply
                                         <---  StreamOpened | Rejected
                                         <---  request stream(id): Chunk seq=1
    write it to the HTTP client, then    --->  Ack seq=1
                                         <---  Chunk seq=2 ... (one in flight at a time)
                                         <---  End seq=n (exit code, or an error)
    ack, finish the HTTP response        --->  Ack seq=n

Why core NATS request/reply per chunk, on a subject private to the stream, and not JetStream:

* **Backpressure end to end.** The runner sends chunk n+1 only once chunk n is acked, and the
  coordinator acks only after the HTTP client took the bytes. A slow client slows the reader on
  the runner, which stops draining the command's pipe, which blocks the command: nothing
  buffers without bound anywhere (one chunk in flight, `CHUNK_BYTES` each).
* **A vanished listener is noticed.** When the HTTP client goes away the coordinator answers
  what it holds with `Ack(stop=True)` and drops the subscription; the runner's next request gets
  "no responders" (or, for a message that was on the wire, times out) and it kills the command
  or stops reading the file. `HEARTBEAT_S` of silence makes the runner send an empty
  chunk, so even a quiet command learns this, and the coordinator learns the runner is alive.
* **Nothing here must outlive the request.** Exec output and downloads belong to one HTTP
  request; JetStream would persist up to `MAX_EXEC_OUTPUT` per exec (or a whole workspace) for no
  reader, and plain publishes would drop silently when the subscriber's pending limit fills.
* **Order and gaps.** `seq` counts from 1 per stream; the coordinator re-acks a duplicate and
  treats a gap as a broken stream.

Unknown fields are tolerated; unknown tags are rejected by the decoder.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from protocol.errors import ErrorInfo

HEARTBEAT_S = 10.0  # the runner sends an empty chunk after this much silence
ACK_TIMEOUT_S = 60.0  # the runner gives up on a listener that does not ack for this long
IDLE_TIMEOUT_S = 3 * HEARTBEAT_S + 5  # the coordinator gives up on a silent runner

Channel = Literal["stdout", "stderr", "data"]


class Chunk(msgspec.Struct, kw_only=True, frozen=True, tag="chunk", tag_field="type"):
    """Bytes of the stream (base64 in JSON). An empty `data` is a heartbeat."""

    stream_id: str
    seq: int
    channel: Channel = "data"
    data: bytes = b""


class End(msgspec.Struct, kw_only=True, frozen=True, tag="end", tag_field="type"):
    """The last message of a stream.

    For exec: `exit_code` (128+N when killed by signal N), whether the timeout or the output cap
    stopped it, and how long it ran. For downloads: `size` sent. `error` set means the stream
    broke (the file changed type, the archive grew past its cap, the sandbox went away).
    """

    stream_id: str
    seq: int
    size: int = 0
    exit_code: int | None = None
    timed_out: bool = False
    truncated: bool = False
    duration_ms: int = 0
    error: ErrorInfo | None = None


StreamMessage = Chunk | End


class Ack(msgspec.Struct, kw_only=True, frozen=True):
    """The coordinator's reply to one stream message: it has taken `seq`; or, with `stop`,
    that nobody will take more (the HTTP client left): the runner stops at once."""

    seq: int
    stop: bool = False
