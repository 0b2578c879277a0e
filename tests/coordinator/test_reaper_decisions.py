"""The reaper's decisions (`coordinator.lifetimes`), table-tested: pure functions of the
sessions in the store, the live runners' adverts and the time."""

from __future__ import annotations

from typing import Any

import pytest

from coordinator.lifetimes import (
    ColdPause,
    EndSandbox,
    Expire,
    FailStart,
    IdlePause,
    LiveRunner,
    Policy,
    Unstick,
    expired_sessions,
    idle_sessions,
    last_activity,
    orphan_sandboxes,
    plan,
    sessions_to_pause,
    stuck_starting,
)
from protocol.api import SessionView
from protocol.runners import SessionActivity

NOW = 1_700_000_000.0
SETTLE = 4.0


def row(id: str = "s1", status: str = "active", runner: str | None = "r1", *,
        updated: float = NOW - 100, created: float = NOW - 1000, claude: str | None = "c1",
        turns: int = 1) -> SessionView:
    return SessionView(id=id, agent="a", agent_digest="d", status=status,  # type: ignore[arg-type]
                       runner_id=runner, claude_session_id=claude, last_seq=0, turns=turns,
                       model=None, created_at=created, updated_at=updated)


def runner(id: str = "r1", heard: float = NOW, draining: bool = False,
           **sessions: SessionActivity) -> LiveRunner:
    return LiveRunner(runner_id=id, heard_at=heard, sessions=sessions, draining=draining)


def held(age: float = 100, idle: float = 0, busy: bool = False, frozen: bool = False,
         ending: bool = False) -> SessionActivity:
    return SessionActivity(age_s=age, idle_s=idle, busy=busy, frozen=frozen, ending=ending)


# -- runner death and restart -> paused --------------------------------------------------------

PAUSE_CASES: list[tuple[str, SessionView, dict[str, LiveRunner], list[ColdPause]]] = [
    ("runner gone: active session is paused",
     row(), {}, [ColdPause("s1", "r1", "runner_lost")]),
    ("runner gone: warm-paused session becomes cold",
     row(status="paused"), {}, [ColdPause("s1", "r1", "runner_lost")]),
    ("another runner is live, not this one",
     row(), {"r2": runner("r2", s1=held())}, [ColdPause("s1", "r1", "runner_lost")]),
    ("runner live and holds it",
     row(), {"r1": runner(s1=held())}, []),
    ("runner live and holds it frozen (warm pause)",
     row(status="paused"), {"r1": runner(s1=held(frozen=True))}, []),
    ("runner restarted: live without it, advert settled",
     row(updated=NOW - SETTLE), {"r1": runner()}, [ColdPause("s1", "r1", "not_on_runner")]),
    ("runner live without it, but the row changed after that advert was built",
     row(updated=NOW - SETTLE + 0.5), {"r1": runner()}, []),
    ("advert older than the row: not read as a loss",
     row(updated=NOW - 1), {"r1": runner(heard=NOW - 2)}, []),
    ("starting belongs to its creator or resumer, even on a gone runner",
     row(status="starting"), {}, []),
    ("ended sessions are left alone", row(status="ended"), {}, []),
    ("error sessions are left alone", row(status="error"), {}, []),
    ("paused cold (no runner) is left alone", row(status="paused", runner=None), {}, []),
    ("a live runner too old to list its sessions is taken at its word",
     row(updated=NOW - 600), {"r1": LiveRunner("r1", NOW, None)}, []),
]


@pytest.mark.parametrize("session,live,expected", [c[1:] for c in PAUSE_CASES],
                         ids=[c[0] for c in PAUSE_CASES])
def test_sessions_to_pause(session: SessionView, live: dict[str, LiveRunner],
                           expected: list[ColdPause]) -> None:
    assert sessions_to_pause([session], live, SETTLE) == expected


# -- idle -> paused ------------------------------------------------------------------------------

IDLE = 60.0
IDLE_CASES: list[tuple[str, SessionView, dict[str, LiveRunner], bool]] = [
    ("no activity anywhere for the idle time", row(updated=NOW - IDLE),
     {"r1": runner(s1=held(idle=IDLE))}, True),
    ("the runner saw a command recently (exec, files)", row(updated=NOW - 600),
     {"r1": runner(s1=held(idle=IDLE - 1))}, False),
    ("the runner's report is as old as its advert", row(updated=NOW - 600),
     {"r1": runner(heard=NOW - 2, s1=held(idle=IDLE - 2))}, True),
    ("a turn is running (the model streams, tools run)", row(updated=NOW - 600),
     {"r1": runner(s1=held(idle=600, busy=True))}, False),
    ("the store saw activity recently (a turn recorded)", row(updated=NOW - 10),
     {"r1": runner(s1=held(idle=600))}, False),
    ("already frozen", row(updated=NOW - 600), {"r1": runner(s1=held(idle=600, frozen=True))}, False),
    ("its old sandbox being destroyed", row(updated=NOW - 600),
     {"r1": runner(s1=held(idle=600, ending=True))}, False),
    ("paused in the store", row(status="paused", updated=NOW - 600),
     {"r1": runner(s1=held(idle=600))}, False),
    ("runner draining: it pauses its sessions by leaving", row(updated=NOW - 600),
     {"r1": runner(draining=True, s1=held(idle=600))}, False),
    ("runner gone: a cold pause, not an idle one", row(updated=NOW - 600), {}, False),
    ("runner does not hold it", row(updated=NOW - 600), {"r1": runner()}, False),
    ("runner too old to report activity", row(updated=NOW - 600),
     {"r1": LiveRunner("r1", NOW, None)}, False),
]


@pytest.mark.parametrize("session,live,paused", [c[1:] for c in IDLE_CASES],
                         ids=[c[0] for c in IDLE_CASES])
def test_idle_sessions(session: SessionView, live: dict[str, LiveRunner], paused: bool) -> None:
    got = idle_sessions([session], live, NOW, IDLE)
    assert [a.session_id for a in got] == (["s1"] if paused else [])
    assert all(a.idle_s >= IDLE and a.runner_id == "r1" for a in got)


def test_idle_pause_off_when_zero() -> None:
    assert idle_sessions([row(updated=0)], {"r1": runner(s1=held(idle=1e9))}, NOW, 0) == []


def test_last_activity_is_the_latest_of_store_and_runner() -> None:
    r = runner(heard=NOW - 5, s1=held(idle=20))
    assert last_activity(row(updated=NOW - 100), r, NOW) == NOW - 25
    assert last_activity(row(updated=NOW - 3), r, NOW) == NOW - 3
    assert last_activity(row(updated=NOW - 100), runner(s1=held(busy=True)), NOW) == NOW
    assert last_activity(row(updated=NOW - 100), runner(), NOW) == NOW - 100


# -- TTL ---------------------------------------------------------------------------------------

TTL = 3600.0
TTL_CASES = [
    ("older than the TTL", row(created=NOW - TTL), True),
    ("younger", row(created=NOW - TTL + 1), False),
    ("paused and old", row(status="paused", created=NOW - TTL - 1), True),
    ("starting and old", row(status="starting", created=NOW - TTL - 1), True),
    ("ended already", row(status="ended", created=NOW - TTL - 1), False),
]


@pytest.mark.parametrize("session,expired", [c[1:] for c in TTL_CASES], ids=[c[0] for c in TTL_CASES])
def test_expired_sessions(session: SessionView, expired: bool) -> None:
    assert expired_sessions([session], NOW, TTL) == ([Expire("s1", "r1")] if expired else [])


def test_ttl_off_when_zero() -> None:
    assert expired_sessions([row(created=0)], NOW, 0) == []


# -- stuck creates -----------------------------------------------------------------------------

CREATE = 90.0
LIMIT = 3 * CREATE + SETTLE
STUCK_CASES: list[tuple[str, SessionView, list[FailStart | Unstick]]] = [
    ("a create whose coordinator died", row(status="starting", runner=None, claude=None, turns=0,
                                            updated=NOW - LIMIT), [FailStart("s1")]),
    ("a create still within its placement tries", row(status="starting", runner=None, claude=None,
                                                      turns=0, updated=NOW - LIMIT + 1), []),
    ("a cold resume whose coordinator died (it has a conversation)",
     row(status="starting", runner=None, updated=NOW - LIMIT), [Unstick("s1")]),
    ("a resume keeping its old runner, abandoned", row(status="starting", claude=None, turns=0,
                                                       updated=NOW - LIMIT - 100), [Unstick("s1")]),
    ("a resume still within its placement tries", row(status="starting", updated=NOW - LIMIT + 1),
     []),
    ("active", row(runner=None, claude=None, turns=0, updated=NOW - LIMIT - 100), []),
    ("paused", row(status="paused", updated=NOW - LIMIT - 100), []),
]


@pytest.mark.parametrize("session,expected", [c[1:] for c in STUCK_CASES],
                         ids=[c[0] for c in STUCK_CASES])
def test_stuck_starting(session: SessionView, expected: list[FailStart | Unstick]) -> None:
    assert stuck_starting([session], NOW, CREATE, SETTLE) == expected


# -- orphan sandboxes ----------------------------------------------------------------------------

ORPHAN_CASES: list[tuple[str, SessionActivity, SessionView | None, str | None]] = [
    ("the store never heard of it", held(), None, "unknown"),
    ("ended", held(), row(status="ended"), "ended"),
    ("error (its create timed out, the runner finished anyway)", held(), row(status="error"), "error"),
    ("paused cold (no runner)", held(), row(status="paused", runner=None), "elsewhere"),
    ("moved to another runner", held(), row(runner="r2"), "elsewhere"),
    ("starting elsewhere, sandbox old", held(), row(status="starting", runner=None), "elsewhere"),
    ("active here", held(), row(), None),
    ("warm-paused here", held(frozen=True), row(status="paused"), None),
    ("ended, its sandbox being destroyed", held(ending=True), row(status="ended"), None),
    ("being created: too young to judge", held(age=SETTLE - 0.1), row(status="starting", runner=None), None),
    ("unknown but too young to judge", held(age=1), None, None),
]


@pytest.mark.parametrize("seen,session,why", [c[1:] for c in ORPHAN_CASES],
                         ids=[c[0] for c in ORPHAN_CASES])
def test_orphan_sandboxes(seen: SessionActivity, session: SessionView | None, why: str | None) -> None:
    got = orphan_sandboxes({"r1": runner(s1=seen)}, {"s1": session}, SETTLE)
    assert got == ([EndSandbox("r1", "s1", why)] if why else [])  # type: ignore[arg-type]


def test_a_runner_too_old_to_list_its_sessions_has_no_orphans() -> None:
    assert orphan_sandboxes({"r1": LiveRunner("r1", NOW, None)}, {}, SETTLE) == []


# -- the whole plan ------------------------------------------------------------------------------


def test_plan_acts_on_each_session_once_and_expiry_wins() -> None:
    rows = [
        row("old", created=NOW - 10_000),  # expired, and its runner is gone too
        row("lost"),  # runner gone
        row("idle", runner="r2", updated=NOW - 600),
        row("busy", runner="r2", updated=NOW - 600),
    ]
    live = {"r2": runner("r2", idle=held(idle=600), busy=held(busy=True), stray=held())}
    known: dict[str, Any] = {r.id: r for r in rows} | {"stray": None}
    policy = Policy(session_ttl_s=5000, idle_pause_s=IDLE, settle_s=SETTLE)
    assert plan(rows, live, known, NOW, policy) == [
        Expire("old", "r1"),
        ColdPause("lost", "r1", "runner_lost"),
        IdlePause("idle", "r2", 600.0),
        EndSandbox("r2", "stray", "unknown"),
    ]


def test_plan_without_trusted_runners_does_nothing_judged_from_their_absence() -> None:
    rows = [row("lost"), row("old", created=NOW - 10_000, runner="r2", updated=NOW - 600)]
    live = {"r2": runner("r2", old=held(idle=600), stray=held())}
    policy = Policy(session_ttl_s=5000, idle_pause_s=IDLE, settle_s=SETTLE)
    assert plan(rows, live, {"stray": None}, NOW, policy, runners_trusted=False) == [
        Expire("old", "r2")]
