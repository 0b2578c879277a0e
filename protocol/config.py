"""Loading a process's settings from `ASH_*` environment variables, one frozen Struct each.

Pure helper shared by the composition roots: `load(StructType, environ, known_elsewhere)`
turns `ASH_FIELD_NAME=value` into the Struct's `field_name`, coercing strings to the field
types, and fails on an `ASH_*` name that no process knows (a typo must not be ignored).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import msgspec

T = TypeVar("T", bound=msgspec.Struct)

PREFIX = "ASH_"


class ConfigError(ValueError):
    """A setting is unknown or has a value of the wrong type."""


def env_name(field: str) -> str:
    return PREFIX + field.upper()


def load(
    type_: type[T],
    environ: Mapping[str, str],
    known_elsewhere: Iterable[str] = (),
    extra: Mapping[str, Any] | None = None,
) -> T:
    """Build `type_` from `ASH_*` variables in `environ` (plus `extra` values).

    Raises:
        ConfigError: an `ASH_*` variable is neither a field of `type_` nor in
            `known_elsewhere`, or a value does not convert to its field's type.
    """
    fields = {env_name(f): f for f in type_.__struct_fields__}
    ignored = set(known_elsewhere)
    values: dict[str, Any] = dict(extra or {})
    for key, value in environ.items():
        if not key.startswith(PREFIX):
            continue
        if key in fields:
            values[fields[key]] = value
        elif key not in ignored:
            close = difflib.get_close_matches(key, [*fields, *ignored], n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"unknown setting {key}{hint}")
    try:
        return msgspec.convert(values, type_, strict=False)
    except msgspec.ValidationError as e:
        raise ConfigError(f"bad setting: {e}") from e


# Fields that hold a secret: shown as "***" wherever a config is printed or logged.
SECRET_FIELDS = frozenset({"nats_password", "anthropic_api_key", "credentials_key",
                           "bootstrap_admin_key"})


def redact_url(url: str) -> str:
    """`url` with any password replaced by `***` (a database or NATS URL may carry one)."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = f"{parts.username or ''}:***@{parts.hostname or ''}"
        if parts.port is not None:
            netloc += f":{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "***"  # unparseable: show nothing of it rather than risk a secret


def describe(config: msgspec.Struct) -> str:
    """`config` as `ASH_NAME=value` lines for a human, with every secret redacted."""
    lines = []
    for field in config.__struct_fields__:
        value = getattr(config, field)
        if field in SECRET_FIELDS:
            shown = "***" if value else ""
        elif isinstance(value, str) and "://" in value:
            shown = ",".join(redact_url(u) for u in value.split(","))
        else:
            shown = str(value)
        lines.append(f"{env_name(field)}={shown}")
    return "\n".join(lines)


# Every ASH_* variable any Ash process reads. A process ignores the others' settings, so one
# env file can serve a whole machine; a name outside this set is a typo. A test keeps this
# set equal to the union of the processes' config fields.
ALL_SETTINGS: frozenset[str] = frozenset(
    {
        # shared
        "ASH_HOME",
        "ASH_NATS_URL",
        "ASH_LOG_LEVEL",
        "ASH_AUTH",
        "ASH_BOOTSTRAP_ADMIN_KEY",
        "ASH_RATE_SESSION_CREATES_PER_MIN",
        "ASH_RATE_SESSION_CREATES_BURST",
        "ASH_MAX_CONCURRENT_TURNS_PER_KEY",
        "ASH_CREDENTIALS_KEY",
        "ASH_CREDENTIALS_KEY_FILE",
        "ASH_LOG_FORMAT",
        "ASH_NATS_USER",
        "ASH_NATS_PASSWORD",
        "ASH_NATS_TLS_CA",
        "ASH_NATS_TLS_CERT",
        "ASH_NATS_TLS_KEY",
        # coordinator
        "ASH_HOST",
        "ASH_PORT",
        "ASH_DATABASE_URL",
        "ASH_DATABASE_POOL_SIZE",
        "ASH_MAX_BUNDLE_MB",
        "ASH_CREATE_TIMEOUT_S",
        "ASH_TURN_TIMEOUT_S",
        "ASH_KEEPALIVE_S",
        "ASH_RUNNER_TTL_S",
        "ASH_SESSION_TTL_S",
        "ASH_IDLE_PAUSE_S",
        "ASH_REAP_INTERVAL_S",
        "ASH_PLACEMENT",
        "ASH_OVERCOMMIT_MEMORY",
        "ASH_OVERCOMMIT_CPU",
        "ASH_PLACEMENT_CHOICES",
        # runner
        "ASH_RUNNER_ID",
        "ASH_RUNNER_DIR",
        "ASH_RUNNER_LABELS",
        "ASH_CLI",
        "ASH_MODEL_BASE_URL",
        "ASH_SCRIPTED_MODEL",
        "ASH_MAX_SESSIONS",
        "ASH_ADVERT_INTERVAL_S",
        "ASH_DRAIN_TIMEOUT_S",
        "ASH_MEMORY_MB",
        "ASH_PIDS",
        "ASH_CPU_PERCENT",
        "ASH_SANDBOX_NET",
        "ASH_EGRESS_PORT",
        "ASH_NET_SUBNET",
        "ASH_NET_PREFIX",
        "ASH_DISK_MB",
        "ASH_TMP_MB",
        "ASH_POOL_WARM_MAX",
        "ASH_POOL_GENERIC",
        "ASH_POOL_IDLE_S",
        "ASH_SNAPSHOT_DEBOUNCE_S",
        "ASH_SNAPSHOT_MAX_MB",
        "ASH_RUNNER_METRICS_PORT",
        "ASH_RUNNER_METRICS_HOST",
        # client
        "ASH_URL",
        "ASH_API_KEY",
    }
)
