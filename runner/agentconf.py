"""What an agent's `ash.toml` means on this runner: read from the unpacked bundle, clamped by
the runner's caps.

    <bundle folder>/ash.toml --load()--> AgentConfig --resolve(caps)--> Effective

`load` reads the file (absent means `AgentConfig()`); `resolve` is pure: every limit the agent
leaves unset takes the runner's value, and every limit it sets is clamped to the runner's value,
so an agent can ask for less than the runner allows, never more.

MCP servers: `load_mcp_servers` reads the agent's `.mcp.json` (`{"mcpServers": {name: entry}}`),
and `merge_mcp_servers` lays a session's own servers over them (a name in both: the session's
entry wins, whole). The runner hands the result to the CLI as its only MCP config
(`--mcp-config` with `--strict-mcp-config`), so what runs is exactly this merge; stdio servers
start inside the sandbox, HTTP ones connect through the egress proxy under the agent's policy.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import Mapping
import dataclasses
from dataclasses import dataclass
from typing import Any

from runner.egress.policy import Refused, Rule, check_host
from protocol.agentconf import FILE_NAME, AgentConfig, AgentConfigError, AgentNetwork, parse_agent_config

__all__ = ["Agent", "AgentConfigError", "Caps", "Effective", "load", "load_mcp_servers",
           "merge_mcp_servers", "resolve"]

MCP_FILE = ".mcp.json"
MCP_MAX_BYTES = 256 * 1024


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
    mcp_servers: Mapping[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # .mcp.json


def load_mcp_servers(folder: str) -> dict[str, dict[str, Any]]:
    """The MCP servers of the agent's `.mcp.json`, or {} when it has none.

    Raises:
        AgentConfigError: the file is not JSON of the shape `{"mcpServers": {name: {...}}}`.
    """
    path = os.path.join(folder, MCP_FILE)
    try:
        with open(path, "rb") as f:
            data = f.read(MCP_MAX_BYTES + 1)
    except FileNotFoundError:
        return {}
    except IsADirectoryError as e:
        raise AgentConfigError(f"{MCP_FILE} is a directory") from e
    if len(data) > MCP_MAX_BYTES:
        raise AgentConfigError(f"{MCP_FILE}: larger than {MCP_MAX_BYTES} bytes")
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise AgentConfigError(f"{MCP_FILE}: not valid JSON: {e}") from e
    servers = doc.get("mcpServers", {}) if isinstance(doc, dict) else None
    if not isinstance(servers, dict) or not all(
            isinstance(k, str) and isinstance(v, dict) for k, v in servers.items()):
        raise AgentConfigError(f'{MCP_FILE}: expected {{"mcpServers": {{"name": {{...}}}}}}')
    return servers


def merge_mcp_servers(
    agent: Mapping[str, dict[str, Any]], session: Mapping[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """The agent's servers with the session's laid over them (same name: the session's)."""
    return {**agent, **session}


def mcp_refusals(servers: Mapping[str, Mapping[str, Any]], rule: Rule) -> dict[str, str]:
    """Why the egress proxy will refuse each HTTP/SSE server under the sandbox's `rule`, by
    name (servers it lets through are left out). The proxy is what enforces it; this tells the
    reason, so that such a server is reported `failed` for it rather than for a symptom."""
    out: dict[str, str] = {}
    for name, spec in servers.items():
        url = spec.get("url")
        if spec.get("type", "stdio") == "stdio" or not isinstance(url, str):
            continue
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            check_host(parts.hostname or "", port, rule)
        except Refused as e:
            out[name] = f"ash egress: {e.reason}"
        except ValueError as e:
            out[name] = f"ash egress: bad URL {url!r}: {e}"
    return out
