"""The runner's end of a byte stream to a coordinator (the protocol is in `protocol.streams`).

    open --send()*--> ... --end()--> ended
      \\__ ListenerGone (a stop ack, no responders, no ack in time) --> the caller stops its work

One chunk is in flight at a time: `send` returns once the coordinator has acked the last piece,
which is what gives a stream its backpressure.
"""

from __future__ import annotations

import logging

import nats.errors
from nats.aio.client import Client as NatsClient

from protocol import codec
from protocol.errors import ErrorInfo
from protocol.files import CHUNK_BYTES
from protocol.streams import ACK_TIMEOUT_S, Channel, Chunk, End

logger = logging.getLogger(__name__)


class ListenerGone(Exception):
    """Nobody takes the stream any more (the HTTP client left, or its coordinator died)."""


class StreamSender:
    """Sends one stream's chunks, in order, each acked before the next."""

    def __init__(
        self, nc: NatsClient, subject: str, stream_id: str, *, ack_timeout_s: float = ACK_TIMEOUT_S
    ) -> None:
        self._nc = nc
        self._subject = subject
        self.stream_id = stream_id
        self._ack_timeout_s = ack_timeout_s
        self.seq = 0
        self.size = 0

    async def send(self, data: bytes, channel: Channel = "data") -> None:
        """Send `data` (split into CHUNK_BYTES pieces); empty `data` is a heartbeat."""
        if not data:
            await self._request(Chunk(stream_id=self.stream_id, seq=self.seq + 1, channel=channel))
            return
        for start in range(0, len(data), CHUNK_BYTES):
            piece = data[start : start + CHUNK_BYTES]
            await self._request(
                Chunk(stream_id=self.stream_id, seq=self.seq + 1, channel=channel, data=piece)
            )
            self.size += len(piece)

    async def end(
        self,
        *,
        exit_code: int | None = None,
        timed_out: bool = False,
        truncated: bool = False,
        duration_ms: int = 0,
        error: ErrorInfo | None = None,
    ) -> None:
        """Send the last message. Best effort: a listener that is gone is only logged."""
        end = End(
            stream_id=self.stream_id, seq=self.seq + 1, size=self.size, exit_code=exit_code,
            timed_out=timed_out, truncated=truncated, duration_ms=duration_ms, error=error,
        )  # fmt: skip
        try:
            await self._request(end)
        except ListenerGone as e:
            logger.info("stream %s ended without a listener: %s", self.stream_id, e)

    async def _request(self, message: Chunk | End) -> None:
        try:
            reply = await self._nc.request(
                self._subject, codec.encode(message), timeout=self._ack_timeout_s
            )
        except nats.errors.NoRespondersError:
            raise ListenerGone("no listener") from None
        except nats.errors.TimeoutError:
            raise ListenerGone(f"no ack within {self._ack_timeout_s:g} s") from None
        try:
            ack = codec.decode_ack(reply.data)
        except (codec.DecodeError, codec.ValidationError) as e:
            raise ListenerGone(f"undecodable ack: {e}") from None
        if ack.stop:
            raise ListenerGone("the listener stopped")
        if ack.seq != message.seq:
            raise ListenerGone(f"ack for {ack.seq}, expected {message.seq}")
        self.seq = message.seq
