"""Persists what turns say: JetStream event log -> history rows and session facts in the store.

One durable push consumer (`ash-recorder`, delivered to a queue group of the same name), so
with several coordinators each event is recorded by one of them. Events already delivered
when one arrives are recorded with it (up to BATCH): their history rows in one write per
session, then each event's session facts, then the acks. Recording is idempotent on
(session, seq): a redelivered event changes nothing. Streaming to clients does not depend on
the recorder; the recorder does not depend on any client being connected.

    event            history row             session update
    user_message     user: content           turns + 1 (when the row is new)
    message/assist.  assistant: message
    message/user     tool: message
    turn_complete    result: summary          claude_session_id
    mcp_status       -                        mcp_servers (the latest statuses)
    done                                      a usage row (tokens, cost, tool calls, CPU)
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from typing import Any

from nats.js import JetStreamContext, api

from coordinator.memo import remember
from coordinator.store.base import MessageRow, SessionNotFoundError, Store
from coordinator.usage import usage_row
from protocol import codec, events, logs, subjects

logger = logging.getLogger(__name__)

DURABLE = "ash-recorder"
BATCH = 256  # events recorded together at most (those already delivered when one arrives)


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
        # session -> [(seq, future)] of `wait_recorded` calls: woken only by their session
        self._waiters: dict[str, list[tuple[int, asyncio.Future[None]]]] = {}
        # What never changes or seldom does, so a turn does not read it back (bounded too):
        # session -> (tenant, agent) for usage rows; session -> the Claude conversation id
        # last written (a turn_complete repeating it writes nothing).
        self._owners: collections.OrderedDict[str, tuple[str, str]] = collections.OrderedDict()
        self._conversations: collections.OrderedDict[str, str] = collections.OrderedDict()

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
        messages = self._sub.messages
        async for msg in messages:
            # Whatever else has arrived is recorded with it: one write per session for the
            # history rows of the batch instead of one per event.
            batch = [msg]
            while self._sub.pending_msgs > 0 and len(batch) < BATCH:
                batch.append(await messages.__anext__())
            await self._record_batch(batch)

    async def _record_batch(self, msgs: list[Any]) -> None:
        """Record a batch of delivered events; ack each one recorded, `term` the undecodable
        and those of unknown sessions, leave the rest unacked (redelivered after ack_wait).
        Once an event of a session fails, its later events in the batch wait too."""
        decoded: list[tuple[Any, events.Event]] = []
        for msg in msgs:
            try:
                decoded.append((msg, codec.decode_event(msg.data)))
            except (codec.DecodeError, codec.ValidationError):
                logger.warning("dropping an undecodable event on %s", msg.subject)
                await msg.term()
        rows: dict[str, list[MessageRow]] = {}
        for _, ev in decoded:
            row = history_row(ev)
            if row is not None and not isinstance(ev, events.UserMessage):  # those count turns
                rows.setdefault(ev.session_id, []).append((ev.seq, ev.turn_id, *row))
        unknown: set[str] = set()
        failed: set[str] = set()
        now = time.time()
        for session_id, session_rows in rows.items():
            try:
                await self._store.append_messages(session_id, session_rows, now)
            except SessionNotFoundError:
                unknown.add(session_id)
            except Exception:
                logger.exception("recording %d events of session %s failed", len(session_rows),
                                 session_id)
                failed.add(session_id)
        for msg, ev in decoded:
            if ev.session_id in failed:
                continue
            try:
                if ev.session_id in unknown:
                    raise SessionNotFoundError(ev.session_id)
                with logs.bind(session_id=ev.session_id, turn_id=ev.turn_id):
                    await self.record(ev, row_stored=ev.session_id in rows)
            except SessionNotFoundError:
                # No such session in this store (deleted, or another deployment's events).
                logger.warning("dropping seq %s of unknown session %s", ev.seq, ev.session_id)
                await msg.term()
                continue
            except Exception:
                # Leave it unacked: JetStream redelivers after ack_wait.
                logger.exception("recording seq %s of session %s failed", ev.seq, ev.session_id)
                failed.add(ev.session_id)
                continue
            await msg.ack()

    async def record(self, ev: events.Event, *, row_stored: bool = False) -> None:
        """Write what one event means for the store (idempotent). `row_stored`: its history
        row (unless it is a user message) was written already, with its batch."""
        now = time.time()
        row = history_row(ev)
        added = 0
        if row is not None and not (row_stored and not isinstance(ev, events.UserMessage)):
            added = await self._store.append_messages(
                ev.session_id, [(ev.seq, ev.turn_id, *row)], now
            )
        match ev:
            case events.UserMessage() if added:
                await self._store.update_session(ev.session_id, now, turns_delta=1)
            case events.TurnComplete(claude_session_id=str(cid)) if (
                self._conversations.get(ev.session_id) != cid
            ):
                await self._store.update_session(ev.session_id, now, claude_session_id=cid)
                remember(self._conversations, ev.session_id, cid, self._max_tracked)
            case events.McpStatus(servers=servers):
                # Events come in seq order per session, so the last one recorded is the latest.
                await self._store.set_mcp_servers(ev.session_id, codec.to_builtins(servers), now)
            case events.Done():
                await self._record_usage(ev, now)
            case _:
                pass
        top = max(self._recorded.get(ev.session_id, 0), ev.seq)
        remember(self._recorded, ev.session_id, top, self._max_tracked)
        for want, fut in self._waiters.get(ev.session_id, ()):
            if want <= top and not fut.done():
                fut.set_result(None)

    async def _record_usage(self, done: events.Done, now: float) -> None:
        """One usage row per turn, from its `done` (coordinator/usage.py)."""
        owner = self._owners.get(done.session_id)
        if owner is None:
            view = await self._store.get_session(done.session_id)
            tenant = await self._store.session_tenant(done.session_id)
            if view is None or tenant is None:
                raise SessionNotFoundError(f"no session {done.session_id!r}")
            owner = (tenant, view.agent)
        remember(self._owners, done.session_id, owner, self._max_tracked)
        await self._store.record_usage(usage_row(done, tenant=owner[0], agent=owner[1], now=now))

    async def wait_recorded(self, session_id: str, seq: int, timeout_s: float) -> bool:
        """Wait until this process has recorded `seq` of the session; False on timeout.

        With several coordinators another one may record it; then this returns False after
        the timeout and the history becomes complete moments later all the same.
        """
        if self._recorded.get(session_id, 0) >= seq:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = (seq, fut)
        waiters = self._waiters.setdefault(session_id, [])
        waiters.append(waiter)
        try:
            await asyncio.wait_for(fut, timeout_s)
            return True
        except TimeoutError:
            return False
        finally:
            waiters.remove(waiter)
            if not waiters and self._waiters.get(session_id) is waiters:
                del self._waiters[session_id]

