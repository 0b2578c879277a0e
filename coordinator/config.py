"""The coordinator's settings: one frozen Struct, loaded once from `ASH_*` variables."""

from __future__ import annotations

import os
from collections.abc import Mapping

import msgspec

from protocol import config as settings


class CoordinatorConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Settings of one coordinator process (env var = `ASH_` + upper-case field name)."""

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
    host: str = "127.0.0.1"
    port: int = 4100
    # The store: sqlite:///abs/path.db (one coordinator) or postgres://user:pw@host:5432/db
    # (any number of coordinators share it); default sqlite:///<home>/ash.db. With Postgres
    # each coordinator keeps at most database_pool_size connections.
    database_url: str = ""
    database_pool_size: int = 10
    max_bundle_mb: int = 50
    create_timeout_s: float = 90.0
    turn_timeout_s: float = 1800.0
    keepalive_s: float = 15.0
    # A runner whose advert is older than this is gone: its sessions become paused (adverts
    # come every ASH_ADVERT_INTERVAL_S, 1 s by default, so three may be lost in a row).
    runner_ttl_s: float = 4.0
    # Lifetimes (coordinator/reaper.py): sessions older than session_ttl_s are ended, active
    # ones without activity for idle_pause_s are paused; 0 turns either off. The sweep that
    # applies them, and pauses the sessions of lost runners, runs every reap_interval_s.
    session_ttl_s: float = 0.0
    idle_pause_s: float = 0.0
    reap_interval_s: float = 1.0
    # Placement (coordinator/placement.py): `pack` fills the fullest runner that still fits,
    # `spread` the emptiest; a runner fits while the limits of its sandboxes stay within its
    # memory and CPU times these ratios; one of the best `placement_choices` is picked at
    # random, so that coordinators do not all send a burst to the same runner.
    placement: str = "pack"
    overcommit_memory: float = 2.0
    overcommit_cpu: float = 16.0
    placement_choices: int = 2
    # Stored credentials (coordinator/credentials.py) are sealed with AES-256-GCM under this
    # key: 32 bytes, base64, given directly or in a file (mode 0600); without one, storing a
    # credential is refused.
    credentials_key: str = ""
    credentials_key_file: str = ""
    # API keys (coordinator/auth.py): `required` (the default) answers 401 without a valid
    # key; `off` is for development only: every caller is the default tenant with all scopes.
    # bootstrap_admin_key: a key (`ash_<12 hex>_<secret>`, e.g. from `ash keys mint`) stored at
    # start as an admin key of the default tenant if its id is new (`ash start` sets it).
    auth: str = "required"
    bootstrap_admin_key: str = ""
    # Per-key limits (coordinator/ratelimit.py), per coordinator process: session creates a
    # minute with bursts, and turns running at once; 0 turns a limit off. 429 + Retry-After.
    rate_session_creates_per_min: float = 60.0
    rate_session_creates_burst: int = 20
    max_concurrent_turns_per_key: int = 16
    log_level: str = "INFO"
    log_format: str = "json"  # json (one object a line, with session/turn ids) | text

    def __post_init__(self) -> None:
        if self.auth not in ("required", "off"):
            raise settings.ConfigError(f"ASH_AUTH must be required or off, not {self.auth}")
        if min(self.rate_session_creates_per_min, self.rate_session_creates_burst,
               self.max_concurrent_turns_per_key) < 0:
            raise settings.ConfigError("rate limits must be >= 0 (0: off)")
        if self.log_format not in ("json", "text"):
            raise settings.ConfigError(f"ASH_LOG_FORMAT must be json or text, not {self.log_format}")
        if not 0 < self.port < 65536:
            raise settings.ConfigError(f"ASH_PORT must be 1-65535, not {self.port}")
        if self.database_pool_size < 1:
            raise settings.ConfigError(
                f"ASH_DATABASE_POOL_SIZE must be at least 1, not {self.database_pool_size}")
        if self.max_bundle_mb <= 0 or self.keepalive_s <= 0 or self.runner_ttl_s <= 0:
            raise settings.ConfigError("sizes and intervals must be positive")
        if self.reap_interval_s <= 0 or min(self.session_ttl_s, self.idle_pause_s) < 0:
            raise settings.ConfigError("ASH_REAP_INTERVAL_S must be > 0; ASH_SESSION_TTL_S and "
                                       "ASH_IDLE_PAUSE_S >= 0 (0: off)")
        if self.placement not in ("pack", "spread"):
            raise settings.ConfigError(f"ASH_PLACEMENT must be pack or spread, not {self.placement}")
        if min(self.overcommit_memory, self.overcommit_cpu) <= 0 or self.placement_choices < 1:
            raise settings.ConfigError("ASH_OVERCOMMIT_MEMORY and ASH_OVERCOMMIT_CPU must be > 0, "
                                       "ASH_PLACEMENT_CHOICES >= 1")

    @property
    def home_dir(self) -> str:
        return os.path.expanduser(self.home)

    @property
    def store_url(self) -> str:
        return self.database_url or f"sqlite:///{os.path.join(self.home_dir, 'ash.db')}"


def from_env(environ: Mapping[str, str]) -> CoordinatorConfig:
    """Load the config; unknown `ASH_*` names and bad values raise `ConfigError`."""
    return settings.load(CoordinatorConfig, environ, settings.ALL_SETTINGS)
