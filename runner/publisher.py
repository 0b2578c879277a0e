"""Publishes one session's events to its JetStream subject, numbering them.

`seq` continues from the last event already in the log, so a session that moves to another
runner (or a restarted one) keeps one unbroken sequence; a fresh session starts at 0 without
looking.

Events are pipelined: `emit` publishes and returns without waiting for JetStream's ack (one
connection keeps them in order), so a turn's events do not each pay a round trip. The acks
are collected in order:

    emit(event)      publish, keep (event, ack) in the window; fails nothing yet
    emit(terminal)   flush(), then publish it and wait for its ack
    flush()          wait for every ack in the window; republish each event whose ack failed
                     or did not come in time (same de-duplication id, so one that was stored
                     after all is not stored twice), one at a time, each acked
    window full, or an ack failed / overdue at an emit  ->  flush()

So `done` is published only once every earlier event of the turn is stored, and a lost event
is republished from the window. A republished event lands after events published behind it
(the coordinator's `Follower` puts them back in order). `PublishError` from `emit` or `flush`
means events could not be stored; they stay in the window, and the next flush tries again.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext

from protocol import codec, events, subjects
from protocol.jetstream import last_event

logger = logging.getLogger(__name__)

WINDOW = 256  # events published and not yet acked, per session, before emit waits
ACK_TIMEOUT_S = 5.0  # an ack not here by then counts as lost: the event is republished
REPUBLISH_ATTEMPTS = 3
TERMINAL: tuple[type[events.Event], ...] = (events.Done,)


class PublishError(Exception):
    """Events could not be stored in the log (NATS or JetStream unavailable)."""


async def last_seq(js: JetStreamContext, session_id: str) -> int:
    """The seq of the session's newest event in the log, or 0."""
    last = await last_event(js, session_id)
    return 0 if last is None else last.seq


@dataclass(slots=True)
class _Pending:
    seq: int
    data: bytes
    sent_at: float
    ack: asyncio.Future[Any] | None  # None: the publish itself failed


class EventPublisher:
    """Numbers and publishes the events of one session."""

    def __init__(
        self,
        js: JetStreamContext,
        session_id: str,
        seq: int,
        *,
        window: int = WINDOW,
        ack_timeout_s: float = ACK_TIMEOUT_S,
    ) -> None:
        self._js = js
        self._session_id = session_id
        self._subject = subjects.session_events(session_id)
        self._window = window
        self._ack_timeout_s = ack_timeout_s
        self._pending: collections.deque[_Pending] = collections.deque()
        self._flushing = asyncio.Lock()
        self.seq = seq

    @property
    def unacked(self) -> int:
        """Events published whose ack has not been seen yet."""
        return len(self._pending)

    async def emit(self, cls: type[events.Event], turn_id: str, **fields: Any) -> events.Event:
        """Build the next event of `cls` and publish it; returns the event. A terminal event
        (`done`) is published after every earlier one is stored, and waits for its own ack."""
        seq = self.seq + 1
        ev = cls(session_id=self._session_id, turn_id=turn_id, seq=seq, **fields)
        data = codec.encode(ev)
        if isinstance(ev, TERMINAL):
            await self.flush()
            await self._publish_acked(seq, data)
            self.seq = seq  # only once stored: a failed `done` is emitted again with this seq
            return ev
        self.seq = seq  # from here on the event is the window's to deliver
        self._settle_done()
        if len(self._pending) >= self._window or self._in_trouble():
            await self.flush()
        self._pending.append(await self._publish(seq, data))
        return ev

    async def flush(self) -> None:
        """Return once every event emitted so far is stored; raises PublishError if some
        could not be (they stay pending)."""
        async with self._flushing:
            while self._pending:
                p = self._pending[0]
                if p.ack is not None:
                    left = p.sent_at + self._ack_timeout_s - time.monotonic()
                    try:
                        await asyncio.wait_for(asyncio.shield(p.ack), max(left, 0.0))
                        self._pending.popleft()
                        continue
                    except asyncio.CancelledError:
                        raise
                    except Exception as e:  # an error reply, or no ack in time
                        logger.warning("session %s: event %d not acked (%s); republishing",
                                       self._session_id, p.seq, type(e).__name__)
                        p.ack.cancel()
                await self._publish_acked(p.seq, p.data)
                self._pending.popleft()

    def _settle_done(self) -> None:
        """Forget the oldest events whose acks have come."""
        while self._pending:
            ack = self._pending[0].ack
            if ack is None or not ack.done() or ack.cancelled() or ack.exception() is not None:
                return
            self._pending.popleft()

    def _in_trouble(self) -> bool:
        """The oldest pending event failed, or its ack is overdue: flush before going on."""
        if not self._pending:
            return False
        p = self._pending[0]
        if p.ack is None or p.ack.done():
            return True  # _settle_done left it: it failed
        return time.monotonic() - p.sent_at > self._ack_timeout_s

    async def _publish(self, seq: int, data: bytes) -> _Pending:
        now = time.monotonic()
        try:
            ack = await self._js.publish_async(self._subject, data, headers=self._headers(seq))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # closed or over its buffer while reconnecting
            logger.warning("session %s: event %d not published (%s); will retry",
                           self._session_id, seq, e)
            return _Pending(seq, data, now, None)
        return _Pending(seq, data, now, ack)

    async def _publish_acked(self, seq: int, data: bytes) -> None:
        """Publish and wait for the ack, a few times; a stored duplicate counts as stored."""
        error: Exception | None = None
        for attempt in range(REPUBLISH_ATTEMPTS):
            try:
                await self._js.publish(self._subject, data, timeout=self._ack_timeout_s,
                                       headers=self._headers(seq))
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                error = e
                await asyncio.sleep(0.1 * 2**attempt)  # backoff: NATS may be reconnecting
        raise PublishError(f"event {seq} of session {self._session_id} not stored: {error}")

    def _headers(self, seq: int) -> dict[str, str]:
        return {subjects.MSG_ID_HEADER: subjects.event_msg_id(self._session_id, seq)}
