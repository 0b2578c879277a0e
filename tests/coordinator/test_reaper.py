"""The reaper's sweep with an injected clock: a real SQLite store, fakes for the runners'
adverts and the bus (the far edge: what runners would answer), and a real nats-server for the
event log it appends to when a runner is lost mid-turn."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import pytest

from ash.embedded_nats import NatsServer, start_nats
from coordinator.lifetimes import ColdPause, EndSandbox, Expire, IdlePause, Policy, Unstick
from coordinator.placement import Seen
from coordinator.reaper import EventLog, Reaper
from coordinator.store import Store, open_store
from protocol import codec, events, subjects
from protocol.commands import Accepted, Command, CommandReply, EndSession, PauseSession, Rejected
from protocol.errors import ErrorCode, ErrorInfo
from protocol.jetstream import ensure_layout
from protocol.runners import RunnerAdvert, SessionActivity

T0 = 1_700_000_000.0
TTL = 4.0
IDLE = 60.0


class FakeClock:
    """Wall and monotonic time that move only when the test says."""

    def __init__(self) -> None:
        self.wall, self.mono = T0, 1000.0

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, s: float) -> None:
        self.wall += s
        self.mono += s


@dataclass
class FakeRunners:
    """The registry as a coordinator's directory sees it: adverts and when they arrived."""

    clock: FakeClock
    ttl_s: float = TTL
    loaded: asyncio.Event = field(default_factory=asyncio.Event)
    seen: dict[str, Seen] = field(default_factory=dict)

    def advertise(self, runner_id: str, draining: bool = False, **sessions: SessionActivity) -> None:
        advert = RunnerAdvert(runner_id=runner_id, version="t", started_at=0, activity=sessions,
                              draining=draining)
        self.seen[runner_id] = Seen(advert, self.clock.monotonic())

    def snapshot(self) -> list[Seen]:
        return list(self.seen.values())


@dataclass
class FakeBus:
    """Runners' answers: Accepted unless told otherwise; records every command."""

    sent: list[tuple[str, Command]] = field(default_factory=list)
    answers: dict[type, CommandReply] = field(default_factory=dict)

    async def request(self, runner_id: str, command: Command, timeout_s: float) -> CommandReply:
        self.sent.append((runner_id, command))
        return self.answers.get(type(command), Accepted(runner_id=runner_id))


@dataclass
class FakeLog:
    ended: list[tuple[str, str]] = field(default_factory=list)

    async def end_lost_turn(self, session_id: str, runner_id: str) -> bool:
        self.ended.append((session_id, runner_id))
        return True


@dataclass
class Rig:
    store: Store
    clock: FakeClock
    runners: FakeRunners
    bus: FakeBus
    log: FakeLog
    link: list[int | None]

    def reaper(self, **policy: Any) -> Reaper:
        return Reaper(self.store, self.runners, self.bus, self.log,
                      Policy(settle_s=TTL, **policy), link=lambda: self.link[0], clock=self.clock)

    async def session(self, id: str, status: str = "active", runner: str | None = "r1") -> None:
        await self.store.create_session(id, "agent", "digest", None, {}, self.clock.time())
        await self.store.update_session(id, self.clock.time(), status=status,  # type: ignore[arg-type]
                                        runner_id=runner, claude_session_id="c-" + id)

    async def status(self, id: str) -> tuple[str, str | None]:
        view = await self.store.get_session(id)
        assert view is not None
        return view.status, view.runner_id


def held(age: float = 100.0, idle: float = 0.0, busy: bool = False,
         frozen: bool = False) -> SessionActivity:
    return SessionActivity(age_s=age, idle_s=idle, busy=busy, frozen=frozen)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    clock = FakeClock()
    async with open_store(f"sqlite://{tmp_path / 'ash.db'}") as store:
        runners = FakeRunners(clock)
        runners.loaded.set()
        yield Rig(store, clock, runners, FakeBus(), FakeLog(), [0])


async def trusted(rig: Rig, *reapers: Reaper) -> None:
    """Let the reapers watch the registry for a whole TTL (runners re-advertising meanwhile)."""
    assert not any([r.runners_trusted() for r in reapers])
    rig.clock.advance(TTL)
    assert all([r.runners_trusted() for r in reapers])


# -- idle auto-pause -------------------------------------------------------------------------------


async def test_idle_session_is_paused_once_idle_for_the_setting_and_not_before(rig: Rig) -> None:
    await rig.session("s1")
    reaper = rig.reaper(idle_pause_s=IDLE)
    for _ in range(5):  # 50 s: the runner re-advertises, the session stays quiet
        rig.clock.advance(10)
        rig.runners.advertise("r1", s1=held(idle=rig.clock.time() - T0))
        assert await reaper.sweep() == []
    rig.clock.advance(10)
    rig.runners.advertise("r1", s1=held(idle=IDLE))

    assert await reaper.sweep() == [IdlePause("s1", "r1", IDLE)]
    assert await rig.status("s1") == ("paused", "r1")  # warm: it stays on its runner
    assert rig.bus.sent == [("r1", PauseSession(session_id="s1"))]
    assert await reaper.sweep() == []  # paused: nothing more to do


async def test_activity_the_runner_reports_keeps_a_session_active(rig: Rig) -> None:
    await rig.session("s1")
    reaper = rig.reaper(idle_pause_s=IDLE)
    rig.clock.advance(IDLE * 3)
    rig.runners.advertise("r1", s1=held(idle=IDLE - 1))  # an exec or a file call a moment ago
    assert await reaper.sweep() == []
    rig.runners.advertise("r1", s1=held(idle=IDLE * 3, busy=True))  # a turn runs: the model streams
    assert await reaper.sweep() == []
    rig.runners.advertise("r1", s1=held(idle=IDLE * 3))
    assert [type(a) for a in await reaper.sweep()] == [IdlePause]


async def test_a_long_turn_is_activity_throughout_and_idle_time_counts_from_its_end(rig: Rig) -> None:
    await rig.session("s1")
    reaper = rig.reaper(idle_pause_s=IDLE)
    for minute in range(10, 130, 10):  # a two-hour turn: the model streams, tools run
        rig.clock.advance(600)
        rig.runners.advertise("r1", s1=held(idle=minute * 60, busy=True))
        assert await reaper.sweep() == [], f"paused {minute} minutes into a running turn"
    since_end = 0.0
    for idle in (0.0, 20.0, 40.0, IDLE - 1):  # it ended; the runner counts from its end
        rig.clock.advance(idle - since_end)
        since_end = idle
        rig.runners.advertise("r1", s1=held(idle=idle))
        assert await reaper.sweep() == []
    rig.clock.advance(IDLE - since_end)
    rig.runners.advertise("r1", s1=held(idle=IDLE))
    assert await reaper.sweep() == [IdlePause("s1", "r1", IDLE)]
    assert await rig.status("s1") == ("paused", "r1")


async def test_a_recorded_turn_counts_as_activity(rig: Rig) -> None:
    await rig.session("s1")
    reaper = rig.reaper(idle_pause_s=IDLE)
    rig.clock.advance(IDLE * 2)
    await rig.store.update_session("s1", rig.clock.time() - 5, turns_delta=1)  # the recorder wrote
    rig.runners.advertise("r1", s1=held(idle=IDLE * 2))
    assert await reaper.sweep() == []


async def test_a_refused_idle_pause_puts_the_session_back_to_active(rig: Rig) -> None:
    await rig.session("s1")
    rig.bus.answers[PauseSession] = Rejected(runner_id="r1", error=ErrorInfo(
        code=ErrorCode.conflict, message="a turn is running"))
    reaper = rig.reaper(idle_pause_s=IDLE)
    rig.clock.advance(IDLE)
    rig.runners.advertise("r1", s1=held(idle=IDLE))
    assert await reaper.sweep() == []
    assert await rig.status("s1") == ("active", "r1")


async def test_an_idle_session_whose_sandbox_is_gone_is_paused_cold(rig: Rig) -> None:
    await rig.session("s1")
    rig.bus.answers[PauseSession] = Rejected(runner_id="r1", error=ErrorInfo(
        code=ErrorCode.not_found, message="not here"))
    reaper = rig.reaper(idle_pause_s=IDLE)
    rig.clock.advance(IDLE)
    rig.runners.advertise("r1", s1=held(idle=IDLE))
    assert len(await reaper.sweep()) == 1
    assert await rig.status("s1") == ("paused", None)


# -- runner death, restart ---------------------------------------------------------------------


async def test_sessions_of_a_lost_runner_become_paused_cold_once_with_their_turn_ended(rig: Rig) -> None:
    await rig.session("s1")
    await rig.session("s2", status="paused")  # warm-paused there: now cold
    await rig.session("s3", runner="r2")
    rig.runners.advertise("r1", s1=held(), s2=held(frozen=True))
    rig.runners.advertise("r2", s3=held())
    reaper, other = rig.reaper(), rig.reaper()  # two coordinators sweeping the same store
    await trusted(rig, reaper, other)
    rig.runners.advertise("r2", s3=held())
    assert await reaper.sweep() == []
    rig.clock.advance(0.1)  # r1's last advert is now older than the TTL

    results = await asyncio.gather(reaper.sweep(), other.sweep())
    assert sorted(a.session_id for r in results for a in r) == ["s1", "s2"]  # each once
    assert await rig.status("s1") == ("paused", None)
    assert await rig.status("s2") == ("paused", None)
    assert await rig.status("s3") == ("active", "r2")
    assert sorted(rig.log.ended) == [("s1", "r1"), ("s2", "r1")]
    assert await reaper.sweep() == [] and await other.sweep() == []


async def test_a_restarted_runner_without_the_session_pauses_it_after_the_advert_settles(rig: Rig) -> None:
    await rig.session("s1")
    reaper = rig.reaper()
    rig.runners.advertise("r1", s1=held())
    await trusted(rig, reaper)
    rig.runners.advertise("r1")  # same id, fresh process: no sessions
    assert await reaper.sweep() == [ColdPause("s1", "r1", "not_on_runner")]
    assert await rig.status("s1") == ("paused", None)


async def test_nothing_is_judged_from_absence_until_the_registry_was_heard_for_a_ttl(rig: Rig) -> None:
    await rig.session("s1")
    reaper = rig.reaper()
    rig.runners.loaded.clear()  # the watch has not delivered the registry yet
    rig.clock.advance(TTL * 3)
    assert await reaper.sweep() == []
    rig.runners.loaded.set()
    assert await reaper.sweep() == []  # heard from now on, not long enough
    rig.link[0] = None  # NATS disconnected
    rig.clock.advance(TTL * 3)
    assert await reaper.sweep() == []
    rig.link[0] = 1  # reconnected: the adverts missed meanwhile prove nothing
    assert await reaper.sweep() == []
    rig.clock.advance(TTL)
    assert await reaper.sweep() == [ColdPause("s1", "r1", "runner_lost")]


async def test_a_draining_runner_keeps_its_sessions_until_it_leaves(rig: Rig) -> None:
    await rig.session("s1")
    reaper = rig.reaper(idle_pause_s=IDLE)
    await trusted(rig, reaper)
    rig.runners.advertise("r1", draining=True, s1=held(idle=IDLE * 2))
    assert await reaper.sweep() == []
    del rig.runners.seen["r1"]  # it deleted its registry entry
    assert await reaper.sweep() == [ColdPause("s1", "r1", "runner_lost")]


async def test_a_resume_abandoned_by_its_coordinator_is_paused_again(rig: Rig) -> None:
    await rig.session("s1", status="starting")  # a cold resume began, then its coordinator died
    reaper = rig.reaper(create_timeout_s=90)
    rig.clock.advance(3 * 90)  # the resume could still be placing it
    assert await reaper.sweep() == []
    rig.clock.advance(TTL)
    assert await reaper.sweep() == [Unstick("s1")]
    assert await rig.status("s1") == ("paused", None)  # resumable cold, by the next message
    assert await reaper.sweep() == []


# -- orphans, TTL ------------------------------------------------------------------------------


async def test_sandboxes_the_store_does_not_give_that_runner_are_ended(rig: Rig) -> None:
    await rig.session("mine")
    await rig.session("ended", status="ended")
    await rig.session("cold", status="paused", runner=None)
    reaper = rig.reaper()
    rig.runners.advertise("r1", mine=held(), ended=held(), cold=held(), stranger=held(),
                          young=held(age=1))
    await trusted(rig, reaper)
    rig.runners.advertise("r1", mine=held(), ended=held(), cold=held(), stranger=held(),
                          young=held(age=1))
    done = await reaper.sweep()
    assert sorted(done, key=lambda a: a.session_id) == [  # type: ignore[attr-defined]
        EndSandbox("r1", "cold", "elsewhere"), EndSandbox("r1", "ended", "ended"),
        EndSandbox("r1", "stranger", "unknown")]
    assert sorted(c.session_id for _, c in rig.bus.sent if isinstance(c, EndSession)) == [
        "cold", "ended", "stranger"]


async def test_sessions_older_than_the_ttl_are_ended_and_their_sandbox_destroyed(rig: Rig) -> None:
    await rig.session("old")
    await rig.session("old-paused", status="paused", runner=None)
    rig.clock.advance(3000)
    await rig.session("new")
    rig.runners.advertise("r1", old=held(), new=held())
    reaper = rig.reaper(session_ttl_s=3600)
    rig.clock.advance(600)
    rig.runners.advertise("r1", old=held(), new=held())

    assert sorted(await reaper.sweep(), key=lambda a: a.session_id) == [  # type: ignore[attr-defined]
        Expire("old", "r1"), Expire("old-paused", None)]
    assert await rig.status("old") == ("ended", "r1")
    assert await rig.status("old-paused") == ("ended", None)
    assert await rig.status("new") == ("active", "r1")
    assert rig.bus.sent == [("r1", EndSession(session_id="old"))]


async def test_the_sweep_loop_runs_until_closed(rig: Rig) -> None:
    await rig.session("s1")
    rig.clock.advance(IDLE)
    rig.runners.advertise("r1", s1=held(idle=IDLE))
    async with Reaper(rig.store, rig.runners, rig.bus, rig.log, Policy(idle_pause_s=IDLE),
                      interval_s=0.01, clock=rig.clock) as reaper:
        deadline = time.monotonic() + 5
        while (await rig.status("s1"))[0] != "paused":
            assert time.monotonic() < deadline, "the loop never paused the idle session"
            await asyncio.sleep(0.01)
        await reaper.close()
        await reaper.close()  # idempotent


# -- the event log of a turn whose runner was lost ------------------------------------------------


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    srv = start_nats(tmp_path_factory.mktemp("nats"))
    try:
        yield srv
    finally:
        srv.stop()


async def publish(js: Any, ev: events.Event) -> None:
    await js.publish(subjects.session_events(ev.session_id), codec.encode(ev), headers={
        subjects.MSG_ID_HEADER: subjects.event_msg_id(ev.session_id, ev.seq)})


async def log_of(js: Any, session_id: str) -> list[events.Event]:
    sub = await js.subscribe(subjects.session_events(session_id), ordered_consumer=True)
    out: list[events.Event] = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except nats.errors.TimeoutError:
                return out
            out.append(codec.decode_event(msg.data))
    finally:
        await sub.unsubscribe()


async def test_a_turn_cut_short_by_a_lost_runner_ends_in_the_log(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        layout = await ensure_layout(nc.jetstream())
        js, sid = layout.js, "lost-" + str(time.time_ns())
        await publish(js, events.UserMessage(session_id=sid, turn_id="t1", seq=1, content="hi"))
        await publish(js, events.TextDelta(session_id=sid, turn_id="t1", seq=2, delta="Hel"))
        log = EventLog(js)

        assert await log.end_lost_turn(sid, "r1")
        assert not await log.end_lost_turn(sid, "r1")  # the turn has its done now
        got = await log_of(js, sid)
        assert [(type(e).__name__, e.seq, e.turn_id) for e in got] == [
            ("UserMessage", 1, "t1"), ("TextDelta", 2, "t1"), ("Error", 3, "t1"), ("Done", 4, "t1")]
        error, done = got[2], got[3]
        assert isinstance(error, events.Error) and error.error.code == ErrorCode.runner_lost
        assert error.error.retryable and "resumed" in error.error.message
        assert isinstance(done, events.Done) and done.reason == "error"
        assert not await log.end_lost_turn("never-" + sid, "r1")  # no events: nothing to end
    finally:
        await nc.close()


async def test_a_runner_that_was_slow_not_dead_keeps_the_log_to_itself(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        layout = await ensure_layout(nc.jetstream())
        js, sid = layout.js, "slow-" + str(time.time_ns())
        await publish(js, events.UserMessage(session_id=sid, turn_id="t1", seq=1, content="hi"))

        class RunnerWritesMeanwhile:
            """The real JetStream, but the runner publishes right after the reaper read."""

            async def get_last_msg(self, *a: Any) -> Any:
                msg = await js.get_last_msg(*a)
                await publish(js, events.TextDelta(session_id=sid, turn_id="t1", seq=2, delta="x"))
                return msg

            def __getattr__(self, name: str) -> Any:
                return getattr(js, name)

        assert not await EventLog(RunnerWritesMeanwhile()).end_lost_turn(sid, "r1")  # type: ignore[arg-type]
        assert [e.seq for e in await log_of(js, sid)] == [1, 2]
    finally:
        await nc.close()
