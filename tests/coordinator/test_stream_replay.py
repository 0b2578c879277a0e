"""Where a replay starts: the search over a session's events in the shared stream
(`coordinator.api.stream.last_where`), against an in-memory stream of several sessions."""

from __future__ import annotations

import random

import pytest

from coordinator.api.stream import Located, last_where
from protocol import events


class FakeLog:
    """Stream sequences 1..n, some holding events of session "s", the rest other sessions'."""

    def __init__(self, positions: list[int], turns: list[str] | None = None) -> None:
        self.positions = positions  # stream seq of the session's event with seq i+1
        self.turns = turns or ["t"] * len(positions)
        self.probes = 0

    def event(self, i: int) -> Located:
        ev = events.TextDelta(session_id="s", turn_id=self.turns[i], seq=i + 1, delta="x")
        return self.positions[i], ev

    def last(self) -> Located:
        return self.event(len(self.positions) - 1)

    async def probe(self, stream_seq: int) -> Located | None:
        self.probes += 1
        for i, pos in enumerate(self.positions):
            if pos >= stream_seq:
                return self.event(i)
        return None


def spread(n: int, total: int, seed: int) -> list[int]:
    """n positions among 1..total, sorted, as interleaving with other sessions leaves them."""
    return sorted(random.Random(seed).sample(range(1, total + 1), n))


@pytest.mark.parametrize("seed", range(20))
async def test_finds_the_event_at_the_cut_for_every_cut(seed: int) -> None:
    log = FakeLog(spread(40, 400, seed))
    for after in range(0, 41):
        found = await last_where(log.probe, log.last(), lambda ev, a=after: ev.seq <= a)  # type: ignore[misc]
        if after == 0:
            assert found is None
        else:
            assert found is not None and found[1].seq == after
            assert found[0] == log.positions[after - 1]


async def test_a_recent_cut_costs_few_probes_however_long_the_stream() -> None:
    # A million messages in the stream; the session's events are every 10th of the last 1000.
    positions = list(range(999_001, 1_000_001, 10))
    log = FakeLog(positions)
    n = len(positions)
    found = await last_where(log.probe, log.last(), lambda ev: ev.seq <= n - 5)
    assert found is not None and found[1].seq == n - 5
    assert log.probes <= 14, log.probes  # ~2*log2(distance), not log2(1e6) + the replay
    log.probes = 0
    found = await last_where(log.probe, log.last(), lambda ev: ev.seq <= 1)
    assert found is not None and found[1].seq == 1
    assert log.probes <= 2 * 20 + 2


async def test_the_last_event_itself_needs_no_probe() -> None:
    log = FakeLog([3, 5, 9])
    found = await last_where(log.probe, log.last(), lambda ev: ev.seq <= 7)
    assert found == log.last() and log.probes == 0


async def test_the_start_of_the_running_turn() -> None:
    # Turns a (4 events), b (3), c (running, 5): the last event not of turn c is b's last.
    turns = ["a"] * 4 + ["b"] * 3 + ["c"] * 5
    log = FakeLog(spread(len(turns), 200, 7), turns)
    found = await last_where(log.probe, log.last(), lambda ev: ev.turn_id != "c")
    assert found is not None and found[1].seq == 7 and found[1].turn_id == "b"
    only = FakeLog([4, 8], ["c", "c"])
    assert await last_where(only.probe, only.last(), lambda ev: ev.turn_id != "c") is None


async def test_a_probe_that_finds_nothing_only_moves_the_start_earlier() -> None:
    # A replica behind the leader answers "nothing" beyond what it has; the answer must
    # still be an event at or before the cut, never after it.
    log = FakeLog(spread(30, 300, 3))
    behind = log.positions[20]

    async def lagging(stream_seq: int) -> Located | None:
        return None if stream_seq > behind else await log.probe(stream_seq)

    for after in range(1, 31):
        found = await last_where(lagging, log.last(), lambda ev, a=after: ev.seq <= a)  # type: ignore[misc]
        if after < 30:
            assert found is not None and found[1].seq <= after
        if after <= 21:
            assert found is not None and found[1].seq == after
