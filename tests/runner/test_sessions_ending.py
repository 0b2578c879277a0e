"""A session that leaves a runner (end, evict) is still held there until its sandbox is gone.

The advert lists it as `ending` while its sandbox is destroyed, so that placement still counts
what it holds and nobody reads "gone" while its files are still on disk.
"""

from __future__ import annotations

import asyncio

from protocol.commands import AgentRef, CreateSession
from runner.bridge import AgentOptions
from runner.sessions import Claim, SessionManager
from tests.runner.test_sessions_interrupt import FakeCli, FakeSandbox, Log


async def gated_manager(release_gate: asyncio.Event, released: list[str]) -> SessionManager:
    async def acquire(cmd: CreateSession) -> Claim:
        async def release() -> None:
            await release_gate.wait()  # destroying the sandbox takes until the test says
            released.append(cmd.session_id)
        options = AgentOptions(host_cli="cli", cli_inside="cli", workspace="/workspace")
        return Claim(sandbox=FakeSandbox(), conversation=FakeCli(), options=options,  # type: ignore[arg-type]
                     release=release)

    async def make_publisher(session_id: str, fresh: bool) -> Log:
        return Log()

    mgr = SessionManager(runner_id="r1", max_sessions=2, turn_timeout_s=60, acquire=acquire,
                         make_publisher=make_publisher)  # type: ignore[arg-type]
    await mgr.create(CreateSession(session_id="s1", agent=AgentRef(name="a", digest="d")))
    return mgr


async def start_ending(mgr: SessionManager) -> asyncio.Task[None]:
    """End s1 in the background; return once it is ending (its sandbox held at the gate)."""
    ending = asyncio.create_task(mgr.end("s1"))
    while not any(s.ending for s in mgr.held()):
        await asyncio.sleep(0)  # a step of the loop: the end runs up to the gate, no timers
    return ending


async def test_an_ending_session_is_held_and_counted_until_its_sandbox_is_gone() -> None:
    gate, released = asyncio.Event(), []
    mgr = await gated_manager(gate, released)
    ending = await start_ending(mgr)
    assert [s.id for s in mgr.held()] == ["s1"]
    assert len(mgr) == 1  # its sandbox still takes a place
    gate.set()
    await asyncio.wait_for(ending, 10)
    assert released == ["s1"]
    assert mgr.held() == [] and len(mgr) == 0


async def test_a_session_created_again_while_its_old_sandbox_goes_is_listed_last() -> None:
    gate, released = asyncio.Event(), []
    mgr = await gated_manager(gate, released)
    ending = await start_ending(mgr)
    await mgr.create(CreateSession(session_id="s1", agent=AgentRef(name="a", digest="d")))
    held = mgr.held()
    assert [(s.id, s.ending) for s in held] == [("s1", True), ("s1", False)]
    by_id = {s.id: s for s in held}  # how the advert keys them: the live one wins
    assert not by_id["s1"].ending
    gate.set()
    await asyncio.wait_for(ending, 10)
    assert [(s.id, s.ending) for s in mgr.held()] == [("s1", False)]
    await mgr.close()
