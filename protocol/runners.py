"""What a runner says about itself in the registry (KV bucket `subjects.RUNNERS_BUCKET`).

An advert carries what placement needs to choose a runner without asking it
(`coordinator.placement`): its capacity and what its sandboxes have committed of it, its warm
pools, its labels, whether it is draining, and the protocol it speaks. Every field has a
default, so that runners and coordinators of neighbouring releases read each other's adverts.
"""

from __future__ import annotations

import re

import msgspec

from protocol import PROTOCOL_VERSION

# Labels are `key=value` pairs an operator gives a runner (ASH_RUNNER_LABELS="zone=a,gpu=no")
# and an agent may require (its ash.toml `[placement] labels`).
LABEL_KEY = r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?$"
LABEL_VALUE = r"^[A-Za-z0-9._-]{0,63}$"
_KEY, _VALUE = re.compile(LABEL_KEY), re.compile(LABEL_VALUE)


class SessionActivity(msgspec.Struct, kw_only=True, frozen=True):
    """One session a runner holds a sandbox for, as of the advert.

    Durations, not timestamps, so that no two machines' clocks are compared: a coordinator
    places them on its own clock by the time the advert arrived.
    """

    age_s: float = 0.0  # since the sandbox became this session's on this runner
    idle_s: float = 0.0  # since the last command about the session (turn, exec, files, ...)
    busy: bool = False  # a turn or an exec runs now: activity, whatever `idle_s` says
    frozen: bool = False  # paused warm: the sandbox is held by the cgroup freezer
    ending: bool = False  # the session left this runner (ended, evicted): its sandbox is going


class Resources(msgspec.Struct, kw_only=True, frozen=True):
    """An amount of memory and CPU; CPU in percent of one core (a 4-core machine has 400)."""

    memory_mb: int = 0
    cpu_percent: int = 0


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
    # The wire protocol it speaks (`protocol.PROTOCOL_VERSION`): placement skips a runner that
    # speaks another, so a rolling upgrade never sends a command a runner cannot read.
    protocol: int = PROTOCOL_VERSION
    labels: dict[str, str] = {}
    # Capacity, for placement; None from a runner too old to say (placement counts its slots).
    # total: the machine's memory and CPUs, or the runner's cgroup limits if lower.
    # free: memory actually available now (MemAvailable, or under the cgroup limit), and the
    #   CPU left idle by the load average.
    # committed: the sum of the limits of the sandboxes it holds, sessions' and warm ones.
    # sandbox: its per-sandbox default (and cap): what an agent that sets no limit gets.
    total: Resources | None = None
    free: Resources | None = None
    committed: Resources | None = None
    sandbox: Resources | None = None


def parse_labels(text: str) -> dict[str, str]:
    """`zone=a,gpu=no` as {"zone": "a", "gpu": "no"}; blank means no labels.

    Raises:
        ValueError: an entry is not `key=value`, a key or value has characters other than
            letters, digits and `._-` (and `/` in keys), or a key is repeated.
    """
    labels: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, eq, value = (s.strip() for s in item.partition("="))
        if not eq or not _KEY.match(key) or not _VALUE.match(value):
            raise ValueError(f"label {item!r} is not key=value (letters, digits, '._-'; "
                             "keys may also hold '/')")
        if key in labels:
            raise ValueError(f"label {key!r} is given twice")
        labels[key] = value
    return labels
