"""The session manager's pause, resume and snapshots, with fakes for the sandbox, the CLI and
the store (the e2e tests run the same code against real bwrap, cgroups, CLI and NATS)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from protocol import events
from protocol.commands import AgentRef, CreateSession, SendTurn
from protocol.errors import ErrorCode, ErrorInfo
from protocol.snapshots import SnapshotManifest
from runner.autosave import SavePolicy
from runner.bridge import AgentOptions
from runner.sessions import Claim, SessionError, SessionManager
from runner.snapshots import SnapshotError, SnapshotSuperseded

FAST = SavePolicy(quiet_s=0.02, max_delay_s=0.2, min_interval_s=0.02, retry_s=0.02)


@dataclass
class FakeCgroup:
    frozen: bool = False
    log: list[str] = field(default_factory=list)

    def oom_kills(self) -> int:
        return 0

    def freeze(self) -> None:
        self.frozen = True
        self.log.append("freeze")

    def thaw(self) -> None:
        self.frozen = False
        self.log.append("thaw")


@dataclass
class FakeSandbox:
    cgroup: FakeCgroup = field(default_factory=FakeCgroup)
    workspace: str = "/disk/workspace"

    def command(self, argv_inside: list[str]) -> list[str]:
        return argv_inside

    async def close(self) -> None: ...


class FakeConversation:
    def __init__(self, claude_id: str | None = None) -> None:
        self.claude_session_id = claude_id
        self.broken = False
        self.gate: asyncio.Event | None = None
        self.closed_while_frozen: bool | None = None
        self.cgroup: FakeCgroup | None = None

    async def turn(self, content: str, model: str | None = None) -> AsyncIterator[Any]:
        if self.gate is not None:
            await self.gate.wait()
        self.claude_session_id = self.claude_session_id or "claude-1"
        yield events.TextDelta, {"delta": f"echo {content}"}

    async def interrupt(self) -> None:
        if self.gate is not None:
            self.gate.set()

    async def close(self) -> None:
        if self.cgroup is not None:
            self.closed_while_frozen = self.cgroup.frozen


class FakePublisher:
    def __init__(self) -> None:
        self.seq = 0
        self.events: list[events.Event] = []

    async def emit(self, cls: type[events.Event], turn_id: str, **fields: Any) -> events.Event:
        self.seq += 1
        ev = cls(session_id="s1", turn_id=turn_id, seq=self.seq, **fields)
        self.events.append(ev)
        return ev


class FakeTaker:
    def __init__(self) -> None:
        self.taken: list[tuple[str, str, str | None]] = []  # (session, reason, claude id)
        self.fail: Exception | None = None
        self.frozen_when_taken: list[bool] = []
        self.cgroup: FakeCgroup | None = None

    async def take(self, session_id: str, workspace: str, *, claude_session_id: str | None,
                   writer: str, expect_writer: str | None, reason: str) -> SnapshotManifest:
        if self.fail is not None:
            raise self.fail
        if self.cgroup is not None:
            self.frozen_when_taken.append(self.cgroup.frozen)
        self.taken.append((session_id, reason, claude_session_id))
        return SnapshotManifest(session_id=session_id, claude_session_id=claude_session_id,
                                sha256=str(len(self.taken)), size=1, taken_at=0.0, runner_id="r1",
                                writer=writer, reason=reason)


@dataclass
class Rig:
    manager: SessionManager
    taker: FakeTaker
    sandbox: FakeSandbox
    conversation: FakeConversation
    publishers: dict[str, FakePublisher]
    released: list[str]


def make_rig(notice: ErrorInfo | None = None, restored: SnapshotManifest | None = None) -> Rig:
    taker, sandbox, conversation = FakeTaker(), FakeSandbox(), FakeConversation()
    taker.cgroup = conversation.cgroup = sandbox.cgroup
    publishers: dict[str, FakePublisher] = {}
    released: list[str] = []

    async def acquire(cmd: CreateSession) -> Claim:
        async def release() -> None:
            released.append(cmd.session_id)

        return Claim(sandbox=sandbox, conversation=conversation,  # type: ignore[arg-type]
                     options=AgentOptions(host_cli="cli", cli_inside="cli", workspace="/w"),
                     release=release, notice=notice, restored=restored)

    async def make_publisher(session_id: str, fresh: bool) -> FakePublisher:
        return publishers.setdefault(session_id, FakePublisher())

    manager = SessionManager(runner_id="r1", max_sessions=4, turn_timeout_s=30, acquire=acquire,
                             make_publisher=make_publisher,  # type: ignore[arg-type]
                             snapshots=taker, save_policy=FAST)
    return Rig(manager, taker, sandbox, conversation, publishers, released)


CREATE = CreateSession(session_id="s1", agent=AgentRef(name="a", digest="d"))


async def run_turn(rig: Rig, content: str = "hi") -> list[events.Event]:
    pub = rig.publishers["s1"]
    before = len(pub.events)
    rig.manager.start_turn(SendTurn(session_id="s1", turn_id=f"t{before}", content=content))
    session = rig.manager.get("s1")
    assert session.turn is not None
    await session.turn
    return pub.events[before:]


async def test_pause_freezes_then_snapshots_and_resume_thaws() -> None:
    rig = make_rig()
    await rig.manager.create(CREATE)
    await run_turn(rig)
    manifest = await rig.manager.pause("s1")
    assert manifest is not None and manifest.reason == "pause"
    assert rig.sandbox.cgroup.frozen and rig.taker.frozen_when_taken[-1]  # consistent: frozen
    assert rig.taker.taken[-1] == ("s1", "pause", "claude-1")
    # Pausing again changes nothing and snapshots nothing new.
    assert await rig.manager.pause("s1") == manifest
    assert rig.sandbox.cgroup.log == ["freeze"]
    rig.manager.resume("s1")
    assert not rig.sandbox.cgroup.frozen and rig.sandbox.cgroup.log == ["freeze", "thaw"]
    rig.manager.resume("s1")  # not paused: nothing to do
    assert rig.sandbox.cgroup.log == ["freeze", "thaw"]
    with pytest.raises(SessionError) as e:
        rig.manager.resume("elsewhere")
    assert e.value.info.code == ErrorCode.not_found  # the coordinator then resumes cold


async def test_pause_is_refused_while_a_turn_runs() -> None:
    rig = make_rig()
    await rig.manager.create(CREATE)
    rig.conversation.gate = asyncio.Event()
    rig.manager.start_turn(SendTurn(session_id="s1", turn_id="t1", content="slow"))
    await asyncio.sleep(0.01)
    with pytest.raises(SessionError) as e:
        await rig.manager.pause("s1")
    assert e.value.info.code == ErrorCode.conflict and "turn is running" in e.value.info.message
    with pytest.raises(SessionError):
        await rig.manager.snapshot("s1")
    assert not rig.sandbox.cgroup.frozen and rig.taker.taken == []
    # The drain snapshots anyway.
    assert await rig.manager.snapshot("s1", "drain", during_turn=True) is not None
    rig.conversation.gate.set()
    session = rig.manager.get("s1")
    assert session.turn is not None
    await session.turn


async def test_a_pause_whose_snapshot_fails_is_undone() -> None:
    rig = make_rig()
    await rig.manager.create(CREATE)
    await run_turn(rig)
    rig.taker.fail = SnapshotError("object store unavailable")
    with pytest.raises(SessionError) as e:
        await rig.manager.pause("s1")
    assert e.value.info.code == ErrorCode.sandbox_failed and e.value.info.retryable
    assert not rig.sandbox.cgroup.frozen and not rig.manager.get("s1").frozen
    rig.taker.fail = SnapshotSuperseded("taken over elsewhere")
    with pytest.raises(SessionError) as e:
        await rig.manager.pause("s1")
    assert e.value.info.code == ErrorCode.conflict


async def test_a_turn_on_a_frozen_session_thaws_it_first() -> None:
    rig = make_rig()
    await rig.manager.create(CREATE)
    await rig.manager.pause("s1")
    evs = await run_turn(rig, "after pause")
    assert not rig.sandbox.cgroup.frozen
    assert [type(e) for e in evs][-1] is events.Done and evs[-1].reason == "completed"  # type: ignore[attr-defined]


async def test_each_turn_is_snapshotted_after_the_debounce() -> None:
    rig = make_rig()
    await rig.manager.create(CREATE)
    await run_turn(rig, "one")
    await run_turn(rig, "two")  # within the debounce of the first: one snapshot for both
    async with asyncio.timeout(5):
        while not rig.taker.taken:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    assert rig.taker.taken == [("s1", "turn", "claude-1")]
    rig.manager.touch("s1")  # the files API changed something
    async with asyncio.timeout(5):
        while len(rig.taker.taken) < 2:
            await asyncio.sleep(0.01)
    rig.manager.touch("nobody")  # ignored


async def test_a_session_restored_without_its_conversation_says_so_at_its_next_turn() -> None:
    notice = ErrorInfo(code=ErrorCode.conversation_not_restored, message="lost c-1")
    rig = make_rig(notice=notice)
    await rig.manager.create(CREATE)
    first = await run_turn(rig)
    kinds = [type(e).__name__ for e in first]
    assert kinds[:3] == ["SessionStart", "UserMessage", "Error"]
    assert first[2].error == notice  # type: ignore[attr-defined]
    assert first[-1].reason == "completed"  # type: ignore[attr-defined]
    second = await run_turn(rig)
    assert not any(isinstance(e, events.Error) for e in second)


async def test_a_restored_session_does_not_snapshot_again_until_something_changes() -> None:
    restored = SnapshotManifest(session_id="s1", claude_session_id="c-1", sha256="x", size=1,
                                taken_at=0.0, runner_id="r0", writer="claimed", reason="claim")
    rig = make_rig(restored=restored)
    session = await rig.manager.create(CREATE)
    assert session.snapshot_owner == "claimed"
    assert await rig.manager.pause("s1") == restored
    assert rig.taker.taken == []


async def test_shutdown_snapshots_changed_sessions_and_thaws_frozen_ones_before_closing() -> None:
    rig = make_rig()
    await rig.manager.create(CREATE)
    await run_turn(rig)
    rig.taker.taken.clear()
    result = await rig.manager.snapshot_all(timeout_s=5)
    assert isinstance(result["s1"], SnapshotManifest) and result["s1"].reason == "drain"
    assert await rig.manager.snapshot_all(timeout_s=5) == result  # nothing new: no new snapshot
    assert [t[1] for t in rig.taker.taken] == ["drain"]
    rig.manager.touch("s1")
    await rig.manager.pause("s1")
    rig.manager.get("s1").autosave.touch()  # type: ignore[union-attr]
    await rig.manager.close()
    assert [t[1] for t in rig.taker.taken] == ["drain", "pause", "evict"]
    assert rig.conversation.closed_while_frozen is False
    assert rig.released == ["s1"]


async def test_evict_snapshots_then_releases_and_the_session_is_gone_from_here() -> None:
    rig = make_rig()
    await rig.manager.create(CREATE)
    await run_turn(rig)
    manifest = await rig.manager.evict("s1")
    assert manifest is not None and manifest.reason == "evict"
    assert rig.released == ["s1"]
    with pytest.raises(SessionError):
        rig.manager.get("s1")
