"""A fleet on one machine, each process on a host of its own: placement, a partitioned runner,
a dead coordinator.

Real processes throughout (tests/fleet/harness.py): nats-server, two coordinators on one SQLite
file, three runners running the real bundled Claude Code CLI in bwrap sandboxes, and the
scripted Messages API, the only fake, on a host of its own; each in its own network namespace
with its own address on one bridge, so a host can be cut off the network (its link down)
while its processes go on, as in a real partition. The test process is a client on the bridge.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable

import aiohttp
import pytest

from tests.e2e.sse import Frame, text_of
from tests.fleet.conftest import COORDINATOR_ENV, Client
from tests.fleet.harness import RUNNERS, Fleet

pytestmark = pytest.mark.e2e

# What coordinator/placement.py says (pack, the best runner always: COORDINATOR_ENV): the fullest
# runner that still fits, ties by id. Three equal, empty runners of 3 session slots each (memory
# and CPU commitments stay far below their over-commit room, so slots are the largest share):
# r1 fills first, then r2. Under `spread` it would be r1, r2, r3, r1.
POLICY_PLACES = ["r1", "r1", "r1", "r2"]
SLOW = " ".join(["and then the fleet went on with its long story"] * 6)


async def frames_until(resp: aiohttp.ClientResponse, stop: Callable[[Frame], bool]) -> list[Frame]:
    """Frames of an open SSE response until `stop(frame)` holds, or the stream ends or breaks
    (a coordinator killed mid-stream); a frame cut off half-way is not one."""
    out: list[Frame] = []
    fields: dict[str, str] = {}
    try:
        async for raw in resp.content:
            line = raw.decode().rstrip("\r\n")
            if line.startswith(":"):
                continue
            if not line:
                if fields:
                    out.append(Frame(int(fields["id"]), fields["event"],
                                     json.loads(fields["data"])))  # fmt: skip
                    fields = {}
                    if stop(out[-1]):
                        return out
                continue
            key, _, value = line.partition(": ")
            fields[key] = value
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
        pass
    return out


def nth(event: str, n: int) -> Callable[[Frame], bool]:
    seen = [0]

    def stop(f: Frame) -> bool:
        seen[0] += f.event == event
        return seen[0] == n

    return stop


async def test_sessions_land_where_the_placement_policy_says(
    fleet: Fleet, client: Client
) -> None:
    async def empty() -> bool:
        ads = [await client.advert(r) for r in RUNNERS]
        return all(a is not None and a[0].sessions == 0 for a in ads)

    await client.until("every runner advertised with no session", empty)
    placed: list[str] = []
    sessions: list[str] = []
    try:
        for i in range(len(POLICY_PLACES)):
            session = await client.create(("c1", "c2")[i % 2])  # both place by the same rules
            sid, runner = session["id"], session["runner_id"]
            sessions.append(sid)
            placed.append(runner)
            # Before the next: the runner has advertised the session, then advertised once
            # more, so both coordinators' views of the registry (a watch of it) have it.

            async def listed(runner: str = runner, sid: str = sid) -> int:
                got = await client.advert(runner)
                return got[1] if got is not None and sid in (got[0].activity or {}) else 0

            revision = await client.until("the runner's advert lists the session", listed)

            async def newer(runner: str = runner, rev: int = revision) -> bool:
                got = await client.advert(runner)
                return got is not None and got[1] > rev

            await client.until("the runner advertised again", newer)
        print(f"\nplacement ({COORDINATOR_ENV}): {placed}")
        assert placed == POLICY_PLACES
    finally:
        for sid in sessions:
            await client.end("c1", sid)


async def test_a_runner_cut_off_mid_turn_leaves_its_session_resumable_elsewhere_intact(
    fleet: Fleet, client: Client
) -> None:
    word = "osprey" + uuid.uuid4().hex[:6]
    session = await client.create("c1")
    sid, home = session["id"], session["runner_id"]
    first = await client.turn("c1", sid, f"Remember the word {word}")
    assert text_of(first) == f"I will remember the word {word}."
    done = time.time()

    async def snapshotted() -> bool:
        snap = await client.snapshot(sid)
        return snap is not None and snap.taken_at > done

    await client.until("a snapshot after turn 1", snapshotted, timeout=30)
    claude_id = (await client.get("c1", sid))["claude_session_id"]
    assert claude_id

    try:
        async with client.http.post(f"{fleet.url('c2')}/api/sessions/{sid}/messages",
                                    json={"content": f"sleep:60 {SLOW}"}) as r:  # fmt: skip
            head = await frames_until(r, nth("text_delta", 1))
            assert head[-1].event == "text_delta", head
            fleet.lab.link_down(home)
            cut = time.monotonic()

            async def paused() -> bool:
                return (await client.get("c1", sid))["status"] == "paused"

            await client.until("the session paused", paused)
            took = time.monotonic() - cut
            print(f"\nlink cut -> session paused: {took:.2f} s (runner {home})")
            # The stream following turn 2 ends too: the log says the runner was lost.
            async with asyncio.timeout(60):
                tail = await frames_until(r, lambda f: False)
        turn = head + tail
        assert [f.id for f in turn] == list(range(turn[0].id, turn[0].id + len(turn)))
        assert turn[-1].event == "done" and turn[-1].data["reason"] == "error"
        (error,) = [f.data["error"] for f in turn if f.event == "error"]
        assert error["code"] == "runner_lost" and error["retryable"]
        view = await client.get("c2", sid)
        assert view["status"] == "paused" and view["runner_id"] is None

        # A message resumes it, on another runner, in the same conversation.
        second = await client.turn("c2", sid, "What was the word?")
        assert text_of(second) == f"The word was {word}."
        start = second[0].data
        assert start["runner_id"] in RUNNERS and start["runner_id"] != home
        assert start["claude_session_id"] == claude_id
        assert second[0].id == turn[-1].id + 1  # one event log across both runners
        resumed = await client.get("c1", sid)
        assert resumed["status"] == "active" and resumed["runner_id"] == start["runner_id"]
        # The request that answered it carried turn 1: the transcript came back with the snapshot.
        recall = client.conversation_requests("What was the word?")
        assert recall, "the model never received the question"
        assert f"Remember the word {word}" in json.dumps(recall[-1]["body"]["messages"])
    finally:
        fleet.lab.link_up(home)

    # Healed: the cut-off runner comes back, gives up its stale sandbox of the session, and
    # writes nothing more into the session's log.
    async def let_go() -> bool:
        got = await client.advert(home)
        return got is not None and sid not in (got[0].activity or {})

    await client.until("the runner let go of the moved session", let_go)
    again = await client.turn("c1", sid, "What was the word?")
    assert again[0].id == second[-1].id + 1 and text_of(again) == f"The word was {word}."
    await client.end("c1", sid)


async def test_a_client_re_attaches_through_the_other_coordinator_when_its_own_dies(
    fleet: Fleet, client: Client
) -> None:
    sid = (await client.create("c2"))["id"]
    async with client.http.post(f"{fleet.url('c1')}/api/sessions/{sid}/messages",
                                json={"content": f"sleep:8 {SLOW}"}) as r:  # fmt: skip
        assert r.status == 200, await r.text()
        start = int(r.headers["Ash-Turn-After"])
        before = await frames_until(r, nth("text_delta", 3))
        fleet.kill("c1")
        before += await frames_until(r, lambda f: False)  # what was in flight; then it breaks
    assert before and before[-1].event != "done"  # the client lost its stream mid-turn
    rest = await client.events_after("c2", sid, before[-1].id)
    full = await client.events_after("c2", sid, start)

    seqs = [f.id for f in before + rest]
    assert seqs == list(range(start + 1, rest[-1].id + 1))  # from the first, no gap, no repeat
    assert rest[-1].event == "done" and rest[-1].data["reason"] == "completed"
    assert [f.data for f in before + rest] == [f.data for f in full]
    assert "text_delta" in {f.event for f in rest}
    await client.end("c2", sid)
