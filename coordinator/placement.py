"""Choosing a runner for a new session: a pure function of (adverts, now).

Feasible: the advert is fresh, the runner is not draining and has a free session slot.
Among the feasible, the runner with the most free slots wins (ties by id, so the choice is
stable). The fleet issue replaces the score with RAM/CPU density packing; the shape stays.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from protocol.runners import RunnerAdvert


@dataclass(slots=True, frozen=True)
class Seen:
    """An advert and the local monotonic time it was last received."""

    advert: RunnerAdvert
    received_at: float


def is_live(seen: Seen, now: float, ttl_s: float) -> bool:
    """Whether a runner's advert is recent enough to trust."""
    return now - seen.received_at <= ttl_s


def choose_runner(
    runners: Iterable[Seen], now: float, ttl_s: float, exclude: frozenset[str] = frozenset()
) -> RunnerAdvert | None:
    """The runner a new session should go to, or None when no runner can take it."""
    best: RunnerAdvert | None = None
    best_key: tuple[int, str] | None = None
    for seen in runners:
        a = seen.advert
        if a.runner_id in exclude or a.draining or not is_live(seen, now, ttl_s):
            continue
        free = a.max_sessions - a.sessions if a.max_sessions else 1 << 30
        if free <= 0:
            continue
        key = (-free, a.runner_id)
        if best_key is None or key < best_key:
            best, best_key = a, key
    return best
