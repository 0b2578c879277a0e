"""What a sandbox is made of: host directories, the agent's CLI, its environment and its limits.

A `SandboxSpec` is validated when it is built (directly or decoded by msgspec), so everything
downstream (the bwrap argv builder, the cgroup backends, the launcher) can trust it. Paths are
host paths, absolute and normalised; the in-sandbox layout is fixed by the constants below.

Host layout the launcher expects (only the marked paths are bound into the sandbox):

    <state_dir>/            mode 0700, private to the runner, never bound as a whole
        bwrap.args          NUL-separated bwrap options (holds env secrets), never bound
        etc/passwd ...      generated files, each ro-bound at /etc/<name>         [bound ro]
    <workspace>/            rw at /workspace, also the cwd                           [bound rw]
    <home>/                 rw at /home/agent                                         [bound rw]

`workspace` and `home` usually live inside `state_dir`, but they may be anywhere, as long as
`state_dir` is not inside anything that is bound (that would expose the args file).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping

import msgspec

# In-sandbox layout. The agent sees the same paths in every sandbox on every host.
CLI_PATH = "/opt/ash/bin/cli"
WORKSPACE_DIR = "/workspace"
HOME_DIR = "/home/agent"
AGENT_USER = "agent"
AGENT_UID = 1000
AGENT_GID = 1000
HOSTNAME = "ash-sandbox"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Variables passed through from `SandboxSpec.env` by exact name. Everything else is dropped unless
# it has one of ENV_PREFIXES or the caller lists it in `extra_env_keys`. The list is short on
# purpose: the runner's own environment holds NATS credentials and the like, and a spec built
# from a copy of os.environ must not carry them into the sandbox.
ENV_ALLOWLIST: frozenset[str] = frozenset(
    {
        # locale and terminal
        "LANG",
        "LANGUAGE",
        "LC_ALL",
        "LC_CTYPE",
        "LC_MESSAGES",
        "TERM",
        "COLORTERM",
        "NO_COLOR",
        "FORCE_COLOR",
        "TZ",
        # the egress proxy (a later issue points these at the runner's proxy)
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
        # Claude Code settings that do not carry its prefix
        "DISABLE_TELEMETRY",
        "DISABLE_AUTOUPDATER",
        "DISABLE_ERROR_REPORTING",
        "DISABLE_NON_ESSENTIAL_MODEL_CALLS",
        "MAX_THINKING_TOKENS",
        "MCP_TIMEOUT",
        "MCP_TOOL_TIMEOUT",
        "BASH_DEFAULT_TIMEOUT_MS",
        "BASH_MAX_TIMEOUT_MS",
        "BASH_MAX_OUTPUT_LENGTH",
        # set by claude-agent-sdk when it spawns the CLI
        "CLAUDE_AGENT_SDK_VERSION",
        "CLAUDE_AGENT_SDK_CLIENT_APP",
    }
)
ENV_PREFIXES: tuple[str, ...] = ("ANTHROPIC_", "CLAUDE_CODE_", "ASH_AGENT_")

# Set by the builder and never taken from the caller: they describe the sandbox, not the host.
FIXED_ENV: Mapping[str, str] = {
    "HOME": HOME_DIR,
    "USER": AGENT_USER,
    "LOGNAME": AGENT_USER,
    "SHELL": "/bin/bash",
    "PATH": DEFAULT_PATH,
    "PWD": WORKSPACE_DIR,
    "TMPDIR": "/tmp",
}

_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Files the builder generates into <state_dir>/etc and ro-binds at /etc/<name>.
GENERATED_ETC: tuple[str, ...] = ("passwd", "group", "hosts", "hostname", "nsswitch.conf")

# The sandbox's own machinery. An extra bind may not land on or below these ...
_RESERVED_TREES = (
    "/proc",
    "/dev",
    "/tmp",
    WORKSPACE_DIR,
    HOME_DIR,
    CLI_PATH,
    *(f"/etc/{name}" for name in GENERATED_ETC),
)
# ... nor hide any of these by landing on them or on a parent (below them is fine, e.g. a
# managed-settings file under /etc/claude-code, or helper scripts under /opt/ash/scripted).
_RESERVED_ROOTS = (*_RESERVED_TREES, "/usr", "/etc", "/bin", "/sbin", "/lib", "/lib64")


class Limits(msgspec.Struct, kw_only=True, frozen=True):
    """Resource limits of one sandbox, enforced by its cgroup.

    `cpu_percent` is a share of one core: 100 is one full core, 50 half a core, 200 two cores.
    Memory is a hard limit without swap; a sandbox that exceeds it is OOM-killed.
    """

    memory_mb: int = 2048
    pids: int = 512
    cpu_percent: int = 100
    tmp_mb: int | None = None  # size cap of the sandbox's /tmp tmpfs; None: the kernel's default

    def __post_init__(self) -> None:
        # Checked here rather than with msgspec.Meta, which only applies when decoding.
        if self.memory_mb < 16:
            raise ValueError(f"memory_mb must be >= 16, got {self.memory_mb}")
        if self.tmp_mb is not None and self.tmp_mb < 1:
            raise ValueError(f"tmp_mb must be >= 1, got {self.tmp_mb}")
        if self.pids < 1:
            raise ValueError(f"pids must be >= 1, got {self.pids}")
        if self.cpu_percent < 1:
            raise ValueError(f"cpu_percent must be >= 1, got {self.cpu_percent}")


class SandboxSpec(msgspec.Struct, kw_only=True, frozen=True):
    """Everything needed to build one sandbox; validated on construction.

    `env` is the caller's idea of the environment inside; only allowed keys survive (see
    `allowed_env`).

    Network, one of three:
      `netns="/var/run/netns/<slot>"`   the sandbox runs in that network namespace (a network
                                        slot whose only way out is the egress proxy); this is
                                        what the runner uses
      `share_net=True`, no netns        the runner's own network namespace (tests, development)
      `share_net=False`                 a fresh empty one: loopback only
    """

    sandbox_id: str
    state_dir: str
    workspace: str
    home: str
    cli: str | None = None
    extra_ro_binds: tuple[tuple[str, str], ...] = ()
    env: dict[str, str] = {}
    extra_env_keys: tuple[str, ...] = ()
    share_net: bool = True
    netns: str | None = None
    limits: Limits = Limits()

    def __post_init__(self) -> None:
        if not _ID_RE.match(self.sandbox_id):
            raise ValueError(f"sandbox_id must match {_ID_RE.pattern}, got {self.sandbox_id!r}")
        _check_path("state_dir", self.state_dir)
        _check_path("workspace", self.workspace)
        _check_path("home", self.home)
        if self.cli is not None:
            _check_path("cli", self.cli)
        if self.netns is not None:
            _check_path("netns", self.netns)
            if not self.share_net:
                raise ValueError("netns needs share_net=True (bwrap keeps the slot's netns)")
        for host, inside in self.extra_ro_binds:
            _check_path("extra_ro_binds host path", host)
            _check_path("extra_ro_binds sandbox path", inside)
            if any(_within(inside, r) for r in _RESERVED_TREES) or any(
                _within(r, inside) for r in _RESERVED_ROOTS
            ):
                raise ValueError(f"extra_ro_binds may not bind at {inside!r}")
        if self.workspace == self.home:
            raise ValueError("workspace and home must be different directories")
        # The args file in state_dir holds secrets; nothing that is bound may contain it.
        for name, host in self._bound_host_paths():
            if _within(self.state_dir, host):
                raise ValueError(f"state_dir {self.state_dir!r} is inside {name} {host!r}")
        for key, value in self.env.items():
            if not _ENV_KEY_RE.match(key):
                raise ValueError(f"bad environment variable name {key!r}")
            if "\0" in value:
                raise ValueError(f"environment variable {key} contains a NUL byte")
        for key in self.extra_env_keys:
            if not _ENV_KEY_RE.match(key):
                raise ValueError(f"bad environment variable name {key!r} in extra_env_keys")

    def _bound_host_paths(self) -> Iterable[tuple[str, str]]:
        yield "workspace", self.workspace
        yield "home", self.home
        if self.cli is not None:
            yield "cli", self.cli
        for host, _ in self.extra_ro_binds:
            yield "an extra bind", host


def allowed_env(env: Mapping[str, str], extra_keys: Iterable[str] = ()) -> dict[str, str]:
    """The subset of `env` that may enter a sandbox, with the fixed variables laid on top.

    A key passes if it is in ENV_ALLOWLIST, starts with one of ENV_PREFIXES, or is in
    `extra_keys`. FIXED_ENV always wins, so a caller cannot point HOME or PATH at host paths.
    """
    extra = frozenset(extra_keys)
    kept = {
        k: v
        for k, v in env.items()
        if k in ENV_ALLOWLIST or k in extra or k.startswith(ENV_PREFIXES)
    }
    kept.update(FIXED_ENV)
    return kept


def _check_path(name: str, path: str) -> None:
    # Normalised absolute paths only: no "..", no "//", no trailing slash, no NUL (the args
    # file is NUL-separated, so a NUL in a path would smuggle in extra bwrap options).
    if "\0" in path or not path.startswith("/") or os.path.normpath(path) != path:
        raise ValueError(f"{name} must be a normalised absolute path, got {path!r}")
    if path == "/":
        raise ValueError(f"{name} may not be /")


def _within(path: str, parent: str) -> bool:
    """True if `path` is `parent` or lies below it (both normalised absolute paths)."""
    return path == parent or path.startswith(parent.rstrip("/") + "/")
