"""deploy/systemd: the units verify, and what they start forms a working fleet.

The units' ExecStart and Environment/EnvironmentFile lines are read from the unit files and run
as plain processes (no systemd here), with only two paths moved: /opt/ash/venv to this venv and
/etc/ash to a temporary directory holding what the docs say to put there (the nats_auth output
and the example env files with the fleet's settings uncommented). NATS runs with the generated
users, so the coordinator and the runner also prove their env files carry a working login.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy import nats_auth
from tests.deploy.natsproc import ConfNats
from tests.deploy.test_nats_permissions import RUNNER_ENV
from tests.procs import ROOT, Proc, Stack, clean_env, free_port

pytestmark = pytest.mark.e2e

UNITS = ROOT / "deploy" / "systemd"
VENV_BIN = str(Path(sys.executable).parent)


def service(name: str) -> dict[str, list[str]]:
    """The [Service] section of a unit: each key's values in order (keys may repeat)."""
    section, out = "", {}  # type: ignore[var-annotated]
    for line in (UNITS / name).read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def moved(text: str, etc: Path) -> str:
    return text.replace("/opt/ash/venv/bin", VENV_BIN).replace("/etc/ash", str(etc))


def read_env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines()
                if line.strip() and not line.startswith("#"))


def service_env(name: str, etc: Path) -> tuple[list[str], dict[str, str]]:
    """A unit's ExecStart argv and its environment, as systemd would build them."""
    svc = service(name)
    env: dict[str, str] = {}
    for line in svc.get("Environment", []):
        for pair in shlex.split(line):
            key, _, value = pair.partition("=")
            env[key] = value
    for line in svc.get("EnvironmentFile", []):
        path = moved(line.strip(), etc)
        optional = path.startswith("-")
        path = path.lstrip("-")
        if optional and not os.path.exists(path):
            continue
        env.update(read_env_file(Path(path)))
    [exec_start] = svc["ExecStart"]
    return shlex.split(moved(exec_start, etc)), env


def test_every_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    for path in UNITS.glob("*.service"):
        copy = tmp_path / path.name
        copy.write_text(moved(path.read_text(), tmp_path).replace("User=nats", "User=root")
                        .replace("Group=nats", "Group=root").replace("User=ash", "User=root")
                        .replace("Group=ash", "Group=root"))
        (tmp_path / "coordinator.env").touch()
        (tmp_path / "runner.env").touch()
        done = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True,
                              text=True, timeout=60)
        problems = [line for line in (done.stdout + done.stderr).splitlines()
                    if path.name in line]
        assert done.returncode == 0 and problems == [], problems


def test_the_units_run_a_fleet_that_serves(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    # what deploy/README.md says to put in /etc/ash
    nats_auth.write(etc / "nats", nats_auth.Plan(runners=["unit-runner"], listen="127.0.0.1:-1",
                                                 store_dir=str(tmp_path / "js")))
    argv, env = service_env("ash-nats.service", etc)
    assert argv[0] == f"{VENV_BIN}/nats-server"
    server = ConfNats(Path(argv[argv.index("-c") + 1]), tmp_path / "nats.log").start()
    port = free_port()
    (etc / "coordinator.env").write_text(
        (ROOT / "deploy/env/coordinator.env").read_text()
        + f"ASH_NATS_URL={server.url}\nASH_PORT={port}\n"
        + f"ASH_DATABASE_URL=sqlite:///{tmp_path / 'ash.db'}\n")
    shutil.copy(etc / "nats" / "coordinator.env", etc / "nats-login.env")
    stack = Stack(tmp_path, server.url, url=f"http://127.0.0.1:{port}")
    try:
        argv, env = service_env("ash-coordinator.service", etc)
        assert env["ASH_NATS_URL"] == server.url and env["ASH_NATS_USER"] == "coordinator"
        env["ASH_HOME"] = str(tmp_path / "coordinator-home")  # the unit's StateDirectory
        stack.procs.append(start(tmp_path, "coordinator", argv, env))

        runner_etc = tmp_path / "runner-etc"
        runner_etc.mkdir()
        settings = {**RUNNER_ENV, "ASH_NATS_URL": server.url, "ASH_RUNNER_ID": "unit-runner"}
        (runner_etc / "runner.env").write_text(
            (ROOT / "deploy/env/runner.env").read_text()
            + "".join(f"{k}={v}\n" for k, v in settings.items()))
        shutil.copy(etc / "nats" / "runner-unit-runner.env", runner_etc / "nats-login.env")
        argv, env = service_env("ash-runner.service", runner_etc)
        assert env["ASH_NATS_URL"] == server.url and env["ASH_NATS_USER"] == "runner-unit-runner"
        env["ASH_HOME"] = str(tmp_path / "runner-home")
        stack.procs.append(start(tmp_path, "runner", argv, env))

        stack.wait_ready(runners=1)
        health = stack.health()
        assert health is not None and health["runners"] == 1
    finally:
        stack.stop()
        server.stop()
    assert server.violations() == []


def start(tmp: Path, name: str, argv: list[str], env: dict[str, str]) -> Proc:
    log = tmp / f"{name}.log"
    with log.open("ab") as out:
        popen = subprocess.Popen(argv, env=clean_env(**env), cwd=tmp, stdout=out,
                                 stderr=subprocess.STDOUT)
    return Proc(name, popen, log)


def test_ash_runner_joins_a_fleet_by_its_nats_url(tmp_path: Path) -> None:
    out = tmp_path / "nats"
    nats_auth.write(out, nats_auth.Plan(runners=["joiner"], listen="127.0.0.1:-1",
                                        store_dir=str(tmp_path / "js")))
    server = ConfNats(out / "nats-server.conf", tmp_path / "nats.log").start()
    stack = Stack(tmp_path, server.url)
    try:
        stack.start_coordinator(**read_env_file(out / "coordinator.env"))
        env = {**RUNNER_ENV, "ASH_HOME": str(tmp_path / "home"),
               "ASH_RUNNER_DIR": str(tmp_path / "joiner")}
        stack.procs.append(start(tmp_path, "joiner", [
            f"{VENV_BIN}/ash", "runner", server.url, "--id", "joiner",
            "--env-file", str(out / "runner-joiner.env")], env))
        stack.wait_ready(runners=1)
        deadline = time.monotonic() + 10
        while "runner joiner ready" not in stack.procs[-1].tail(200):
            assert time.monotonic() < deadline, stack.procs[-1].tail()
            time.sleep(0.05)  # poll the runner's log for its ready line
    finally:
        stack.stop()
        server.stop()
    assert server.violations() == []
