r"""Network slots: a network namespace per sandbox whose only way out is the egress proxy.

One slot, built with pyroute2 (plus one `nft -f` run inside the slot):

    runner's netns                                 slot netns <prefix>-<i>  (/var/run/netns/...)
      <prefix>v<i>  gateway 10.231.0.4i+1/30  <== veth ==>  eth0  address 10.231.0.4i+2/30, lo
      the egress proxy listens on the gateway              no default route: nothing but the /30
                                                            is even routable from inside

    nftables in the slot (table inet ash; the agent is uid 1000 in a user namespace that does
    not own this netns, so it cannot change them):
      output: lo; tcp from <address> to <gateway>:<proxy port>; everything else rejected
      input:  lo; tcp from <gateway>:<proxy port> to <address>; everything else dropped
      forward: dropped. IPv6 is off on eth0 and matches no accept rule anyway.

The rules are stateless (no conntrack in the slot), so there is no connection-tracking state
to flush between tenants; nor ARP state worth flushing (both ends keep their MAC addresses for
the slot's whole life). What a recycled slot must prove instead is checked by `SlotKernel.check`:
no process is left in it, its rules, addresses and routes are exactly the ones it was built
with, and its veth is up.

`NetworkPool` (in netpool.py) keeps the slots; `SlotKernel` here does the kernel work, always
in one worker thread so the event loop never blocks on netlink or on forks.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import re
import socket
import subprocess
import time
from dataclasses import dataclass

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from runner.sandbox.errors import NetworkError

NETNS_DIR = netns.NETNS_RUN_DIR
NSENTER = "/usr/bin/nsenter"
NFT = "/usr/sbin/nft"
SLOT_IFNAME = "eth0"
DEFAULT_SUBNET = "10.231.0.0/16"
UP_TIMEOUT_S = 5.0
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")


@dataclass(frozen=True, slots=True)
class NetworkSlot:
    """One slot: where its sandbox's netns is, its address, and the proxy it may reach."""

    index: int
    netns: str  # the namespace's name under NETNS_DIR
    host_ifname: str  # the veth end in the runner's netns
    gateway: str  # the host end's address; the proxy listens here
    address: str  # the sandbox's address (eth0); the proxy knows the sandbox by it
    proxy_port: int

    @property
    def netns_path(self) -> str:
        """What `SandboxSpec.netns` takes: the bind-mounted namespace file."""
        return os.path.join(NETNS_DIR, self.netns)

    @property
    def proxy_url(self) -> str:
        """The egress proxy as the sandbox reaches it (also its ANTHROPIC_BASE_URL)."""
        return f"http://{self.gateway}:{self.proxy_port}"


def check_prefix(prefix: str) -> str:
    """Slot names are `<prefix>-<i>` and `<prefix>v<i>`; interface names allow 15 bytes."""
    if not _PREFIX_RE.match(prefix):
        raise ValueError(f"network slot prefix must match {_PREFIX_RE.pattern}, got {prefix!r}")
    return prefix


def capacity(subnet: str) -> int:
    """How many /30 slots fit in `subnet`."""
    return ipaddress.IPv4Network(subnet).num_addresses // 4


def make_slot(prefix: str, subnet: str, index: int, proxy_port: int) -> NetworkSlot:
    """Slot `index` of a pool: a pure function, so a rebuilt slot gets the same names."""
    net = ipaddress.IPv4Network(subnet)
    if not 0 <= index < capacity(subnet):
        raise ValueError(f"slot {index} does not fit in {subnet}")
    base = net.network_address + 4 * index
    return NetworkSlot(
        index=index,
        netns=f"{prefix}-{index}",
        host_ifname=f"{prefix}v{index}",
        gateway=str(base + 1),
        address=str(base + 2),
        proxy_port=proxy_port,
    )


def firewall_rules(slot: NetworkSlot) -> str:
    """The slot's nftables ruleset (an `nft -f` script that replaces whatever was there).

    Rejections in `output` answer at once (a TCP reset, or ICMP admin-prohibited), so a
    program inside fails fast instead of hanging on a dropped SYN.
    """
    a, gw, port = slot.address, slot.gateway, slot.proxy_port
    return f"""flush ruleset
table inet ash {{
    chain output {{
        type filter hook output priority filter; policy drop;
        oifname "lo" accept
        ip saddr {a} ip daddr {gw} tcp dport {port} accept
        meta l4proto tcp reject with tcp reset
        reject with icmpx admin-prohibited
    }}
    chain input {{
        type filter hook input priority filter; policy drop;
        iifname "lo" accept
        ip saddr {gw} ip daddr {a} tcp sport {port} accept
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
    }}
}}
"""


class SlotKernel:
    """The kernel side of slots: build, check, destroy, sweep. Not thread-safe: call it from
    one thread only (the pool's worker), since it keeps one netlink socket open.

    `host_netns` names the namespace the host ends go in; None is the caller's own (the
    runner's). Tests pass a namespace they made, so nothing ever lands in the root one.
    """

    def __init__(
        self, host_netns: str | None = None, *, nsenter: str = NSENTER, nft: str = NFT
    ) -> None:
        self._host_netns = host_netns
        self._nsenter = nsenter
        self._nft = nft
        self._ipr: IPRoute | None = None
        # What a slot looks like from inside; any change since it was built fails check().
        # (IPv6 routes are left out: IPv6 is off on eth0 and the rules drop it anyway.)
        self._state_script = f"{nft} list ruleset && ip -o addr && ip -o route"

    def _host(self) -> IPRoute:
        if self._ipr is None:
            # flags=0: never create the host namespace by accident (pyroute2 would, by default)
            self._ipr = IPRoute(netns=self._host_netns, flags=0) if self._host_netns else IPRoute()
        return self._ipr

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def build(self, slot: NetworkSlot) -> str:
        """Make the slot; returns its state as seen from inside (rules, addresses, routes),
        which check() compares against when the slot comes back.

        The rules go in before the veth exists, so eth0 is never up without them. On failure
        whatever was made is removed and NetworkError raised.
        """
        try:
            netns.create(slot.netns_path)
            # Rules in; IPv6 off for interfaces made from now on (eth0), not on lo (::1 stays);
            # then the ruleset as nft prints it, which check() compares against later.
            self._in_slot(
                slot, f"{self._nft} -f - && {{ [ ! -d /proc/sys/net/ipv6 ] || "
                "echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6; }",
                stdin=firewall_rules(slot),
            )  # fmt: skip
            host = self._host()
            fd = os.open(slot.netns_path, os.O_RDONLY)
            try:
                host.link("add", ifname=slot.host_ifname, kind="veth",
                          peer={"ifname": SLOT_IFNAME, "net_ns_fd": fd})  # fmt: skip
            finally:
                os.close(fd)
            (idx,) = host.link_lookup(ifname=slot.host_ifname)
            host.addr("add", index=idx, address=slot.gateway, prefixlen=30)
            host.link("set", index=idx, state="up")
            with IPRoute(netns=slot.netns_path, flags=0) as inside:
                (lo,) = inside.link_lookup(ifname="lo")
                (eth,) = inside.link_lookup(ifname=SLOT_IFNAME)
                inside.link("set", index=lo, state="up")
                inside.addr("add", index=eth, address=slot.address, prefixlen=30)
                inside.link("set", index=eth, state="up")
                # Until the kernel's link watcher marks the pair up (~15 ms), packets are dropped.
                deadline = time.monotonic() + UP_TIMEOUT_S
                while inside.get_links(eth)[0].get("operstate") != "UP":
                    if time.monotonic() > deadline:
                        raise NetworkError(f"{slot.netns}: eth0 did not come up")
                    time.sleep(0.001)
            return self._in_slot(slot, self._state_script)
        except BaseException as e:
            with contextlib.suppress(Exception):
                self.destroy(slot)
            if isinstance(e, (OSError, NetlinkError, subprocess.SubprocessError, ValueError)):
                raise NetworkError(f"cannot build network slot {slot.netns}: {e}") from e
            raise

    def check(self, slot: NetworkSlot, state: str) -> str | None:
        """What is wrong with a released slot, or None if it may be handed out again."""
        holders = processes_in(slot.netns_path)
        if holders:
            return f"processes still in the slot: {sorted(holders)[:10]}"
        try:
            if self._in_slot(slot, self._state_script) != state:
                return "its firewall rules, addresses or routes changed"
            host = self._host()
            found = host.link_lookup(ifname=slot.host_ifname)
            if not found:
                return "its veth is gone"
            (link,) = host.get_links(found[0])
            if link.get("operstate") != "UP":
                return f"its veth is {link.get('operstate')}"
            addrs = {a.get("address") for a in host.get_addr(index=found[0], family=2)}
            if slot.gateway not in addrs:
                return "its gateway address is gone"
        except (OSError, NetlinkError, subprocess.SubprocessError) as e:
            return f"cannot check it: {e}"
        return None

    def destroy(self, slot: NetworkSlot) -> None:
        """Remove the slot's veth (both ends go) and its namespace. Idempotent."""
        try:
            host = self._host()
            for idx in host.link_lookup(ifname=slot.host_ifname):
                host.link("del", index=idx)
        except NetlinkError as e:
            if e.code != errno.ENODEV:
                raise NetworkError(f"cannot delete {slot.host_ifname}: {e}") from e
        if os.path.exists(slot.netns_path):
            try:
                netns.remove(slot.netns_path)
            except OSError as e:
                raise NetworkError(f"cannot remove netns {slot.netns}: {e}") from e

    def sweep(self, prefix: str) -> int:
        """Remove every slot a previous run with this prefix left behind; returns how many."""
        pattern = re.compile(rf"^{re.escape(prefix)}(-|v)(\d+)$")
        found = 0
        host = self._host()
        for link in host.get_links():
            name = link.get("ifname") or ""
            if pattern.match(name):
                host.link("del", index=link["index"])
                found += 1
        for name in netns.listnetns():
            if pattern.match(name):
                netns.remove(os.path.join(NETNS_DIR, name))
                found += 1
        return found

    def check_subnet(self, subnet: str) -> None:
        """Refuse `subnet` if a route of the host namespace overlaps it (call after `sweep`).

        Another runner's slots, or a killed runner's leftovers under another prefix, would
        take the answers to this runner's sandboxes: their turns would hang, not fail.
        """
        net = ipaddress.ip_network(subnet)
        for route in self._host().get_routes(family=socket.AF_INET):
            dst = route.get_attr("RTA_DST")
            if dst is None or route["dst_len"] == 0:
                continue  # the default route overlaps everything, and is not in the way
            other = ipaddress.ip_network(f"{dst}/{route['dst_len']}", strict=False)
            if net.overlaps(other):
                raise NetworkError(
                    f"the sandbox subnet {subnet} (ASH_NET_SUBNET) overlaps the route to {other} "
                    "on this host: another runner, or one that was killed, uses it; choose "
                    "another subnet, or remove the stale namespaces and veths"
                )

    def _in_slot(self, slot: NetworkSlot, command: str | list[str], stdin: str = "") -> str:
        """Run `command` (argv, or a shell script) as root inside the slot; its stdout."""
        argv = command if isinstance(command, list) else ["/bin/sh", "-c", command]
        proc = subprocess.run(
            [self._nsenter, f"--net={slot.netns_path}", "--", *argv],
            input=stdin, capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise NetworkError(f"{argv[-1][:60]!r} in {slot.netns}: {proc.stderr.strip()}")
        return proc.stdout


def processes_in(netns_path: str) -> set[int]:
    """Pids of the processes whose network namespace is the one at `netns_path`."""
    try:
        target = os.stat(netns_path)
    except FileNotFoundError:
        return set()
    key = (target.st_dev, target.st_ino)
    pids: set[int] = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry.name}/ns/net")
        except OSError:
            continue  # gone, or a kernel thread
        if (st.st_dev, st.st_ino) == key:
            pids.add(int(entry.name))
    return pids
