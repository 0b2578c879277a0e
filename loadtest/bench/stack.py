"""The benchmark's own stack: a nats-server, a coordinator and runners, each a real process.

Everything lives under one temp dir; logs go to `<tmp>/<name>.log` (WARNING level, so that
logging is not what we measure). Each runner gets its own network-slot subnet and name prefix,
derived from this process's pid so that a benchmark and a test run on the same machine do
not collide (the tests use 10.200.0.0 and up; the benchmark 10.140-10.189).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import nats

from ash.embedded_nats import start_nats
from protocol import codec, subjects

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASH_", "ANTHROPIC_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 60.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.send_signal(signal.SIGTERM)  # a second one stops without draining
                try:
                    self.popen.wait(15)
                except subprocess.TimeoutExpired:
                    self.popen.kill()
                    self.popen.wait(5)


@dataclass
class Stack:
    """nats-server + one coordinator + named runners."""

    tmp: Path
    profile: Path | None = None  # run each process under cProfile, writing <name>.prof here
    url: str = ""
    nats_url: str = ""
    key: str = ""  # the API key the benchmark's clients send (an admin key, minted at start)
    procs: dict[str, Proc] = field(default_factory=dict)
    _nats: object = None
    _runners: int = 0

    @property
    def nats_pid(self) -> int | None:
        return getattr(self._nats, "pid", None)

    def start(self, runners: dict[str, dict[str, str]], coordinator_env: dict[str, str]) -> None:
        """Start NATS, the coordinator and `runners` (name -> extra env)."""
        self._nats = start_nats(self.tmp / "nats", log_path=self.tmp / "nats.log")
        self.nats_url = self._nats.url  # type: ignore[attr-defined]
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self._spawn("coordinator", "coordinator", clean_env(
            ASH_NATS_URL=self.nats_url, ASH_PORT=str(port), ASH_HOME=str(self.tmp / "home"),
            ASH_DATABASE_URL=f"sqlite:///{self.tmp / 'ash.db'}", ASH_LOG_LEVEL="WARNING",
            **self._auth_env(), **coordinator_env))
        for name, env in runners.items():
            self.start_runner(name, **env)

    def _auth_env(self) -> dict[str, str]:
        """Where the coordinator has API keys: one admin key, minted here, that every client
        of the benchmark sends (so each request pays the key check, as in production), and
        the per-key limits off (one key drives the whole load)."""
        from coordinator.config import CoordinatorConfig

        fields = set(CoordinatorConfig.__struct_fields__)
        if "bootstrap_admin_key" not in fields:
            return {}
        self.key = f"ash_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"
        env = {"ASH_BOOTSTRAP_ADMIN_KEY": self.key}
        for name in ("rate_session_creates_per_min", "rate_session_creates_burst",
                     "max_concurrent_turns_per_key"):
            if name in fields:
                env[f"ASH_{name.upper()}"] = "0"
        return env

    def start_runner(self, name: str, **env: str) -> Proc:
        k = self._runners
        self._runners += 1
        net = {"ASH_NET_SUBNET": f"10.{140 + os.getpid() % 50}.{(k % 16) * 16}.0/20",
               "ASH_NET_PREFIX": f"b{os.getpid() % 1000:03d}{k % 10}"}
        return self._spawn(name, "runner", clean_env(**{
            "ASH_NATS_URL": self.nats_url, "ASH_RUNNER_ID": name,
            "ASH_HOME": str(self.tmp / "home"), "ASH_RUNNER_DIR": str(self.tmp / name),
            "ASH_LOG_LEVEL": "WARNING", **net, **env}))

    def _spawn(self, name: str, module: str, env: dict[str, str]) -> Proc:
        log = self.tmp / f"{name}.log"
        with log.open("ab") as out:
            prof = [] if self.profile is None else [
                "-m", "cProfile", "-o", str(self.profile / f"{name}.prof")]
            popen = subprocess.Popen([sys.executable, *prof, "-m", module], env=env, cwd=ROOT,
                                     stdout=out, stderr=subprocess.STDOUT)
        proc = Proc(name, popen, log)
        self.procs[name] = proc
        return proc

    async def wait_ready(self, runners: int, timeout: float = 120.0) -> None:
        """Until the coordinator answers and sees `runners` live runners (or a process dies)."""
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while True:
                for p in self.procs.values():
                    if p.popen.poll() is not None:
                        raise RuntimeError(f"{p.name} exited with {p.popen.returncode}:\n{p.tail()}")
                try:
                    async with http.get(self.url + "/health") as r:
                        if r.status == 200 and (await r.json())["runners"] >= runners:
                            return
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError("stack not ready:\n" + "\n".join(
                        p.tail() for p in self.procs.values()))
                await asyncio.sleep(0.05)  # poll interval of the readiness check

    def stop(self) -> None:
        for p in reversed(list(self.procs.values())):
            p.stop()
        if self._nats is not None:
            self._nats.stop()  # type: ignore[attr-defined]
            self._nats = None


def capacity_env(sandboxes: int) -> tuple[dict[str, str], dict[str, str]]:
    """(coordinator env, runner env) that let one runner hold `sandboxes` stand-in sessions.

    Placement commits each sandbox's memory and CPU limits against the runner's, times an
    overcommit ratio; the defaults (2 GB, 100% of a core each) would stop a 2-core runner at a
    few dozen. The stand-in needs ~10 MB and a few ms of CPU a turn, so the benchmark's stacks
    ask for small limits and, where this coordinator has the setting, a large CPU overcommit.
    """
    from coordinator.config import CoordinatorConfig

    fields = set(CoordinatorConfig.__struct_fields__)
    coordinator = {}
    if "overcommit_cpu" in fields:
        coordinator["ASH_OVERCOMMIT_CPU"] = str(max(16, sandboxes))
    if "overcommit_memory" in fields:
        coordinator["ASH_OVERCOMMIT_MEMORY"] = "4"
    runner = {"ASH_MAX_SESSIONS": str(sandboxes), "ASH_MEMORY_MB": "64", "ASH_TMP_MB": "16"}
    return coordinator, runner


async def wait_warm(nc: nats.NATS, runner_ids: list[str], agent: str, timeout: float = 60.0,
                    count: int = 1) -> None:
    """Until adverts made after this call say each runner has `count` warm sandboxes of
    `agent` (an older advert may still count the one the previous session just claimed)."""
    since = time.time()
    deadline = time.monotonic() + timeout
    kv = await nc.jetstream().key_value(subjects.RUNNERS_BUCKET)
    pending = set(runner_ids)
    while pending:
        for rid in list(pending):
            advert = codec.decode_advert((await kv.get(rid)).value or b"{}")
            if advert.ts > since and advert.warm.get(agent, 0) >= count:
                pending.discard(rid)
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{sorted(pending)} never got {count} warm sandboxes of {agent}")
        await asyncio.sleep(0.02)  # poll interval: adverts come every ASH_ADVERT_INTERVAL_S
