"""The runner's settings: one frozen Struct, loaded once from `ASH_*` (and ANTHROPIC_*) env."""

from __future__ import annotations

import hashlib
import os
import re
import socket
from collections.abc import Mapping

import msgspec

from protocol import config as settings
from protocol.runners import parse_labels


class RunnerConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Settings of one runner process (env var = `ASH_` + upper-case field name).

    `anthropic_api_key` and `anthropic_base_url` come from the standard ANTHROPIC_API_KEY and
    ANTHROPIC_BASE_URL variables. With no key, the runner serves agents from the offline
    scripted model unless `scripted_model` is `off`.
    """

    home: str = "~/.ash"
    nats_url: str = "nats://127.0.0.1:4222"
    # Logging in to NATS (deploy/nats_auth.py writes a server config with a user per role):
    # user and password, the CA that signed the server's certificate (TLS; also on with a
    # tls:// URL), and a client certificate and key for servers that verify clients.
    nats_user: str = ""
    nats_password: str = ""
    nats_tls_ca: str = ""
    nats_tls_cert: str = ""
    nats_tls_key: str = ""
    runner_id: str = ""  # default: <hostname>-<hash of runner_dir>
    runner_dir: str = ""  # default: <home>/runner
    # Advertised for placement: agents whose ash.toml [placement] labels asks for some land
    # only on runners that carry them all, e.g. "zone=a,gpu=no".
    runner_labels: str = ""
    cli: str = "claude"  # claude (the CLI bundled with claude-agent-sdk) | standin | a path
    model_base_url: str = ""  # default: ANTHROPIC_BASE_URL, else the API's own
    scripted_model: str = "auto"  # auto | off
    max_sessions: int = 64
    advert_interval_s: float = 1.0  # coordinators treat 4 s (ASH_RUNNER_TTL_S) of silence as gone
    # On SIGTERM: running turns get this long to finish before they are interrupted; then the
    # sessions are snapshotted and their sandboxes ended (a second signal skips the wait).
    drain_timeout_s: float = 30.0
    # Per-sandbox limits: the default for agents whose ash.toml does not set one, and the cap
    # for those that do (an agent may ask for less, never more).
    memory_mb: int = 2048
    pids: int = 512
    cpu_percent: int = 100
    disk_mb: int = 1024  # workspace + home, a loop-mounted ext4 of this size
    tmp_mb: int = 256  # /tmp, a size-capped tmpfs (its pages count against memory_mb)
    turn_timeout_s: float = 1800.0
    # Warm pools: per-agent started CLIs (ash.toml [pool] warm, capped by pool_warm_max), a
    # generic pool of ready sandbox disks, and how long an idle warm sandbox is kept.
    pool_warm_max: int = 4
    pool_generic: int = 2
    pool_idle_s: float = 600.0
    # Snapshots (workspace + HOME to the object store, for cold resume and fork): taken after
    # this long without a new turn or file change (bursts coalesce), and at most this big (the
    # files' sizes before compression).
    snapshot_debounce_s: float = 2.0
    snapshot_max_mb: int = 1024
    # Network: each sandbox in its own network namespace ("slots"), whose only way out is this
    # runner's egress proxy; "host" shares the runner's network (development without root).
    sandbox_net: str = "slots"
    egress_port: int = 3128
    net_subnet: str = "10.231.0.0/16"  # /30 per slot; pick one the host's networks do not use
    net_prefix: str = ""  # netns/interface name prefix; default derived from the runner id
    log_level: str = "INFO"
    log_format: str = "json"  # json (one object a line, with runner/session/turn ids) | text
    # Prometheus /metrics over HTTP on this port (0: not served) and address.
    runner_metrics_port: int = 0
    runner_metrics_host: str = "127.0.0.1"
    anthropic_api_key: str = ""
    anthropic_base_url: str = ""

    def __post_init__(self) -> None:
        try:
            parse_labels(self.runner_labels)
        except ValueError as e:
            raise settings.ConfigError(f"ASH_RUNNER_LABELS: {e}") from e
        if self.scripted_model not in ("auto", "off"):
            raise settings.ConfigError("ASH_SCRIPTED_MODEL must be auto or off")
        if self.max_sessions <= 0 or self.advert_interval_s <= 0:
            raise settings.ConfigError("ASH_MAX_SESSIONS and ASH_ADVERT_INTERVAL_S must be > 0")
        if self.drain_timeout_s < 0:
            raise settings.ConfigError("ASH_DRAIN_TIMEOUT_S must be >= 0")
        if min(self.memory_mb - 15, self.pids, self.cpu_percent, self.disk_mb - 7, self.tmp_mb) < 1:
            raise settings.ConfigError("ASH_MEMORY_MB >= 16, ASH_DISK_MB >= 8, and ASH_PIDS, "
                                       "ASH_CPU_PERCENT, ASH_TMP_MB >= 1 are required")
        if self.sandbox_net not in ("slots", "host"):
            raise settings.ConfigError("ASH_SANDBOX_NET must be slots or host")
        if min(self.pool_warm_max, self.pool_generic) < 0 or self.pool_idle_s <= 0:
            raise settings.ConfigError("ASH_POOL_WARM_MAX, ASH_POOL_GENERIC must be >= 0 and "
                                       "ASH_POOL_IDLE_S > 0")
        if self.log_format not in ("json", "text"):
            raise settings.ConfigError(f"ASH_LOG_FORMAT must be json or text, not {self.log_format}")
        if not 0 <= self.runner_metrics_port < 65536:
            raise settings.ConfigError("ASH_RUNNER_METRICS_PORT must be 0 (off) to 65535")
        if self.snapshot_debounce_s <= 0 or self.snapshot_max_mb < 1:
            raise settings.ConfigError("ASH_SNAPSHOT_DEBOUNCE_S must be > 0 and "
                                       "ASH_SNAPSHOT_MAX_MB >= 1")

    @property
    def labels(self) -> dict[str, str]:
        return parse_labels(self.runner_labels)

    @property
    def data_dir(self) -> str:
        return os.path.expanduser(self.runner_dir or os.path.join(self.home, "runner"))

    @property
    def id(self) -> str:
        if self.runner_id:
            return self.runner_id
        host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:40] or "runner"
        return f"{host}-{hashlib.sha256(self.data_dir.encode()).hexdigest()[:8]}"

    @property
    def netns_prefix(self) -> str:
        # Short (interface names are at most 15 bytes) and distinct per runner on one host.
        return self.net_prefix or "a" + hashlib.sha256(self.id.encode()).hexdigest()[:5]

    @property
    def uses_scripted_model(self) -> bool:
        return not self.anthropic_api_key and self.scripted_model == "auto"


def from_env(environ: Mapping[str, str]) -> RunnerConfig:
    """Load the config; unknown `ASH_*` names and bad values raise `ConfigError`."""
    extra = {
        "anthropic_api_key": environ.get("ANTHROPIC_API_KEY", ""),
        "anthropic_base_url": environ.get("ANTHROPIC_BASE_URL", ""),
    }
    return settings.load(RunnerConfig, environ, settings.ALL_SETTINGS, extra)
