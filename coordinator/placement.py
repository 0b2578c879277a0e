"""Choosing a runner for a session: a pure function of
(demand, adverts, placements in flight, now, random source).

    adverts --feasible?--> candidates --rank--> best few --random pick--> the runner

**Feasible**: the advert is fresh (younger than the TTL), the runner speaks this coordinator's
protocol, is not draining, carries every label the agent requires, has a free session slot,
and the sandbox fits. Fitting is about what sandboxes are *allowed*, not what they use now: a
runner's commitment is the sum of the memory and CPU limits of the sandboxes it holds (sessions
and warm ones), plus what this coordinator has placed there that its advert does not show yet
(in flight). The sandbox fits when, for memory and for CPU,

    committed + in flight + demand <= total x over-commit ratio

and the memory the runner really has available covers what the sandbox is expected to use
(demand / ratio: the ratio says sandboxes use on average 1/ratio of their limit). CPU is
compressible, so only its commitment counts. A session that takes one of the runner's warm
sandboxes of its agent adds nothing: that sandbox is already committed.

**Rank**: a runner with a warm sandbox of the agent first (its CLI is already connected: a
third of a second saved), then by density, the runner's largest share after the placement
(memory, CPU or session slots, each against what may be committed):

    pack    the fullest runner that still fits, so that large holes stay free for large sandboxes
            (and emptied runners can be scaled in)
    spread  the emptiest, for the least contention

**Pick** at random among the best `choices` of the top tier: coordinators share a view of the
registry that lags by an advert interval, and each counts only its own placements in flight, so
a deterministic choice would send a burst from many coordinators onto one runner.

The demand of a runner's sandbox is the agent's `ash.toml` limit clamped by the runner's own
per-sandbox cap, or that cap when the agent sets none (`runner.agentconf.resolve`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from protocol import PROTOCOL_VERSION
from protocol.runners import RunnerAdvert

Mode = Literal["pack", "spread"]


@dataclass(slots=True, frozen=True)
class Seen:
    """An advert and the local monotonic time it was last received."""

    advert: RunnerAdvert
    received_at: float


def is_live(seen: Seen, now: float, ttl_s: float) -> bool:
    """Whether a runner's advert is recent enough to trust."""
    return now - seen.received_at <= ttl_s


@dataclass(slots=True, frozen=True)
class Demand:
    """What a session asks of its runner."""

    agent: str
    memory_mb: int | None = None  # the agent's ash.toml limit; None: the runner's default
    cpu_percent: int | None = None
    labels: Mapping[str, str] = field(default_factory=dict)  # required of the runner
    warm_ok: bool = True  # default options, no restore: a warm sandbox can serve it


@dataclass(slots=True, frozen=True)
class InFlight:
    """A session this coordinator placed on a runner whose advert does not show it yet."""

    session_id: str
    runner_id: str
    agent: str
    memory_mb: int
    cpu_percent: int
    warm: bool  # expected to take one of the runner's warm sandboxes (adds no commitment)
    placed_at: float  # monotonic
    accepted_at: float | None = None  # None: the runner has not answered yet


@dataclass(slots=True, frozen=True)
class Policy:
    """The coordinator's placement settings (ASH_PLACEMENT, ASH_OVERCOMMIT_*, ...)."""

    mode: Mode = "pack"
    memory_overcommit: float = 2.0
    cpu_overcommit: float = 16.0
    choices: int = 2
    ttl_s: float = 4.0
    protocol: int = PROTOCOL_VERSION


class RandomSource(Protocol):
    """Where the pick among the best few comes from (`random.Random` in production)."""

    def randrange(self, stop: int, /) -> int: ...


@dataclass(slots=True, frozen=True)
class Candidate:
    """A runner that can take the session, and how well."""

    advert: RunnerAdvert
    warm: bool  # the session would take one of its warm sandboxes
    density: float  # its largest share (memory, CPU, slots) after the placement, 0..1
    free_slots: int
    memory_mb: int  # what the placement adds to the runner's commitment (0 when warm)
    cpu_percent: int


@dataclass(slots=True, frozen=True)
class Decision:
    """The chosen runner (None: no runner can take the session), and why the others not."""

    chosen: Candidate | None
    ranked: tuple[str, ...]  # every feasible runner, best first
    refused: Mapping[str, str]  # runner id -> why it cannot take the session

    @property
    def runner(self) -> RunnerAdvert | None:
        return self.chosen.advert if self.chosen is not None else None


def choose(
    demand: Demand,
    runners: Iterable[Seen],
    in_flight: Iterable[InFlight],
    now: float,
    rng: RandomSource,
    policy: Policy,
    exclude: Collection[str] = (),
) -> Decision:
    """The runner a session should go to (see the module docstring for the rules)."""
    by_runner: dict[str, list[InFlight]] = {}
    for f in in_flight:
        by_runner.setdefault(f.runner_id, []).append(f)
    candidates: list[Candidate] = []
    refused: dict[str, str] = {}
    for seen in runners:
        a = seen.advert
        if a.runner_id in exclude:
            refused[a.runner_id] = "refused it already"
            continue
        verdict = _assess(demand, seen, by_runner.get(a.runner_id, ()), now, policy)
        if isinstance(verdict, str):
            refused[a.runner_id] = verdict
        else:
            candidates.append(verdict)
    if policy.mode == "spread":
        candidates.sort(key=lambda c: (not c.warm, c.density, -c.free_slots, c.advert.runner_id))
    else:
        candidates.sort(key=lambda c: (not c.warm, -c.density, c.free_slots, c.advert.runner_id))
    ranked = tuple(c.advert.runner_id for c in candidates)
    if not candidates:
        return Decision(None, ranked, refused)
    tier = [c for c in candidates if c.warm == candidates[0].warm][: max(1, policy.choices)]
    return Decision(tier[rng.randrange(len(tier))], ranked, refused)


def _assess(
    demand: Demand, seen: Seen, flights: Iterable[InFlight], now: float, policy: Policy
) -> Candidate | str:
    """The runner as a candidate, or why it cannot take the session."""
    a = seen.advert
    if not is_live(seen, now, policy.ttl_s):
        return f"silent for {now - seen.received_at:.0f} s"
    if a.protocol != policy.protocol:
        return f"speaks protocol {a.protocol}, this coordinator {policy.protocol}"
    if a.draining:
        return "draining"
    missing = [f"{k}={v}" for k, v in demand.labels.items() if a.labels.get(k) != v]
    if missing:
        return f"lacks label {', '.join(missing)}"
    flights = list(flights)
    sessions = a.sessions + len(flights)
    free_slots = a.max_sessions - sessions if a.max_sessions else 1 << 30
    if free_slots <= 0:
        return f"all {a.max_sessions} session slots are taken"
    cap = a.sandbox
    memory = _resolve(demand.memory_mb, cap.memory_mb if cap else None)
    cpu = _resolve(demand.cpu_percent, cap.cpu_percent if cap else None)
    warm_taken = sum(1 for f in flights if f.warm and f.agent == demand.agent)
    warm = demand.warm_ok and a.warm.get(demand.agent, 0) > warm_taken
    need_mb, need_cpu = (0, 0) if warm else (memory, cpu)
    shares = [(sessions + 1) / a.max_sessions] if a.max_sessions else [0.0]
    total, committed = a.total, a.committed
    if total is not None and committed is not None:  # a dimension it cannot read is 0: unknown
        if total.memory_mb > 0:
            room = total.memory_mb * policy.memory_overcommit
            after = committed.memory_mb + sum(f.memory_mb for f in flights) + need_mb
            if after > room:
                return (f"needs {need_mb} MB of memory; {max(0, room - after + need_mb):.0f} of "
                        f"{room:.0f} MB (x{policy.memory_overcommit:g}) left uncommitted")
            expected = need_mb / policy.memory_overcommit
            if a.free is not None and a.free.memory_mb < expected:
                return (f"has {a.free.memory_mb} MB of memory available; a {need_mb} MB "
                        f"sandbox is expected to use {expected:.0f}")
            shares.append(after / room)
        if total.cpu_percent > 0:
            room = total.cpu_percent * policy.cpu_overcommit
            after = committed.cpu_percent + sum(f.cpu_percent for f in flights) + need_cpu
            if after > room:
                return (f"needs {need_cpu}% CPU; {max(0, room - after + need_cpu):.0f} of "
                        f"{room:.0f}% (x{policy.cpu_overcommit:g}) left uncommitted")
            shares.append(after / room)
    return Candidate(a, warm, max(shares), free_slots, need_mb, need_cpu)


def _resolve(asked: int | None, cap: int | None) -> int:
    """The agent's limit as the runner applies it (`runner.agentconf.resolve`)."""
    if cap is None:
        return asked or 0
    return cap if asked is None else min(asked, cap)


def unreflected(
    in_flight: Iterable[InFlight], runners: Mapping[str, Seen], now: float, ttl_s: float
) -> list[InFlight]:
    """The placements still in flight: not yet shown by their runner's advert.

    One leaves when its runner's advert lists the session (its sandbox and warm pool are then
    counted there), or when it was accepted more than `ttl_s` ago without showing up (ended
    at once, or the runner is gone). One not yet answered always counts. A runner too old to
    list its sessions shows one by any advert received after the acceptance.
    """
    kept = []
    for f in in_flight:
        if f.accepted_at is not None:
            seen = runners.get(f.runner_id)
            if seen is not None:
                held = seen.advert.activity
                if (f.session_id in held) if held is not None else seen.received_at > f.accepted_at:
                    continue
            if now - f.accepted_at > ttl_s:
                continue
        kept.append(f)
    return kept


def explain(demand: Demand, decision: Decision) -> str:
    """Why no runner can take the session, for the 503 a client reads."""
    what = f"no runner can take a session of agent {demand.agent!r}"
    if demand.labels:
        what += " (labels " + ", ".join(f"{k}={v}" for k, v in demand.labels.items()) + ")"
    if not decision.refused:
        return f"{what}: no runner is registered; start one with `ash runner`"
    reasons = "; ".join(f"{rid}: {why}" for rid, why in sorted(decision.refused.items()))
    return f"{what}: {reasons}"
