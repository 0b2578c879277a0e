"""Test helpers that run Ash's real processes: a coordinator and runners, as subprocesses."""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_runner_numbers = itertools.count()


_chosen_subnets: set[ipaddress.IPv4Network] = set()


def runner_subnet(k: int) -> str:
    """A /22 of 10.200.0.0-10.255.255.255 for runner number `k`'s sandbox slots that no route
    of this host overlaps, nor any subnet this process chose before.

    It starts where the pid and `k` point (so test processes running at once seldom meet) and
    steps on while taken: a runner killed without cleaning up leaves its slots' routes behind,
    and a new runner on the same /22 would route its sandboxes' packets to the dead veths.
    """
    out = subprocess.run(["ip", "-4", "route", "show"], capture_output=True, text=True,
                         check=True).stdout
    taken = {ipaddress.ip_network(line.split()[0], strict=False)
             for line in out.splitlines() if line and line.split()[0][0].isdigit()}
    taken |= _chosen_subnets
    start = ((os.getpid() + k // 64) % 56) * 64 + k % 64
    for i in range(56 * 64):
        n = (start + i) % (56 * 64)
        net = ipaddress.ip_network(f"10.{200 + n // 64}.{(n % 64) * 4}.0/22")
        if not any(net.overlaps(t) for t in taken):
            _chosen_subnets.add(net)
            return str(net)
    raise RuntimeError("no free /22 in 10.200.0.0/13 for a runner's sandbox slots")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**overrides: str) -> dict[str, str]:
    """The test process's environment without ASH_*/ANTHROPIC_* settings, plus overrides."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ASH_", "ANTHROPIC_"))}
    env["PYTHONUNBUFFERED"] = "1"
    # Most tests drive the API without keys; auth tests (tests/*/test_auth*.py, test_spine)
    # pass ASH_AUTH="required".
    env["ASH_AUTH"] = "off"
    env.update(overrides)
    return env


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode


@dataclass
class Stack:
    """A coordinator and runners against one NATS, each a real process."""

    tmp: Path
    nats_url: str
    procs: list[Proc] = field(default_factory=list)
    url: str = ""

    def spawn(self, name: str, module: str, env: dict[str, str]) -> Proc:
        log = self.tmp / f"{name}.log"
        with log.open("ab") as out:  # the child keeps its own copy of the descriptor
            popen = subprocess.Popen(
                [sys.executable, "-m", module], env=env, cwd=ROOT,
                stdout=out, stderr=subprocess.STDOUT,
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def start_coordinator(self, name: str = "coordinator", **env: str) -> Proc:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        # `env` may replace the defaults (ASH_DATABASE_URL=postgres://... for a shared Postgres).
        return self.spawn(name, "coordinator", clean_env(**{
            "ASH_NATS_URL": self.nats_url, "ASH_PORT": str(port),
            "ASH_HOME": str(self.tmp / "home"), "ASH_LOG_LEVEL": "INFO",
            "ASH_DATABASE_URL": f"sqlite:///{self.tmp / 'ash.db'}", **env}))

    def start_runner(self, name: str = "runner", **env: str) -> Proc:
        # Runners on one machine need their own slot subnet and namespace names, also across
        # test processes running at once (hence the pid: a clash made a CLI's model requests
        # reach another runner's proxy, and the turn hang).
        k = next(_runner_numbers)
        net = {"ASH_NET_SUBNET": runner_subnet(k),
               "ASH_NET_PREFIX": f"t{os.getpid() % 1000:03d}{k % 100:02d}"}
        return self.spawn(name, "runner", clean_env(**{
            "ASH_NATS_URL": self.nats_url, "ASH_RUNNER_ID": name, "ASH_HOME": str(self.tmp / "home"),
            "ASH_RUNNER_DIR": str(self.tmp / name), "ASH_LOG_LEVEL": "INFO", **net, **env}))

    def health(self) -> dict[str, object] | None:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                return json.loads(r.read())  # type: ignore[no-any-return]
        except OSError:
            return None

    def wait_ready(self, runners: int = 1, timeout: float = 60.0) -> None:
        """Block until the coordinator answers and sees `runners` live runners.

        Polls a condition of other processes (their HTTP health), failing fast with their logs
        if one of them exits.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.popen.poll() is not None:
                    raise RuntimeError(f"{p.name} exited with {p.popen.returncode}:\n{p.tail()}")
            h = self.health()
            if h is not None and int(h["runners"]) >= runners:  # type: ignore[call-overload]
                return
            time.sleep(0.05)  # poll interval of the readiness check above
        raise TimeoutError("stack not ready:\n" + "\n".join(p.tail() for p in self.procs))

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()
