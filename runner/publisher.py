"""Publishes one session's events to its JetStream subject, numbering them.

`seq` continues from the last event already in the log, so a session that moves to another
runner (or a restarted one) keeps one unbroken sequence. Each publish waits for JetStream's
ack, which keeps events in order, and carries a de-duplication id, so a retried publish
cannot appear twice.
"""

from __future__ import annotations

from typing import Any

from nats.js import JetStreamContext

from protocol import codec, events, subjects
from protocol.jetstream import last_event


async def last_seq(js: JetStreamContext, session_id: str) -> int:
    """The seq of the session's newest event in the log, or 0."""
    last = await last_event(js, session_id)
    return 0 if last is None else last.seq


class EventPublisher:
    """Numbers and publishes the events of one session."""

    def __init__(self, js: JetStreamContext, session_id: str, seq: int) -> None:
        self._js = js
        self._session_id = session_id
        self._subject = subjects.session_events(session_id)
        self.seq = seq

    async def emit(self, cls: type[events.Event], turn_id: str, **fields: Any) -> events.Event:
        """Build the next event of `cls` and publish it; returns the event."""
        seq = self.seq + 1
        ev = cls(session_id=self._session_id, turn_id=turn_id, seq=seq, **fields)
        await self._js.publish(
            self._subject,
            codec.encode(ev),
            headers={subjects.MSG_ID_HEADER: subjects.event_msg_id(self._session_id, seq)},
        )
        self.seq = seq
        return ev
