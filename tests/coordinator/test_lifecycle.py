"""The coordinator's pause/resume/fork decisions, as tables of (state, now)."""

from __future__ import annotations

import pytest

from coordinator.api.lifecycle import fork_source, live_runners, resume_step
from coordinator.placement import Seen
from protocol.runners import RunnerAdvert

LIVE = frozenset({"r1", "r2"})
STALE_S = 180.0


@pytest.mark.parametrize(("status", "runner", "updated_at", "now", "step"), [
    ("ended", "r1", 0.0, 1.0, "gone"),
    ("error", None, 0.0, 1.0, "refuse"),  # it never started: nothing to resume
    # Its runner is live: ask it to thaw (it answers not_found if the sandbox is gone).
    ("paused", "r1", 0.0, 1.0, "warm"),
    ("active", "r2", 0.0, 1.0, "warm"),
    # Its runner is gone (killed, restarted under another id, cut off): restore elsewhere.
    ("paused", "dead", 0.0, 1.0, "cold"),
    ("active", "dead", 0.0, 1.0, "cold"),
    ("paused", None, 0.0, 1.0, "cold"),
    # Another resume is in flight: wait for it, unless it has been at it for too long.
    ("starting", "r1", 100.0, 100.0 + STALE_S, "wait"),
    ("starting", "r1", 100.0, 100.0 + STALE_S + 0.1, "cold"),
])
def test_resume_step(status: str, runner: str | None, updated_at: float, now: float,
                     step: str) -> None:
    assert resume_step(status, runner, LIVE, updated_at, now, STALE_S) == step


@pytest.mark.parametrize(("status", "runner", "source"), [
    ("active", "r1", "snapshot"),  # live: a snapshot as of now
    ("active", "dead", "latest"),  # its runner is gone: what was last saved
    ("paused", "r1", "latest"),  # snapshotted at its pause; nothing changed since
    ("paused", "dead", "latest"),
    ("ended", "r1", "gone"),
    ("starting", "r1", "refuse"),
    ("error", None, "refuse"),
])
def test_fork_source(status: str, runner: str | None, source: str) -> None:
    assert fork_source(status, runner, LIVE) == source


def test_live_runners_are_those_whose_advert_is_fresh() -> None:
    def seen(rid: str, at: float) -> Seen:
        return Seen(RunnerAdvert(runner_id=rid, version="1", started_at=0.0, sessions=0,
                                 max_sessions=4, cli="standin", ts=0.0), at)

    assert live_runners([seen("a", 10.0), seen("b", 3.0)], now=12.0, ttl_s=6.0) == {"a"}
