"""The drain's sequence (`runner.drain`) against turns that are real asyncio tasks: wait for
them up to the deadline, interrupt the rest saying why, snapshot; a second signal cuts it
short. The whole runner's drain, as a process, is tested in tests/e2e/test_lifetimes_drain.py."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from runner.drain import drain


@dataclass
class FakeTurns:
    """Turns as the session manager holds them; an interrupt ends a turn unless it is stubborn."""

    turns: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    finish: dict[str, asyncio.Event] = field(default_factory=dict)
    stubborn: set[str] = field(default_factory=set)
    notes: dict[str, str | None] = field(default_factory=dict)
    snapshots: list[dict[str, Any]] = field(default_factory=list)

    def start(self, session_id: str) -> asyncio.Event:
        done = self.finish[session_id] = asyncio.Event()
        self.turns[session_id] = asyncio.create_task(done.wait())
        return done

    def running_turns(self) -> dict[str, asyncio.Task[None]]:
        return {k: t for k, t in self.turns.items() if not t.done()}

    async def interrupt(self, session_id: str, note: str | None = None) -> bool:
        self.notes[session_id] = note
        if session_id not in self.stubborn:
            self.finish[session_id].set()
        return True

    async def snapshot_all(self, timeout_s: float = 60.0, reason: str = "drain") -> dict[str, Any]:
        self.snapshots.append({"timeout_s": timeout_s, "reason": reason})
        return {k: f"manifest-{k}" for k in self.turns}

    async def close(self) -> None:
        for t in self.turns.values():
            t.cancel()
        await asyncio.gather(*self.turns.values(), return_exceptions=True)


async def test_turns_that_finish_in_time_are_not_interrupted_and_sessions_are_snapshotted() -> None:
    turns = FakeTurns()
    a, b = turns.start("a"), turns.start("b")
    loop = asyncio.get_running_loop()
    loop.call_later(0.05, a.set)
    loop.call_later(0.1, b.set)
    started = time.monotonic()
    report = await drain(turns, deadline_s=30, force=asyncio.Event(), snapshot_all=turns.snapshot_all)
    assert time.monotonic() - started < 10  # it returned when the turns ended, not at the deadline
    assert report.finished == ["a", "b"] and report.interrupted == [] and not report.forced
    assert turns.notes == {}
    assert turns.snapshots == [{"timeout_s": 60.0, "reason": "drain"}]
    assert report.snapshots == {"a": "manifest-a", "b": "manifest-b"}


async def test_turns_past_the_deadline_are_interrupted_with_the_reason() -> None:
    turns = FakeTurns()
    quick = turns.start("quick")
    turns.start("slow")
    asyncio.get_running_loop().call_later(0.01, quick.set)
    report = await drain(turns, deadline_s=0.3, force=asyncio.Event(), snapshot_all=turns.snapshot_all)
    assert report.finished == ["quick"]
    assert report.interrupted == ["slow"] and report.still_running == []
    note = turns.notes["slow"]
    assert note is not None and "shutting down" in note and "0.3 s" in note and "resumed" in note
    assert turns.snapshots  # snapshotted after the turns stopped


async def test_a_turn_that_ignores_the_interrupt_is_left_to_the_close() -> None:
    turns = FakeTurns(stubborn={"stuck"})
    turns.start("stuck")
    report = await drain(turns, deadline_s=0.05, force=asyncio.Event(), interrupt_wait_s=0.1)
    assert report.interrupted == ["stuck"] and report.still_running == ["stuck"]
    assert not turns.turns["stuck"].done()  # the drain never cancels; the close does
    await turns.close()


async def test_a_turn_started_during_the_drain_is_waited_for_too() -> None:
    turns = FakeTurns()
    first = turns.start("a")
    loop = asyncio.get_running_loop()

    def next_turn() -> None:
        second = turns.start("b")  # an existing session converses on while the runner drains
        first.set()
        loop.call_later(0.05, second.set)

    loop.call_later(0.02, next_turn)
    report = await drain(turns, deadline_s=30, force=asyncio.Event())
    assert report.finished == ["a"] and report.interrupted == []
    assert turns.running_turns() == {}


async def test_a_second_signal_stops_the_waiting_and_skips_the_snapshots() -> None:
    turns = FakeTurns()
    turns.start("long")
    force = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, force.set)
    started = time.monotonic()
    report = await drain(turns, deadline_s=60, force=force, snapshot_all=turns.snapshot_all)
    assert time.monotonic() - started < 10
    assert report.forced and report.interrupted == ["long"]
    note = turns.notes["long"]
    assert note is not None and "second time" in note
    assert turns.snapshots == []


async def test_a_drain_with_nothing_running_only_snapshots() -> None:
    turns = FakeTurns()
    report = await drain(turns, deadline_s=30, force=asyncio.Event(), snapshot_all=turns.snapshot_all)
    assert (report.finished, report.interrupted, report.forced) == ([], [], False)
    assert len(turns.snapshots) == 1


async def test_without_a_snapshot_hook_the_drain_still_completes() -> None:
    turns = FakeTurns()
    turns.start("a")
    report = await drain(turns, deadline_s=0.01, force=asyncio.Event(), snapshot_all=None)
    assert report.interrupted == ["a"] and report.snapshots == {}
