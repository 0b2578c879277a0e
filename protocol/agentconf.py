"""An agent's own settings: the optional `ash.toml` at the root of its folder.

    [limits]                 # each one optional; unset means the runner's default, and the
    memory_mb = 1024         # runner's caps (ASH_MEMORY_MB, ASH_CPU_PERCENT, ASH_PIDS,
    cpu_percent = 100        # ASH_DISK_MB, ASH_TURN_TIMEOUT_S) clamp what is set
    pids = 256
    disk_mb = 512            # workspace + home, a real filesystem quota (ENOSPC past it)
    turn_timeout_s = 600     # wall clock of one turn

    [pool]
    warm = 1                 # CLIs kept started with the agent's defaults; 0 disables

    [network]
    policy = "allowlist"     # "allowlist" | "none" | "open"
    allow = ["api.example.com", "*.example.org:8443"]

    [placement]
    labels = { zone = "a" }  # only runners started with each of these labels (ASH_RUNNER_LABELS)

    [credentials]
    model = "team-key"       # a stored credential (`ash credentials add`): the model API key

It is config, so unknown keys are errors (STYLE rule 6): a typo such as `memroy_mb` must not
be silently ignored. `parse_agent_config` is pure and lives here, in `protocol`, so that the
coordinator can refuse a bad file at deploy time with the same message a runner would give.
"""

from __future__ import annotations

import re
import tomllib
from typing import Annotated, Literal

import msgspec

from protocol.runners import LABEL_KEY, LABEL_VALUE

FILE_NAME = "ash.toml"
MAX_BYTES = 64 * 1024

NetworkPolicy = Literal["allowlist", "none", "open"]
# A host name, optionally with a leading `*.` wildcard and a port. No scheme, path or address
# range: the egress proxy matches names after it resolves them.
Host = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
        r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*(:[0-9]{1,5})?$",
        max_length=260,
    ),
]


class AgentLimits(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """`[limits]`: per-sandbox resources. None means "the runner's default"."""

    memory_mb: Annotated[int, msgspec.Meta(ge=16)] | None = None
    cpu_percent: Annotated[int, msgspec.Meta(ge=1)] | None = None
    pids: Annotated[int, msgspec.Meta(ge=1)] | None = None
    disk_mb: Annotated[int, msgspec.Meta(ge=8)] | None = None
    turn_timeout_s: Annotated[float, msgspec.Meta(gt=0)] | None = None


class AgentPool(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """`[pool]`: how many sandboxes each runner keeps warm for this agent (0 disables)."""

    warm: Annotated[int, msgspec.Meta(ge=0, le=64)] = 1


class AgentNetwork(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """`[network]`: where the sandbox may connect, through the runner's egress proxy."""

    policy: NetworkPolicy = "allowlist"
    allow: tuple[Host, ...] = ()


LabelKey = Annotated[str, msgspec.Meta(pattern=LABEL_KEY)]
LabelValue = Annotated[str, msgspec.Meta(pattern=LABEL_VALUE)]


class AgentPlacement(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """`[placement]`: which runners may hold this agent's sandboxes."""

    labels: dict[LabelKey, LabelValue] = {}


class AgentCredentials(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """`[credentials]`: stored credentials (`ash credentials add`) the agent's sessions use.
    `model`: the model API key, sent by the runner's egress proxy in place of the sandbox's
    placeholder; a session's own `credential` wins over it."""

    model: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")] | None = None


class AgentConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The whole `ash.toml`; an agent without one gets `AgentConfig()`."""

    limits: AgentLimits = AgentLimits()
    pool: AgentPool = AgentPool()
    network: AgentNetwork = AgentNetwork()
    placement: AgentPlacement = AgentPlacement()
    credentials: AgentCredentials = AgentCredentials()


class AgentConfigError(ValueError):
    """`ash.toml` is not valid TOML or does not fit `AgentConfig`; the message names the key."""


def parse_agent_config(text: str | bytes) -> AgentConfig:
    """Parse the text of an `ash.toml`.

    Raises:
        AgentConfigError: with a message such as
            "ash.toml: unknown key `memroy_mb` in [limits]" or
            "ash.toml: [limits] memory_mb: Expected `int` >= 16, got 8".
    """
    if isinstance(text, bytes):
        if len(text) > MAX_BYTES:
            raise AgentConfigError(f"{FILE_NAME}: larger than {MAX_BYTES} bytes")
        try:
            text = text.decode()
        except UnicodeDecodeError as e:
            raise AgentConfigError(f"{FILE_NAME}: not UTF-8 ({e})") from e
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise AgentConfigError(f"{FILE_NAME}: not valid TOML: {e}") from e
    try:
        return msgspec.convert(data, AgentConfig)
    except msgspec.ValidationError as e:
        raise AgentConfigError(f"{FILE_NAME}: {_readable(str(e))}") from e


_UNKNOWN = re.compile(r"^Object contains unknown field `([^`]+)`(?: - at `\$\.?(.*)`)?$")
_AT = re.compile(r"^(.*) - at `(key` in `)?\$\.?(.*)`$")
_REGEX = re.compile(r"matching regex '.*'$")
_PATTERNS = {  # what a value that misses its pattern should look like, by table
    "network": "that is a host name such as api.example.com or *.example.com:443",
    "placement": "that is a label: letters, digits and '._-' (keys also '/'), at most 63",
}


def _readable(message: str) -> str:
    """msgspec's "... - at `$.limits.memory_mb`" as "[limits] memory_mb: ..."."""
    if m := _UNKNOWN.match(message):
        key, table = m.groups()
        where = f" in [{table}]" if table else " at the top level"
        return f"unknown key `{key}`{where}"
    if m := _AT.match(message):
        problem, of_key, path = m.groups()
        table, _, key = path.partition(".")
        problem = problem.replace(" | null", "")
        if table in _PATTERNS:
            problem = _REGEX.sub(_PATTERNS[table], problem)
        if of_key:
            key = f"{key} (a key)"
        return f"[{table}] {key}: {problem}" if key else f"[{table}]: {problem}"
    return message
