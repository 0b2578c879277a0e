"""Write a nats-server configuration with a user per Ash role, their subject permissions, TLS.

    python -m deploy.nats_auth --out /etc/ash/nats --runner r1 --runner r2 \\
        [--listen 0.0.0.0:4222] [--store-dir /var/lib/nats] \\
        [--tls-cert server.pem --tls-key server.key [--tls-ca ca.pem] [--tls-verify]] \\
        [--cluster ash --node nats-1 --node nats-2 --node nats-3]

writes into `--out`:

    accounts.conf        account ASH (JetStream) with the users `coordinator` and `runner-<id>`
                         and their permissions (`protocol.access`); included by the server configs
    nats-server.conf     the server (or, with --node, `<node>.conf` for each cluster node)
    coordinator.env      ASH_NATS_USER / ASH_NATS_PASSWORD (and ASH_NATS_TLS_CA) for coordinators
    runner-<id>.env      the same for one runner
    users.json           the passwords (mode 0600); running again keeps them, so adding a runner
                         is: run again with one more --runner, copy its env file to it, and
                         `nats-server --signal reload` (or SIGHUP) each server

Every coordinator logs in as `coordinator`; each runner has a user of its own, whose
permissions name its runner id. The files hold passwords: keep them readable only by the
server and the Ash processes (they are written 0600).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol import access, subjects

COORDINATOR_USER = "coordinator"
ROUTE_USER = "route"


def runner_user(runner_id: str) -> str:
    """The NATS user name of a runner."""
    if not subjects.is_token(runner_id):
        raise ValueError(f"invalid runner id {runner_id!r} (letters, digits, _ and - only)")
    return f"runner-{runner_id}"


@dataclass(slots=True)
class Tls:
    """The server's certificate and key; `ca` verifies clients (and is what clients trust)."""

    cert: str
    key: str
    ca: str = ""
    verify: bool = False  # require client certificates signed by `ca`

    def block(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cert_file": self.cert, "key_file": self.key, "timeout": 5}
        if self.ca:
            out["ca_file"] = self.ca
        if self.verify:
            out["verify"] = True
        return out


@dataclass(slots=True)
class Plan:
    """What to write: the runners, where the server listens and stores, TLS, cluster nodes."""

    runners: list[str]
    listen: str = "0.0.0.0:4222"
    store_dir: str = "/var/lib/nats"
    monitor: str = ""  # host:port of the monitoring endpoint (/healthz); empty: off
    tls: Tls | None = None
    cluster: str = ""
    nodes: list[str] = field(default_factory=list)  # host[:route port] of each cluster node
    client_tls_ca: str = ""  # the CA path as the Ash processes see it (env files)


# -- rendering ---------------------------------------------------------------------------------


def render(value: Any, indent: int = 0) -> str:
    """A value in nats-server's configuration syntax (a superset of JSON)."""
    pad = "  " * indent
    if isinstance(value, Mapping):
        inner = "".join(f"{pad}  {k}: {render(v, indent + 1)}\n" for k, v in value.items())
        return "{\n" + inner + pad + "}"
    if isinstance(value, (list, tuple)):
        if not value:
            return "[]"
        inner = "".join(f"{pad}  {render(v, indent + 1)}\n" for v in value)
        return "[\n" + inner + pad + "]"
    return json.dumps(value)


def accounts(passwords: Mapping[str, str], runners: Sequence[str]) -> dict[str, Any]:
    """The `accounts` block: one account with JetStream, the coordinator and every runner."""
    users = [{"user": COORDINATOR_USER, "password": passwords[COORDINATOR_USER],
              "permissions": access.coordinator_permissions()}]
    for rid in runners:
        name = runner_user(rid)
        users.append({"user": name, "password": passwords[name],
                      "permissions": access.runner_permissions(rid)})
    return {access.ACCOUNT: {"jetstream": "enabled", "users": users}}


def server(plan: Plan, passwords: Mapping[str, str], node: str = "") -> dict[str, Any]:
    """One server's settings (`node`: its name in the cluster)."""
    conf: dict[str, Any] = {}
    if node:
        conf["server_name"] = _name(node)
    conf["listen"] = plan.listen
    if plan.monitor:
        conf["http"] = plan.monitor
    conf["jetstream"] = {"store_dir": plan.store_dir.replace("{node}", _name(node) or "nats")}
    if plan.tls is not None:
        conf["tls"] = plan.tls.block()
    if node:
        route = f"{ROUTE_USER}:{passwords[ROUTE_USER]}"
        conf["cluster"] = {
            "name": plan.cluster,
            "listen": f"{'127.0.0.1' if _host(node) == '127.0.0.1' else '0.0.0.0'}:{_port(node)}",
            "authorization": {"user": ROUTE_USER, "password": passwords[ROUTE_USER]},
            "routes": [f"nats-route://{route}@{_host(n)}:{_port(n)}"
                       for n in plan.nodes if n != node],
        }
        if plan.tls is not None:
            conf["cluster"]["tls"] = {**plan.tls.block(), "verify": False}
    return conf


def _name(node: str) -> str:
    """A node is `host[:port]` or `name@host[:port]` (its server name, then where routes go)."""
    return node.split("@", 1)[0] if "@" in node else _host(node)


def _host(node: str) -> str:
    where = node.split("@", 1)[-1]
    return where.rsplit(":", 1)[0] if ":" in where else where


def _port(node: str) -> int:
    where = node.split("@", 1)[-1]
    return int(where.rsplit(":", 1)[1]) if ":" in where else 6222


def env_file(user: str, password: str, tls_ca: str) -> str:
    lines = [f"# NATS login for {user} (python -m deploy.nats_auth)",
             f"ASH_NATS_USER={user}", f"ASH_NATS_PASSWORD={password}"]
    if tls_ca:
        lines.append(f"ASH_NATS_TLS_CA={tls_ca}")
    return "\n".join(lines) + "\n"


# -- writing -----------------------------------------------------------------------------------


def write(out: str | os.PathLike[str], plan: Plan, *, k8s_secret: str = "") -> list[Path]:
    """Write the configuration into `out` (created); returns the files written."""
    for rid in plan.runners:
        runner_user(rid)  # validate before writing anything
    if plan.nodes and not plan.cluster:
        raise ValueError("--node needs --cluster NAME")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    state = root / "users.json"
    passwords: dict[str, str] = json.loads(state.read_text()) if state.exists() else {}
    for name in [COORDINATOR_USER, ROUTE_USER, *map(runner_user, plan.runners)]:
        passwords.setdefault(name, secrets.token_urlsafe(24))
    files = {"users.json": json.dumps(passwords, indent=2, sort_keys=True) + "\n"}
    header = "# Generated by `python -m deploy.nats_auth`; run it again rather than editing.\n"
    users = render(accounts(passwords, plan.runners))
    files["accounts.conf"] = f"{header}accounts: {users}\n"
    for node in plan.nodes or [""]:
        body = "".join(f"{k}: {render(v)}\n" for k, v in server(plan, passwords, node).items())
        name = f"{_name(node)}.conf" if node else "nats-server.conf"
        files[name] = header + body + 'include "accounts.conf"\n'
    ca = plan.client_tls_ca or (plan.tls.ca if plan.tls else "")
    files["coordinator.env"] = env_file(COORDINATOR_USER, passwords[COORDINATOR_USER], ca)
    for rid in plan.runners:
        files[f"runner-{rid}.env"] = env_file(runner_user(rid), passwords[runner_user(rid)], ca)
    if k8s_secret:
        users = {COORDINATOR_USER: passwords[COORDINATOR_USER],
                 **{runner_user(r): passwords[runner_user(r)] for r in plan.runners}}
        files["k8s-secret.yaml"] = header + json.dumps({
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": k8s_secret}, "stringData": users}, indent=2) + "\n"
    written = []
    for name, text in files.items():
        path = root / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(path, 0o600)
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy.nats_auth", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="directory to write into")
    p.add_argument("--runner", action="append", default=[], metavar="ID",
                   help="a runner id (its ASH_RUNNER_ID); repeatable")
    p.add_argument("--listen", default="0.0.0.0:4222", help="client listen address (0.0.0.0:4222)")
    p.add_argument("--store-dir", default="/var/lib/nats", help="JetStream storage (/var/lib/nats)")
    p.add_argument("--monitor", default="", metavar="HOST:PORT",
                   help="serve the monitoring endpoints (/healthz, /varz) here")
    p.add_argument("--tls-cert", default="", help="the server's certificate (PEM): TLS on")
    p.add_argument("--tls-key", default="", help="its private key (PEM)")
    p.add_argument("--tls-ca", default="", help="CA bundle that verifies client certificates")
    p.add_argument("--tls-verify", action="store_true",
                   help="require client certificates (mutual TLS; set ASH_NATS_TLS_CERT/KEY)")
    p.add_argument("--client-tls-ca", default="",
                   help="the CA path written to the env files (default: --tls-ca)")
    p.add_argument("--cluster", default="", help="cluster name (with --node)")
    p.add_argument("--node", action="append", default=[], metavar="HOST[:PORT]",
                   help="a cluster node and its route port (6222), or NAME@HOST[:PORT]; "
                        "repeatable, one NAME.conf each")
    p.add_argument("--k8s-secret", default="", metavar="NAME",
                   help="also write k8s-secret.yaml: a Secret NAME with each user's password "
                        "under the user's name (the Helm chart's nats.loginSecret)")
    args = p.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        p.error("--tls-cert and --tls-key go together")
    if args.tls_verify and not args.tls_ca:
        p.error("--tls-verify needs --tls-ca")
    tls = Tls(args.tls_cert, args.tls_key, args.tls_ca, args.tls_verify) if args.tls_cert else None
    plan = Plan(runners=args.runner, listen=args.listen, store_dir=args.store_dir,
                monitor=args.monitor, tls=tls, cluster=args.cluster, nodes=args.node,
                client_tls_ca=args.client_tls_ca)
    try:
        for path in write(args.out, plan, k8s_secret=args.k8s_secret):
            print(path)
    except ValueError as e:
        print(f"nats_auth: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
