"""The runner's heartbeat stops and leaves the registry on close, even when the close's cancel
lands just as an advert's put gets its answer.

That case hung runners on SIGTERM: nats-py waits for a put's answer with `asyncio.wait_for`,
which on Python 3.11 returns an answer that arrives together with a cancel and drops the
cancel (measured against a real nats-server: about 2 in 100 puts cancelled mid-flight returned
normally). A heartbeat loop that only stopped when cancelled then beat on forever, and `close()`
waited for it forever. The KV store is faked (the far edge) to make that timing certain.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from protocol.runners import RunnerAdvert
from runner.heartbeat import Heartbeat

DEADLINE_S = 10.0


class AnsweringKv:
    """A KV store that records puts and deletes; `with_answer` runs as a put's answer comes."""

    def __init__(self) -> None:
        self.ops: list[tuple[str, str]] = []
        self.with_answer: Callable[[], None] | None = None

    async def put(self, key: str, value: bytes) -> int:
        self.ops.append(("put", key))
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[None] = loop.create_future()
        loop.call_soon(self._answer, answer)
        try:
            await answer
        except asyncio.CancelledError:
            if not answer.done():
                raise
            # As nats-py's put on Python 3.11: an answer that came with the cancel is returned,
            # and the cancel is dropped.
        return len(self.ops)

    def _answer(self, answer: asyncio.Future[None]) -> None:
        hook, self.with_answer = self.with_answer, None
        if hook is not None:
            hook()
        answer.set_result(None)

    async def delete(self, key: str) -> bool:
        self.ops.append(("delete", key))
        return True


def advert() -> RunnerAdvert:
    return RunnerAdvert(runner_id="r1", version="0", started_at=0.0, sessions=0, max_sessions=1,
                        cli="standin", ts=time.time())


def heartbeat_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "heartbeat" and not t.done()]


async def stop_leftovers() -> None:
    """Cancel heartbeat loops a failed test left running until they end (each cancel may be
    dropped like the one under test), so that the test's event loop can close."""
    deadline = time.monotonic() + DEADLINE_S
    while (left := heartbeat_tasks()) and time.monotonic() < deadline:
        for t in left:
            t.cancel()
        await asyncio.wait(left, timeout=0.1)


async def test_close_stops_beating_and_leaves_the_registry() -> None:
    kv = AnsweringKv()
    hb = Heartbeat(kv, "r1", advert, interval_s=0.01)
    await hb.start()
    await asyncio.wait_for(hb.close(), DEADLINE_S)
    assert kv.ops[-1] == ("delete", "r1")
    assert heartbeat_tasks() == []


async def test_close_as_an_advert_is_answered_still_stops_and_leaves_the_registry() -> None:
    kv = AnsweringKv()
    hb = Heartbeat(kv, "r1", advert, interval_s=0.001)
    await hb.start()  # advertised once; the loop beats every millisecond from here
    closing: list[asyncio.Task[None]] = []
    kv.with_answer = lambda: closing.append(asyncio.ensure_future(hb.close()))
    deadline = time.monotonic() + DEADLINE_S
    while not closing:  # the loop's next put (a condition, polled until its deadline)
        assert time.monotonic() < deadline, "the heartbeat loop never put an advert"
        await asyncio.sleep(0.001)
    try:
        done, _ = await asyncio.wait(closing, timeout=DEADLINE_S)
        puts = sum(op == "put" for op, _ in kv.ops)
        assert done, f"close() still waits: the loop went on beating ({puts} puts so far)"
    finally:
        await stop_leftovers()
    closing[0].result()
    assert kv.ops[-1] == ("delete", "r1"), kv.ops[-3:]
    assert heartbeat_tasks() == []
