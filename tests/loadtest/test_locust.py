"""The locust file runs headless against a real stack: requests made, none failed, no gaps."""

from __future__ import annotations

import csv
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ash.embedded_nats import start_nats
from tests.procs import ROOT, Stack, clean_env

pytestmark = pytest.mark.e2e


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    nats = start_nats(tmp_path / "nats", log_path=tmp_path / "nats.log")
    s = Stack(tmp_path, nats.url)
    try:
        # Locust's users create sessions faster than ended ones leave the runner's advert, and
        # each commits a 2 GB memory cap: commit loosely, this test is about the load tool.
        s.start_coordinator(ASH_OVERCOMMIT_MEMORY="1000", ASH_OVERCOMMIT_CPU="1000")
        s.start_runner("runner", ASH_CLI="standin")
        s.wait_ready()
        yield s
    finally:
        s.stop()
        nats.stop()


def stats(prefix: Path) -> dict[tuple[str, str], dict[str, str]]:
    with open(f"{prefix}_stats.csv", newline="") as f:
        return {(row["Type"], row["Name"]): row for row in csv.DictReader(f)}


def test_locust_headless_run_streams_every_turn_without_failures(stack: Stack, tmp_path: Path) -> None:
    prefix = tmp_path / "locust"
    run = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtest" / "locustfile.py"),
         "--headless", "-u", "2", "-r", "2", "-t", "6s", "--stop-timeout", "30",
         "--host", stack.url, "--csv", str(prefix), "--only-summary", "--ash-turns", "2"],
        cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=180,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = stats(prefix)
    total = rows[("", "Aggregated")]
    assert int(total["Request Count"]) > 0
    assert int(total["Failure Count"]) == 0, run.stderr[-3000:]
    assert ("SSE", "stream gap") not in rows
    # The users really read the streams: every turn reported its first event and its events.
    assert int(rows[("SSE", "time to first event")]["Request Count"]) > 0
    assert float(rows[("SSE", "events per turn")]["Min Response Time"]) >= 3  # user_message .. done
    assert int(rows[("POST", "POST /exec")]["Request Count"]) > 0
