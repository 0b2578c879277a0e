"""The warm pool's decisions: which warm sandbox fits a request, what to evict, what to refill.

All pure: functions of (`PoolState`, now) and of the request's options, so they are
table-tested without a pool, a clock or a sandbox (STYLE rule 19). `runner/pool.py` applies them.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from protocol.commands import SessionOptions

MAX_BACKOFF_S = 60.0


@dataclass(frozen=True, slots=True)
class WarmKey:
    """What a CLI was started with; a warm sandbox fits a request only if the keys are equal."""

    digest: str
    options: bytes  # canonical JSON of every SessionOptions field, so a new field counts too
    resume: str | None


def warm_key(agent_digest: str, options: SessionOptions, resume: str | None = None) -> WarmKey:
    """The key of a sandbox started for `agent_digest` with `options` (resuming `resume`)."""
    return WarmKey(agent_digest, msgspec.json.encode(options, order="sorted"), resume)


@dataclass(frozen=True, slots=True)
class AgentView:
    """One agent's pool."""

    name: str
    target: int  # warm sandboxes wanted
    warm: int
    warming: int
    last_seen: float  # last session or WarmAgent for it
    failures: int = 0  # warm-ups failed in a row
    failed_at: float = 0.0


@dataclass(frozen=True, slots=True)
class WarmView:
    """One warm sandbox."""

    id: int
    agent: str
    since: float  # when it became warm


@dataclass(frozen=True, slots=True)
class PoolState:
    """What the decisions see of a pool: capacity, claimed count, agents, warm sandboxes."""

    capacity: int
    claimed: int
    agents: tuple[AgentView, ...] = ()
    warm: tuple[WarmView, ...] = ()

    @property
    def used(self) -> int:
        return self.claimed + sum(a.warm + a.warming for a in self.agents)


def backoff_s(failures: int) -> float:
    """How long to wait before warming an agent again after `failures` failures in a row."""
    return 0.0 if failures <= 0 else min(MAX_BACKOFF_S, 2.0 ** (failures - 1))


def idle_victims(state: PoolState, now: float, idle_s: float) -> list[int]:
    """Warm sandboxes to sweep: warm for `idle_s` while their agent went unused as long."""
    seen = {a.name: a.last_seen for a in state.agents}
    return [w.id for w in state.warm if now - max(w.since, seen.get(w.agent, w.since)) >= idle_s]


def lru_victim(state: PoolState) -> int | None:
    """The warm sandbox to evict for room: of the agent used longest ago, then the oldest."""
    seen = {a.name: a.last_seen for a in state.agents}
    if not state.warm:
        return None
    return min(state.warm, key=lambda w: (seen.get(w.agent, w.since), w.since, w.id)).id


def refills(state: PoolState, now: float, idle_s: float, max_warming: int) -> list[str]:
    """Agents to start one warm-up each for now (a name may repeat), most recently used first.

    Only agents used within `idle_s` and not backing off after failures; only into free room;
    never more than `max_warming` warm-ups in flight (CLI start-up is CPU-heavy).
    """
    room = state.capacity - state.used
    in_flight = sum(a.warming for a in state.agents)
    out: list[str] = []
    for a in sorted(state.agents, key=lambda a: -a.last_seen):
        if now - a.last_seen >= idle_s or now < a.failed_at + backoff_s(a.failures):
            continue
        need = a.target - a.warm - a.warming
        while need > 0 and room > 0 and in_flight < max_warming:
            out.append(a.name)
            need, room, in_flight = need - 1, room - 1, in_flight + 1
    return out
