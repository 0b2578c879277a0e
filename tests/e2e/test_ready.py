"""`/ready` tells a load balancer whether a coordinator can serve; `/health` only that it lives.

Real nats-server, coordinator and runner processes: not ready before any runner is live,
ready once one is, not ready again when NATS goes away, each time with the reason in the one
JSON error shape.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from ash.embedded_nats import start_nats
from tests.procs import Stack

pytestmark = pytest.mark.e2e


def get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_for(url: str, status: int, timeout: float = 30.0) -> dict[str, Any]:
    """Poll `url` until it answers `status` (the processes change state on their own)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            got, body = get(url)
        except OSError:
            got, body = 0, {}
        if got == status:
            return body
        assert time.monotonic() < deadline, (got, body)
        time.sleep(0.05)  # poll interval


def assert_not_ready(body: dict[str, Any], reason: str) -> None:
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "retryable"}
    assert body["error"]["code"] == "not_ready" and body["error"]["retryable"] is True
    assert reason in body["error"]["message"], body


def test_ready_needs_a_runner_and_nats_while_health_only_needs_the_process(tmp_path: Path) -> None:
    server = start_nats(tmp_path / "nats", log_path=tmp_path / "nats.log")
    stack = Stack(tmp_path, server.url)
    try:
        stack.start_coordinator()
        stack.wait_ready(runners=0)
        status, body = get(stack.url + "/ready")
        assert status == 503
        assert_not_ready(body, "no runner is live")

        stack.start_runner("rd-a", ASH_CLI="standin", ASH_ADVERT_INTERVAL_S="0.1")
        stack.wait_ready(runners=1)
        ready = wait_for(stack.url + "/ready", 200)
        assert ready == {"status": "ready", "nats": True, "store": True, "runners": 1}

        server.stop()
        body = wait_for(stack.url + "/ready", 503)
        assert_not_ready(body, "NATS is not connected")
        health_status, health = get(stack.url + "/health")
        assert health_status == 200 and health["status"] == "degraded" and not health["nats"]
    finally:
        stack.stop()
        server.stop()
