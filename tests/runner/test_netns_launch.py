"""Launching a sandbox into a network slot: the argv (pure) and a real bwrap in a real slot."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from runner.sandbox import NetworkPool, NetworkSlot, Sandbox, SandboxSpec, detect
from runner.sandbox.bwrap import bwrap_args
from runner.sandbox.cgroups import CgroupBackend, NoCgroups
from tests.runner.netlab import Namespaces, ip

SLOT_PATH = "/var/run/netns/ash-3"


def make_spec(base: Path, **overrides: object) -> SandboxSpec:
    sid = f"sb-{uuid.uuid4().hex[:10]}"
    fields: dict[str, object] = {
        "sandbox_id": sid,
        "state_dir": str(base / sid),
        "workspace": str(base / sid / "workspace"),
        "home": str(base / sid / "home"),
    }
    fields.update(overrides)
    return SandboxSpec(**fields)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ argv


async def test_the_wrapper_enters_the_slot_before_bwrap(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, netns=SLOT_PATH)
    async with Sandbox(spec, NoCgroups("test")) as sb:
        argv = sb.command(["/bin/true"])
    assert argv[0:2] == ["/bin/sh", "-c"] and argv[3:] == ["ash-sandbox", "/bin/true"]
    assert argv[2].splitlines()[-1] == (
        f"exec /usr/bin/nsenter --net={SLOT_PATH} -- /usr/bin/env -i /usr/bin/bwrap --args 3 "
        f'-- "$@" 3<{shlex.quote(str(sb.args_file))}'
    )
    assert "--unshare-net" not in bwrap_args(spec)  # bwrap keeps the slot's namespace


async def test_without_a_slot_there_is_no_nsenter(tmp_path: Path) -> None:
    for spec in (make_spec(tmp_path), make_spec(tmp_path, share_net=False)):
        async with Sandbox(spec, NoCgroups("test")) as sb:
            assert "nsenter" not in sb.command(["/bin/true"])[2]
    assert "--unshare-net" in bwrap_args(make_spec(tmp_path, share_net=False))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"netns": SLOT_PATH, "share_net": False}, "netns needs share_net=True"),
        ({"netns": "ash-3"}, "netns must be a normalised absolute path"),
        ({"netns": "/var/run/netns/../x"}, "netns must be a normalised absolute path"),
        ({"netns": "/var/run/netns/a\0b"}, "netns must be a normalised absolute path"),
    ],
)
def test_bad_netns_specs_are_rejected(
    tmp_path: Path, overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        make_spec(tmp_path, **overrides)


# ------------------------------------------------------------------------------ real


needs_root = pytest.mark.skipif(
    not (os.geteuid() == 0 and shutil.which("bwrap") and shutil.which("nft")),
    reason="needs root, bubblewrap and nft",
)

INSIDE = r"""
import json, os, socket, subprocess
def run(*argv):
    p = subprocess.run(argv, capture_output=True, text=True)
    return [p.returncode, (p.stdout + p.stderr).strip()]
def raw():
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW).close()
        return "opened"
    except OSError as e:
        return e.strerror
print(json.dumps({
    "uid": os.getuid(),
    "ifaces": sorted(n for _, n in socket.if_nameindex()),
    "addr": run("ip", "-j", "-4", "addr", "show", "eth0"),
    "link_down": run("ip", "link", "set", "eth0", "down"),
    "addr_add": run("ip", "addr", "add", "10.99.0.7/24", "dev", "eth0"),
    "route_add": run("ip", "route", "add", "default", "dev", "eth0"),
    "nft_flush": run("nft", "flush", "ruleset"),
    "nested_netns": run("unshare", "-rn", "ip", "-j", "link"),
    "raw_socket": raw(),
}))
"""


@pytest.fixture
def lab() -> Iterator[Namespaces]:
    with Namespaces() as ns:
        ns.add("run")
        yield ns


@pytest.fixture
async def slot(lab: Namespaces) -> AsyncIterator[NetworkSlot]:
    async with NetworkPool(size=1, proxy_port=3128, subnet="10.231.0.0/24", prefix=lab.prefix,
                           host_netns=f"{lab.prefix}-run") as pool:  # fmt: skip
        slot = await pool.acquire()
        yield slot
        await pool.release(slot)


@pytest.fixture
def backend() -> CgroupBackend:
    return detect()


@needs_root
async def test_a_sandbox_in_a_slot_sees_lo_and_eth0_and_cannot_change_them(
    tmp_path: Path, slot: NetworkSlot, backend: CgroupBackend, lab: Namespaces
) -> None:
    spec = make_spec(tmp_path, netns=slot.netns_path)
    async with Sandbox(spec, backend) as sb:
        result = await sb.run(["/usr/bin/python3", "-c", INSIDE], 20)
    assert result.exit_code == 0, result.stderr
    got = json.loads(result.stdout)
    assert got["uid"] == 1000 and got["ifaces"] == ["eth0", "lo"]
    (eth0,) = json.loads(got["addr"][1])
    assert [a["local"] for a in eth0["addr_info"]] == [slot.address]
    for attempt in ("link_down", "addr_add", "route_add", "nft_flush"):
        code, text = got[attempt]
        assert code != 0 and "Operation not permitted" in text, (attempt, text)
    # A namespace of its own is allowed, and holds nothing but its own loopback.
    assert got["raw_socket"] == "Operation not permitted"  # no spoofing past the firewall
    code, text = got["nested_netns"]
    assert code == 0 and [link["ifname"] for link in json.loads(text)] == ["lo"]
    # The slot is exactly as it was built.
    ruleset = ip("netns", "exec", slot.netns, "nft", "list", "ruleset")
    assert f"tcp dport {slot.proxy_port} accept" in ruleset
