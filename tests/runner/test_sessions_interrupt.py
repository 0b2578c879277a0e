"""Interrupting a turn (`runner.sessions.SessionManager`), whenever the interrupt comes.

The CLI is a fake at the far edge that behaves like the real one where it matters: an
interrupt that arrives before it has begun a turn is dropped. The terminal `done` must say
`interrupted` exactly when the turn was stopped, and agree with the `turn_complete` before it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from protocol import events
from protocol.commands import AgentRef, CreateSession, SendTurn
from runner.bridge import AgentOptions
from runner.sessions import Claim, SessionManager


class FakeCli:
    """A conversation whose turn waits at `gate` before it begins, then streams until stopped."""

    def __init__(self) -> None:
        self.claude_session_id: str | None = "c-1"
        self.broken = False
        self.gate = asyncio.Event()  # the CLI begins the turn once this is set
        self.queried = asyncio.Event()
        self.finish = asyncio.Event()  # after its result, the turn returns once this is set
        self.finish.set()
        self.began = False
        self.stop = False
        self.queries: list[str] = []
        self.interrupts = 0

    async def interrupt(self) -> None:
        self.interrupts += 1
        if self.began:  # like the real CLI: before a turn has begun, an interrupt is lost
            self.stop = True

    async def turn(self, content: str, model: str | None = None) -> AsyncIterator[tuple[type, dict[str, Any]]]:
        self.queries.append(content)
        self.queried.set()
        await self.gate.wait()
        self.began = True
        for i in range(200):
            yield events.TextDelta, {"delta": f"{i} "}
            if self.stop:
                yield events.TurnComplete, {"is_error": True}
                break
            await asyncio.sleep(0)
        else:
            yield events.TurnComplete, {"result": "all of it"}
        await self.finish.wait()
        self.began = False

    async def close(self) -> None:
        pass


class FakeSandbox:
    workspace = "/workspace"

    class cgroup:  # noqa: N801 - the attribute the sessions read
        @staticmethod
        def oom_kills() -> int:
            return 0

    def command(self, argv_inside: list[str]) -> list[str]:
        return argv_inside

    async def close(self) -> None:
        pass


class Log:
    """The session's event log, as the publisher's `emit` sees it."""

    def __init__(self) -> None:
        self.events: list[events.Event] = []
        self.done = asyncio.Event()
        self.seq = 0

    async def emit(self, cls: type[events.Event], turn_id: str, **fields: Any) -> events.Event:
        self.seq += 1
        ev = cls(session_id="s1", turn_id=turn_id, seq=self.seq, **fields)
        self.events.append(ev)
        if isinstance(ev, events.Done):
            self.done.set()
            await asyncio.sleep(0)  # the publisher waits for the ack of a done
        return ev

    def types(self) -> list[type]:
        return [type(e) for e in self.events]


async def manager(cli: FakeCli, log: Log) -> SessionManager:
    async def acquire(cmd: CreateSession) -> Claim:
        options = AgentOptions(host_cli="cli", cli_inside="cli", workspace="/workspace")
        return Claim(sandbox=FakeSandbox(), conversation=cli, options=options,  # type: ignore[arg-type]
                     release=_nothing)

    async def make_publisher(session_id: str, fresh: bool) -> Log:
        return log

    mgr = SessionManager(runner_id="r1", max_sessions=4, turn_timeout_s=60, acquire=acquire,
                         make_publisher=make_publisher)  # type: ignore[arg-type]
    await mgr.create(CreateSession(session_id="s1", agent=AgentRef(name="a", digest="d")))
    return mgr


async def _nothing() -> None:
    pass


def send(mgr: SessionManager, text: str = "hello") -> None:
    mgr.start_turn(SendTurn(session_id="s1", turn_id="t1", content=text))


async def test_an_interrupt_before_the_turn_reaches_the_cli_means_it_never_starts() -> None:
    cli, log = FakeCli(), Log()
    mgr = await manager(cli, log)
    cli.gate.set()
    send(mgr)
    assert await mgr.interrupt("s1")
    await asyncio.wait_for(log.done.wait(), 10)
    assert cli.queries == []
    assert log.types() == [events.SessionStart, events.UserMessage, events.Done]
    assert log.events[-1].reason == "interrupted"  # type: ignore[union-attr]
    await mgr.close()


async def test_an_interrupt_the_cli_dropped_is_said_again_once_the_turn_begins() -> None:
    cli, log = FakeCli(), Log()
    mgr = await manager(cli, log)
    send(mgr)
    await asyncio.wait_for(cli.queried.wait(), 10)
    assert await mgr.interrupt("s1")  # the CLI has the prompt but has not begun: lost
    assert not cli.stop
    cli.gate.set()
    await asyncio.wait_for(log.done.wait(), 10)
    complete = [e for e in log.events if isinstance(e, events.TurnComplete)]
    assert [c.is_error for c in complete] == [True]
    assert len([e for e in log.events if isinstance(e, events.TextDelta)]) < 200
    assert log.events[-1].reason == "interrupted"  # type: ignore[union-attr]
    assert cli.interrupts == 2
    await mgr.close()


async def test_a_turn_that_completed_before_the_interrupt_took_says_completed() -> None:
    cli, log = FakeCli(), Log()
    mgr = await manager(cli, log)
    cli.finish.clear()
    cli.gate.set()
    send(mgr)
    while not any(isinstance(e, events.TurnComplete) for e in log.events):
        await asyncio.sleep(0)  # let the fake turn run to its result (no timers involved)
    assert await mgr.interrupt("s1")  # the result is out; the turn has not returned yet
    cli.finish.set()
    await asyncio.wait_for(log.done.wait(), 10)
    complete = [e for e in log.events if isinstance(e, events.TurnComplete)]
    assert [c.is_error for c in complete] == [False]
    assert log.events[-1].reason == "completed"  # type: ignore[union-attr]
    # And the session takes the next turn normally.
    log.done.clear()
    mgr.start_turn(SendTurn(session_id="s1", turn_id="t2", content="again"))
    await asyncio.wait_for(log.done.wait(), 10)
    assert log.events[-1].reason == "completed" and log.events[-1].turn_id == "t2"  # type: ignore[union-attr]
    await mgr.close()


async def test_once_done_is_out_the_session_can_be_paused_and_sent_to_at_once() -> None:
    cli, log = FakeCli(), Log()
    mgr = await manager(cli, log)
    cli.gate.set()
    send(mgr)
    await asyncio.wait_for(log.done.wait(), 10)
    # What a client does as soon as it reads `done`: the turn's task has not quite returned
    # yet, and neither the pause nor the next message may be refused for it.
    assert "s1" in mgr.running_turns()
    await mgr.pause("s1")
    mgr.resume("s1")
    log.done.clear()
    mgr.start_turn(SendTurn(session_id="s1", turn_id="t2", content="again"))
    await asyncio.wait_for(log.done.wait(), 10)
    assert log.events[-1].reason == "completed" and log.events[-1].turn_id == "t2"  # type: ignore[union-attr]
    assert not await mgr.interrupt("s1")  # and nothing runs once it is over
    await mgr.close()
