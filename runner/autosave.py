"""When a session is snapshotted: after every turn and file change, debounced, and on demand.

`AutoSave`, one per session: `touch` after turns and file changes; a background task snapshots
when due, so that bursts coalesce (`save_delay`, a pure function of (state, now)), never while
a turn runs, one snapshot of a session at a time. Pause, fork and drain ask for one at once
(`save_now`), which returns the latest when nothing changed since.

    clean --touch--> dirty --quiet_s after the last change, or max_delay_s after the first--> saving
      ^                ^  \\--turn starts--> busy --turn ends (touch)--> dirty                  |
      |                 \\___________________ failed: retry after a backoff __________________/|
      \\________________________________________ saved ______________________________________/

A sandbox whose snapshot another sandbox took over (`SnapshotSuperseded`) stops saving.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from protocol.snapshots import SnapshotManifest
from runner.snapshots import SnapshotSuperseded

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SavePolicy:
    """How snapshots after changes are spaced out."""

    quiet_s: float  # wait this long after the last change (bursts coalesce) ...
    max_delay_s: float  # ... but no longer than this after the first unsaved one
    min_interval_s: float  # between two snapshots of one session
    retry_s: float  # after a failure; doubles per failure, capped at max_delay_s

    @classmethod
    def from_debounce(cls, debounce_s: float) -> SavePolicy:
        return cls(quiet_s=debounce_s, max_delay_s=10 * debounce_s, min_interval_s=debounce_s,
                   retry_s=2 * debounce_s)


@dataclass(frozen=True, slots=True)
class SaveState:
    """One session's changes since its last snapshot (monotonic times)."""

    dirty_since: float | None = None  # the first change not in a snapshot; None: clean
    last_change: float = 0.0
    last_saved: float | None = None  # when the last good snapshot started
    busy: bool = False  # a turn runs: its end is the change to wait for
    failures: int = 0  # in a row
    failed_at: float = 0.0


def save_delay(state: SaveState, now: float, policy: SavePolicy) -> float | None:
    """Seconds until the next debounced snapshot (0: now), or None when none is due."""
    if state.dirty_since is None or state.busy:
        return None
    due = min(state.last_change + policy.quiet_s, state.dirty_since + policy.max_delay_s)
    if state.last_saved is not None:
        due = max(due, state.last_saved + policy.min_interval_s)
    if state.failures:
        backoff = min(policy.max_delay_s, policy.retry_s * 2 ** (state.failures - 1))
        due = max(due, state.failed_at + backoff)
    return max(0.0, due - now)


Save = Callable[[str], Awaitable[SnapshotManifest]]


class AutoSave:
    """One session's snapshots: `touch` after changes, a background task saves when due,
    `save_now` for pause, fork and drain. One snapshot of the session at a time."""

    def __init__(self, save: Save, policy: SavePolicy, *, name: str,
                 last: SnapshotManifest | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.state = SaveState()
        self.last = last  # the newest snapshot of the session this sandbox knows of
        self.superseded = False
        self._closing = False
        self._save = save
        self._policy = policy
        self._clock = clock
        self._name = name
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"autosave-{self._name}")

    def touch(self) -> None:
        """Something in the sandbox may have changed."""
        now, st = self._clock(), self.state
        self.state = dataclasses.replace(
            st, dirty_since=st.dirty_since if st.dirty_since is not None else now, last_change=now)
        self._wake.set()

    def set_busy(self, busy: bool) -> None:
        self.state = dataclasses.replace(self.state, busy=busy)
        self._wake.set()

    @property
    def current(self) -> bool:
        """Whether the latest snapshot holds everything (nothing changed since)."""
        return self.last is not None and self.state.dirty_since is None

    async def save_now(self, reason: str) -> SnapshotManifest:
        """A snapshot now, or the latest when nothing changed since it."""
        async with self._lock:
            if self.current:
                assert self.last is not None
                return self.last
            started = self._clock()
            try:
                manifest = await self._save(reason)
            except SnapshotSuperseded:
                self.superseded = True
                raise
            except BaseException:
                self.state = dataclasses.replace(self.state, failures=self.state.failures + 1,
                                                 failed_at=self._clock())
                raise
            st = self.state
            # A change made while packing may be missing from it: still dirty.
            dirty = started if st.dirty_since is not None and st.last_change >= started else None
            self.state = SaveState(dirty_since=dirty, last_change=st.last_change,
                                   last_saved=started, busy=st.busy)
            self.last = manifest
            return manifest

    async def _run(self) -> None:
        while not self.superseded and not self._closing:
            delay = save_delay(self.state, self._clock(), self._policy)
            if delay is None or delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                self._wake.clear()
                continue
            try:
                await self.save_now("turn")
            except SnapshotSuperseded as e:
                logger.warning("session %s: %s; no more snapshots from here", self._name, e)
            except Exception as e:
                logger.warning("session %s: snapshot failed (%d in a row): %s", self._name,
                               self.state.failures, e)

    async def close(self, timeout_s: float = 30.0) -> None:
        """Stop the background task; a snapshot it is taking may finish (bounded)."""
        task, self._task = self._task, None
        self._closing = True
        self._wake.set()
        if task is not None:
            await asyncio.wait({task}, timeout=timeout_s)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
