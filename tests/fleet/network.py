r"""A private network of "hosts" on one machine: a namespace each, one bridge, no way out.

    root netns (the test process)             switch netns ashf<pid>-sw
      ashfh<pid>  10.198.N.1/24  <== veth ==>  host --+
                                                       br0 (a Linux bridge)
    ashf<pid>-nats  eth0 10.198.N.2/24  <== veth ==>  nats --+
    ashf<pid>-api   eth0 10.198.N.3/24  <== veth ==>  api  --+
    ashf<pid>-c1    eth0 10.198.N.11/24 <== veth ==>  c1   --+   ... one per host
    ashf<pid>-r1    eth0 10.198.N.21/24 <== veth ==>  r1   --+

Every host namespace has `lo` and one veth whose other end is a port of the bridge, which lives
in a namespace of its own; no namespace has a default route, so nothing any process does can
reach past the /24. The only thing in the root namespace is the test's own veth end and its
address (a connected route to the /24): the test process reaches every host directly. The /24
is one that no address or route of the root namespace overlaps (`choose_subnet`).

`link_down(host)` sets the host's bridge port down: its carrier drops, packets to and from it
are lost, TCP connections are not reset; a network partition of that one host.

`close()` kills whatever still runs in our namespaces and deletes them; deleting the switch
namespace deletes the bridge and every veth pair with it. `sweep_stale()` does the same for
what an earlier run left behind (its pid is in every name; a dead pid, or our own, is stale).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import signal
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ash.process import pid_alive
from tests.runner.netlab import NETNS_DIR, in_netns, ip

PREFIX = "ashf"  # our namespaces: ashf<pid>-<host>; our root-namespace veth: ashfh<pid>
SUBNET_POOL = ipaddress.IPv4Network("10.198.0.0/16")  # a /24 of it, one no route here uses
SWITCH = "sw"
_OURS = re.compile(rf"^{PREFIX}(\d+)-\w+$")
_OUR_LINK = re.compile(rf"^{PREFIX}h(\d+)$")


@dataclass(frozen=True, slots=True)
class Host:
    """One host of the lab: its namespace, its address, and its port on the bridge."""

    name: str
    netns: str
    address: str
    port: str  # the veth end in the switch namespace (named after the host)

    def argv(self, argv: Iterable[str]) -> list[str]:
        """The argv that runs `argv` on this host (nsenter execs it: same pid)."""
        return in_netns(self.netns, list(argv))


def netns_pids(name: str) -> list[int]:
    """Pids of the processes in namespace `name` (none if it is gone)."""
    proc = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True,
                          check=False)  # fmt: skip
    return [int(p) for p in proc.stdout.split()] if proc.returncode == 0 else []


def remove_netns(name: str) -> None:
    """SIGKILL everything in namespace `name`, then delete it. Idempotent."""
    for pid in netns_pids(name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if os.path.exists(os.path.join(NETNS_DIR, name)):
        with contextlib.suppress(RuntimeError):
            ip("netns", "del", name)


def list_netns() -> list[str]:
    return os.listdir(NETNS_DIR) if os.path.isdir(NETNS_DIR) else []


def sweep_stale(
    pid_of: Callable[[str], int | None] = lambda name: None,
) -> list[str]:
    """Remove what an earlier lab left behind: our namespaces and root-namespace veths whose
    pid is dead (or is ours: an earlier lab of this process that did not close), and any
    namespace `pid_of` attributes to such a pid. Returns what was removed."""
    removed: list[str] = []

    def stale(pid: int) -> bool:
        return pid == os.getpid() or not pid_alive(pid)

    for name in list_netns():
        m = _OURS.match(name)
        pid = int(m.group(1)) if m else pid_of(name)
        if pid is not None and stale(pid):
            remove_netns(name)
            removed.append(name)
    for name in os.listdir("/sys/class/net"):
        m = _OUR_LINK.match(name)
        if m and stale(int(m.group(1))):
            with contextlib.suppress(RuntimeError):
                ip("link", "del", name)
            removed.append(name)
    return removed


def choose_subnet(start: int) -> ipaddress.IPv4Network:
    """A /24 of SUBNET_POOL that overlaps no address or route of the root namespace (so also
    no other lab running at the same time, whose root-namespace end has an address in its
    /24), trying from the `start`-th one on."""
    taken: list[ipaddress.IPv4Network] = []
    for args in (("-4", "-o", "addr", "show"), ("-4", "route", "show", "table", "all")):
        for line in ip(*args).splitlines():
            for word in line.split():
                with contextlib.suppress(ValueError):
                    if "/" in word or re.fullmatch(r"\d+\.\d+\.\d+\.\d+", word):
                        taken.append(ipaddress.IPv4Network(word, strict=False))
    subnets = list(SUBNET_POOL.subnets(new_prefix=24))
    for k in range(len(subnets)):
        candidate = subnets[(start + k) % len(subnets)]
        if not any(candidate.overlaps(t) for t in taken if t.prefixlen > 0):
            return candidate
    raise RuntimeError(f"no free /24 in {SUBNET_POOL}")


class Lab:
    """The namespaces, bridge and veths of one run; `close()` removes them (idempotent)."""

    def __init__(self, tag: str | None = None) -> None:
        self.tag = tag or f"{PREFIX}{os.getpid()}"
        self.subnet: ipaddress.IPv4Network | None = None
        self.hosts: dict[str, Host] = {}
        self.client_address = ""
        self._switch = f"{self.tag}-{SWITCH}"
        self._root_link = f"{PREFIX}h{os.getpid()}"
        self._made: list[str] = []

    def open(self, hosts: dict[str, int]) -> Lab:
        """Make the switch, then one namespace per host (name -> last octet of its address);
        the test process gets .1. On failure everything made so far is removed."""
        try:
            self.subnet = choose_subnet(os.getpid())
            base = self.subnet.network_address
            self._add_netns(self._switch)
            ip("-n", self._switch, "link", "add", "br0", "type", "bridge")
            ip("-n", self._switch, "link", "set", "br0", "up")
            # The test process's end, the only thing in the root namespace.
            self.client_address = str(base + 1)
            ip("link", "add", self._root_link, "type", "veth",
               "peer", "name", "host", "netns", self._switch)  # fmt: skip
            self._attach("host")
            ip("addr", "add", f"{self.client_address}/24", "dev", self._root_link)
            ip("link", "set", self._root_link, "up")
            for name, octet in hosts.items():
                self.hosts[name] = self._add_host(name, str(base + octet))
        except BaseException:
            self.close()
            raise
        return self

    def link_down(self, name: str) -> None:
        """Cut host `name` off the network (its bridge port down)."""
        ip("-n", self._switch, "link", "set", self.hosts[name].port, "down")

    def link_up(self, name: str) -> None:
        ip("-n", self._switch, "link", "set", self.hosts[name].port, "up")

    def close(self) -> None:
        """Kill what runs in our namespaces, delete them (the bridge and veths go with the
        switch namespace) and our root-namespace veth."""
        for name in reversed(self._made):
            remove_netns(name)
        self._made.clear()
        if os.path.exists(f"/sys/class/net/{self._root_link}"):
            with contextlib.suppress(RuntimeError):
                ip("link", "del", self._root_link)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------ internals

    def _add_netns(self, name: str) -> None:
        ip("netns", "add", name)
        self._made.append(name)
        ip("-n", name, "link", "set", "lo", "up")

    def _attach(self, port: str) -> None:
        ip("-n", self._switch, "link", "set", port, "master", "br0")
        ip("-n", self._switch, "link", "set", port, "up")

    def _add_host(self, name: str, address: str) -> Host:
        netns = f"{self.tag}-{name}"
        self._add_netns(netns)
        ip("-n", self._switch, "link", "add", name, "type", "veth",
           "peer", "name", "eth0", "netns", netns)  # fmt: skip
        self._attach(name)
        ip("-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
        ip("-n", netns, "link", "set", "eth0", "up")
        return Host(name=name, netns=netns, address=address, port=name)
