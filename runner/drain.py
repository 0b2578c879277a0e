"""The runner's drain on SIGTERM: let running turns finish, then stop the rest, then snapshot.

    running --SIGTERM--> draining: advertised, new sessions refused (runner_busy, retryable)
        |                  |  turns running? wait for them, up to the deadline
        |                  v
        |               interrupting: each turn still running is interrupted, its `done`
        |                  |          preceded by an `error` saying the runner is draining
        |                  v
        |               snapshotting (the sessions' hook), then the composition root ends the
        |               sandboxes, leaves the registry and closes NATS
        +--second signal (any phase)--> forced: no more waiting for turns to end on their
                                        own (interrupted ones get 2 s to say so), no snapshot

The drain never cancels a task itself: a turn that does not stop when interrupted is
cancelled by the session manager's close, which records the reason first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

logger = logging.getLogger(__name__)

INTERRUPT_WAIT_S = 5.0  # how long interrupted turns get to publish their done
FORCED_INTERRUPT_WAIT_S = 2.0  # ... when the stop was forced (an interrupt lands in ms)
SNAPSHOT_WAIT_S = 60.0


class Turns(Protocol):
    """The runner's sessions as the drain sees them (`runner.sessions.SessionManager`)."""

    def running_turns(self) -> dict[str, asyncio.Task[None]]: ...

    async def interrupt(self, session_id: str, note: str | None = None) -> bool: ...


@dataclass(slots=True)
class DrainReport:
    """What the drain did, for the log and for tests."""

    finished: list[str] = field(default_factory=list)  # turns that ended within the deadline
    interrupted: list[str] = field(default_factory=list)  # turns stopped at the deadline
    still_running: list[str] = field(default_factory=list)  # turns the close must cancel
    snapshots: dict[str, Any] = field(default_factory=dict)
    forced: bool = False


async def drain(
    turns: Turns,
    *,
    deadline_s: float,
    force: asyncio.Event,
    snapshot_all: Callable[..., Awaitable[dict[str, Any]]] | None = None,
    interrupt_wait_s: float = INTERRUPT_WAIT_S,
    clock: Callable[[], float] = time.monotonic,
) -> DrainReport:
    """Wait for running turns up to `deadline_s`, interrupt those left, snapshot (unless
    forced). Turns started meanwhile (existing sessions may still converse) are waited for too.
    """
    report = DrainReport()
    started = set(turns.running_turns())
    end = clock() + deadline_s
    await _wait_turns(turns, end, force, clock)
    left = turns.running_turns()
    report.finished = sorted(started - set(left))
    if left:
        note = ("the turn was stopped: the runner was stopped a second time and would not wait"
                if force.is_set() else
                f"the turn was stopped: its runner is shutting down and the turn ran past the "
                f"drain deadline of {deadline_s:g} s; the session can be resumed")
        logger.warning("drain: interrupting %d turns", len(left))
        await asyncio.gather(*(turns.interrupt(sid, note) for sid in left), return_exceptions=True)
        report.interrupted = sorted(left)
        wait_s = min(interrupt_wait_s, FORCED_INTERRUPT_WAIT_S) if force.is_set() else interrupt_wait_s
        await _wait_turns(turns, clock() + wait_s, asyncio.Event(), clock)
        report.still_running = sorted(turns.running_turns())
    report.forced = force.is_set()
    if snapshot_all is not None and not force.is_set():
        snap = asyncio.ensure_future(snapshot_all(timeout_s=SNAPSHOT_WAIT_S, reason="drain"))
        forced = asyncio.ensure_future(force.wait())
        await asyncio.wait({snap, forced}, return_when=asyncio.FIRST_COMPLETED)
        forced.cancel()
        if snap.done():
            try:
                report.snapshots = snap.result()
            except Exception as e:  # the sessions' close snapshots again, one by one
                logger.warning("drain: snapshots failed: %s", e)
        else:
            snap.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await snap
            report.forced = True
    return report


async def _wait_turns(
    turns: Turns, end: float, force: asyncio.Event, clock: Callable[[], float]
) -> None:
    """Until no turn runs, `end` passes or `force` is set."""
    forced = asyncio.ensure_future(force.wait())
    try:
        while not force.is_set():
            running = turns.running_turns()
            remaining = end - clock()
            if not running or remaining <= 0:
                return
            await asyncio.wait({*running.values(), forced}, timeout=remaining,
                               return_when=asyncio.FIRST_COMPLETED)
    finally:
        forced.cancel()
