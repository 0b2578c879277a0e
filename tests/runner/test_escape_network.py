"""Escape attempts over the network, from real sandboxes in real network slots. All must fail.

No packet may leave this machine, even if the code under test is wrong. So the runner side
(NetworkPool, EgressProxy, the scripted model, stand-ins for NATS and the coordinator) runs in
a child process inside a "runner" namespace this test creates, and the only links from there
lead, through a bridge namespace, to this test's own hosts:

    <p>-run  uplink 11.231.0.1/24, 10.99.0.1/24, 169.254.0.1/16     (+ the pool's slots)
      |
    <p>-br   br0 ---+--- <p>-allow  11.231.0.10   "allowed.test"     HTTP :80, HTTPS :443
                    +--- <p>-other  11.231.0.20   "other.test"       (not on the allowlist)
                    +--- <p>-priv   10.99.0.10    "private.test"     a private-range address
                    +--- <p>-meta   169.254.169.254 "metadata.test"  the metadata address

No namespace has a default route. The test hosts' addresses are public-looking (the proxy
refuses private ones) but exist only inside these namespaces. The proxy's resolver knows only
the names above. Each test is one attempt, made from inside a sandbox (uid 1000, its own user
namespace) with the tools an agent would use.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from runner.sandbox import CLI_PATH
from tests.runner.netlab import Namespaces, ip

pytestmark = pytest.mark.skipif(
    not (os.geteuid() == 0
         and all(map(shutil.which, ("bwrap", "nft", "nsenter", "openssl", "/usr/bin/curl")))),
    reason="needs root, bubblewrap, nft, nsenter, openssl and curl",
)

ROOT = Path(__file__).resolve().parents[2]
REAL_KEY = "sk-ant-api03-REAL-" + os.urandom(12).hex()
PROXY_PORT = 3128
HOSTS = {  # namespace suffix -> (address on its uplink, name the proxy resolves)
    "allow": ("11.231.0.10/24", "allowed.test"),
    "other": ("11.231.0.20/24", "other.test"),
    "priv": ("10.99.0.10/24", "private.test"),
    "meta": ("169.254.169.254/16", "metadata.test"),
}
RUNNER_UPLINK = ("11.231.0.1/24", "10.99.0.1/24", "169.254.0.1/16")
NAMES = {name: [addr.split("/")[0]] for addr, name in HOSTS.values()} | {
    "localhost": ["127.0.0.1"],
    "runner.test": ["11.231.0.1"],
}

# Runs inside the sandbox: each attempt, and what came of it.
PROBE = r"""
import json, os, socket, sys
proxy = os.environ["HTTPS_PROXY"].removeprefix("http://").rstrip("/")
phost, pport = proxy.rsplit(":", 1)

def udp(target):
    host, port = target.rsplit(":", 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect((host, int(port)))  # connected, so an ICMP error comes back as one
        s.send(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x04leak\x00\x00\x01\x00\x01")
        s.settimeout(2)
        s.recv(512)
        return "answered"
    except OSError as e:
        return "timeout" if isinstance(e, TimeoutError) else e.strerror
    finally:
        s.close()

def direct(target):
    host, port = target.rsplit(":", 1)
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.settimeout(5)
    try:
        s.connect((host.strip("[]"), int(port)))
        return "connected"
    except OSError as e:
        return "timeout" if isinstance(e, TimeoutError) else e.strerror
    finally:
        s.close()

def via_proxy(request, tunnel):
    s = socket.create_connection((phost, int(pport)), timeout=10)
    s.sendall(request.encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n")[0].decode()
    if not (tunnel and " 200 " in status):
        while chunk := s.recv(65536):
            body += chunk
    s.close()
    return status + " | " + body.decode().strip()

out = {}
for kind, target in json.loads(sys.argv[1]):
    if kind == "direct":
        out[target] = direct(target)
    elif kind == "udp":
        out["udp " + target] = udp(target)
    elif kind == "connect":
        out["CONNECT " + target] = via_proxy(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n", True)
    elif kind == "get":
        host = target.split("/")[2]
        out["GET " + target] = via_proxy(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n", False)
print(json.dumps(out))
"""


@dataclass
class Lab:
    ns: Namespaces
    runner: subprocess.Popen[bytes]
    logs: dict[str, Path]
    ca: str

    def call(self, cmd: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
        assert self.runner.stdin is not None and self.runner.stdout is not None
        self.runner.stdin.write(json.dumps(cmd).encode() + b"\n")
        self.runner.stdin.flush()
        answer = json.loads(_readline(self.runner, timeout))
        assert "error" not in answer, answer["error"]
        return answer

    def run(self, argv: list[str], **cmd: Any) -> dict[str, Any]:
        """Run `argv` in a fresh sandbox in a network slot; its exit, output and slot."""
        return self.call({"op": "run", "argv": argv, **cmd})

    def probe(self, attempts: list[tuple[str, str]], **cmd: Any) -> dict[str, str]:
        result = self.run(["/usr/bin/python3", "-c", PROBE, json.dumps(attempts)], **cmd)
        assert result["exit"] == 0, result["stderr"]
        return json.loads(result["stdout"])

    def state(self) -> dict[str, Any]:
        return self.call({"op": "state"})

    def mark(self) -> dict[str, int]:
        return {h: p.stat().st_size for h, p in self.logs.items()}

    def events_since(self, mark: dict[str, int]) -> dict[str, list[dict[str, Any]]]:
        """What each test host logged since `mark`: every connection and request."""
        out = {}
        for host, path in self.logs.items():
            with path.open() as f:
                f.seek(mark[host])
                out[host] = [json.loads(line) for line in f]
        return out


def _readline(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise AssertionError(f"no answer within {timeout}s")
    line = proc.stdout.readline()
    if not line:
        raise AssertionError(f"the process exited ({proc.poll()})")
    return line


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    tmp = tmp_path_factory.mktemp("netlab")
    with Namespaces() as ns:
        run, br = ns.add("run"), ns.add("br")
        ip("-n", br, "link", "add", "br0", "type", "bridge")
        ip("-n", br, "link", "set", "br0", "up")
        members = [(run, RUNNER_UPLINK)] + [(ns.add(h), (a,)) for h, (a, _) in HOSTS.items()]
        for i, (name, addresses) in enumerate(members):
            ns.link(br, f"p{i}", name, "uplink")
            ip("-n", br, "link", "set", f"p{i}", "master", "br0")
            for address in addresses:
                ip("-n", name, "addr", "add", address, "dev", "uplink")
        for name in ns.names:  # the promise this whole file rests on
            assert "default" not in ip("-n", name, "route"), name
            assert "default" not in ip("-n", name, "-6", "route"), name

        key, cert = tmp / "key.pem", tmp / "cert.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                        "-days", "1", "-subj", "/CN=allowed.test",
                        "-addext", "subjectAltName=DNS:allowed.test"],
                       check=True, capture_output=True)  # fmt: skip
        logs = {}
        for host in HOSTS:
            logs[host] = tmp / f"{host}.log"
            logs[host].touch()
            proc = ns.spawn(f"{ns.prefix}-{host}", [
                sys.executable, str(ROOT / "tests/runner/netlab_host.py"), host,
                str(logs[host]), "80", "443", str(cert), str(key)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
            assert _readline(proc, 10) == b"ready\n"

        runner = ns.spawn(run, [sys.executable, "-m", "tests.runner.netlab_runner"], cwd=ROOT,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
        assert runner.stdin is not None
        config = {"slots": 2, "proxy_port": PROXY_PORT, "subnet": "10.231.0.0/24",
                  "prefix": ns.prefix, "names": NAMES, "real_key": REAL_KEY,
                  "data_dir": str(tmp / "runner")}  # fmt: skip
        runner.stdin.write(json.dumps(config).encode() + b"\n")
        runner.stdin.flush()
        assert json.loads(_readline(runner, 30))["ready"]
        try:
            yield Lab(ns, runner, logs, cert.read_text())
        finally:
            runner.stdin.close()  # the runner closes its pool and proxy, then exits
            runner.wait(30)


def refused(reason: str) -> str:
    return f"HTTP/1.1 403 Forbidden | ash egress proxy: {reason}"


# --------------------------------------------------------------------------- reachable


def test_an_allowlisted_host_is_reachable_through_the_proxy(lab: Lab) -> None:
    mark = lab.mark()
    result = lab.run(
        ["/bin/sh", "-c", "curl -sS --cacert ca.pem https://allowed.test/tls && "
                          "curl -sS http://allowed.test/plain"],
        allowlist=["allowed.test"], files={"ca.pem": lab.ca},
    )  # fmt: skip
    assert (result["exit"], result["stderr"]) == (0, "")
    assert result["stdout"] == "hello from allow GET /tls\nhello from allow GET /plain\n"
    events = lab.events_since(mark)["allow"]
    assert [(e["event"], e.get("path")) for e in events] == [
        ("connect", None), ("request", "/tls"), ("connect", None), ("request", "/plain")]
    # It arrived from the runner (the proxy), never from the sandbox's own address.
    assert {e["peer"] for e in events if e["event"] == "connect"} == {"11.231.0.1"}


# --------------------------------------------------------------------------- direct


def test_direct_connections_to_every_test_host_fail(lab: Lab) -> None:
    mark = lab.mark()
    targets = [f"{a.split('/')[0]}:{p}" for a, _ in HOSTS.values() for p in (80, 443)]
    got = lab.probe([("direct", t) for t in targets], policy="open")
    assert got == {t: "Network is unreachable" for t in targets}
    assert lab.events_since(mark) == {h: [] for h in HOSTS}


def test_dns_and_other_udp_go_nowhere(lab: Lab) -> None:
    before = lab.state()["loopback_hits"].get("dns", 0)
    gateway = lab.run(["/bin/true"])["slot"]["gateway"]
    targets = [gateway, "127.0.0.53", "11.231.0.1", "11.231.0.10", "10.99.0.10",
               "169.254.169.254"]  # fmt: skip
    got = lab.probe([("udp", f"{t}:53") for t in targets], policy="open")
    assert got == {
        f"udp {gateway}:53": "Operation not permitted",  # the slot's firewall
        "udp 127.0.0.53:53": "Connection refused",  # its own loopback: nothing there
        **{f"udp {t}:53": "Network is unreachable" for t in targets[2:]},
    }
    assert lab.state()["loopback_hits"].get("dns", 0) == before == 0


def test_the_runners_loopback_services_are_unreachable(lab: Lab) -> None:
    before = lab.state()["loopback_hits"]
    gateway = lab.run(["/bin/true"])["slot"]["gateway"]
    got = lab.probe([
        ("direct", f"{gateway}:4222"), ("direct", f"{gateway}:4100"),
        ("direct", "127.0.0.1:4222"), ("direct", "127.0.0.1:4100"),
        ("direct", "11.231.0.1:4222"),
        ("connect", "127.0.0.1:4222"), ("connect", "localhost:4100"),
        ("connect", "[::1]:4222"), ("connect", f"{gateway}:4222"),
        ("connect", "runner.test:4222"), ("connect", "11.231.0.1:4222"),
        ("get", "http://127.0.0.1:4100/api/sessions"),
    ], policy="open")  # fmt: skip
    # The sandbox's own loopback is its own: nothing listens there.
    assert got.pop("127.0.0.1:4222") == got.pop("127.0.0.1:4100") == "Connection refused"
    assert got == {
        f"{gateway}:4222": "Connection refused",  # the slot's firewall, not NATS
        f"{gateway}:4100": "Connection refused",
        "11.231.0.1:4222": "Network is unreachable",
        "CONNECT 127.0.0.1:4222": refused("127.0.0.1 is a loopback address"),
        "CONNECT localhost:4100": refused(
            "localhost resolves to 127.0.0.1, which is a loopback address"),
        "CONNECT [::1]:4222": refused("::1 is a loopback address"),
        f"CONNECT {gateway}:4222": refused(f"{gateway} is a private address"),
        "CONNECT runner.test:4222": refused(
            "runner.test resolves to 11.231.0.1, which is this runner's own address"),
        "CONNECT 11.231.0.1:4222": refused("11.231.0.1 is this runner's own address"),
        "GET http://127.0.0.1:4100/api/sessions": refused("127.0.0.1 is a loopback address"),
    }  # fmt: skip
    assert lab.state()["loopback_hits"] == before == {}


# --------------------------------------------------------------------------- via the proxy


def test_a_private_range_address_is_refused(lab: Lab) -> None:
    mark = lab.mark()
    got = lab.probe([("connect", "private.test:80"), ("connect", "10.99.0.10:80"),
                     ("get", "http://10.99.0.10/"), ("get", "http://private.test/")],
                    policy="allowlist", allowlist=["private.test", "10.99.0.10"])  # fmt: skip
    assert got == {
        "CONNECT private.test:80": refused(
            "private.test resolves to 10.99.0.10, which is a private address"),
        "CONNECT 10.99.0.10:80": refused("10.99.0.10 is a private address"),
        "GET http://10.99.0.10/": refused("10.99.0.10 is a private address"),
        "GET http://private.test/": refused(
            "private.test resolves to 10.99.0.10, which is a private address"),
    }  # fmt: skip
    assert lab.events_since(mark)["priv"] == []


def test_the_metadata_address_is_refused(lab: Lab) -> None:
    mark = lab.mark()
    got = lab.probe([("get", "http://169.254.169.254/latest/meta-data/"),
                     ("connect", "169.254.169.254:80"), ("connect", "metadata.test:80")],
                    policy="open")  # fmt: skip
    assert got == {
        "GET http://169.254.169.254/latest/meta-data/": refused(
            "169.254.169.254 is the cloud metadata address"),
        "CONNECT 169.254.169.254:80": refused("169.254.169.254 is the cloud metadata address"),
        "CONNECT metadata.test:80": refused(
            "metadata.test resolves to 169.254.169.254, which is the cloud metadata address"),
    }  # fmt: skip
    assert lab.events_since(mark)["meta"] == []


def test_a_host_off_the_allowlist_is_refused(lab: Lab) -> None:
    mark = lab.mark()
    attempts = [("connect", "other.test:443"), ("get", "http://other.test/x")]
    got = lab.probe(attempts, allowlist=["allowed.test"])
    assert got == {
        "CONNECT other.test:443": refused("other.test is not on this sandbox's allowlist"),
        "GET http://other.test/x": refused("other.test is not on this sandbox's allowlist"),
    }
    assert lab.events_since(mark)["other"] == []
    # Control: the same host is reachable when the policy allows it.
    assert lab.probe(attempts, policy="open") == {
        "CONNECT other.test:443": "HTTP/1.1 200 Connection established | ",
        "GET http://other.test/x": "HTTP/1.1 200 OK | hello from other GET /x",
    }


def test_policy_none_leaves_only_the_model(lab: Lab) -> None:
    got = lab.probe([("connect", "allowed.test:443"), ("get", "http://allowed.test/")],
                    policy="none", allowlist=["allowed.test"])  # fmt: skip
    assert set(got.values()) == {refused("this sandbox's network policy is 'none'")}


# --------------------------------------------------------------------------- the model key

SECRETS_HUNT = r"""
import glob, json, os, subprocess, urllib.request
found = {"env": dict(os.environ)}
for path in glob.glob("/proc/[0-9]*/environ") + glob.glob("/proc/[0-9]*/cmdline"):
    try:
        found[path] = open(path, "rb").read().decode(errors="replace")
    except OSError as e:
        found[path] = str(e)
grep = subprocess.run(["grep", "-rl", "sk-ant", "/", "--exclude-dir=proc", "--exclude-dir=sys",
                       "--exclude-dir=dev", "--exclude-dir=usr"], capture_output=True, text=True)
found["grep"] = grep.stdout
base = os.environ["ANTHROPIC_BASE_URL"]

def ask(key):
    body = json.dumps({"model": "claude", "max_tokens": 64, "stream": True,
                       "messages": [{"role": "user", "content": "hello"}]}).encode()
    req = urllib.request.Request(base + "/v1/messages", data=body, method="POST", headers={
        "x-api-key": key, "anthropic-version": "2023-06-01", "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return [r.status, dict(r.headers), r.read().decode()]
    except urllib.error.HTTPError as e:
        return [e.code, dict(e.headers), e.read().decode()]

found["model"] = ask(os.environ["ANTHROPIC_API_KEY"])
found["guessed"] = ask("sk-ant-api03-guess")
print(json.dumps(found))
"""


def test_the_model_key_never_enters_the_sandbox(lab: Lab) -> None:
    before = len(lab.state()["model_requests"])
    result = lab.run(["/usr/bin/python3", "-c", SECRETS_HUNT])
    assert result["exit"] == 0, result["stderr"]
    assert REAL_KEY not in result["stdout"] + result["stderr"]
    found = json.loads(result["stdout"])
    placeholder = result["placeholder"]
    assert found["env"]["ANTHROPIC_API_KEY"] == placeholder
    assert found["env"]["ANTHROPIC_BASE_URL"] == result["slot"]["proxy_url"]
    assert found["grep"] == ""
    status, headers, body = found["model"]
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    assert "event: message_stop" in body
    assert found["guessed"][0] == 403 and "not this sandbox's" in found["guessed"][2]
    requests = lab.state()["model_requests"][before:]
    assert [(r["path"], r["credential"]) for r in requests] == [("/v1/messages", REAL_KEY)]


def test_the_real_cli_answers_through_the_proxy(lab: Lab) -> None:
    before = len(lab.state()["model_requests"])
    result = lab.run([CLI_PATH, "-p", "Say hello", "--output-format", "json"], cli=True,
                     timeout=120)  # fmt: skip
    assert result["exit"] == 0, result["stderr"][-2000:]
    assert REAL_KEY not in result["stdout"] + result["stderr"]
    answer = json.loads(result["stdout"])
    assert answer["is_error"] is False and answer["result"]
    requests = lab.state()["model_requests"][before:]
    assert requests and {r["credential"] for r in requests} == {REAL_KEY}
    assert any(r["purpose"] == "conversation" for r in requests)
