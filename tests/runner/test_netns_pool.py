"""Network slots and their pool, on real namespaces made by the test (never the root one).

The pool's host ends live in a "runner" namespace the test creates; probes run as root inside
a slot with nsenter. What an unprivileged sandbox can do there is in test_escape_network.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from runner.sandbox import NetworkError, NetworkPool, NetworkPoolExhausted
from runner.sandbox.netns import (
    NetworkSlot,
    SlotKernel,
    capacity,
    check_prefix,
    firewall_rules,
    make_slot,
    processes_in,
)
from tests.runner.netlab import Namespaces, in_netns, ip, socket_in

needs_root = pytest.mark.skipif(
    not (os.geteuid() == 0 and shutil.which("nft") and shutil.which("nsenter")),
    reason="needs root, nft and nsenter",
)

PROXY_PORT = 3128
SUBNET = "10.231.0.0/24"

# Run as root inside a slot: try each (host, port) and print what happened.
PROBE = r"""
import json, socket, sys
out = {}
for host, port in json.loads(sys.argv[1]):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect((host, port))
        out[f"{host}:{port}"] = "connected"
    except OSError as e:
        out[f"{host}:{port}"] = type(e).__name__ if isinstance(e, TimeoutError) else e.strerror
    finally:
        s.close()
print(json.dumps(out))
"""


# ------------------------------------------------------------------------------ pure parts


@pytest.mark.parametrize(
    ("index", "gateway", "address", "netns", "ifname"),
    [
        (0, "10.231.0.1", "10.231.0.2", "ash-0", "ashv0"),
        (1, "10.231.0.5", "10.231.0.6", "ash-1", "ashv1"),
        (63, "10.231.0.253", "10.231.0.254", "ash-63", "ashv63"),
        (64, "10.231.1.1", "10.231.1.2", "ash-64", "ashv64"),
    ],
)
def test_slot_addresses_and_names(
    index: int, gateway: str, address: str, netns: str, ifname: str
) -> None:
    slot = make_slot("ash", "10.231.0.0/16", index, 3128)
    assert (slot.gateway, slot.address, slot.netns, slot.host_ifname) == (
        gateway, address, netns, ifname)  # fmt: skip
    assert slot.proxy_url == f"http://{gateway}:3128"
    assert slot.netns_path.endswith(f"/netns/{netns}")


def test_slot_bounds() -> None:
    assert capacity("10.231.0.0/16") == 16384 and capacity(SUBNET) == 64
    with pytest.raises(ValueError):
        make_slot("ash", SUBNET, 64, 3128)
    for bad in ("", "Ash", "a-b", "toolongname", "1ash"):
        with pytest.raises(ValueError):
            check_prefix(bad)
    with pytest.raises(ValueError):
        NetworkPool(size=65, proxy_port=3128, subnet=SUBNET)


def test_firewall_rules_name_only_the_proxy() -> None:
    rules = firewall_rules(make_slot("ash", SUBNET, 2, 3128))
    assert "ip saddr 10.231.0.10 ip daddr 10.231.0.9 tcp dport 3128 accept" in rules
    assert "ip saddr 10.231.0.9 ip daddr 10.231.0.10 tcp sport 3128 accept" in rules
    assert rules.count("accept") == 4  # those two, and lo both ways
    assert rules.count("policy drop") == 3 and rules.startswith("flush ruleset\n")


# ------------------------------------------------------------------------------ real slots


@pytest.fixture
def lab() -> Iterator[Namespaces]:
    with Namespaces() as ns:
        ns.add("run")
        yield ns


@pytest.fixture
async def pool(lab: Namespaces) -> AsyncIterator[NetworkPool]:
    async with NetworkPool(size=2, proxy_port=PROXY_PORT, subnet=SUBNET, prefix=lab.prefix,
                           host_netns=f"{lab.prefix}-run") as pool:  # fmt: skip
        await pool.populate()
        yield pool


async def probe(slot: NetworkSlot, targets: list[tuple[str, int]]) -> dict[str, str]:
    proc = await asyncio.create_subprocess_exec(
        *in_netns(slot.netns, ["/usr/bin/python3", "-c", PROBE, json.dumps(targets)]),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    return json.loads(out)


async def listen_in(netns: str, host: str, port: int) -> asyncio.Server:
    sock = socket_in(netns)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen()
    sock.setblocking(False)

    async def hang_up(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.close()

    return await asyncio.start_server(hang_up, sock=sock)


@needs_root
async def test_populate_builds_every_slot(pool: NetworkPool, lab: Namespaces) -> None:
    assert pool.gauges() == {"building": 0, "fresh": 2, "leased": 0, "checking": 0,
                             "recycled": 0, "absent": 0}  # fmt: skip
    host = ip("-n", f"{lab.prefix}-run", "-j", "addr")
    for i in range(2):
        slot = make_slot(lab.prefix, SUBNET, i, PROXY_PORT)
        links = {link["ifname"]: link for link in json.loads(ip("-n", slot.netns, "-j", "addr"))}
        assert set(links) == {"lo", "eth0"}
        eth0 = links["eth0"]
        assert eth0["operstate"] == "UP"
        assert [(a["family"], a["local"], a["prefixlen"]) for a in eth0["addr_info"]] == [
            ("inet", slot.address, 30)]  # fmt: skip  (no IPv6, not even link-local)
        routes = json.loads(ip("-n", slot.netns, "-j", "route"))
        network = ipaddress.ip_interface(f"{slot.gateway}/30").network
        assert [r["dst"] for r in routes] == [str(network)]  # no default route
        assert f'"{slot.gateway}"' in host
        assert "ip daddr" in ip("netns", "exec", slot.netns, "nft", "list", "ruleset")


@needs_root
async def test_only_the_proxy_port_on_the_gateway_is_reachable(
    pool: NetworkPool, lab: Namespaces
) -> None:
    run = f"{lab.prefix}-run"
    slot = await pool.acquire()
    servers = [await listen_in(run, "0.0.0.0", port) for port in (PROXY_PORT, 4222, 4100)]
    try:
        got = await probe(slot, [(slot.gateway, PROXY_PORT), (slot.gateway, 4222),
                                 (slot.gateway, 4100), ("10.231.0.5", PROXY_PORT),
                                 ("10.99.0.1", 80), ("127.0.0.1", 9)])  # fmt: skip
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()
        await pool.release(slot)
    assert got == {
        f"{slot.gateway}:{PROXY_PORT}": "connected",
        f"{slot.gateway}:4222": "Connection refused",  # the firewall's reset, not the listener
        f"{slot.gateway}:4100": "Connection refused",
        f"10.231.0.5:{PROXY_PORT}": "Network is unreachable",  # another slot's gateway
        "10.99.0.1:80": "Network is unreachable",
        "127.0.0.1:9": "Connection refused",  # its own loopback works (nothing listens)
    }


@needs_root
async def test_the_firewall_alone_stops_what_a_route_would_let_through(
    pool: NetworkPool, lab: Namespaces
) -> None:
    # Defence in depth: give the slot a default route (as a mistake in the code might) and an
    # address behind the gateway with a listener; only the proxy port still gets through.
    run = f"{lab.prefix}-run"
    ip("-n", run, "link", "add", "stub0", "type", "veth", "peer", "name", "stub1")  # no dummy here
    ip("-n", run, "addr", "add", "10.99.0.1/24", "dev", "stub0")
    ip("-n", run, "link", "set", "stub0", "up")
    slot = await pool.acquire()
    ip("-n", slot.netns, "route", "add", "default", "via", slot.gateway)
    servers = [await listen_in(run, "0.0.0.0", port) for port in (PROXY_PORT, 4222)]
    try:
        got = await probe(slot, [("10.99.0.1", 4222), ("10.99.0.1", PROXY_PORT),
                                 (slot.gateway, PROXY_PORT)])  # fmt: skip
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()
        ip("-n", slot.netns, "route", "del", "default")
        await pool.release(slot)
    assert got == {
        "10.99.0.1:4222": "Connection refused",  # routable now, but reset by the firewall
        f"10.99.0.1:{PROXY_PORT}": "Connection refused",  # the proxy port, at another address
        f"{slot.gateway}:{PROXY_PORT}": "connected",
    }


@needs_root
async def test_acquire_release_recycles_and_exhaustion_is_immediate(pool: NetworkPool) -> None:
    a = await pool.acquire()
    b = await pool.acquire()
    assert a != b and pool.gauges()["leased"] == 2
    with pytest.raises(NetworkPoolExhausted):
        await pool.acquire()
    await pool.release(a)
    assert pool.gauges() == {"building": 0, "fresh": 0, "leased": 1, "checking": 0,
                             "recycled": 1, "absent": 0}  # fmt: skip
    assert await pool.acquire() == a  # the recycled one, same names and addresses
    with pytest.raises(ValueError, match="not leased"):
        await pool.release(make_slot("zz", SUBNET, 0, PROXY_PORT))
    await pool.release(a)
    await pool.release(b)
    with pytest.raises(ValueError, match="not leased"):
        await pool.release(b)
    assert pool.counters["recycled"] == 3 and pool.counters["built"] == 2


@needs_root
async def test_a_slot_with_a_process_left_inside_is_rebuilt(pool: NetworkPool) -> None:
    slot = await pool.acquire()
    straggler = subprocess.Popen(in_netns(slot.netns, ["/bin/sleep", "60"]))
    try:
        await asyncio.to_thread(_wait_until_in, slot, straggler.pid)
        await pool.release(slot)
        assert pool.counters["rebuilt"] == 1 and pool.gauges()["fresh"] == 2
        # The straggler keeps a namespace of its own, cut off: its veth went with the old slot.
        links = subprocess.run(["nsenter", f"--net=/proc/{straggler.pid}/ns/net", "ip", "-j",
                                "link"], capture_output=True, text=True, check=True).stdout
        assert [link["ifname"] for link in json.loads(links)] == ["lo"]
        assert processes_in(slot.netns_path) == set()  # the rebuilt slot is a new namespace
    finally:
        straggler.kill()
        straggler.wait()
    again = await pool.acquire()
    assert (await probe(again, [(again.gateway, 4222)]))[f"{again.gateway}:4222"] == (
        "Connection refused")  # fmt: skip
    await pool.release(again)


def _wait_until_in(slot: NetworkSlot, pid: int) -> None:
    # nsenter enters the namespace, then execs sleep in place; wait for both.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if pid in processes_in(slot.netns_path) and os.readlink(
                f"/proc/{pid}/exe"
            ).endswith("sleep"):
                return
        except OSError:
            pass
        time.sleep(0.001)
    raise AssertionError("the process never entered the slot")


@needs_root
async def test_a_slot_whose_rules_changed_is_rebuilt(pool: NetworkPool) -> None:
    slot = await pool.acquire()
    ip("netns", "exec", slot.netns, "nft", "flush", "ruleset")
    await pool.release(slot)
    assert pool.counters["rebuilt"] == 1
    assert "tcp dport 3128 accept" in ip("netns", "exec", slot.netns, "nft", "list", "ruleset")


@needs_root
async def test_a_slot_whose_routes_changed_is_rebuilt(pool: NetworkPool) -> None:
    slot = await pool.acquire()
    ip("-n", slot.netns, "route", "add", "default", "via", slot.gateway)
    await pool.release(slot)
    assert pool.counters["rebuilt"] == 1
    assert "default" not in ip("-n", slot.netns, "route")


@needs_root
async def test_close_removes_everything_and_a_new_pool_sweeps_leftovers(lab: Namespaces) -> None:
    run = f"{lab.prefix}-run"
    await asyncio.to_thread(_build_and_forget, run, make_slot(lab.prefix, SUBNET, 5, PROXY_PORT))
    assert f"{lab.prefix}-5" in ip("netns", "list")
    pool = NetworkPool(size=2, proxy_port=PROXY_PORT, subnet=SUBNET, prefix=lab.prefix,
                       host_netns=run)  # fmt: skip
    await pool.populate(1)
    names = ip("netns", "list")
    assert f"{lab.prefix}-5" not in names and f"{lab.prefix}-0" in names
    slot = await pool.acquire()  # the fresh one
    assert await pool.acquire() != slot  # built on demand: the pool had room
    await pool.close()
    await pool.close()  # idempotent
    assert lab.prefix + "-0" not in ip("netns", "list")
    assert lab.prefix + "v" not in ip("-n", run, "link")
    with pytest.raises(NetworkError):
        await pool.acquire()


async def test_a_subnet_another_runner_routes_is_refused_with_a_clear_error(
    lab: Namespaces,
) -> None:
    # A killed runner under another prefix left its slot's veth and route for this subnet.
    run = f"{lab.prefix}-run"
    await asyncio.to_thread(_build_and_forget, run, make_slot(lab.prefix + "x", SUBNET, 1,
                                                                PROXY_PORT))
    pool = NetworkPool(size=2, proxy_port=PROXY_PORT, subnet=SUBNET, prefix=lab.prefix,
                       host_netns=run)  # fmt: skip
    try:
        with pytest.raises(NetworkError, match="overlaps the route to 10.231.0.4/30"):
            await pool.populate()
    finally:
        await pool.close()
        ip("-n", run, "link", "del", f"{lab.prefix}xv1")
        ip("netns", "delete", f"{lab.prefix}x-1")


def _build_and_forget(host_netns: str, slot: NetworkSlot) -> None:
    """A slot left behind by a "crashed" runner. SlotKernel is used from one thread only."""
    kernel = SlotKernel(host_netns)
    try:
        kernel.build(slot)
    finally:
        kernel.close()
