"""Values loaded once per key and kept (least recently used let go), for what is read from
the object store on the path of a request: an agent's demand for placement, the credential
its `ash.toml` names.

A key being loaded is loaded once however many ask for it at once: a burst of creates for an
agent just deployed would otherwise fetch its bundle once per create. The load runs as a task
of its own, so a caller that gives up (a client gone) does not cancel it for the others.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


def remember(kept: collections.OrderedDict[K, V], key: K, value: V, limit: int) -> None:
    """Keep `value` as the newest entry of a least-recently-used map; let the oldest go
    beyond `limit`."""
    kept.pop(key, None)
    kept[key] = value
    while len(kept) > limit:
        kept.popitem(last=False)


class Memo(Generic[K, V]):
    """`get(key, load)`: the kept value, else the result of one `load()` shared by every
    caller asking meanwhile. `load` returns (value, keep): a value not to keep (a fallback
    after an error) is given to those callers and asked for again next time."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._kept: collections.OrderedDict[K, V] = collections.OrderedDict()
        self._loading: dict[K, asyncio.Task[tuple[V, bool]]] = {}

    def __len__(self) -> int:
        return len(self._kept)

    async def get(self, key: K, load: Callable[[], Awaitable[tuple[V, bool]]]) -> V:
        if key in self._kept:
            self._kept.move_to_end(key)
            return self._kept[key]
        task = self._loading.get(key)
        if task is None:
            task = asyncio.ensure_future(load())
            self._loading[key] = task
            task.add_done_callback(lambda t: self._loaded(key, t))
        value, _ = await asyncio.shield(task)
        return value

    def _loaded(self, key: K, task: asyncio.Task[tuple[V, bool]]) -> None:
        if self._loading.get(key) is task:
            del self._loading[key]
        if task.cancelled() or task.exception() is not None:
            return
        value, keep = task.result()
        if keep:
            remember(self._kept, key, value, self._size)
