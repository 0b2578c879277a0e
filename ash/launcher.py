"""Starting, stopping and inspecting the local stack from the outside (`ash start|stop|status`).

`start` launches `python -m ash.stack` detached (its own session, so it outlives the terminal)
and returns once `GET /health` reports a runner, or fails with the failing child's log tail and
leaves nothing running. `stop` signals the supervisor and waits until it lets go of its pid file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import msgspec

from ash.client import AsyncClient
from ash.errors import AshError, StackError
from ash.process import file_size, pid_alive, tail, terminate
from ash.stack import (
    EXIT_ALREADY_RUNNING,
    StackConfig,
    StackPaths,
    StackState,
    read_state,
    run_supervisor,
    running_pid,
)
from protocol.api import Health

POLL_INTERVAL = 0.25

# Supervisors this process launched. Kept referenced so that one which exits while we still run
# is reaped by `poll()` instead of lingering as a zombie or warning at garbage collection.
_launched: list[subprocess.Popen[bytes]] = []


@dataclass(slots=True)
class Started:
    """What `start` found or made."""

    url: str
    pid: int
    already_running: bool
    health: Health | None = None


@dataclass(slots=True)
class Status:
    """What `status` found: the supervisor's pid if it runs, and its last `stack.json`."""

    home: Path
    pid: int | None
    state: StackState | None

    @property
    def running(self) -> bool:
        return self.pid is not None


async def start(config: StackConfig, *, out: TextIO, deadline: float = 90.0) -> Started:
    """Start the stack detached and wait until it serves with at least one runner.

    Prints progress to `out`. Raises `StackError` (after stopping what it started) on failure.
    """
    paths = StackPaths(Path(config.home))
    pid = running_pid(paths.home)
    if pid is not None:
        state = read_state(paths.home)
        return Started(url=state.url if state else config.url, pid=pid, already_running=True)
    _check_port_free(config.host, config.port)
    proc, log_offset = _launch(config, paths)
    out.write(f"starting ash in {paths.home} (logs in {paths.logs})\n")
    out.flush()
    try:
        health = await _wait_ready(config, paths, proc, log_offset, out, deadline)
    except BaseException:
        if proc.poll() is None:
            await asyncio.to_thread(terminate, proc, 60.0)
        raise
    return Started(url=config.url, pid=proc.pid, already_running=False, health=health)


def _launch(config: StackConfig, paths: StackPaths) -> tuple[subprocess.Popen[bytes], int]:
    paths.logs.mkdir(parents=True, exist_ok=True)
    paths.config_file.write_bytes(msgspec.json.format(msgspec.json.encode(config), indent=2))
    with contextlib.suppress(FileNotFoundError):
        paths.state_file.unlink()  # so a previous run's outcome is never read as this one's
    log_path = paths.log("stack")
    offset = file_size(log_path)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [config.python, "-m", "ash.stack", "--config", str(paths.config_file)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _launched.append(proc)
    return proc, offset


async def _wait_ready(
    config: StackConfig,
    paths: StackPaths,
    proc: subprocess.Popen[bytes],
    log_offset: int,
    out: TextIO,
    deadline: float,
) -> Health:
    progress = _Progress(out)
    until = time.monotonic() + deadline
    said_coordinator = False
    async with AsyncClient(config.url, timeout=2.0, retries=0) as client:  # it polls itself
        while True:
            code = proc.poll()
            if code is not None:
                progress.end_line()
                if code == EXIT_ALREADY_RUNNING:
                    raise StackError(f"another ash stack was started under {paths.home} meanwhile")
                raise StackError(_failure_report(paths, code, log_offset))
            try:
                health = await client.health()
            except AshError:
                health = None
            if health is not None and health.runners >= 1:
                progress.end_line()
                return health
            if health is not None and not said_coordinator:
                said_coordinator = True
                progress.line("coordinator is up; waiting for a runner to register")
            if time.monotonic() >= until:
                progress.end_line()
                waiting_for = "no runner registered" if health else "the coordinator never answered"
                raise StackError(
                    f"the stack did not become ready within {deadline:.0f} s ({waiting_for})"
                    + _child_tails(paths)
                )
            progress.tick()
            await asyncio.sleep(POLL_INTERVAL)


class _Progress:
    """A dot per second while waiting, and whole lines for milestones."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._next_dot = time.monotonic() + 1.0
        self._partial = False

    def tick(self) -> None:
        now = time.monotonic()
        if now >= self._next_dot:
            self._next_dot = now + 1.0
            self._out.write(".")
            self._out.flush()
            self._partial = True

    def line(self, text: str) -> None:
        self.end_line()
        self._out.write(text + "\n")
        self._out.flush()

    def end_line(self) -> None:
        if self._partial:
            self._out.write("\n")
            self._out.flush()
            self._partial = False


def _failure_report(paths: StackPaths, code: int, log_offset: int) -> str:
    state = read_state(paths.home)
    if state is not None and state.failed is not None:
        summary = state.failure or f"{state.failed} failed"
        for child in state.children:
            if child.name == state.failed:
                lines = tail(child.log, 20, start=child.log_offset)
                return f"{summary}; last lines of {child.log}:\n{_indent(lines)}"
        return summary
    log_path = paths.log("stack")
    lines = tail(log_path, 20, start=log_offset)
    return (
        f"the stack supervisor exited with code {code}; last lines of {log_path}:\n{_indent(lines)}"
    )


def _child_tails(paths: StackPaths) -> str:
    state = read_state(paths.home)
    parts = []
    for child in state.children if state else []:
        if child.name == "nats":
            continue
        lines = tail(child.log, 10, start=child.log_offset)
        parts.append(f"\nlast lines of {child.log}:\n{_indent(lines)}")
    return "".join(parts)


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in (text or "(empty)").splitlines())


def _check_port_free(host: str, port: int) -> None:
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        raise StackError(
            f"cannot listen on {host}:{port} ({os.strerror(exc.errno) if exc.errno else exc}); "
            "stop what uses the port, "
            "or pick another with `ash start --port N`"
        ) from exc


def stop(home: Path, *, timeout: float = 60.0) -> int | None:
    """Stop the stack under `home`; the supervisor's pid, or None if none was running."""
    until = time.monotonic() + timeout
    pid = running_pid(home)
    while pid == 0 and time.monotonic() < until:  # it holds the lock but has not written its pid
        time.sleep(0.05)
        pid = running_pid(home)
    if not pid:
        return None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    # The supervisor lets go of the pid file just before it exits: wait for both.
    while running_pid(home) is not None or _still_running(pid):
        if time.monotonic() >= until:
            raise StackError(
                f"the ash supervisor (pid {pid}) did not stop within {timeout:.0f} s; "
                f"force it with `kill -9 {pid}` and check {StackPaths(home).logs}"
            )
        time.sleep(0.05)
    return pid


def _still_running(pid: int) -> bool:
    for proc in _launched:
        proc.poll()  # reap our own children, so an exited one is not a zombie
    return pid_alive(pid)


def status(home: Path) -> Status:
    """Whether a stack runs under `home`, and its last recorded state."""
    return Status(home=home, pid=running_pid(home), state=read_state(home))


def run_foreground(config: StackConfig, environ: Mapping[str, str], *, out: TextIO) -> int:
    """Run the supervisor in this process until Ctrl-C or SIGTERM; its exit code."""
    paths = StackPaths(Path(config.home))
    paths.home.mkdir(parents=True, exist_ok=True)
    paths.config_file.write_bytes(msgspec.json.format(msgspec.json.encode(config), indent=2))
    out.write(f"ash stack in the foreground at {config.url} (logs in {paths.logs}); Ctrl-C stops\n")
    out.flush()
    return run_supervisor(config, environ)
