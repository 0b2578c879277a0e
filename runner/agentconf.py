"""What an agent's `ash.toml` means on this runner: read from the unpacked bundle, clamped by
the runner's caps.

    <bundle folder>/ash.toml --load()--> AgentConfig --resolve(caps)--> Effective

`load` reads the file (absent means `AgentConfig()`); `resolve` is pure: every limit the agent
leaves unset takes the runner's value, and every limit it sets is clamped to the runner's value,
so an agent can ask for less than the runner allows, never more.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from protocol.agentconf import FILE_NAME, AgentConfig, AgentConfigError, AgentNetwork, parse_agent_config

__all__ = ["Agent", "AgentConfigError", "Caps", "Effective", "load", "resolve"]


@dataclass(frozen=True, slots=True)
class Caps:
    """The runner-wide ceilings (and defaults) for every sandbox, from its config."""

    memory_mb: int
    cpu_percent: int
    pids: int
    disk_mb: int
    turn_timeout_s: float
    warm: int  # most warm sandboxes one agent may ask for


@dataclass(frozen=True, slots=True)
class Effective:
    """An agent's settings as this runner applies them."""

    memory_mb: int
    cpu_percent: int
    pids: int
    disk_mb: int
    turn_timeout_s: float
    warm: int
    network: AgentNetwork


def load(folder: str) -> AgentConfig:
    """The agent's `ash.toml` from its unpacked folder, or the defaults when it has none.

    Raises:
        AgentConfigError: the file is not valid; the message names the key.
    """
    path = os.path.join(folder, FILE_NAME)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return AgentConfig()
    except IsADirectoryError as e:
        raise AgentConfigError(f"{FILE_NAME} is a directory") from e
    return parse_agent_config(data)


def resolve(config: AgentConfig, caps: Caps) -> Effective:
    """Apply `caps` to `config`: unset -> the cap, set -> at most the cap."""
    lim = config.limits

    def pick(asked: int | float | None, cap: int | float) -> int | float:
        return cap if asked is None else min(asked, cap)

    return Effective(
        memory_mb=int(pick(lim.memory_mb, caps.memory_mb)),
        cpu_percent=int(pick(lim.cpu_percent, caps.cpu_percent)),
        pids=int(pick(lim.pids, caps.pids)),
        disk_mb=int(pick(lim.disk_mb, caps.disk_mb)),
        turn_timeout_s=float(pick(lim.turn_timeout_s, caps.turn_timeout_s)),
        warm=min(config.pool.warm, caps.warm),
        network=config.network,
    )


@dataclass(frozen=True, slots=True)
class Agent:
    """One version of an agent as a runner knows it: unpacked and configured."""

    name: str
    digest: str
    folder: str  # the unpacked bundle, read-only; sandboxes copy it
    settings: Effective
