"""Advertises the runner in the registry (KV) every few seconds until closed.

    (built) --start--> advertising --beat() at any time (the drain: "draining" at once)
                            |
                          close: stop the loop, delete the entry (the runner has left)

Coordinators treat an advert older than their TTL as a runner gone; deleting the entry on
close says so at once. `close` is idempotent and safe before `start`.

The loop stops on a flag as well as on its cancel: nats-py waits for a put's answer with
`asyncio.wait_for`, which on Python 3.11 returns an answer that arrives together with a cancel
and drops the cancel, so a loop that only stopped when cancelled sometimes beat on forever and
the runner never exited (about 2 in 100 puts cancelled mid-flight, against a real nats-server).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from protocol import codec
from protocol.runners import RunnerAdvert

logger = logging.getLogger(__name__)

STOP_WAIT_S = 5.0  # for the loop to end on close (an advert being put finishes first)


class Registry(Protocol):
    """The runners' KV bucket as the heartbeat uses it (nats-py's `KeyValue`)."""

    async def put(self, key: str, value: bytes) -> int: ...

    async def delete(self, key: str) -> bool: ...


class Heartbeat:
    """Puts `advert()` under the runner's key every `interval_s`; deletes it on close."""

    def __init__(
        self, kv: Registry, key: str, advert: Callable[[], RunnerAdvert], interval_s: float
    ) -> None:
        self._kv = kv
        self._key = key
        self._advert = advert
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self._started = False
        self._closing = False

    async def __aenter__(self) -> Heartbeat:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Advertise now, then every `interval_s`."""
        await self.beat()
        self._started = True
        self._task = asyncio.create_task(self._loop(), name="heartbeat")

    async def beat(self) -> None:
        await self._kv.put(self._key, codec.encode(self._advert()))

    async def _loop(self) -> None:
        while not self._closing:
            await asyncio.sleep(self._interval_s)
            if self._closing:
                return
            try:
                await self.beat()
            except Exception as e:  # NATS reconnecting: keep trying, the entry may lapse
                logger.warning("advert failed: %s", e)

    async def close(self) -> None:
        """Stop advertising and leave the registry."""
        self._closing = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=STOP_WAIT_S)
            if not done:
                logger.warning("the heartbeat loop did not stop within %g s", STOP_WAIT_S)
        if self._started:
            self._started = False
            try:
                await asyncio.wait_for(self._kv.delete(self._key), 5)
            except Exception as e:  # the entry expires by itself; coordinators see it stale
                logger.warning("could not leave the registry: %s", e)
