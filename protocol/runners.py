"""What a runner says about itself in the registry (KV bucket `subjects.RUNNERS_BUCKET`)."""

from __future__ import annotations

import msgspec


class SessionActivity(msgspec.Struct, kw_only=True, frozen=True):
    """One session a runner holds a sandbox for, as of the advert.

    Durations, not timestamps, so that no two machines' clocks are compared: a coordinator
    places them on its own clock by the time the advert arrived.
    """

    age_s: float = 0.0  # since the sandbox became this session's on this runner
    idle_s: float = 0.0  # since the last command about the session (turn, exec, files, ...)
    busy: bool = False  # a turn or an exec runs now: activity, whatever `idle_s` says
    frozen: bool = False  # paused warm: the sandbox is held by the cgroup freezer


class RunnerAdvert(msgspec.Struct, kw_only=True, frozen=True):
    """A runner's advertisement, refreshed every few seconds; the entry expires if it stops."""

    runner_id: str
    version: str
    started_at: float
    sessions: int = 0
    max_sessions: int = 0
    draining: bool = False  # shutting down: takes no new sessions, finishes what it runs
    cli: str = "claude"
    ts: float = 0.0
    scripted_model: bool = False
    # Warm sandboxes (CLI started with the agent's defaults) by agent name, for placement.
    warm: dict[str, int] = {}
    # Every session this runner holds a sandbox for, by id: what the coordinators' reaper
    # compares with the store (orphans both ways) and reads activity from (idle pause).
    # None: a runner too old to say; nothing is judged from its list then.
    activity: dict[str, SessionActivity] | None = None
