"""Persists what turns say: JetStream event log -> history rows and session facts in the store.

One durable push consumer (`ash-recorder`, delivered to a queue group of the same name), so
with several coordinators each event is recorded by one of them. Recording is idempotent on
(session, seq): a redelivered event changes nothing. Streaming to clients does not depend on
the recorder; the recorder does not depend on any client being connected.

    event            history row             session update
    user_message     user: content           turns + 1 (when the row is new)
    message/assist.  assistant: message
    message/user     tool: message
    turn_complete    result: summary          claude_session_id
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from typing import Any

from nats.js import JetStreamContext, api

from coordinator.store.base import SessionNotFoundError, Store
from protocol import codec, events, subjects

logger = logging.getLogger(__name__)

DURABLE = "ash-recorder"


def history_row(ev: events.Event) -> tuple[str, Any] | None:
    """The (role, content) a history row keeps for an event, or None for events not kept."""
    match ev:
        case events.UserMessage(content=content):
            return "user", content
        case events.Message(message=message) if message.get("type") == "assistant":
            return "assistant", message
        case events.Message(message=message) if message.get("type") == "user":
            return "tool", message
        case events.TurnComplete():
            return "result", {
                "result": ev.result,
                "is_error": ev.is_error,
                "num_turns": ev.num_turns,
                "duration_ms": ev.duration_ms,
                "total_cost_usd": ev.total_cost_usd,
                "usage": ev.usage,
            }
        case _:
            return None


class Recorder:
    """Consumes the event log and writes history; `wait_recorded` lets a stream wait for it."""

    def __init__(self, js: JetStreamContext, store: Store, *, max_tracked: int = 10_000) -> None:
        self._js = js
        self._store = store
        self._task: asyncio.Task[None] | None = None
        self._sub: Any = None
        # session -> highest seq recorded by this process (bounded, oldest forgotten first)
        self._recorded: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._max_tracked = max_tracked
        self._progress = asyncio.Condition()

    async def __aenter__(self) -> Recorder:
        config = api.ConsumerConfig(
            durable_name=DURABLE,
            deliver_group=DURABLE,
            ack_policy=api.AckPolicy.EXPLICIT,
            max_ack_pending=1000,
            ack_wait=30,
        )
        self._sub = await self._js.subscribe(
            subjects.EVENTS_WILDCARD,
            queue=DURABLE,
            durable=DURABLE,
            stream=subjects.EVENTS_STREAM,
            config=config,
            manual_ack=True,
            pending_msgs_limit=10_000,
            pending_bytes_limit=64 * 1024 * 1024,
        )
        self._task = asyncio.create_task(self._run(), name="recorder")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        async for msg in self._sub.messages:
            try:
                ev = codec.decode_event(msg.data)
            except (codec.DecodeError, codec.ValidationError):
                logger.warning("dropping an undecodable event on %s", msg.subject)
                await msg.term()
                continue
            try:
                await self.record(ev)
            except SessionNotFoundError:
                # No such session in this store (deleted, or another deployment's events).
                logger.warning("dropping seq %s of unknown session %s", ev.seq, ev.session_id)
                await msg.term()
                continue
            except Exception:
                # Leave it unacked: JetStream redelivers after ack_wait.
                logger.exception("recording seq %s of session %s failed", ev.seq, ev.session_id)
                continue
            await msg.ack()

    async def record(self, ev: events.Event) -> None:
        """Write what one event means for the store (idempotent)."""
        now = time.time()
        row = history_row(ev)
        added = 0
        if row is not None:
            added = await self._store.append_messages(
                ev.session_id, [(ev.seq, ev.turn_id, *row)], now
            )
        match ev:
            case events.UserMessage() if added:
                await self._store.update_session(ev.session_id, now, turns_delta=1)
            case events.TurnComplete(claude_session_id=str(cid)):
                await self._store.update_session(ev.session_id, now, claude_session_id=cid)
            case _:
                pass
        async with self._progress:
            previous = self._recorded.pop(ev.session_id, 0)
            self._recorded[ev.session_id] = max(previous, ev.seq)
            while len(self._recorded) > self._max_tracked:
                self._recorded.popitem(last=False)
            self._progress.notify_all()

    async def wait_recorded(self, session_id: str, seq: int, timeout_s: float) -> bool:
        """Wait until this process has recorded `seq` of the session; False on timeout.

        With several coordinators another one may record it; then this returns False after
        the timeout and the history becomes complete moments later all the same.
        """
        try:
            async with asyncio.timeout(timeout_s), self._progress:
                await self._progress.wait_for(lambda: self._recorded.get(session_id, 0) >= seq)
            return True
        except TimeoutError:
            return False
