"""When sessions are snapshotted: the debounce as a table of (state, now), and AutoSave's
background task coalescing bursts, holding off during turns, retrying, and stopping when its
snapshot was taken over."""

from __future__ import annotations

import asyncio

import pytest

from protocol.snapshots import SnapshotManifest
from runner.autosave import AutoSave, SavePolicy, SaveState, save_delay
from runner.snapshots import SnapshotError, SnapshotSuperseded

P = SavePolicy(quiet_s=2.0, max_delay_s=20.0, min_interval_s=5.0, retry_s=4.0)


@pytest.mark.parametrize(("state", "now", "delay"), [
    # Nothing changed: nothing due, however long ago the last snapshot was.
    (SaveState(), 100.0, None),
    (SaveState(last_saved=0.0), 1000.0, None),
    # A change: quiet_s after it.
    (SaveState(dirty_since=100.0, last_change=100.0), 100.5, 1.5),
    (SaveState(dirty_since=100.0, last_change=100.0), 103.0, 0.0),
    # A burst: each change pushes it back ...
    (SaveState(dirty_since=100.0, last_change=110.0), 110.0, 2.0),
    # ... but never past max_delay_s after the first unsaved change.
    (SaveState(dirty_since=100.0, last_change=119.5), 119.5, 0.5),
    (SaveState(dirty_since=100.0, last_change=125.0), 125.0, 0.0),
    # While a turn runs, nothing: its end is the change to wait for.
    (SaveState(dirty_since=100.0, last_change=100.0, busy=True), 500.0, None),
    # Not within min_interval_s of the last snapshot.
    (SaveState(dirty_since=101.0, last_change=101.0, last_saved=100.0), 103.0, 2.0),
    (SaveState(dirty_since=101.0, last_change=101.0, last_saved=90.0), 103.0, 0.0),
    # After failures: retry_s, doubling, capped at max_delay_s.
    (SaveState(dirty_since=100.0, last_change=100.0, failures=1, failed_at=102.0), 102.0, 4.0),
    (SaveState(dirty_since=100.0, last_change=100.0, failures=2, failed_at=102.0), 102.0, 8.0),
    (SaveState(dirty_since=100.0, last_change=100.0, failures=9, failed_at=102.0), 102.0, 20.0),
])
def test_save_delay(state: SaveState, now: float, delay: float | None) -> None:
    assert save_delay(state, now, P) == delay


def manifest(n: int) -> SnapshotManifest:
    return SnapshotManifest(session_id="s1", sha256=str(n), size=n, taken_at=float(n),
                            runner_id="r1", writer="w")


class Saver:
    def __init__(self) -> None:
        self.reasons: list[str] = []
        self.fail: BaseException | None = None
        self.gate: asyncio.Event | None = None

    async def __call__(self, reason: str) -> SnapshotManifest:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        self.reasons.append(reason)
        return manifest(len(self.reasons))


FAST = SavePolicy(quiet_s=0.05, max_delay_s=0.5, min_interval_s=0.05, retry_s=0.05)


async def until(check: object, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():  # type: ignore[operator]
            await asyncio.sleep(0.01)


async def test_a_burst_of_changes_makes_one_snapshot_after_it() -> None:
    saver = Saver()
    auto = AutoSave(saver, FAST, name="s1")
    auto.start()
    try:
        for _ in range(10):
            auto.touch()
            await asyncio.sleep(0.01)  # inside quiet_s of the one before
        await until(lambda: saver.reasons)
        await asyncio.sleep(0.2)
        assert saver.reasons == ["turn"]
        assert auto.current and auto.last == manifest(1)
        # Asked for at once with nothing new: the latest, no new snapshot.
        assert await auto.save_now("pause") == manifest(1)
        assert saver.reasons == ["turn"]
        auto.touch()
        assert await auto.save_now("pause") == manifest(2)
    finally:
        await auto.close()


async def test_no_snapshot_while_a_turn_runs_one_after_it() -> None:
    saver = Saver()
    auto = AutoSave(saver, FAST, name="s1")
    auto.start()
    try:
        auto.touch()
        auto.set_busy(True)
        await asyncio.sleep(0.3)
        assert saver.reasons == []
        auto.set_busy(False)
        auto.touch()
        await until(lambda: saver.reasons == ["turn"])
    finally:
        await auto.close()


async def test_a_failed_snapshot_is_retried_and_a_superseded_one_stops_the_task() -> None:
    saver = Saver()
    saver.fail = SnapshotError("the bus is down")
    auto = AutoSave(saver, FAST, name="s1")
    auto.start()
    try:
        auto.touch()
        await until(lambda: auto.state.failures >= 2)
        saver.fail = None
        await until(lambda: saver.reasons == ["turn"])
        assert auto.state.failures == 0 and auto.current
        saver.fail = SnapshotSuperseded("taken over")
        auto.touch()
        await until(lambda: auto.superseded)
        with pytest.raises(SnapshotSuperseded):
            await auto.save_now("pause")
        assert auto._task is not None
        await until(lambda: auto._task is not None and auto._task.done())
    finally:
        await auto.close()


async def test_a_change_made_while_packing_stays_to_be_saved() -> None:
    saver = Saver()
    saver.gate = asyncio.Event()
    auto = AutoSave(saver, FAST, name="s1")  # not started: only save_now
    auto.touch()
    pending = asyncio.create_task(auto.save_now("pause"))
    await asyncio.sleep(0.05)
    auto.touch()  # lands while the snapshot is being taken
    saver.gate.set()
    assert await pending == manifest(1)
    assert not auto.current
    assert await auto.save_now("pause") == manifest(2)
    assert auto.current
