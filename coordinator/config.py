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
    host: str = "127.0.0.1"
    port: int = 4100
    database_url: str = ""  # default: sqlite:///<home>/ash.db
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
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise settings.ConfigError(f"ASH_PORT must be 1-65535, not {self.port}")
        if self.max_bundle_mb <= 0 or self.keepalive_s <= 0 or self.runner_ttl_s <= 0:
            raise settings.ConfigError("sizes and intervals must be positive")
        if self.reap_interval_s <= 0 or min(self.session_ttl_s, self.idle_pause_s) < 0:
            raise settings.ConfigError("ASH_REAP_INTERVAL_S must be > 0; ASH_SESSION_TTL_S and "
                                       "ASH_IDLE_PAUSE_S >= 0 (0: off)")

    @property
    def home_dir(self) -> str:
        return os.path.expanduser(self.home)

    @property
    def store_url(self) -> str:
        return self.database_url or f"sqlite:///{os.path.join(self.home_dir, 'ash.db')}"


def from_env(environ: Mapping[str, str]) -> CoordinatorConfig:
    """Load the config; unknown `ASH_*` names and bad values raise `ConfigError`."""
    return settings.load(CoordinatorConfig, environ, settings.ALL_SETTINGS)
