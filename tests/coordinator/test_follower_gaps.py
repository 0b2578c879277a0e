"""The follower against a real nats-server: events stored out of order (a republished event
after later ones) reach the client in seq order, once each; a gap never filled is given up on
after the wait, and the stream goes on. A live follower (a plain subscription, for a turn
about to start) that misses events reads them from the log and goes on from there."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from ash.embedded_nats import start_nats
from coordinator.api.stream import LIVE_CHECK_MIN_S, EventLog, Follower
from protocol import codec, events, subjects
from protocol.jetstream import ensure_layout


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp: Path = tmp_path_factory.mktemp("nats")
    server = start_nats(tmp / "nats", log_path=tmp / "nats.log")
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Any]:
    """A connection to the server, its event stream and buckets in place."""
    conn = await nats.connect(nats_url)
    await ensure_layout(conn.jetstream())
    try:
        yield conn
    finally:
        await conn.close()


async def publish(js: object, session_id: str, seqs: list[int]) -> None:
    for seq in seqs:
        ev = events.TextDelta(session_id=session_id, turn_id="t", seq=seq, delta=str(seq))
        await js.publish(subjects.session_events(session_id), codec.encode(ev))  # type: ignore[attr-defined]


async def read(follower: Follower, n: int, timeout: float = 5.0) -> list[int]:
    got = []
    for _ in range(n):
        d = await follower.next(timeout)
        assert d is not None, f"only {got}"
        got.append(d.event.seq)
    return got


async def test_a_republished_event_is_put_back_in_order(nc: Any) -> None:
    js = nc.jetstream()
    await publish(js, "gap1", [1, 2])
    start = await EventLog(js, "gap1").locate(0)
    async with Follower(js, "gap1", start) as follower:
        assert await read(follower, 2) == [1, 2]
        # 3 and 4 were lost, 5..7 stored; then 3 and 4 republished, and 5 again (a duplicate).
        await publish(js, "gap1", [5, 6, 7, 3, 4, 5, 8])
        assert await read(follower, 6) == [3, 4, 5, 6, 7, 8]
        assert await follower.next(0.2) is None
    # A replay from the start reads the log in the same order.
    async with Follower(js, "gap1", await EventLog(js, "gap1").locate(0)) as follower:
        assert await read(follower, 8) == list(range(1, 9))


async def test_a_gap_never_filled_is_given_up_after_the_wait(nc: Any) -> None:
    js = nc.jetstream()
    await publish(js, "gap2", [1])
    start = await EventLog(js, "gap2").locate(0)
    async with Follower(js, "gap2", start, gap_wait_s=0.3) as follower:
        assert await read(follower, 1) == [1]
        await publish(js, "gap2", [3, 4])  # 2 never comes
        assert await read(follower, 2) == [3, 4]
        await publish(js, "gap2", [2, 5])  # too late for this stream: not passed on
        assert await read(follower, 1) == [5]


async def test_a_live_follower_reads_the_turn_from_its_subscription(nc: Any) -> None:
    js = nc.jetstream()
    await publish(js, "live1", [1, 2])  # an earlier turn
    async with Follower(js, "live1", None, nc=nc) as follower:
        follower.begin_after(2)
        await publish(js, "live1", [3, 4, 5])
        assert await read(follower, 3) == [3, 4, 5]
        assert follower.live
        assert follower.ready() is False
        assert await follower.next(0.2) is None


async def test_a_live_follower_that_missed_an_event_reads_it_from_the_log(nc: Any) -> None:
    js = nc.jetstream()
    # Seq 1 is stored before the subscription exists: the live source never sees it, as if
    # NATS had dropped it for a slow subscriber.
    await publish(js, "live2", [1])
    async with Follower(js, "live2", None, nc=nc, live_gap_s=0.2) as follower:
        follower.begin_after(0)
        await publish(js, "live2", [2, 3])
        assert await read(follower, 3) == [1, 2, 3]
        assert not follower.live  # it fell back to the log, and goes on from there
        await publish(js, "live2", [4])
        assert await read(follower, 1) == [4]


async def test_a_quiet_live_follower_finds_a_missed_last_event_in_the_log(nc: Any) -> None:
    js = nc.jetstream()
    await publish(js, "live3", [1, 2])  # 2 is the missed one: nothing comes after it
    async with Follower(js, "live3", None, nc=nc) as follower:
        follower.begin_after(1)
        assert await read(follower, 1, timeout=LIVE_CHECK_MIN_S) == [2]
        assert not follower.live
