"""The local all-in-one stack: a nats-server, a coordinator and a runner under one supervisor.

    starting --every child spawned--> running --SIGTERM/SIGINT, or any child exits--> stopping
        \\                                                                              |
         +--nats fails to start, or a signal arrives---------------------------------> stopped

Children start in order (nats, coordinator, runner) and stop in reverse, each with SIGTERM and a
bounded wait before SIGKILL; a second signal kills at once. Nothing restarts by itself: if one
child dies the supervisor logs it, stops the rest and records which child failed, so `ash status`
shows the stack down and says why. Run as `python -m ash.stack --config FILE` (what `ash start`
does, detached) or in the foreground with `run_foreground`.

Under `$ASH_HOME`:

    ash.pid            the supervisor's pid; it holds an exclusive flock on the file while it lives
    stack.json         `StackState`: state, urls, child pids and logs, and what failed
    stack-config.json  the `StackConfig` the supervisor runs (written by `ash start`)
    ash.db  nats/  runner/  logs/{stack,nats,coordinator,runner}.log
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgspec

from ash import pidfile
from ash.embedded_nats import EmbeddedNats
from ash.errors import StackError
from ash.process import file_size, terminate

log = logging.getLogger("ash.stack")

EXIT_CHILD_FAILED = 1
EXIT_ALREADY_RUNNING = 3

CLIENT_ONLY_VARS = frozenset({"ASH_URL", "ASH_API_KEY", "ASH_DEBUG"})
"""Variables meant for the `ash` CLI and client; the servers do not get them."""

StateName = Literal["starting", "running", "stopping", "stopped"]


class ChildSpec(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """One child process: its name (also its log's name), argv, and env on top of the stack's."""

    name: str
    argv: list[str]
    env: dict[str, str] = {}


class StackConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """What a supervisor runs. `children=None` means the real coordinator and runner."""

    home: str
    host: str = "127.0.0.1"
    port: int = 4100
    python: str = msgspec.field(default_factory=lambda: sys.executable)
    children: list[ChildSpec] | None = None
    stop_timeout: float = 10.0
    nats_start_timeout: float = 20.0
    nats_stop_timeout: float = 5.0

    @property
    def url(self) -> str:
        """The coordinator's URL as a local client reaches it."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"


class ChildState(msgspec.Struct, kw_only=True, frozen=True):
    name: str
    pid: int
    log: str
    log_offset: int = 0


class StackState(msgspec.Struct, kw_only=True, frozen=True):
    """`stack.json`: what the supervisor runs, and why it stopped if it did."""

    state: StateName
    home: str
    url: str
    supervisor_pid: int
    nats_url: str | None = None
    children: list[ChildState] = []
    failed: str | None = None
    failure: str | None = None
    updated_at: float = 0.0


@dataclass(frozen=True, slots=True)
class StackPaths:
    """Where everything lives under one `$ASH_HOME`."""

    home: Path

    @property
    def pid_file(self) -> Path:
        return self.home / "ash.pid"

    @property
    def state_file(self) -> Path:
        return self.home / "stack.json"

    @property
    def config_file(self) -> Path:
        return self.home / "stack-config.json"

    @property
    def api_key_file(self) -> Path:
        """The admin key `ash start` minted (mode 0600); the CLI uses it when given no key."""
        return self.home / "credentials"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def nats_dir(self) -> Path:
        return self.home / "nats"

    @property
    def runner_dir(self) -> Path:
        return self.home / "runner"

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.home}/ash.db"

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"


def default_children(config: StackConfig) -> list[ChildSpec]:
    """The real stack: `python -m coordinator`, then `python -m runner`."""
    return [
        ChildSpec(name="coordinator", argv=[config.python, "-m", "coordinator"]),
        ChildSpec(name="runner", argv=[config.python, "-m", "runner"]),
    ]


def child_env(config: StackConfig, nats_url: str, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment every child gets: ours, minus client-only variables, plus the stack's.

    `ANTHROPIC_API_KEY` / `ANTHROPIC_BASE_URL` pass through when set, like the rest of `environ`.
    """
    paths = StackPaths(Path(config.home))
    env = {k: v for k, v in environ.items() if k not in CLIENT_ONLY_VARS}
    env.setdefault("ASH_LOG_FORMAT", "text")  # a person reads `ash start`'s logs
    env.update(
        ASH_NATS_URL=nats_url,
        ASH_HOME=str(paths.home),
        ASH_HOST=config.host,
        ASH_PORT=str(config.port),
        ASH_DATABASE_URL=paths.db_url,
        ASH_RUNNER_DIR=str(paths.runner_dir),
        PYTHONUNBUFFERED="1",
    )
    return env


def mint_api_key() -> str:
    """A new key in the coordinator's format (`ash_<12 hex>_<secret>`)."""
    return f"ash_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"


def stored_api_key(home: Path) -> str | None:
    """The admin key `ash start` keeps under `home`, if any."""
    try:
        return StackPaths(home).api_key_file.read_text().strip() or None
    except OSError:
        return None


def ensure_admin_key(home: Path) -> str:
    """The stack's admin key: the stored one, else a new one written with mode 0600."""
    key = stored_api_key(home)
    if key:
        return key
    key = mint_api_key()
    path = StackPaths(home).api_key_file
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process wrote it meanwhile
        return stored_api_key(home) or key
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


def ensure_credentials_key(home: Path) -> Path:
    """The key file that seals the stack's stored credentials (`ASH_CREDENTIALS_KEY_FILE`):
    32 random bytes, base64, made once with mode 0600 and kept (losing it loses them)."""
    path = home / "credentials.key"
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
    return path


def running_pid(home: Path) -> int | None:
    """The pid of the supervisor running under `home`, or None. 0 if it has not written it yet."""
    return pidfile.holder(StackPaths(home).pid_file)


def read_state(home: Path) -> StackState | None:
    """`stack.json` under `home`, or None if absent or unreadable."""
    try:
        return msgspec.json.decode(StackPaths(home).state_file.read_bytes(), type=StackState)
    except (OSError, msgspec.DecodeError):
        return None


# -- the supervisor -----------------------------------------------------------------------------


class Supervisor:
    """Runs one stack until a signal or a child's death, then stops it in reverse order."""

    def __init__(
        self,
        config: StackConfig,
        environ: Mapping[str, str],
        children: Callable[[StackConfig], list[ChildSpec]] = default_children,
    ) -> None:
        self.config = config
        self.paths = StackPaths(Path(config.home))
        self._environ = environ
        self._specs = config.children if config.children is not None else children(config)
        self._stop = asyncio.Event()
        self._forced = False
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._nats: EmbeddedNats | None = None
        self._state = StackState(
            state="starting", home=str(self.paths.home), url=config.url, supervisor_pid=os.getpid()
        )

    def request_stop(self) -> None:
        """First call: stop gracefully. Second call: kill every child now."""
        if not self._stop.is_set():
            log.info("stop requested")
            self._stop.set()
            return
        log.warning("second stop request: killing every child")
        self._forced = True
        procs = list(self._procs.values())
        if self._nats is not None and self._nats.server.process is not None:
            procs.append(self._nats.server.process)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()

    async def run(self) -> int:
        """Run the stack; 0 when stopped on request, `EXIT_CHILD_FAILED` when a child failed."""
        for d in (self.paths.logs, self.paths.nats_dir, self.paths.runner_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._write(state="starting")
        watchers: dict[asyncio.Future[int], str] = {}
        try:
            async with contextlib.AsyncExitStack() as stack:
                await self._start_nats(stack, watchers)
                # Auth is on: the coordinator stores the admin key kept in ASH_HOME.
                environ = {"ASH_AUTH": "required",
                           "ASH_BOOTSTRAP_ADMIN_KEY": ensure_admin_key(self.paths.home),
                           **self._environ}
                if not {"ASH_CREDENTIALS_KEY", "ASH_CREDENTIALS_KEY_FILE"} & set(environ):
                    environ["ASH_CREDENTIALS_KEY_FILE"] = str(
                        ensure_credentials_key(self.paths.home))
                env = child_env(self.config, self._state.nats_url or "", environ)
                for spec in self._specs:
                    if self._stop.is_set():
                        break
                    proc = self._spawn(spec, env)
                    stack.push_async_callback(self._stop_child, spec.name, proc)
                    watchers[asyncio.ensure_future(asyncio.to_thread(proc.wait))] = spec.name
                if not self._stop.is_set():
                    self._write(state="running")
                    log.info("stack running: %s (nats %s)", self.config.url, self._state.nats_url)
                    await self._wait(watchers)
                self._write(state="stopping")
        except StackError as exc:
            log.error("%s", exc)
            self._write(failed=self._state.failed or "nats", failure=str(exc))
        finally:
            await asyncio.gather(*watchers, return_exceptions=True)
            self._write(state="stopped")
            log.info("stack stopped")
        return EXIT_CHILD_FAILED if self._state.failed else 0

    async def _start_nats(
        self, stack: contextlib.AsyncExitStack, watchers: dict[asyncio.Future[int], str]
    ) -> None:
        nats = EmbeddedNats(
            self.paths.nats_dir,
            "127.0.0.1",
            0,
            log_path=self.paths.log("nats"),
            start_timeout=self.config.nats_start_timeout,
            stop_timeout=self.config.nats_stop_timeout,
        )
        log.info("starting nats-server (log %s)", self.paths.log("nats"))
        await stack.enter_async_context(nats)
        stack.push_async_callback(self._logged_close, "nats", nats)
        self._nats = nats
        watchers[asyncio.ensure_future(nats.wait())] = "nats"
        child = ChildState(name="nats", pid=nats.pid or 0, log=str(self.paths.log("nats")))
        self._write(nats_url=nats.url, children=[child])
        log.info("nats-server ready at %s (pid %s)", nats.url, nats.pid)

    def _spawn(self, spec: ChildSpec, env: dict[str, str]) -> subprocess.Popen[bytes]:
        path = self.paths.log(spec.name)
        offset = file_size(path)
        with open(path, "ab") as out:
            out.write(f"---- ash stack: starting {spec.name} at {time.ctime()} ----\n".encode())
            out.flush()
            # Own process group: a terminal's Ctrl-C reaches only the supervisor, which then
            # stops the children in order.
            try:
                proc = subprocess.Popen(
                    spec.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env={**env, **spec.env},
                    process_group=0,
                )
            except OSError as exc:
                self._write(failed=spec.name)
                raise StackError(f"cannot start {spec.name} ({spec.argv[0]}): {exc}") from exc
        self._procs[spec.name] = proc
        child = ChildState(name=spec.name, pid=proc.pid, log=str(path), log_offset=offset)
        self._write(children=[*self._state.children, child])
        log.info("started %s (pid %d, log %s)", spec.name, proc.pid, path)
        return proc

    async def _wait(self, watchers: dict[asyncio.Future[int], str]) -> None:
        stopping: asyncio.Future[Any] = asyncio.ensure_future(self._stop.wait())
        waiting: list[asyncio.Future[Any]] = [stopping, *watchers]
        try:
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        for watcher in done:
            if watcher is stopping:
                continue
            name, code = watchers[watcher], watcher.result()
            log.error("%s exited with code %s: stopping the stack", name, code)
            self._write(
                failed=name,
                failure=f"{name} exited with code {code}",
            )
            return

    async def _stop_child(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            log.info("stopping %s (pid %d)", name, proc.pid)
        timeout = 0.0 if self._forced else self.config.stop_timeout
        code = await asyncio.to_thread(terminate, proc, timeout)
        log.info("%s exited with code %s", name, code)

    async def _logged_close(self, name: str, nats: EmbeddedNats) -> None:
        log.info("stopping %s (pid %s)", name, nats.pid)
        await nats.close()
        log.info("%s stopped", name)

    def _write(self, **changes: object) -> None:
        self._state = msgspec.structs.replace(self._state, updated_at=time.time(), **changes)
        path = self.paths.state_file
        tmp = path.with_suffix(".json.tmp")
        tmp.write_bytes(msgspec.json.format(msgspec.json.encode(self._state), indent=2))
        os.replace(tmp, path)


def run_supervisor(config: StackConfig, environ: Mapping[str, str]) -> int:
    """Hold the pid file and run a `Supervisor` in this process until it stops; its exit code.

    Returns `EXIT_ALREADY_RUNNING` at once if another supervisor holds `config.home`.
    """
    paths = StackPaths(Path(config.home))
    fd = pidfile.acquire(paths.pid_file)
    if fd is None:
        log.error(
            "an ash stack is already running under %s (pid %s)", paths.home, running_pid(paths.home)
        )
        return EXIT_ALREADY_RUNNING
    try:
        return asyncio.run(_run_with_signals(Supervisor(config, environ)))
    finally:
        pidfile.release(paths.pid_file, fd)


async def _run_with_signals(supervisor: Supervisor) -> int:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, supervisor.request_stop)
    try:
        return await supervisor.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def load_config(path: Path) -> StackConfig:
    try:
        return msgspec.json.decode(path.read_bytes(), type=StackConfig)
    except (OSError, msgspec.DecodeError) as exc:
        raise StackError(f"cannot read the stack config {path}: {exc}") from exc


def main(argv: list[str] | None = None) -> int:
    """`python -m ash.stack --config FILE`: the detached supervisor `ash start` launches."""
    parser = argparse.ArgumentParser(prog="python -m ash.stack", description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, required=True, help="a StackConfig JSON file")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = load_config(args.config)
    except StackError as exc:
        log.error("%s", exc)
        return 2
    return run_supervisor(config, os.environ)


if __name__ == "__main__":
    sys.exit(main())
