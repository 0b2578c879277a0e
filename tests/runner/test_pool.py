"""WarmPool with a fake factory and a fake clock: what is handed out, kept, evicted and cleaned.

The factory is the pool's only seam (slots, sandbox start and stop); the fake records every
call, so each test can check that nothing leaks: every slot made is destroyed and every
sandbox started is stopped by the time the pool is closed.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from protocol.agentconf import AgentNetwork
from protocol.commands import SessionOptions
from runner.agentconf import Agent, Effective
from runner.metrics import RunnerMetrics
from runner.pool import Lease, Request, WarmPool


@dataclass(eq=False)
class FakeSlot:
    id: int
    disk_mb: int
    wiped: int = 0
    destroyed: bool = False
    bad: bool = False  # cannot be wiped


@dataclass(eq=False)
class FakeReady:
    id: int
    slot: FakeSlot
    request: Request
    alive: bool = True
    stopped: bool = False


@dataclass
class FakeFactory:
    slots: list[FakeSlot] = field(default_factory=list)
    started: list[FakeReady] = field(default_factory=list)
    fail_starts: int = 0
    gate: asyncio.Event | None = None  # when set, start() waits for it
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    async def make_slot(self, disk_mb: int) -> FakeSlot:
        slot = FakeSlot(next(self.ids), disk_mb)
        self.slots.append(slot)
        return slot

    async def recycle_slot(self, slot: FakeSlot) -> None:
        assert not slot.destroyed
        if slot.bad:
            raise OSError("cannot wipe")
        slot.wiped += 1

    async def destroy_slot(self, slot: FakeSlot) -> None:
        assert not slot.destroyed, "destroyed twice"
        slot.destroyed = True

    async def start(self, slot: FakeSlot, request: Request) -> FakeReady:
        assert not slot.destroyed
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_starts:
            self.fail_starts -= 1
            raise RuntimeError("the CLI did not start")
        ready = FakeReady(next(self.ids), slot, request)
        self.started.append(ready)
        return ready

    async def stop(self, ready: FakeReady) -> None:
        assert not ready.stopped, "stopped twice"
        ready.stopped = True

    def alive(self, ready: FakeReady) -> bool:
        return ready.alive

    def running(self) -> list[FakeReady]:
        return [r for r in self.started if not r.stopped]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_agent(name: str = "a", digest: str = "d1", *, warm: int = 1, disk_mb: int = 64) -> Agent:
    return Agent(name, digest, f"/bundles/{digest}", Effective(
        memory_mb=256, cpu_percent=100, pids=64, disk_mb=disk_mb, turn_timeout_s=60, warm=warm,
        network=AgentNetwork()))


@dataclass
class Rig:
    pool: WarmPool[FakeSlot, FakeReady]
    factory: FakeFactory
    clock: Clock
    metrics: RunnerMetrics

    def count(self, name: str, **labels: str) -> float:
        return self.metrics.value(name, **labels)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r = new_rig()
    yield r
    await assert_closes_clean(r)


def new_rig(*, capacity: int = 8, generic: int = 0, idle_s: float = 100.0) -> Rig:
    factory, clock, metrics = FakeFactory(), Clock(), RunnerMetrics()
    # No populate task: each test drives rounds with refill(), so nothing happens behind its back.
    pool = WarmPool(factory, metrics, capacity=capacity, generic_size=generic, generic_disk_mb=64,
                    idle_s=idle_s, recycled_max=2, clock=clock)
    return Rig(pool, factory, clock, metrics)


async def assert_closes_clean(r: Rig) -> None:
    await r.pool.close()
    assert r.factory.running() == [], "a started sandbox was never stopped"
    assert [s for s in r.factory.slots if not s.destroyed] == [], "a slot was never destroyed"


async def claim(r: Rig, agent: Agent, **options: object) -> Lease[FakeSlot, FakeReady]:
    return await r.pool.acquire(Request(agent, SessionOptions(**options)))  # type: ignore[arg-type]


async def test_the_first_session_misses_then_the_pool_fills_and_the_next_default_session_hits(
    rig: Rig,
) -> None:
    a = make_agent(warm=2)
    first = await claim(rig, a)
    assert not first.warm and first.ready.request.options == SessionOptions()
    assert rig.count("ash_runner_pool_misses_total", reason="empty") == 1

    await rig.pool.refill()
    assert rig.pool.warm_counts() == {"a": 2}
    second = await claim(rig, a)
    assert second.warm and second.ready.request.agent.digest == "d1"
    assert rig.count("ash_runner_pool_hits_total") == 1
    await rig.pool.refill()  # the claim is replaced in the background
    assert rig.pool.warm_counts() == {"a": 2}
    assert rig.count("ash_runner_pool_sandboxes", state="claimed") == 2
    assert rig.count("ash_runner_pool_sandboxes", state="warm") == 2
    await rig.pool.release(first)
    await rig.pool.release(second)


@pytest.mark.parametrize("options", [
    {"system_prompt": "You are terse."},
    {"model": "claude-other"},
    {"env": {"TOKEN": "t"}},
])
async def test_a_session_with_other_options_never_gets_a_warm_sandbox(
    rig: Rig, options: dict[str, object]
) -> None:
    a = make_agent()
    rig.pool.want(a)
    await rig.pool.refill()
    (warm,) = rig.factory.running()

    lease = await claim(rig, a, **options)
    assert not lease.warm
    assert lease.ready is not warm and lease.ready.request.options == SessionOptions(**options)  # type: ignore[arg-type]
    assert rig.pool.warm_counts() == {"a": 1} and not warm.stopped  # still there for a default one
    assert rig.count("ash_runner_pool_misses_total", reason="options") == 1
    hit = await claim(rig, a)
    assert hit.warm and hit.ready is warm
    await rig.pool.release(lease)
    await rig.pool.release(hit)


async def test_a_resumed_conversation_never_gets_a_warm_sandbox(rig: Rig) -> None:
    a = make_agent()
    rig.pool.want(a)
    await rig.pool.refill()
    lease = await rig.pool.acquire(Request(a, resume="conversation-1"))
    assert not lease.warm and lease.ready.request.resume == "conversation-1"
    await rig.pool.release(lease)


async def test_warm_zero_disables_the_agents_pool(rig: Rig) -> None:
    a = make_agent(warm=0)
    lease = await claim(rig, a)
    await rig.pool.refill()
    assert rig.pool.warm_counts() == {} and len(rig.factory.started) == 1
    assert rig.count("ash_runner_pool_misses_total", reason="disabled") == 1
    await rig.pool.release(lease)


async def test_a_redeploy_evicts_the_old_digests_sandboxes_and_never_hands_them_out(rig: Rig) -> None:
    old, new = make_agent(digest="d1"), make_agent(digest="d2")
    rig.pool.want(old)
    await rig.pool.refill()
    (stale,) = rig.factory.running()

    lease = await claim(rig, new)
    assert not lease.warm and lease.ready.request.agent.digest == "d2"
    await asyncio.sleep(0)  # the eviction's stop runs in the background
    await rig.pool.refill()
    assert stale.stopped and rig.count("ash_runner_pool_evictions_total", reason="redeploy") == 1
    hit = await claim(rig, new)
    assert hit.warm and hit.ready.request.agent.digest == "d2"
    await rig.pool.release(lease)
    await rig.pool.release(hit)


async def test_a_warm_up_for_an_old_digest_that_finishes_after_a_redeploy_is_discarded(
    rig: Rig,
) -> None:
    rig.factory.gate = asyncio.Event()
    rig.pool.want(make_agent(digest="d1"))
    refill = asyncio.create_task(rig.pool.refill())
    await asyncio.sleep(0.01)
    assert rig.count("ash_runner_pool_sandboxes", state="warming") == 1
    rig.pool.want(make_agent(digest="d2"))  # redeployed while d1 was starting
    rig.factory.gate.set()
    await refill
    await rig.pool.refill()
    digests = {r.request.agent.digest for r in rig.factory.running()}
    assert digests == {"d2"} and rig.count("ash_runner_pool_evictions_total", reason="redeploy") == 1


async def test_a_warm_sandbox_whose_cli_died_is_evicted_not_handed_out(rig: Rig) -> None:
    a = make_agent()
    rig.pool.want(a)
    await rig.pool.refill()
    (dead,) = rig.factory.running()
    dead.alive = False
    lease = await claim(rig, a)
    assert not lease.warm and lease.ready is not dead
    await asyncio.sleep(0)
    assert dead.stopped and rig.count("ash_runner_pool_evictions_total", reason="dead") == 1
    await rig.pool.release(lease)


async def test_capacity_counts_warm_and_claimed_and_a_session_evicts_the_lru_agents_sandbox() -> None:
    r = new_rig(capacity=2)
    old, busy = make_agent("old"), make_agent("busy", warm=0)
    r.pool.want(old)
    await r.pool.refill()
    r.clock.now += 10
    one = await claim(r, busy)  # 1 claimed + 1 warm = capacity
    await r.pool.refill()
    assert r.pool.warm_counts() == {"old": 1}
    r.clock.now += 10
    two = await claim(r, busy)  # needs room: the idle agent's warm sandbox goes
    await asyncio.sleep(0)
    assert r.pool.warm_counts() == {} and r.count("ash_runner_pool_evictions_total", reason="lru") == 1
    await r.pool.refill()
    assert r.pool.warm_counts() == {}, "no warm-up into a full runner"
    assert r.pool.state().used == 2
    await r.pool.release(one)
    await r.pool.refill()  # room again: "old" is refilled (it is not idle yet)
    assert r.pool.warm_counts() == {"old": 1}
    await r.pool.release(two)
    await assert_closes_clean(r)


async def test_the_idle_sweep_stops_sandboxes_of_unused_agents_and_forgets_them() -> None:
    r = new_rig(idle_s=100)
    a, b = make_agent("a"), make_agent("b")
    r.pool.want(a)
    r.pool.want(b)
    await r.pool.refill()
    assert r.pool.warm_counts() == {"a": 1, "b": 1}
    r.clock.now += 60
    r.pool.want(b)  # b is used again, a is not
    r.clock.now += 50
    await r.pool.refill()
    await asyncio.sleep(0)
    assert r.pool.warm_counts() == {"b": 1}
    assert r.count("ash_runner_pool_evictions_total", reason="idle") == 1
    assert [p.name for p in r.pool.state().agents] == ["b"]
    await assert_closes_clean(r)


async def test_a_released_sandbox_is_stopped_and_its_slot_recycled_for_the_next_one(rig: Rig) -> None:
    a = make_agent(warm=0)
    lease = await claim(rig, a)
    await rig.pool.release(lease)
    assert lease.ready.stopped
    await asyncio.sleep(0)  # recycling runs in the background
    assert lease.slot.wiped == 1 and rig.count("ash_runner_pool_slots", queue="recycled") == 1
    again = await claim(rig, a)
    assert again.slot is lease.slot and len(rig.factory.slots) == 1
    await rig.pool.release(again)


async def test_a_slot_that_cannot_be_wiped_or_has_the_wrong_size_is_not_reused(rig: Rig) -> None:
    lease = await claim(rig, make_agent("a", warm=0, disk_mb=64))
    lease.slot.bad = True
    await rig.pool.release(lease)
    await asyncio.sleep(0)
    assert lease.slot.destroyed
    small = await claim(rig, make_agent("b", warm=0, disk_mb=32))
    await rig.pool.release(small)
    await asyncio.sleep(0)
    big = await claim(rig, make_agent("c", warm=0, disk_mb=64))
    assert big.slot is not small.slot and big.slot.disk_mb == 64
    await rig.pool.release(big)


async def test_populate_keeps_generic_slots_ready_and_a_miss_takes_one_instead_of_making_one() -> None:
    r = new_rig(generic=2)
    await r.pool.refill()
    assert len(r.factory.slots) == 2 and r.count("ash_runner_pool_slots", queue="fresh") == 2
    lease = await claim(r, make_agent(warm=0))
    assert lease.slot in r.factory.slots[:2] and len(r.factory.slots) == 2
    await r.pool.refill()
    assert r.count("ash_runner_pool_slots", queue="fresh") == 2  # topped up
    await r.pool.release(lease)
    await assert_closes_clean(r)


async def test_a_failing_warm_up_backs_off_instead_of_retrying_at_once(rig: Rig) -> None:
    rig.factory.fail_starts = 1
    rig.pool.want(make_agent())
    await rig.pool.refill()
    assert rig.pool.warm_counts() == {} and rig.count("ash_runner_pool_warm_failures_total") == 1
    await rig.pool.refill()
    assert len(rig.factory.started) == 0, "retried within the backoff"
    assert all(s.wiped or s.destroyed for s in rig.factory.slots), "the slot went back"
    rig.clock.now += 1.0
    await rig.pool.refill()
    assert rig.pool.warm_counts() == {"a": 1}


async def test_a_failed_start_for_a_session_raises_and_gives_the_room_back(rig: Rig) -> None:
    rig.factory.fail_starts = 1
    with pytest.raises(RuntimeError, match="did not start"):
        await claim(rig, make_agent(warm=0))
    assert rig.pool.state().claimed == 0
    assert rig.count("ash_runner_pool_sandboxes", state="claimed") == 0


async def test_close_cancels_warm_ups_stops_warm_sandboxes_and_destroys_every_slot() -> None:
    r = new_rig(generic=1)
    r.pool.want(make_agent("a"))
    await r.pool.refill()
    r.factory.gate = asyncio.Event()  # the next warm-up hangs in start()
    r.pool.want(make_agent("b"))
    async with r.pool:  # populate runs until close
        await asyncio.sleep(0.05)
        assert r.count("ash_runner_pool_sandboxes", state="warming") == 1
    await assert_closes_clean(r)
    with pytest.raises(RuntimeError, match="closed"):
        await claim(r, make_agent("a"))


async def test_populate_refills_in_the_background_after_a_claim() -> None:
    r = new_rig()
    a = make_agent()
    async with r.pool:
        first = await claim(r, a)
        for _ in range(200):
            if r.pool.warm_counts():
                break
            await asyncio.sleep(0.005)
        assert r.pool.warm_counts() == {"a": 1}
        hit = await claim(r, a)
        assert hit.warm
        await r.pool.release(first)
        await r.pool.release(hit)
    await assert_closes_clean(r)
