"""Rate limits and quotas per API key: session creates (a token bucket) and concurrent turns.

Both live in this coordinator process. With N coordinators behind a load balancer a key may
reach up to N times the configured limits: they bound abuse and runaway clients, they are not
billing. With auth off (development) there is no key and no limit.

    session create --bucket(key).take(now)--> ok: go on
                                          \\-> empty: 429 rate_limited, Retry-After = seconds
                                               until one token is back
    send message   --turns(key).acquire()---> ok: the turn counts until its `done`
                                          \\-> at the cap: 429 rate_limited, Retry-After: 1

A turn is a server-side job that outlives its HTTP request, so when the request ends before
the turn's `done` (the client left) the slot is handed to a watcher task that holds it until
the turn's `done` shows in the session's event log (bounded by the turn timeout).

`Bucket.take` is a pure function of (state, now).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Self

from coordinator.errors import ApiError
from protocol.errors import ErrorCode

logger = logging.getLogger(__name__)

MAX_KEYS = 100_000  # buckets kept; the oldest idle ones are dropped beyond (bounded memory)


@dataclass(slots=True, frozen=True)
class Bucket:
    """A token bucket: `tokens` left at time `at`; refills `rate` per second up to `burst`."""

    tokens: float
    at: float

    def take(self, now: float, rate: float, burst: float) -> tuple[Bucket, float]:
        """(the bucket after taking one token, 0) or (unchanged, seconds until one is back)."""
        tokens = min(burst, self.tokens + max(0.0, now - self.at) * rate)
        if tokens >= 1.0:
            return Bucket(tokens - 1.0, now), 0.0
        return Bucket(tokens, now), (1.0 - tokens) / rate


def too_many(message: str, retry_after_s: float) -> ApiError:
    """429 `rate_limited` (retryable), with the seconds to wait for the Retry-After header."""
    err = ApiError(429, ErrorCode.rate_limited, message, retryable=True)
    err.headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))
    return err


class Limiter:
    """The per-key limits of one coordinator. An async context manager (watchers are tasks).

    `creates_per_min` 0 turns the session-create limit off; `max_turns` 0 the turn cap.
    """

    def __init__(self, creates_per_min: float, creates_burst: int, max_turns: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = creates_per_min / 60.0
        self.burst = float(max(1, creates_burst))
        self.max_turns = max_turns
        self._clock = clock
        self._buckets: dict[str, Bucket] = {}
        self._turns: dict[str, int] = {}
        self._watchers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for task in list(self._watchers):
            task.cancel()
        for task in list(self._watchers):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._watchers.clear()

    def session_create(self, key_id: str) -> None:
        """Take a token for a session create by `key_id`, or raise 429."""
        if not key_id or self.rate <= 0:
            return
        now = self._clock()
        bucket = self._buckets.pop(key_id, None) or Bucket(self.burst, now)
        bucket, wait = bucket.take(now, self.rate, self.burst)
        self._buckets[key_id] = bucket  # re-inserted: dict order is least recently used first
        if len(self._buckets) > MAX_KEYS:
            del self._buckets[next(iter(self._buckets))]
        if wait > 0:
            raise too_many(f"this key may create {self.rate * 60:g} sessions a minute "
                           f"(bursts of {self.burst:g}); try again later", wait)

    def turns(self, key_id: str) -> int:
        return self._turns.get(key_id, 0)

    def acquire_turn(self, key_id: str) -> TurnSlot:
        """A slot for one running turn of `key_id`, or 429 when it runs `max_turns` already."""
        if not key_id or self.max_turns <= 0:
            return TurnSlot(self, "")
        if self._turns.get(key_id, 0) >= self.max_turns:
            raise too_many(f"this key already runs {self.max_turns} turns at once; wait for "
                           "one to finish", 1.0)
        self._turns[key_id] = self._turns.get(key_id, 0) + 1
        return TurnSlot(self, key_id)

    def _release(self, key_id: str) -> None:
        left = self._turns.get(key_id, 0) - 1
        if left > 0:
            self._turns[key_id] = left
        else:
            self._turns.pop(key_id, None)

    def hold_until(self, slot: TurnSlot, done: Awaitable[object], timeout_s: float) -> None:
        """Keep `slot` until `done` completes (or `timeout_s`), in a watcher task."""

        async def watch() -> None:
            try:
                async with asyncio.timeout(timeout_s):
                    await done
            except Exception as e:  # the slot must come back whatever happens
                logger.debug("turn watcher ended: %r", e)
            finally:
                slot.release()

        task = asyncio.get_running_loop().create_task(watch())
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)


class TurnSlot:
    """One counted turn; `release()` is idempotent."""

    __slots__ = ("_limiter", "key_id", "_held")

    def __init__(self, limiter: Limiter, key_id: str) -> None:
        self._limiter = limiter
        self.key_id = key_id
        self._held = bool(key_id)

    def release(self) -> None:
        if self._held:
            self._held = False
            self._limiter._release(self.key_id)
