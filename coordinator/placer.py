"""Placing a session on a runner: the impure shell around `coordinator.placement.choose`.

    CreateSession --demand (agent's ash.toml, cached by digest)--> choose --send--> Accepted
                                                                      ^   |
                                          refused (busy, gone): the next best, up to 3 runners

Every placement is counted in flight from the moment it is chosen until the runner's advert
shows the session (`placement.unreflected`), so that a burst of creates on this coordinator
sees each other's sandboxes before any advert does. No feasible runner answers 503 `no_runner`
with each runner's reason; a refusal that is not retryable is passed on as it came.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Callable
from typing import Protocol

from coordinator import bundles
from coordinator.directory import RunnerDirectory
from coordinator.errors import ApiError, reply_status
from coordinator.memo import Memo
from coordinator.placement import Demand, InFlight, Policy, RandomSource, choose, explain, unreflected
from protocol.commands import Accepted, Command, CommandReply, CreateSession, Rejected, SessionOptions
from protocol.errors import ErrorCode

logger = logging.getLogger(__name__)

MAX_PLACEMENT_TRIES = 3  # runners asked before giving up
DEMAND_CACHE = 256  # agent versions whose demand is kept


class Bus(Protocol):
    async def request(self, runner_id: str, command: Command, timeout_s: float) -> CommandReply: ...


class Stored(Protocol):
    data: bytes | None


class BundleStore(Protocol):
    """The object store of agent bundles (`Layout.bundles`)."""

    async def get(self, name: str) -> Stored: ...


class Placer:
    """Sends sessions to the runners placement chooses; holds this coordinator's in-flight
    placements and the agents' demands."""

    def __init__(
        self, directory: RunnerDirectory, bus: Bus, bundle_store: BundleStore, policy: Policy,
        create_timeout_s: float, rng: RandomSource | None = None,
        clock: Callable[[], float] = time.monotonic,
        observe: Callable[[str, float], None] | None = None,
    ) -> None:
        self._directory = directory
        self._observe = observe  # (outcome placed | failed, seconds): the placement histogram
        self._bus = bus
        self._bundles = bundle_store
        self.policy = policy
        self._timeout_s = create_timeout_s
        self._rng = rng if rng is not None else random.Random()
        self._clock = clock
        self._in_flight: dict[str, InFlight] = {}
        self._demands: Memo[tuple[str, str], Demand] = Memo(DEMAND_CACHE)

    async def place(self, command: CreateSession, exclude: frozenset[str] = frozenset()) -> Accepted:
        """Create the session on the best runner that accepts it.

        Raises:
            ApiError: 503 `no_runner` when no runner can take it (the message says why each
                cannot), or the last runner's refusal.
        """
        started, outcome = time.perf_counter(), "failed"
        try:
            accepted = await self._place(command, exclude)
            outcome = "placed"
            return accepted
        finally:
            if self._observe is not None:
                self._observe(outcome, time.perf_counter() - started)

    async def _place(self, command: CreateSession, exclude: frozenset[str]) -> Accepted:
        demand = await self.demand(command)
        tried = set(exclude)
        last: Rejected | None = None
        for _ in range(MAX_PLACEMENT_TRIES):
            now = self._clock()
            seen = self._directory.snapshot()
            live = {s.advert.runner_id: s for s in seen}
            flights = unreflected(self._in_flight.values(), live, now, self.policy.ttl_s)
            self._in_flight = {f.session_id: f for f in flights}
            decision = choose(demand, seen, flights, now, self._rng, self.policy, tried)
            chosen = decision.chosen
            if chosen is None:
                if last is None:
                    raise ApiError(503, ErrorCode.no_runner, explain(demand, decision),
                                   retryable=True)
                break
            runner_id = chosen.advert.runner_id
            tried.add(runner_id)
            flight = InFlight(command.session_id, runner_id, demand.agent, chosen.memory_mb,
                              chosen.cpu_percent, chosen.warm, now)
            self._in_flight[command.session_id] = flight
            try:
                reply = await self._bus.request(runner_id, command, self._timeout_s)
            finally:
                if self._in_flight.get(command.session_id) is flight:
                    del self._in_flight[command.session_id]
            if isinstance(reply, Accepted):
                self._in_flight[command.session_id] = dataclasses.replace(
                    flight, accepted_at=self._clock())
                return reply
            if isinstance(reply, Rejected):
                last = reply
                logger.warning("runner %s refused session %s: %s", runner_id, command.session_id,
                               reply.error)
                if not reply.error.retryable:
                    break
        if last is None:  # answers a create cannot have: a runner of another kind
            raise ApiError(503, ErrorCode.no_runner, "no runner could take the session",
                           retryable=True)
        raise ApiError.from_info(reply_status(last.error.code), last.error)

    def in_flight(self) -> list[InFlight]:
        """The placements this coordinator counts as in flight (for tests and metrics)."""
        return list(self._in_flight.values())

    async def demand(self, command: CreateSession) -> Demand:
        """What `command`'s session asks of a runner: its agent's limits and labels."""
        base = await self._agent_demand(command.agent.name, command.agent.digest)
        warm_ok = (not command.restore and command.claude_session_id is None
                   and command.options == SessionOptions())
        return base if warm_ok else dataclasses.replace(base, warm_ok=False)

    async def _agent_demand(self, name: str, digest: str) -> Demand:
        async def load() -> tuple[Demand, bool]:
            try:
                result = await self._bundles.get(digest)
                config = await asyncio.to_thread(bundles.agent_config, result.data or b"")
            except Exception as e:  # the runner fetches it too, and says what is wrong
                logger.warning("agent %s: cannot read its ash.toml for placement (%s); placing "
                               "it with the runners' defaults", name, e)
                return Demand(agent=name), False
            return Demand(agent=name, memory_mb=config.limits.memory_mb,
                          cpu_percent=config.limits.cpu_percent,
                          labels=config.placement.labels), True

        return await self._demands.get((name, digest), load)
