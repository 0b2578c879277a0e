"""deploy/: what can be checked without Docker, a cluster or a cloud.

docker-compose.yml, the cloud-init files and the Helm chart are parsed as YAML (PyYAML, or the
system Python's when the venv has none) and checked for what a deployment relies on: the
services of the fleet, privileged runners, env files and NATS configs that the generator
writes, settings that exist, a runner unit in cloud-init identical to deploy/systemd's, and
chart templates that only use values the chart defines. The compose fleet's NATS topology (three
nodes with routes, users and JetStream) is started for real on loopback, and a coordinator and
a runner serve through it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ash.embedded_nats import find_nats_server
from deploy import nats_auth
from protocol.config import ALL_SETTINGS
from tests.deploy.natsproc import ConfNats
from tests.deploy.test_nats_permissions import RUNNER_ENV, env_file
from tests.procs import ROOT, Stack, free_port

DEPLOY = ROOT / "deploy"
SETTING = re.compile(r"\b(ASH_[A-Z0-9_]+)\b")


def load_yaml(text: str) -> Any:
    """Every document of a YAML text, as plain data."""
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        python = shutil.which("python3", path="/usr/bin:/bin")
        probe = python and subprocess.run([python, "-c", "import yaml"], capture_output=True)
        if not probe or probe.returncode != 0:
            pytest.skip("no YAML parser here (PyYAML)")
        done = subprocess.run(
            [python, "-c", "import json, sys, yaml; "
                           "print(json.dumps(list(yaml.safe_load_all(sys.stdin))))"],
            input=text, capture_output=True, text=True, timeout=60, check=True)
        return json.loads(done.stdout)
    return list(yaml.safe_load_all(text))


def settings_in(text: str) -> set[str]:
    return set(SETTING.findall(text))


# -- docker compose ----------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    [doc] = load_yaml((DEPLOY / "compose" / "docker-compose.yml").read_text())
    return doc  # type: ignore[no-any-return]


def test_compose_runs_the_small_fleet_with_privileged_runners() -> None:
    services = compose()["services"]
    assert set(services) == {"nats-1", "nats-2", "nats-3", "postgres", "coordinator-1",
                             "coordinator-2", "runner-1", "runner-2"}
    for name in ("runner-1", "runner-2"):
        runner = services[name]
        assert runner["privileged"] is True and runner["command"] == ["ash-runner"]
        assert runner["environment"]["ASH_RUNNER_ID"] == name
        assert f"nats/runner-{name}.env" in runner["env_file"]
    ids = {services[n]["environment"]["ASH_RUNNER_ID"] for n in ("runner-1", "runner-2")}
    assert len(ids) == 2
    for name in ("coordinator-1", "coordinator-2"):
        env = services[name]["environment"]
        assert env["ASH_DATABASE_URL"].startswith("postgres://")
        hosts = [u.split("//")[1].split(":")[0] for u in env["ASH_NATS_URL"].split(",")]
        assert set(hosts) == {"nats-1", "nats-2", "nats-3"}
    ports = [services[n]["ports"][0].split(":")[0] for n in ("coordinator-1", "coordinator-2")]
    assert len(set(ports)) == 2
    for service in services.values():
        assert settings_in(json.dumps(service.get("environment", {}))) <= ALL_SETTINGS
        for dep in service.get("depends_on", {}):
            assert dep in services


def test_compose_uses_the_files_its_generator_command_writes(tmp_path: Path) -> None:
    text = (DEPLOY / "compose" / "docker-compose.yml").read_text()
    args = re.search(r"-m deploy\.nats_auth (.*?)\n#\s+cp", text, re.S)
    assert args, "the compose file says how to generate its NATS config"
    argv = re.sub(r"\\\n#\s*", " ", args.group(1)).split("#")[0].split()
    argv[argv.index("--out") + 1] = str(tmp_path / "nats")
    assert nats_auth.main(argv) == 0
    written = {p.name for p in (tmp_path / "nats").iterdir()}
    services = compose()["services"]
    for service in services.values():
        for env in service.get("env_file", []):
            assert not env.startswith("nats/") or env.removeprefix("nats/") in written, env
        command = service.get("command", [])
        if command and command[0] == "nats-server":
            conf = command[command.index("-c") + 1]
            assert conf.startswith("/etc/ash/nats/") and Path(conf).name in written
            assert "./nats:/etc/ash/nats:ro" in service["volumes"]
    nats_names = sorted(n for n in services if n.startswith("nats-"))
    for name in nats_names:  # each node routes to the two others, by their service names
        conf = (tmp_path / "nats" / f"{name}.conf").read_text()
        assert f'server_name: "{name}"' in conf
        assert {h for h in nats_names if f"@{h}:6222" in conf} == set(nats_names) - {name}
        check = subprocess.run([find_nats_server(), "-c", str(tmp_path / "nats" / f"{name}.conf"),
                                "-t"],
                               capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stderr


def test_the_clusters_nats_topology_serves_a_fleet(tmp_path: Path) -> None:
    """Three nodes with routes, one account and per-role users, as compose runs them, but on
    loopback: a coordinator and a runner given all three URLs work through the cluster."""
    routes = [free_port() for _ in range(3)]
    nodes = [f"nats-{i + 1}@127.0.0.1:{port}" for i, port in enumerate(routes)]
    out = tmp_path / "nats"
    nats_auth.write(out, nats_auth.Plan(runners=["runner-1"], listen="127.0.0.1:-1",
                                        store_dir=str(tmp_path / "{node}"), cluster="ash",
                                        nodes=nodes))
    servers = [ConfNats(out / f"nats-{i + 1}.conf", tmp_path / f"nats-{i + 1}.log")
               for i in range(3)]
    stack = Stack(tmp_path, ",".join(s.url for s in servers))
    try:
        for server in servers:
            server.start()
        stack.nats_url = ",".join(s.url for s in servers)
        stack.start_coordinator(**env_file(out / "coordinator.env"))
        stack.start_runner("runner-1", **RUNNER_ENV, **env_file(out / "runner-runner-1.env"))
        stack.wait_ready(runners=1, timeout=90)
    finally:
        stack.stop()
        for server in servers:
            server.stop()
    for server in servers:
        log = server.log.read_text()
        assert server.violations() == [] and "Route connection created" in log


# -- cloud-init --------------------------------------------------------------------------------


def unit_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize("cloud", ["ec2", "gce"])
def test_cloud_init_installs_and_starts_a_runner_that_joins_the_fleet(cloud: str) -> None:
    text = (DEPLOY / "cloud-init" / f"{cloud}-runner.yaml").read_text()
    assert text.startswith("#cloud-config\n")
    placeholders = set(re.findall(r"__[A-Z_]+__", text))
    assert {"__NATS_URL__", "__RUNNER_ID__", "__NATS_PASSWORD__"} <= placeholders
    rendered = text
    for p in placeholders:
        rendered = rendered.replace(p, "r-7" if p == "__RUNNER_ID__" else "x")
    [doc] = load_yaml(rendered)
    files = {f["path"]: f for f in doc["write_files"]}
    runner_env = files["/etc/ash/runner.env"]["content"]
    assert "ASH_NATS_URL=x" in runner_env and "ASH_RUNNER_ID=r-7" in runner_env
    assert "ASH_NATS_USER=runner-r-7" in files["/etc/ash/nats-login.env"]["content"]
    assert files["/etc/ash/nats-login.env"]["permissions"] == "0600"
    assert settings_in(runner_env) <= ALL_SETTINGS
    unit = files["/etc/systemd/system/ash-runner.service"]["content"]
    assert unit_lines(unit) == unit_lines((DEPLOY / "systemd" / "ash-runner.service").read_text())
    assert {"bubblewrap", "iproute2", "nftables"} <= set(doc["packages"])
    assert ["systemctl", "enable", "--now", "ash-runner.service"] in doc["runcmd"]


# -- Helm --------------------------------------------------------------------------------------


def test_the_helm_chart_only_uses_values_it_defines() -> None:
    chart = DEPLOY / "helm" / "ash"
    [meta] = load_yaml((chart / "Chart.yaml").read_text())
    [values] = load_yaml((chart / "values.yaml").read_text())
    assert meta["apiVersion"] == "v2" and meta["name"] == "ash"
    templates = {p.name: p.read_text() for p in (chart / "templates").iterdir()}
    assert {"coordinator.yaml", "runner.yaml"} <= set(templates)
    for name, text in templates.items():
        assert text.count("{{") == text.count("}}"), name
        opens = len(re.findall(r"\{\{-?\s*(if|range|define|with)\b", text))
        assert opens == len(re.findall(r"\{\{-?\s*end\b", text)), name
        for path in re.findall(r"\.Values((?:\.[A-Za-z]+)+)", text):
            node: Any = values
            for key in path.strip(".").split("."):
                assert isinstance(node, dict) and key in node, f"{name}: .Values{path}"
                node = node[key]
        assert settings_in(text) <= ALL_SETTINGS, name
    runner = templates["runner.yaml"]
    assert "kind: StatefulSet" in runner and "privileged:" in runner
    assert values["runner"]["privileged"] is True
    assert settings_in(json.dumps(values)) <= ALL_SETTINGS


# -- Dockerfile --------------------------------------------------------------------------------


def test_the_dockerfile_copies_what_exists_and_installs_the_sandbox_tools() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    for line in text.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
    for package in ("bubblewrap", "iproute2", "nftables", "e2fsprogs"):
        assert package in text
    assert "privileged" in text
