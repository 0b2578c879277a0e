"""Printing a config (check-config, logs) never shows a secret."""

from __future__ import annotations

import subprocess
import sys

from coordinator.config import from_env as coordinator_config
from protocol.config import describe, redact_url
from runner.config import from_env as runner_config


def test_urls_lose_their_password_and_keep_the_rest() -> None:
    assert redact_url("postgresql://ash:hunter2@db.internal:5432/ash") == \
        "postgresql://ash:***@db.internal:5432/ash"
    assert redact_url("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222"
    assert redact_url("sqlite:///var/lib/ash/ash.db") == "sqlite:///var/lib/ash/ash.db"


def test_describe_hides_every_secret_of_both_processes() -> None:
    env = {
        "ASH_NATS_URL": "nats://ash:natspw1@n1:4222,nats://ash:natspw1@n2:4222",
        "ASH_NATS_PASSWORD": "natspw2",
        "ASH_DATABASE_URL": "postgresql://ash:dbpw3@db:5432/ash",
        "ANTHROPIC_API_KEY": "sk-ant-apikey4",
    }
    text = describe(coordinator_config(env)) + "\n" + describe(runner_config(env))
    for secret in ("natspw1", "natspw2", "dbpw3", "sk-ant-apikey4"):
        assert secret not in text
    assert "ASH_NATS_PASSWORD=***" in text
    assert "ASH_DATABASE_URL=postgresql://ash:***@db:5432/ash" in text


def test_check_config_prints_the_redacted_settings() -> None:
    env = {"ASH_NATS_PASSWORD": "natspw5", "PATH": "/usr/bin:/bin"}
    for module in ("coordinator", "runner"):
        out = subprocess.run([sys.executable, "-m", module, "check-config"], env=env,
                             capture_output=True, text=True, check=True).stdout
        assert "ASH_NATS_PASSWORD=***" in out and "natspw5" not in out
