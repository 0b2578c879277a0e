"""A fleet on one machine: Ash's real processes, each on a host of its own (tests/fleet/network.py).

    host   address        process
    nats   10.198.N.2     nats-server with JetStream, listening on that address only
    api    10.198.N.3     the scripted Messages API (`runner.scripted.model_api`), the only fake
    c1,c2  10.198.N.11,12 coordinators (`python -m coordinator`), one SQLite file between them
    r1..3  10.198.N.21-23 runners (`python -m runner`) with the real bundled Claude Code CLI in
                          bwrap sandboxes; each makes its sandboxes' network slots (namespaces,
                          veths, nftables) from inside its own host namespace, so its slot veths
                          and the egress proxy on their gateways live there too

Ports are the defaults (every host has its own port space). Runners reach the model through the
bridge, as a real fleet reaches the API: a runner cut off the network loses NATS and the model
alike. A runner's slot namespaces are named `f<pid in base 36><r><k>-<i>` (the prefix the runner
sweeps itself); `slot_owner` tells a stale run's from a live one's.

`Fleet.close()` stops the processes (runners first, so they end their sandboxes and slots), then
the lab removes whatever is left: namespaces, bridge, veths, and any process still in them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ash.embedded_nats import _probe, find_nats_server
from tests.fleet.network import Host, Lab, list_netns, remove_netns, sweep_stale
from tests.procs import ROOT, Proc, clean_env

HOSTS = {"nats": 2, "api": 3, "c1": 11, "c2": 12, "r1": 21, "r2": 22, "r3": 23}
COORDINATORS = ("c1", "c2")
RUNNERS = ("r1", "r2", "r3")
NATS_PORT, MODEL_PORT, HTTP_PORT = 4222, 8080, 4100
STOP_TIMEOUT_S = 20.0
POLL_S = 0.05  # how often readiness conditions of other processes are polled
_SLOT = re.compile(r"^f([0-9a-z]{5})r\d-\d+$")


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def slot_prefix(runner: str, pid: int | None = None) -> str:
    """Runner `rK`'s network slot prefix: 8 characters, unique to this test process."""
    return f"f{_base36(os.getpid() if pid is None else pid):0>5}{runner}"


def slot_owner(netns: str) -> int | None:
    """The pid of the test process whose runner made slot namespace `netns`, if ours."""
    m = _SLOT.match(netns)
    return int(m.group(1), 36) if m else None


@dataclass
class Fleet:
    """The lab's hosts and the processes on them, by host name."""

    lab: Lab
    tmp: Path
    runner_env: dict[str, str] = field(default_factory=dict)
    coordinator_env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, Proc] = field(default_factory=dict)
    model_key: str = field(default_factory=lambda: "sk-ant-fleet-" + uuid.uuid4().hex)

    # -- where things are ---------------------------------------------------------------------

    def host(self, name: str) -> Host:
        return self.lab.hosts[name]

    @property
    def nats_url(self) -> str:
        return f"nats://{self.host('nats').address}:{NATS_PORT}"

    @property
    def model_url(self) -> str:
        return f"http://{self.host('api').address}:{MODEL_PORT}"

    def url(self, coordinator: str) -> str:
        return f"http://{self.host(coordinator).address}:{HTTP_PORT}"

    # -- processes ----------------------------------------------------------------------------

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Proc:
        log = self.tmp / f"{name}.log"
        with log.open("ab") as out:  # the child keeps its own copy of the descriptor
            popen = subprocess.Popen(self.host(name).argv(argv), env=env, cwd=ROOT,
                                     stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
        proc = Proc(name, popen, log)
        self.procs[name] = proc
        return proc

    def start_nats(self) -> Proc:
        argv = [find_nats_server(), "-a", self.host("nats").address, "-p", str(NATS_PORT),
                "-js", "-sd", str(self.tmp / "nats")]  # fmt: skip
        return self.spawn("nats", argv, clean_env())

    def start_model(self) -> Proc:
        argv = [sys.executable, "-m", "runner.scripted.model_api",
                "--host", self.host("api").address, "--port", str(MODEL_PORT)]  # fmt: skip
        return self.spawn("api", argv, clean_env())

    def start_coordinator(self, name: str) -> Proc:
        return self.spawn(name, [sys.executable, "-m", "coordinator"], clean_env(
            ASH_NATS_URL=self.nats_url, ASH_HOST=self.host(name).address, ASH_PORT=str(HTTP_PORT),
            ASH_HOME=str(self.tmp / "home"), ASH_DATABASE_URL=f"sqlite:///{self.tmp / 'ash.db'}",
            ASH_LOG_LEVEL="INFO", **self.coordinator_env))

    def start_runner(self, name: str) -> Proc:
        k = RUNNERS.index(name) + 1
        return self.spawn(name, [sys.executable, "-m", "runner"], clean_env(**{
            "ASH_NATS_URL": self.nats_url, "ASH_RUNNER_ID": name,
            "ASH_HOME": str(self.tmp / "home"), "ASH_RUNNER_DIR": str(self.tmp / name),
            "ASH_LOG_LEVEL": "INFO", "ASH_CLI": "claude", "ASH_MODEL_BASE_URL": self.model_url,
            "ANTHROPIC_API_KEY": self.model_key,
            # Slots live in the runner's own namespace; the subnet only has to miss the lab's.
            "ASH_NET_SUBNET": f"10.199.{k}.0/24", "ASH_NET_PREFIX": slot_prefix(name),
            **self.runner_env}))

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        proc.popen.send_signal(sig)
        proc.popen.wait(15)

    def alive(self, name: str) -> bool:
        return name in self.procs and self.procs[name].popen.poll() is None

    # -- readiness ----------------------------------------------------------------------------

    def health(self, coordinator: str) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(self.url(coordinator) + "/health", timeout=2) as r:
                return json.loads(r.read())  # type: ignore[no-any-return]
        except OSError:
            return None

    def wait_for(self, what: str, ready: Any, timeout: float = 90.0) -> None:
        """Poll `ready()` until true; fail fast, with logs, if one of our processes exits."""
        deadline = time.monotonic() + timeout
        while not ready():
            for p in self.procs.values():
                if p.popen.poll() is not None:
                    raise RuntimeError(f"{p.name} exited with {p.popen.returncode}:\n{p.tail()}")
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {p.name}\n{p.tail(15)}" for p in self.procs.values())
                raise TimeoutError(f"{what} not ready within {timeout} s:\n{logs}")
            time.sleep(POLL_S)

    def wait_coordinators(self, runners: int = len(RUNNERS)) -> None:
        """Until every running coordinator answers and sees `runners` live runners."""
        def ready() -> bool:
            for name in COORDINATORS:
                h = self.health(name) if self.alive(name) else {"runners": runners}
                if h is None or int(h["runners"]) < runners:
                    return False
            return True

        self.wait_for("coordinators", ready)

    def model_requests(self) -> list[dict[str, Any]]:
        """Every request the scripted model received (from any runner), oldest first."""
        with urllib.request.urlopen(self.model_url + "/_scripted/requests", timeout=5) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]

    # -- the whole thing ----------------------------------------------------------------------

    def start(self) -> Fleet:
        self.start_nats()
        self.start_model()
        nats = self.host("nats").address
        self.wait_for("nats-server", lambda: _probe(nats, NATS_PORT))
        self.wait_for("the model API", lambda: _answers(self.model_url + "/_scripted/requests"))
        for name in COORDINATORS:
            self.start_coordinator(name)
        for name in RUNNERS:
            self.start_runner(name)
        self.wait_coordinators()
        return self

    def close(self) -> None:
        """Runners first (they end their sandboxes and slots), then coordinators, the model,
        NATS; then the lab, and any slot namespace a killed runner left."""
        try:
            for group in (RUNNERS, COORDINATORS, ("api",), ("nats",)):
                procs = [self.procs[n] for n in group if n in self.procs]
                for p in procs:
                    if p.popen.poll() is None:
                        p.popen.send_signal(signal.SIGTERM)
                for p in procs:  # one signal each: a second one would skip a runner's drain
                    try:
                        p.popen.wait(STOP_TIMEOUT_S)
                    except subprocess.TimeoutExpired:
                        p.popen.kill()
                        p.popen.wait(5)
        finally:
            ours = tuple(slot_prefix(name) + "-" for name in RUNNERS)
            for netns in list_netns():
                if netns.startswith(ours):
                    remove_netns(netns)
            self.lab.close()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


def open_fleet(
    tmp: Path, runner_env: dict[str, str], coordinator_env: dict[str, str]
) -> Fleet:
    """Sweep what a crashed run left, make the lab, start every process, wait until ready.
    On failure everything made is removed before the error propagates."""
    sweep_stale(slot_owner)
    lab = Lab().open(HOSTS)
    fleet = Fleet(lab, tmp, runner_env=runner_env, coordinator_env=coordinator_env)
    try:
        return fleet.start()
    except BaseException:
        fleet.close()
        raise
