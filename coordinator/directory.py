"""The coordinator's live view of the runners, kept by watching the runner registry (KV).

Each advert is stamped with the local monotonic time it arrived; a runner whose advert is
older than the TTL is treated as gone (placement skips it) whether or not the KV entry has
expired yet, so a dead runner is noticed within one TTL. A runner that leaves (drain) deletes
its entry and is gone at once.

`loaded` is set once the watch has delivered the registry's current entries: before that, an
empty view means "not read yet", not "no runners" (the reaper waits for it).

Placement (`coordinator.placer`) reads `snapshot()` for every session it places: each advert
carries the runner's capacity, commitments, warm pools and labels (`protocol.runners`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from nats.js.kv import KeyValue

from coordinator.placement import Seen, is_live
from protocol import codec

logger = logging.getLogger(__name__)


class RunnerDirectory:
    """Watches `ash_runners` and answers which runners are alive."""

    def __init__(self, kv: KeyValue, ttl_s: float) -> None:
        self._kv = kv
        self.ttl_s = ttl_s
        self._seen: dict[str, Seen] = {}
        self._task: asyncio.Task[None] | None = None
        self._watcher: KeyValue.KeyWatcher | None = None
        self._changed = asyncio.Event()
        self.loaded = asyncio.Event()

    async def __aenter__(self) -> RunnerDirectory:
        self._watcher = await self._kv.watchall()
        self._task = asyncio.create_task(self._watch(), name="runner-directory")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()
            self._watcher = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _watch(self) -> None:
        assert self._watcher is not None
        async for entry in self._watcher:
            if entry is None:  # end of the initial values
                self.loaded.set()
                continue
            if entry.operation in ("DEL", "PURGE") or not entry.value:
                self._seen.pop(entry.key, None)
            else:
                try:
                    advert = codec.decode_advert(entry.value)
                except (codec.DecodeError, codec.ValidationError):
                    logger.warning("ignoring a malformed advert under key %s", entry.key)
                    continue
                self._seen[advert.runner_id] = Seen(advert, time.monotonic())
            self._changed.set()

    def snapshot(self) -> list[Seen]:
        """Every advert seen, live or not (placement filters)."""
        return list(self._seen.values())

    def is_live(self, runner_id: str) -> bool:
        """Whether the runner's latest advert is within the TTL (False once it left). A stream
        following a turn may ask; the reaper ends such a turn's log itself (runner_lost)."""
        seen = self._seen.get(runner_id)
        return seen is not None and is_live(seen, time.monotonic(), self.ttl_s)

    def live_count(self) -> int:
        now = time.monotonic()
        return sum(1 for s in self._seen.values() if is_live(s, now, self.ttl_s))

    def any_scripted(self) -> bool:
        """Whether a live runner answers from the offline scripted model."""
        now = time.monotonic()
        return any(
            s.advert.scripted_model for s in self._seen.values() if is_live(s, now, self.ttl_s)
        )

    async def wait_for_runner(self, timeout_s: float) -> bool:
        """Wait until at least one runner is live (used at start-up and by tests)."""
        async with asyncio.timeout(timeout_s):
            while self.live_count() == 0:
                self._changed.clear()
                await self._changed.wait()
        return True
