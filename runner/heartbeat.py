"""Advertises the runner in the registry (KV) every few seconds until closed.

    (built) --start--> advertising --beat() at any time (the drain: "draining" at once)
                            |
                          close: stop the loop, delete the entry (the runner has left)

Coordinators treat an advert older than their TTL as a runner gone; deleting the entry on
close says so at once. `close` is idempotent and safe before `start`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from nats.js.kv import KeyValue

from protocol import codec
from protocol.runners import RunnerAdvert

logger = logging.getLogger(__name__)


class Heartbeat:
    """Puts `advert()` under the runner's key every `interval_s`; deletes it on close."""

    def __init__(self, kv: KeyValue, key: str, advert: Callable[[], RunnerAdvert], interval_s: float):
        self._kv = kv
        self._key = key
        self._advert = advert
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self._started = False

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
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.beat()
            except Exception as e:  # NATS reconnecting: keep trying, the entry may lapse
                logger.warning("advert failed: %s", e)

    async def close(self) -> None:
        """Stop advertising and leave the registry."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._started:
            self._started = False
            try:
                await asyncio.wait_for(self._kv.delete(self._key), 5)
            except Exception as e:  # the entry expires by itself; coordinators see it stale
                logger.warning("could not leave the registry: %s", e)
