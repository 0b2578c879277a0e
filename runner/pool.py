"""Warm pools: sandboxes made before the sessions that claim them (STYLE rule 13).

Two tiers in one class, `WarmPool`:

* **generic**: ready *slots*, the option-free, expensive part of a sandbox (today its quota
  disk, ~12 ms to make; later its network slot). A `fresh` queue that `populate` keeps full and
  a `recycled` queue of slots wiped after a session, both bounded. Any sandbox takes one.
* **per agent**: sandboxes whose CLI is already started and initialised with the agent's
  default options, `[pool] warm` of them (default 1, 0 disables). Filled when the runner first
  sees the agent (its first session, or a WarmAgent command) and refilled after each claim.

A per-agent sandbox's life:

    warming --started--> warm --acquire (same warm_key)--> claimed --release--> stopped
       |                  |                                          (slot wiped -> recycled)
       | failed: backoff  +--evicted: lru | idle | redeploy | capacity | dead | closing --> stopped
       v
     (slot returned)

`acquire` hands out a warm sandbox only when `warm_key(digest, options, resume)` of the request
equals the key the sandbox was started with (the agent's digest and default options). Any other
request gets a slot configured for exactly its options: a mismatched warm sandbox is never
given out, and a warm sandbox of an older digest is evicted when a newer one shows up.

Capacity: claimed + warm + warming <= `capacity`. A session that needs room evicts the warm
sandbox of the least recently used agent; warm-ups start only into free room (a warm-up that
finds the runner full when it completes is stopped). Warm sandboxes of agents unused for
`idle_s` are swept. Every decision (what to evict, what to refill) is a pure function of
(`PoolState`, now) in `runner/pool_policy.py`, table-tested.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from protocol.commands import SessionOptions
from protocol.runners import Resources
from runner.agentconf import Agent
from runner.metrics import RunnerMetrics
from runner.phases import Phases
from runner.pool_policy import (
    AgentView,
    PoolState,
    WarmKey,
    WarmView,
    idle_victims,
    lru_victim,
    refills,
    warm_key,
)

__all__ = ["Factory", "Lease", "Request", "WarmKey", "WarmPool", "warm_key"]

logger = logging.getLogger(__name__)

CLEANUP_DEADLINE_S = 15.0
REFILL_DELAY_S = 0.02  # after the last claim or release, before the populate loop acts on it
REFILL_DELAY_MAX_S = 0.5  # ... but no longer than this after the first one (a steady stream)

# ---------------------------------------------------------------------------------------------
# Requests and the factory seam

DEFAULTS = SessionOptions()


@dataclass(frozen=True, slots=True)
class Request:
    """What a session (or a warm-up, with the defaults) needs from a sandbox."""

    agent: Agent
    options: SessionOptions = DEFAULTS
    resume: str | None = None
    restore: Any = field(default=None, compare=False)  # opaque here: runner.snapshots.Restore
    phases: Phases = field(default_factory=Phases, compare=False)  # `slot`, and `start`'s own

    @property
    def key(self) -> WarmKey:
        # A restore is never served by a warm sandbox: its key matches no pool's.
        resume = self.resume if self.restore is None else f"restore:{self.resume}"
        return warm_key(self.agent.digest, self.options, resume)


class Slot(Protocol):
    """What the pool needs to know of a slot: the size of its disk."""

    @property
    def disk_mb(self) -> int: ...


SlotT = TypeVar("SlotT", bound=Slot)  # a slot, made by the factory
R = TypeVar("R")  # a started sandbox with its connected CLI, made by the factory


class Factory(Protocol[SlotT, R]):
    """What the pool needs made; the composition root provides the real one, tests a fake."""

    async def make_slot(self, disk_mb: int) -> SlotT:
        """A new slot with a disk of `disk_mb`."""
        ...

    async def recycle_slot(self, slot: SlotT) -> None:
        """Wipe a slot a sandbox used so another may; raise if it cannot be reused."""
        ...

    async def destroy_slot(self, slot: SlotT) -> None: ...

    async def start(self, slot: SlotT, request: Request) -> R:
        """A sandbox in `slot` for `request`: agent folder copied, CLI started and connected."""
        ...

    async def stop(self, ready: R) -> None:
        """Stop the CLI and destroy the sandbox (not the slot)."""
        ...

    def alive(self, ready: R) -> bool:
        """Whether a warm sandbox's CLI still runs."""
        ...


@dataclass(slots=True)
class Lease(Generic[SlotT, R]):
    """A claimed sandbox; hand it back with `WarmPool.release`."""

    ready: R
    slot: SlotT
    request: Request
    warm: bool


@dataclass(slots=True, eq=False)
class _Warm(Generic[SlotT, R]):
    id: int
    slot: SlotT
    ready: R
    since: float


@dataclass(slots=True)
class _AgentPool(Generic[SlotT, R]):
    agent: Agent
    key: WarmKey
    last_seen: float
    entries: deque[_Warm[SlotT, R]] = field(default_factory=deque)
    warming: int = 0
    failures: int = 0
    failed_at: float = 0.0


class WarmPool(Generic[SlotT, R]):
    """Generic slots and per-agent warm sandboxes: populate / acquire / release / close."""

    def __init__(
        self,
        factory: Factory[SlotT, R],
        metrics: RunnerMetrics,
        *,
        capacity: int,
        generic_size: int,
        generic_disk_mb: int,
        idle_s: float,
        recycled_max: int = 8,
        max_warming: int = 2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._factory = factory
        self._m = metrics
        self.capacity = capacity
        self._generic_size = generic_size
        self._generic_disk_mb = generic_disk_mb
        self._idle_s = idle_s
        self._max_warming = max_warming
        self._clock = clock
        self._tick_s = min(5.0, idle_s / 4)
        self._fresh: deque[SlotT] = deque()
        self._recycled: deque[SlotT] = deque()
        self._recycled_max = recycled_max
        self._making = 0  # fresh slots being made
        self._agents: dict[str, _AgentPool[SlotT, R]] = {}
        self._claimed = 0
        self._claimed_limits = Resources()  # summed over the claimed sandboxes
        self._ids = itertools.count(1)
        self._wake = asyncio.Event()
        self._wake_timer: asyncio.TimerHandle | None = None
        self._wake_first = 0.0  # loop time of the first claim or release the timer waits out
        self._loop: asyncio.Task[None] | None = None
        self._work: set[asyncio.Task[None]] = set()  # warm-ups and slot making: cancellable
        self._cleanup: set[asyncio.Task[None]] = set()  # stops and recycling: must finish
        self._closed = False

    async def __aenter__(self) -> WarmPool[SlotT, R]:
        if self._loop is None:
            self._loop = asyncio.create_task(self.populate(), name="warm-pool")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the background loop ------------------------------------------------------------------

    async def populate(self) -> None:
        """Keep the pools filled until closed: sweep idle sandboxes, start warm-ups, make slots.

        Wakes on every claim, release and new agent, and every few seconds for the sweep.
        """
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._tick_s)
            self._wake.clear()
            if not self._closed:
                try:
                    self._round(self._clock())
                except Exception:  # a bug here must not stop the refills for good
                    logger.exception("warm pool round failed")

    async def refill(self) -> None:
        """One round of `populate` now, waiting until its warm-ups and slots are done."""
        self._round(self._clock())
        while self._work:
            await asyncio.gather(*self._work, return_exceptions=True)

    def _round(self, now: float) -> None:
        # Synchronous from decision to task creation, so two rounds never double-start.
        state = self.state()
        for victim in idle_victims(state, now, self._idle_s):
            self._evict(victim, "idle")
        for name in refills(self.state(), now, self._idle_s, self._max_warming):
            pool = self._agents[name]
            pool.warming += 1
            self._start(self._work, self._warm_up(pool), f"warm-{name}")
        for name, pool in list(self._agents.items()):
            if not pool.entries and not pool.warming and now - pool.last_seen >= self._idle_s:
                del self._agents[name]
        for _ in range(self._generic_size - len(self._fresh) - self._making):
            self._making += 1
            self._start(self._work, self._make_fresh(), "make-slot")
        self._gauges()

    # -- claiming -----------------------------------------------------------------------------

    def want(self, agent: Agent) -> None:
        """Note that `agent` is in use: (re)start its pool, evicting any older digest's."""
        now = self._clock()
        pool = self._agents.get(agent.name)
        if pool is not None and pool.agent.digest == agent.digest:
            pool.last_seen = now
            pool.agent = agent
            self._wake_soon()
        else:
            if pool is not None:
                for w in list(pool.entries):
                    self._evict(w.id, "redeploy")
            self._agents[agent.name] = _AgentPool(agent, Request(agent).key, now)
            self._wake.set()

    async def acquire(self, request: Request) -> Lease[SlotT, R]:
        """A sandbox for `request`: a warm one when its key matches, else a fresh one (slow)."""
        if self._closed:
            raise RuntimeError("the warm pool is closed")
        self.want(request.agent)
        pool = self._agents[request.agent.name]
        if request.key == pool.key and pool.agent.settings.warm > 0:
            while pool.entries:
                w = pool.entries.popleft()
                if not self._factory.alive(w.ready):
                    self._retire(w, "dead")
                    continue
                self._claim(request.agent, +1)
                self._m.pool_hits.inc()
                self._gauges()
                return Lease(w.ready, w.slot, request, warm=True)
            reason = "empty"
        else:
            reason = "options" if request.key != pool.key else "disabled"
        self._m.pool_misses.labels(reason).inc()
        self._claim(request.agent, +1)
        self._gauges()
        slot: SlotT | None = None
        try:
            while self.state().used > self.capacity:
                victim = lru_victim(self.state())
                if victim is None:
                    break  # only claimed and warming: the SessionManager's cap holds the line
                self._evict(victim, "lru")
            with request.phases.span("slot"):
                slot = await self._take_slot(request.agent.settings.disk_mb)
            ready = await self._factory.start(slot, request)
        except BaseException:
            self._claim(request.agent, -1)
            self._gauges()
            if slot is not None:
                self._start(self._cleanup, self._return_slot(slot), "return-slot")
            raise
        return Lease(ready, slot, request, warm=False)

    async def release(self, lease: Lease[SlotT, R]) -> None:
        """Stop a claimed sandbox (awaited) and recycle its slot (in the background)."""
        self._claim(lease.request.agent, -1)
        try:
            await asyncio.shield(self._factory.stop(lease.ready))
        finally:
            self._start(self._cleanup, self._return_slot(lease.slot), "return-slot")
            self._gauges()
            self._wake_soon()

    # -- views --------------------------------------------------------------------------------

    def state(self) -> PoolState:
        agents = tuple(
            AgentView(name, p.agent.settings.warm, len(p.entries), p.warming, p.last_seen,
                      p.failures, p.failed_at)
            for name, p in self._agents.items()
        )
        warm = tuple(WarmView(w.id, name, w.since)
                     for name, p in self._agents.items() for w in p.entries)
        return PoolState(self.capacity, self._claimed, agents, warm)

    def committed(self) -> Resources:
        """The memory and CPU limits of every sandbox held: claimed, warm and warming (for the
        runner's advert; placement counts them against the runner's capacity)."""
        memory, cpu = self._claimed_limits.memory_mb, self._claimed_limits.cpu_percent
        for p in self._agents.values():
            n = len(p.entries) + p.warming
            memory += n * p.agent.settings.memory_mb
            cpu += n * p.agent.settings.cpu_percent
        return Resources(memory_mb=memory, cpu_percent=cpu)

    def warm_counts(self) -> dict[str, int]:
        """Warm sandboxes by agent name (for the runner's advert)."""
        return {name: len(p.entries) for name, p in self._agents.items() if p.entries}

    # -- internals ----------------------------------------------------------------------------

    def _claim(self, agent: Agent, n: int) -> None:
        self._claimed += n
        c = self._claimed_limits
        self._claimed_limits = Resources(memory_mb=c.memory_mb + n * agent.settings.memory_mb,
                                         cpu_percent=c.cpu_percent + n * agent.settings.cpu_percent)

    async def _warm_up(self, pool: _AgentPool[SlotT, R]) -> None:
        slot: SlotT | None = None
        ready: R | None = None
        try:
            slot = await self._take_slot(pool.agent.settings.disk_mb)
            ready = await self._factory.start(slot, Request(pool.agent))
        except asyncio.CancelledError:
            if slot is not None:
                self._start(self._cleanup, self._return_slot(slot), "return-slot")
            raise
        except Exception as e:
            pool.failures += 1
            pool.failed_at = self._clock()
            self._m.pool_warm_failures.inc()
            logger.warning("warming a sandbox for %s failed (%d in a row): %s",
                           pool.agent.name, pool.failures, e)
            if slot is not None:
                self._start(self._cleanup, self._return_slot(slot), "return-slot")
            return
        finally:
            pool.warming -= 1
            self._gauges()
        w = _Warm(next(self._ids), slot, ready, self._clock())
        pool.failures = 0
        if self._closed:
            self._retire(w, "closing")
        elif self._agents.get(pool.agent.name) is not pool:
            self._retire(w, "redeploy")
        elif self.state().used >= self.capacity or len(pool.entries) >= pool.agent.settings.warm:
            self._retire(w, "capacity")
        else:
            pool.entries.append(w)
            self._gauges()

    async def _make_fresh(self) -> None:
        try:
            slot = await self._factory.make_slot(self._generic_disk_mb)
        except Exception as e:
            logger.warning("making a sandbox slot failed: %s", e)
            return
        finally:
            self._making -= 1
        if self._closed or len(self._fresh) >= self._generic_size:
            self._start(self._cleanup, self._factory.destroy_slot(slot), "destroy-slot")
        else:
            self._fresh.append(slot)
        self._gauges()

    async def _take_slot(self, disk_mb: int) -> SlotT:
        slot = next((s for s in self._recycled if s.disk_mb == disk_mb), None)
        if slot is not None:
            self._recycled.remove(slot)
        elif self._fresh and self._fresh[0].disk_mb == disk_mb:
            slot = self._fresh.popleft()
        self._wake_soon()
        self._gauges()
        return slot if slot is not None else await self._factory.make_slot(disk_mb)

    async def _return_slot(self, slot: SlotT) -> None:
        if not self._closed and len(self._recycled) < self._recycled_max:
            try:
                await self._factory.recycle_slot(slot)
            except Exception as e:
                logger.warning("cannot recycle a sandbox slot, destroying it: %s", e)
            else:
                if not self._closed and len(self._recycled) < self._recycled_max:
                    self._recycled.append(slot)
                    self._gauges()
                    return
        await self._factory.destroy_slot(slot)

    def _evict(self, warm_id: int, reason: str) -> None:
        for pool in self._agents.values():
            for w in pool.entries:
                if w.id == warm_id:
                    pool.entries.remove(w)
                    self._retire(w, reason)
                    return

    def _retire(self, w: _Warm[SlotT, R], reason: str) -> None:
        self._m.pool_evictions.labels(reason).inc()
        logger.info("warm sandbox %d stopped unclaimed (%s)", w.id, reason)
        self._start(self._cleanup, self._stop_and_return(w), "evict")
        self._gauges()

    async def _stop_and_return(self, w: _Warm[SlotT, R]) -> None:
        try:
            await self._factory.stop(w.ready)
        finally:
            await self._return_slot(w.slot)

    def _start(self, group: set[asyncio.Task[None]], coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        group.add(task)
        task.add_done_callback(group.discard)
        task.add_done_callback(_log_failure)

    def _wake_soon(self) -> None:
        """Wake the populate loop once claims and releases pause for REFILL_DELAY_S (at most
        REFILL_DELAY_MAX_S after the first), rather than now: starting a CLI forks the runner,
        which stalls its event loop for milliseconds, so the sessions whose claims called for
        the refill get their answers first (measured: p99 of a hit 37 -> 8 ms), a burst of
        claims included (100 creates at once, deep pool: p99 182-308 -> 120-139 ms)."""
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._wake_timer is None:
            self._wake_first = now
        else:
            self._wake_timer.cancel()
        at = min(now + REFILL_DELAY_S, self._wake_first + REFILL_DELAY_MAX_S)
        self._wake_timer = loop.call_at(at, self._wake_now)

    def _wake_now(self) -> None:
        self._wake_timer = None
        self._wake.set()

    def _gauges(self) -> None:
        g = self._m.pool_sandboxes
        g.labels("warming").set(sum(p.warming for p in self._agents.values()))
        g.labels("warm").set(sum(len(p.entries) for p in self._agents.values()))
        g.labels("claimed").set(self._claimed)
        self._m.pool_slots.labels("fresh").set(len(self._fresh))
        self._m.pool_slots.labels("recycled").set(len(self._recycled))

    async def close(self) -> None:
        """Stop the loop and the warm-ups, stop every warm sandbox, destroy every slot."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        if self._wake_timer is not None:
            self._wake_timer.cancel()
        for task in [*([self._loop] if self._loop else []), *self._work]:
            task.cancel()
        await asyncio.gather(*([self._loop] if self._loop else []), *self._work,
                             return_exceptions=True)
        for pool in self._agents.values():
            while pool.entries:
                self._retire(pool.entries.popleft(), "closing")
        while self._fresh or self._recycled:
            slot = (self._fresh or self._recycled).popleft()
            self._start(self._cleanup, self._factory.destroy_slot(slot), "destroy-slot")
        if self._cleanup:
            _, late = await asyncio.wait(set(self._cleanup), timeout=CLEANUP_DEADLINE_S)
            if late:
                logger.warning("warm pool: %d clean-ups still running at close", len(late))
        self._gauges()


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("warm pool task %s failed", task.get_name(), exc_info=task.exception())
