"""What the reaper should do: pure functions of (sessions in the store, live runners, now).

The store says what each session should be; the runners' adverts say which sandboxes exist
and how active they are. Where they disagree, or a lifetime has run out, these functions say
what to do; `coordinator.reaper` does it, with compare-and-set on the store so that any
number of coordinators may sweep at once.

    session in the store                       runners                          action
    active/paused on runner R                  R gone (no fresh advert)         ColdPause runner_lost
    active/paused on R (settled)               R live, holds no sandbox for it  ColdPause not_on_runner
    starting, never created, on no runner,     -                                FailStart
      past every placement try
    starting from a resume, past every         -                                Unstick
      placement try (its coordinator died)
    active on R, idle >= idle_pause_s          R live, not draining, not busy   IdlePause
    not ended, older than session_ttl_s        -                                Expire
    unknown / ended / error / on another       R holds a sandbox for it         EndSandbox
      runner or none (cold)                      (held longer than settle_s)

`starting` belongs to whoever is creating or resuming the session (a resume that dies is
taken over by the next, `coordinator.api.lifecycle`): the reaper leaves it alone until every
placement try would have timed out; then its coordinator died, and a create becomes `error`,
a resume `paused` on no runner again (resumable cold; a sandbox it may have left is an orphan). A cold pause leaves the session `paused` on no runner
(`runner_id` None): its sandbox is gone and it resumes cold from its snapshot. A warm pause (idle) keeps it on its runner, frozen.
"Settled" means the runner's advert arrived at least `settle_s` after the session's row last
changed, so an advert built before the session reached the runner is not read as a loss.
Activity is the latest of the row's `updated_at` (turns recorded, status changes) and the
runner's report (the last command about the session, or the end of its last turn or exec; a
running turn or exec, the model streaming or tools running, is activity now).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from protocol.api import SessionView
from protocol.runners import SessionActivity

NOT_ENDED = ("starting", "active", "paused", "error")
ON_A_RUNNER = ("starting", "active", "paused")  # what a sweep reads
HELD = ("active", "paused")  # a sandbox on the session's runner is expected (warm if paused)
PLACEMENT_TRIES = 3  # coordinator.placer.MAX_PLACEMENT_TRIES: a create or resume's longest wait


@dataclass(slots=True, frozen=True)
class LiveRunner:
    """A runner with a fresh advert: when it arrived (this coordinator's wall clock) and the
    sandboxes it holds."""

    runner_id: str
    heard_at: float
    sessions: Mapping[str, SessionActivity] | None  # None: an older runner that does not say
    draining: bool = False


@dataclass(slots=True, frozen=True)
class Policy:
    """The lifetimes: 0 turns a limit off."""

    session_ttl_s: float = 0.0
    idle_pause_s: float = 0.0
    settle_s: float = 4.0  # how long a disagreement must stand before it is acted on
    create_timeout_s: float = 90.0


@dataclass(slots=True, frozen=True)
class ColdPause:
    """The session's sandbox is gone with (or from) its runner: paused, on no runner."""

    session_id: str
    runner_id: str
    why: Literal["runner_lost", "not_on_runner"]


@dataclass(slots=True, frozen=True)
class IdlePause:
    """Ask the runner to pause the idle session (freeze and snapshot; warm resume later)."""

    session_id: str
    runner_id: str
    idle_s: float


@dataclass(slots=True, frozen=True)
class Expire:
    """The session outlived `session_ttl_s`: ended (its runner, if any, ends the sandbox)."""

    session_id: str
    runner_id: str | None


@dataclass(slots=True, frozen=True)
class FailStart:
    """A session stuck in `starting` on no runner (its coordinator died mid-create): error."""

    session_id: str


@dataclass(slots=True, frozen=True)
class Unstick:
    """A session left `starting` by a resume whose coordinator died: paused, on no runner."""

    session_id: str


@dataclass(slots=True, frozen=True)
class EndSandbox:
    """A sandbox whose session is not (or no longer) this runner's: destroy it."""

    runner_id: str
    session_id: str
    why: Literal["unknown", "ended", "error", "elsewhere"]


Action = ColdPause | IdlePause | Expire | FailStart | Unstick | EndSandbox


def sessions_to_pause(
    sessions: Iterable[SessionView], live: Mapping[str, LiveRunner], settle_s: float
) -> list[ColdPause]:
    """Active or paused sessions that their runner no longer holds: it is gone (the
    directory judged its advert stale, or it left), or live without them (it restarted, or
    dropped the sandbox) in an advert that arrived `settle_s` after the row last changed."""
    out: list[ColdPause] = []
    for s in sessions:
        if s.status not in HELD or s.runner_id is None:
            continue
        runner = live.get(s.runner_id)
        if runner is None:
            out.append(ColdPause(s.id, s.runner_id, "runner_lost"))
        elif (runner.sessions is not None and s.id not in runner.sessions
              and runner.heard_at - s.updated_at >= settle_s):
            out.append(ColdPause(s.id, s.runner_id, "not_on_runner"))
    return out


def last_activity(session: SessionView, runner: LiveRunner, now: float) -> float:
    """When the session was last active, on this coordinator's wall clock."""
    seen = runner.sessions.get(session.id) if runner.sessions is not None else None
    if seen is None:
        return session.updated_at
    if seen.busy:
        return now
    return max(session.updated_at, runner.heard_at - seen.idle_s)


def idle_sessions(
    sessions: Iterable[SessionView], live: Mapping[str, LiveRunner], now: float, idle_pause_s: float
) -> list[IdlePause]:
    """Active sessions with no activity for `idle_pause_s` on a live runner that holds them
    (not draining: a draining runner pauses its sessions by leaving)."""
    if idle_pause_s <= 0:
        return []
    out: list[IdlePause] = []
    for s in sessions:
        if s.status != "active" or s.runner_id is None:
            continue
        runner = live.get(s.runner_id)
        if runner is None or runner.draining or runner.sessions is None:
            continue
        seen = runner.sessions.get(s.id)
        if seen is None or seen.busy or seen.frozen or seen.ending:
            continue
        idle = now - last_activity(s, runner, now)
        if idle >= idle_pause_s:
            out.append(IdlePause(s.id, s.runner_id, idle))
    return out


def expired_sessions(sessions: Iterable[SessionView], now: float, ttl_s: float) -> list[Expire]:
    """Sessions not yet ended that were created `ttl_s` or more ago."""
    if ttl_s <= 0:
        return []
    return [Expire(s.id, s.runner_id) for s in sessions
            if s.status in NOT_ENDED and now - s.created_at >= ttl_s]


def is_create(session: SessionView) -> bool:
    """Whether a `starting` session is being created (never on a runner, no conversation yet)
    rather than resumed."""
    return session.runner_id is None and session.claude_session_id is None and session.turns == 0


def stuck_starting(
    sessions: Iterable[SessionView], now: float, create_timeout_s: float, settle_s: float
) -> list[FailStart | Unstick]:
    """Sessions still `starting` long after every placement try would have timed out: their
    coordinator died. A create failed (FailStart); a resume goes back to paused (Unstick)."""
    limit = PLACEMENT_TRIES * create_timeout_s + settle_s
    return [FailStart(s.id) if is_create(s) else Unstick(s.id) for s in sessions
            if s.status == "starting" and now - s.updated_at >= limit]


def orphan_sandboxes(
    live: Mapping[str, LiveRunner], known: Mapping[str, SessionView | None], settle_s: float
) -> list[EndSandbox]:
    """Sandboxes held for sessions that the store says are not that runner's.

    `known` maps every advertised session id to its row (None: no such session). A sandbox
    younger than `settle_s` is left alone: the coordinator that created it may not have
    recorded it as that runner's yet; one already `ending` is being destroyed.
    """
    out: list[EndSandbox] = []
    for runner in live.values():
        for session_id, seen in (runner.sessions or {}).items():
            if seen.age_s < settle_s or seen.ending:
                continue
            row = known.get(session_id)
            if row is None:
                out.append(EndSandbox(runner.runner_id, session_id, "unknown"))
            elif row.status in ("ended", "error"):
                out.append(EndSandbox(runner.runner_id, session_id, row.status))
            elif row.runner_id != runner.runner_id:
                out.append(EndSandbox(runner.runner_id, session_id, "elsewhere"))
    return out


def plan(
    sessions: Iterable[SessionView],
    live: Mapping[str, LiveRunner],
    known: Mapping[str, SessionView | None],
    now: float,
    policy: Policy,
    *,
    runners_trusted: bool = True,
) -> list[Action]:
    """Everything one sweep should do, each session at most once (expiry first).

    `runners_trusted` False (this coordinator has not watched the registry for a whole TTL
    since it started or reconnected) holds back what is judged from the runners' absence or
    their lists: a coordinator that cannot hear the runners must not pause their sessions.
    """
    rows = list(sessions)
    expire = expired_sessions(rows, now, policy.session_ttl_s)
    done = {a.session_id for a in expire}
    actions: list[Action] = list(expire)
    if runners_trusted:
        for a in sessions_to_pause(rows, live, policy.settle_s):
            if a.session_id not in done:
                actions.append(a)
                done.add(a.session_id)
    for f in stuck_starting(rows, now, policy.create_timeout_s, policy.settle_s):
        if f.session_id not in done:
            actions.append(f)
            done.add(f.session_id)
    for i in idle_sessions(rows, live, now, policy.idle_pause_s):
        if i.session_id not in done:
            actions.append(i)
    if runners_trusted:
        actions.extend(e for e in orphan_sandboxes(live, known, policy.settle_s)
                       if e.session_id not in done)
    return actions
