r"""NetworkPool: pre-built network slots, handed out in O(1) and recycled after a check.

    (build) --> fresh --acquire--> leased --release--> checking --ok--> recycled
                                                           |              |
                                     destroy, rebuild <-- bad        acquire --> leased
    close(): pending releases finish, then every slot is destroyed (leased ones too).

Building a slot costs tens of milliseconds of kernel work (veth creation dominates, see
netns.py), so `populate()` builds them ahead of time and `acquire()` only pops a queue. The
pool is bounded by `size` (slot i always has the same names and addresses, so the proxy can
listen on every gateway up front); with nothing left, `acquire()` raises NetworkPoolExhausted
at once instead of waiting. A slot that fails its check on release is destroyed and rebuilt
from scratch under the same index.

All kernel work runs in one worker thread, in order, through `SlotKernel`.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import enum
import logging
import time
from collections.abc import Callable
from typing import Self, TypeVar

from runner.sandbox.errors import NetworkError, NetworkPoolExhausted
from runner.sandbox.netns import (
    DEFAULT_SUBNET,
    NFT,
    NSENTER,
    NetworkSlot,
    SlotKernel,
    capacity,
    check_prefix,
    make_slot,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
TIMING_SAMPLES = 4096


class SlotState(enum.Enum):
    BUILDING = "building"
    FRESH = "fresh"
    LEASED = "leased"
    CHECKING = "checking"
    RECYCLED = "recycled"


class NetworkPool:
    """A bounded pool of network slots for one runner (see the module docstring)."""

    def __init__(
        self,
        *,
        size: int,
        proxy_port: int,
        subnet: str = DEFAULT_SUBNET,
        prefix: str = "ash",
        host_netns: str | None = None,
        nsenter: str = NSENTER,
        nft: str = NFT,
    ) -> None:
        """`prefix` names this runner's slots (`<prefix>-<i>`); runners sharing a machine need
        different prefixes and subnets. `host_netns`: see SlotKernel (None in production)."""
        if not 0 < size <= capacity(subnet):
            raise ValueError(f"size must be 1..{capacity(subnet)} for {subnet}, got {size}")
        if not 0 < proxy_port < 65536:
            raise ValueError(f"bad proxy port {proxy_port}")
        self._prefix = check_prefix(prefix)
        self._subnet = subnet
        self._slots = [make_slot(prefix, subnet, i, proxy_port) for i in range(size)]
        self._kernel = SlotKernel(host_netns, nsenter=nsenter, nft=nft)
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ash-netns")
        self._state: dict[int, SlotState] = {}  # index -> state; absent: not built
        self._states: dict[int, str] = {}  # index -> the slot's state as built (see check)
        self._fresh: collections.deque[int] = collections.deque(maxlen=size)
        self._recycled: collections.deque[int] = collections.deque(maxlen=size)
        self._pending: set[asyncio.Task[None]] = set()
        self._swept = False
        self._closed = False
        self.timings: dict[str, collections.deque[float]] = {
            k: collections.deque(maxlen=TIMING_SAMPLES)
            for k in ("build", "destroy", "acquire", "release")
        }
        self.counters: collections.Counter[str] = collections.Counter()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def size(self) -> int:
        return len(self._slots)

    def gateways(self) -> list[str]:
        """Every slot's gateway address, built or not: where the proxy should listen."""
        return [s.gateway for s in self._slots]

    def gauges(self) -> dict[str, int]:
        """Slots per state, plus `absent` (not built: never, or destroyed and not rebuilt)."""
        counts = collections.Counter(s.value for s in self._state.values())
        out = {s.value: counts.get(s.value, 0) for s in SlotState}
        out["absent"] = self.size - len(self._state)
        return out

    async def populate(self, count: int | None = None) -> None:
        """Build slots until `count` (default: all `size`) exist. The first call also removes
        whatever a previous run with the same prefix left behind."""
        if self._closed:
            raise NetworkError("the network pool is closed")
        if not self._swept:
            removed = await self._run(self._kernel.sweep, self._prefix)
            if removed:
                log.warning("removed %d stale network slot parts named %s*", removed, self._prefix)
            await self._run(self._kernel.check_subnet, self._subnet)
            self._swept = True
        want = self.size if count is None else min(count, self.size)
        while len(self._state) < want and not self._closed:
            index = self._next_absent()
            await self._build(index)
            if self._closed:
                break  # close() destroyed it after the build
            self._state[index] = SlotState.FRESH
            self._fresh.append(index)

    async def acquire(self) -> NetworkSlot:
        """A ready slot: recycled first, then fresh, else built now if the pool has room.

        Raises NetworkPoolExhausted when every slot is leased or being checked.
        """
        if self._closed:
            raise NetworkError("the network pool is closed")
        if not self._swept:
            await self.populate(0)
        start = time.perf_counter()
        if self._recycled:
            index = self._recycled.popleft()
        elif self._fresh:
            index = self._fresh.popleft()
        elif len(self._state) < self.size:
            index = self._next_absent()
            await self._build(index)
            if self._closed:
                raise NetworkError("the network pool is closed")
        else:
            self.counters["exhausted"] += 1
            raise NetworkPoolExhausted(f"all {self.size} network slots are in use")
        self._state[index] = SlotState.LEASED
        self.timings["acquire"].append(time.perf_counter() - start)
        return self._slots[index]

    async def release(self, slot: NetworkSlot) -> None:
        """Give a slot back once nothing runs in it any more (close its sandbox first).

        The check (and, if it fails, the rebuild) finishes even if the caller is cancelled.
        After close() this does nothing (close destroyed the slot).
        """
        if self._closed:
            return
        if self._state.get(slot.index) is not SlotState.LEASED or self._slots[slot.index] != slot:
            raise ValueError(f"slot {slot.netns} is not leased from this pool")
        self._state[slot.index] = SlotState.CHECKING
        task = asyncio.ensure_future(self._recycle(slot.index))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        await asyncio.shield(task)

    async def close(self) -> None:
        """Finish pending releases, destroy every slot, stop the worker. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await asyncio.gather(*self._pending, return_exceptions=True)
        for index in list(self._state):
            with contextlib.suppress(NetworkError):
                await self._destroy(index)
        self._fresh.clear()
        self._recycled.clear()
        await self._run(self._kernel.close)
        self._worker.shutdown(wait=True)
        log.debug("network pool %s closed", self._prefix)

    # ------------------------------------------------------------------------------ internals

    async def _recycle(self, index: int) -> None:
        start = time.perf_counter()
        slot = self._slots[index]
        problem = await self._run(self._kernel.check, slot, self._states[index])
        if problem is None:
            if self._closed:
                return  # close() destroys it
            self._state[index] = SlotState.RECYCLED
            self._recycled.append(index)
            self.counters["recycled"] += 1
        else:
            self.counters["rebuilt"] += 1
            log.warning("network slot %s failed its check (%s); rebuilding it", slot.netns, problem)
            try:
                await self._destroy(index)
                if not self._closed:
                    await self._build(index)
                    self._state[index] = SlotState.FRESH
                    self._fresh.append(index)
            except NetworkError:
                log.exception("network slot %s could not be rebuilt", slot.netns)
        self.timings["release"].append(time.perf_counter() - start)

    async def _build(self, index: int) -> None:
        self._state[index] = SlotState.BUILDING
        start = time.perf_counter()
        try:
            self._states[index] = await self._run(self._kernel.build, self._slots[index])
        except BaseException:
            self._state.pop(index, None)
            raise
        self.timings["build"].append(time.perf_counter() - start)
        self.counters["built"] += 1

    async def _destroy(self, index: int) -> None:
        start = time.perf_counter()
        self._state.pop(index, None)
        self._states.pop(index, None)
        await self._run(self._kernel.destroy, self._slots[index])
        self.timings["destroy"].append(time.perf_counter() - start)
        self.counters["destroyed"] += 1

    def _next_absent(self) -> int:
        return next(i for i in range(self.size) if i not in self._state)

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)
