"""Locust users for Ash that read every stream: `locust -f loadtest/locustfile.py`.

Each user, over and over: creates a session, sends a few turns and reads each SSE stream to
its `done`, runs one exec and reads it to its `exec_exit`, then ends the session. Besides
locust's own request rows, it records (request type `SSE`):

    time to first event   POST /messages sent -> the first SSE event read (ms)
    turn to done          POST /messages sent -> the `done` event read (ms)
    events per turn       events in one turn's stream (the "response time" column is a count)
    stream gap            a failure: an event id that did not grow by exactly one, or a
                          stream that ended without `done`

Headless, against a running Ash (the agent is deployed at the start unless it exists):

    .venv/bin/locust -f loadtest/locustfile.py --headless -u 20 -r 5 -t 60s \\
        --host http://127.0.0.1:4100 --csv /tmp/ash-locust --only-summary

Options: `--ash-agent NAME` (default `hello`, deployed from examples/hello if missing),
`--ash-turns N` turns per session (default 3), `--ash-prompt TEXT`.
Locust is gevent-based: run it as its own process, never import this into asyncio code.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path
from typing import Any

import requests
from locust import HttpUser, between, events, task

ROOT = Path(__file__).resolve().parent.parent


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument("--ash-agent", default="hello", help="agent to use (deployed if missing)")
    parser.add_argument("--ash-turns", type=int, default=3, help="turns per session")
    parser.add_argument("--ash-prompt", default="Hello", help="the user message of each turn")


def _bundle(folder: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(folder)), recursive=False)
    return buf.getvalue()


@events.test_start.add_listener
def _deploy(environment: Any, **kwargs: Any) -> None:
    """Deploy examples/hello as the agent unless the server already has it."""
    host = environment.host
    agent = environment.parsed_options.ash_agent
    if requests.get(f"{host}/api/agents/{agent}", timeout=30).status_code == 200:
        return
    r = requests.post(f"{host}/api/agents", params={"name": agent},
                      data=_bundle(ROOT / "examples" / "hello"),
                      headers={"Content-Type": "application/gzip"}, timeout=60)
    r.raise_for_status()


def _fire(environment: Any, name: str, value: float, exception: Exception | None = None) -> None:
    environment.events.request.fire(request_type="SSE", name=name, response_time=value,
                                    response_length=0, exception=exception, context={})


class StreamGap(Exception):
    """A stream skipped or repeated an event id, or ended without `done`."""


def read_sse(lines: Any) -> list[tuple[float, int | None, str, str]]:
    """(arrival time, id, event, data) of each event in an SSE body read line by line."""
    out = []
    ident, event, data = None, "", ""
    for raw in lines:
        line = raw.decode() if isinstance(raw, bytes) else raw
        if line == "":
            if event:
                out.append((time.perf_counter(), ident, event, data))
            ident, event, data = None, "", ""
        elif line.startswith("id:"):
            ident = int(line[3:].strip())
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data = line[5:].strip()
    return out


class AshUser(HttpUser):
    """A client that holds a session for a few turns and an exec, reading every stream."""

    wait_time = between(0.05, 0.2)

    @task
    def session(self) -> None:
        opts = self.environment.parsed_options
        with self.client.post("/api/sessions", json={"agent": opts.ash_agent},
                              name="POST /api/sessions", catch_response=True) as r:
            if r.status_code != 201:
                r.failure(f"{r.status_code}: {r.text[:200]}")
                return
            session_id = r.json()["id"]
        try:
            for _ in range(opts.ash_turns):
                self.turn(session_id, opts.ash_prompt)
            self.exec(session_id)
        finally:
            self.client.delete(f"/api/sessions/{session_id}", name="DELETE /api/sessions/{id}")

    def turn(self, session_id: str, prompt: str) -> None:
        t0 = time.perf_counter()
        with self.client.post(f"/api/sessions/{session_id}/messages", json={"content": prompt},
                              stream=True, name="POST /messages (headers)",
                              catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code}: {r.text[:200]}")
                return
            got = read_sse(r.iter_lines(decode_unicode=True))
        if not got:
            _fire(self.environment, "stream gap", 0, StreamGap("a turn's stream had no events"))
            return
        _fire(self.environment, "time to first event", (got[0][0] - t0) * 1000)
        _fire(self.environment, "events per turn", len(got))
        ids = [i for _, i, _, _ in got]
        gaps = sum(1 for a, b in zip(ids, ids[1:]) if a is None or b != a + 1)
        if gaps or got[-1][2] != "done":
            _fire(self.environment, "stream gap", 0, StreamGap(
                f"{gaps} gaps in ids {ids[:3]}..{ids[-3:]}, last event {got[-1][2]}"))
            return
        _fire(self.environment, "turn to done", (got[-1][0] - t0) * 1000)

    def exec(self, session_id: str) -> None:
        with self.client.post(f"/api/sessions/{session_id}/exec", json={"command": ["true"]},
                              stream=True, name="POST /exec", catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code}: {r.text[:200]}")
                return
            got = read_sse(r.iter_lines(decode_unicode=True))
            last = got[-1] if got else None
            if last is None or last[2] != "exec_exit" or json.loads(last[3]).get("exit_code") != 0:
                r.failure(f"exec did not exit 0: {last}")
