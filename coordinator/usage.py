"""What turns cost: the one price table, and the usage row a turn's `done` event becomes.

A turn's cost is the CLI's own `total_cost_usd` when it reported one; otherwise (a CLI that
did not, a turn stopped before its result) it is estimated here from the tokens and the
model's list price. The table is the only place prices live; a model it does not know is
priced as `DEFAULT_PRICE` (a mid-size model), and the row says the cost was estimated.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final

from coordinator.store.usage import UsageRow
from protocol import events


@dataclass(slots=True, frozen=True)
class Price:
    """US dollars per million tokens."""

    input: float
    output: float
    cache_write: float
    cache_read: float

    def cost(self, usage: events.TurnUsage) -> float:
        return (usage.input_tokens * self.input + usage.output_tokens * self.output
                + usage.cache_creation_input_tokens * self.cache_write
                + usage.cache_read_input_tokens * self.cache_read) / 1e6


# Anthropic list prices. A model name matches the longest key it starts with, so dated
# names (claude-sonnet-4-5-20250929) and the CLI's aliases (sonnet, opus, haiku) both resolve.
PRICES: Final[dict[str, Price]] = {
    "claude-opus-4-5": Price(5.0, 25.0, 6.25, 0.50),
    "claude-opus-4": Price(15.0, 75.0, 18.75, 1.50),
    "claude-3-opus": Price(15.0, 75.0, 18.75, 1.50),
    "claude-sonnet-4": Price(3.0, 15.0, 3.75, 0.30),
    "claude-3-7-sonnet": Price(3.0, 15.0, 3.75, 0.30),
    "claude-3-5-sonnet": Price(3.0, 15.0, 3.75, 0.30),
    "claude-haiku-4-5": Price(1.0, 5.0, 1.25, 0.10),
    "claude-3-5-haiku": Price(0.80, 4.0, 1.0, 0.08),
    "claude-3-haiku": Price(0.25, 1.25, 0.30, 0.03),
    "opus": Price(5.0, 25.0, 6.25, 0.50),
    "sonnet": Price(3.0, 15.0, 3.75, 0.30),
    "haiku": Price(1.0, 5.0, 1.25, 0.10),
}
DEFAULT_PRICE: Final = PRICES["claude-sonnet-4"]


def price_of(model: str | None) -> Price:
    """The list price of `model` (DEFAULT_PRICE for None or an unknown model)."""
    if model:
        name = model.lower()
        matches = [key for key in PRICES if name.startswith(key)]
        if matches:
            return PRICES[max(matches, key=len)]
    return DEFAULT_PRICE


def cost_of(usage: events.TurnUsage) -> tuple[float, bool]:
    """(cost in USD, whether it is an estimate)."""
    if usage.total_cost_usd is not None:
        return usage.total_cost_usd, False
    return price_of(usage.model).cost(usage), True


def utc_day(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def usage_row(done: events.Done, *, tenant: str, agent: str, now: float) -> UsageRow:
    """The usage row of the turn `done` ends (zeros from a runner that reports no usage)."""
    usage = done.usage if done.usage is not None else events.TurnUsage()
    cost, estimated = cost_of(usage)
    return UsageRow(
        session_id=done.session_id, turn_id=done.turn_id, tenant=tenant, agent=agent,
        model=usage.model, reason=done.reason, input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_creation_input_tokens=usage.cache_creation_input_tokens,
        cache_read_input_tokens=usage.cache_read_input_tokens, cost_usd=cost,
        cost_estimated=estimated, tool_calls=usage.tool_calls, cpu_s=usage.cpu_s,
        duration_ms=usage.duration_ms, day=utc_day(now), created_at=now,
    )
