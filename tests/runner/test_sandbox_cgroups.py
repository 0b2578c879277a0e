"""cgroup detection (pure parsing, fake /proc), v2 against a fake tree, v1 and v2 for real."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.sandbox.cgroups import (
    CgroupMount,
    NoCgroups,
    V1Backend,
    V2Backend,
    detect,
    own_dir,
    parse_mountinfo,
    parse_proc_cgroup,
)
from runner.sandbox.cgroups.base import kill_member
from runner.sandbox.spec import Limits

# This machine's mountinfo (trimmed) and a typical systemd v2 host's.
HYBRID_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
HYBRID_CGROUP = """\
9:name=systemd:/
8:pids:/
6:freezer:/
4:memory:/process_api/c913
2:cpuacct:/
1:cpu:/
0::/
"""
V2_MOUNTINFO = (
    "22 1 0:21 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 "
    "rw,nsdelegate,memory_recursiveprot\n"
    "23 1 0:22 / /proc rw,nosuid - proc proc rw\n"
)
V2_CGROUP = "0::/system.slice/ash-runner.service\n"


def test_parse_mountinfo_hybrid() -> None:
    mounts = {m.mount_point.name: m for m in parse_mountinfo(HYBRID_MOUNTINFO)}
    assert set(mounts) == {"cpu", "cpuacct", "memory", "freezer", "pids", "systemd", "unified"}
    assert mounts["memory"] == CgroupMount(
        Path("/sys/fs/cgroup/memory"), "/", 1, frozenset({"rw", "memory"})
    )
    assert mounts["unified"].version == 2


def test_parse_mountinfo_v2_and_escapes() -> None:
    text = V2_MOUNTINFO + "30 1 0:40 /a\\040b /mnt/cg\\040x rw - cgroup2 cgroup2 rw\n"
    mounts = parse_mountinfo(text)
    assert [m.mount_point for m in mounts] == [Path("/sys/fs/cgroup"), Path("/mnt/cg x")]
    assert mounts[1].root == "/a b"


def test_parse_proc_cgroup() -> None:
    own = parse_proc_cgroup(HYBRID_CGROUP)
    assert own == {"pids": "/", "freezer": "/", "memory": "/process_api/c913",
                   "cpuacct": "/", "cpu": "/", "": "/"}  # fmt: skip
    assert parse_proc_cgroup("4:cpu,cpuacct:/a\n") == {"cpu": "/a", "cpuacct": "/a"}
    assert parse_proc_cgroup(V2_CGROUP) == {"": "/system.slice/ash-runner.service"}


def test_own_dir_respects_the_mount_root() -> None:
    m = CgroupMount(Path("/sys/fs/cgroup"), "/", 2, frozenset())
    assert own_dir(m, "/a/b") == Path("/sys/fs/cgroup/a/b")
    bound = CgroupMount(Path("/cg"), "/kubepods/pod1", 2, frozenset())
    assert own_dir(bound, "/kubepods/pod1/c1") == Path("/cg/c1")
    assert own_dir(bound, "/kubepods/pod1") == Path("/cg")
    assert own_dir(bound, "/kubepods/pod10") is None


def fake_proc(tmp_path: Path, mountinfo: str, cgroup: str) -> Path:
    proc = tmp_path / "proc-self"
    proc.mkdir()
    (proc / "mountinfo").write_text(mountinfo)
    (proc / "cgroup").write_text(cgroup)
    return proc


def fake_v2_tree(tmp_path: Path, controllers: str, procs: str = "") -> Path:
    """A stand-in for <mount>/<own>: the files the kernel would show in our own cgroup."""
    own = tmp_path / "cg" / "system.slice" / "ash-runner.service"
    own.mkdir(parents=True)
    (own / "cgroup.controllers").write_text(controllers + "\n")
    (own / "cgroup.subtree_control").write_text("\n")
    (own / "cgroup.procs").write_text(procs)
    return own


def test_detect_picks_v2_when_our_cgroup_offers_memory_and_pids(tmp_path: Path) -> None:
    own = fake_v2_tree(tmp_path, "cpuset cpu io memory pids")
    mountinfo = V2_MOUNTINFO.replace("/sys/fs/cgroup", str(tmp_path / "cg"))
    backend = detect(fake_proc(tmp_path, mountinfo, V2_CGROUP))
    assert isinstance(backend, V2Backend)
    assert backend.own == own


def test_detect_falls_back_to_none_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake_v2_tree(tmp_path, "cpu io")  # no memory, no pids: limits impossible
    mountinfo = V2_MOUNTINFO.replace("/sys/fs/cgroup", str(tmp_path / "cg"))
    backend = detect(fake_proc(tmp_path, mountinfo, V2_CGROUP))
    assert isinstance(backend, NoCgroups)
    with caplog.at_level(logging.WARNING):
        cg = backend.create("sb1", Limits())
        backend.create("sb2", Limits())
    warnings = [r for r in caplog.records if "NOT enforced" in r.getMessage()]
    assert len(warnings) == 1, "warn once, not per sandbox"
    assert cg.procs_files == () and cg.enforced == frozenset() and not cg.oom_killed()


def test_detect_survives_an_unreadable_proc(tmp_path: Path) -> None:
    assert isinstance(detect(tmp_path / "missing"), NoCgroups)


def test_v2_evacuates_our_processes_then_enables_and_limits(tmp_path: Path) -> None:
    own = fake_v2_tree(tmp_path, "cpuset cpu io memory pids", procs="4242\n")
    backend = V2Backend(own)
    cg = backend.create("sb1", Limits(memory_mb=256, pids=64, cpu_percent=50))
    # "No internal processes": our processes moved to a leaf before enabling controllers.
    assert (own / "runner" / "cgroup.procs").read_text() == "4242"
    assert (own / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert (own / "ash" / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    leaf = own / "ash" / "sb1"
    assert (leaf / "memory.max").read_text() == str(256 * 1024 * 1024)
    assert (leaf / "memory.swap.max").read_text() == "0"
    assert (leaf / "cpu.max").read_text() == "50000 100000"
    assert (leaf / "pids.max").read_text() == "64"
    assert cg.procs_files == (leaf / "cgroup.procs",)
    assert cg.enforced == {"cpu", "memory", "pids"}


def test_v2_at_the_root_or_already_delegated_moves_nothing(tmp_path: Path) -> None:
    own = fake_v2_tree(tmp_path, "cpu memory pids", procs="1\n")
    V2Backend(own, is_root=True).create("sb1", Limits())
    assert not (own / "runner").exists()
    (own / "cgroup.subtree_control").write_text("cpu memory pids\n")  # systemd Delegate=yes
    V2Backend(own).create("sb2", Limits())
    assert not (own / "runner").exists()


def test_v2_without_some_controllers_limits_what_it_can_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    own = fake_v2_tree(tmp_path, "memory pids")
    with caplog.at_level(logging.WARNING):
        cg = V2Backend(own).create("sb1", Limits(pids=7))
    assert cg.enforced == {"memory", "pids"}
    assert not (own / "ash" / "sb1" / "cpu.max").exists()
    assert (own / "ash" / "sb1" / "pids.max").read_text() == "7"
    assert any("['cpu'] limits are NOT enforced" in r.getMessage() for r in caplog.records)


def test_v2_oom_killed_reads_memory_events(tmp_path: Path) -> None:
    own = fake_v2_tree(tmp_path, "memory pids")
    cg = V2Backend(own).create("sb1", Limits())
    assert not cg.oom_killed() and cg.oom_kills() == 0
    (own / "ash" / "sb1" / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert cg.oom_killed() and cg.oom_kills() == 1
    (own / "ash" / "sb1" / "memory.events").write_text("low 0\nhigh 0\nmax 5\noom 2\noom_kill 2\n")
    assert cg.oom_kills() == 2  # a count, so a runner can tell a new kill from an old one


# ------------------------------------------------------------------------ real cgroups (root)

needs_v1 = pytest.mark.skipif(
    not (os.geteuid() == 0 and Path("/sys/fs/cgroup/memory/cgroup.procs").exists()),
    reason="needs root and cgroup v1 memory/pids hierarchies",
)
needs_unified = pytest.mark.skipif(
    not (os.geteuid() == 0 and Path("/sys/fs/cgroup/unified/cgroup.procs").exists()),
    reason="needs root and the hybrid cgroup2 mount at /sys/fs/cgroup/unified",
)


def sandbox_id() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def v1() -> Iterator[V1Backend]:
    backend = detect()
    assert isinstance(backend, V1Backend), "this host has v1 memory and pids hierarchies"
    yield backend
    for own in backend.own.values():  # remove the shared parent if no one else uses it
        with contextlib.suppress(OSError):
            (own / "ash").rmdir()


async def spawn_member(procs_files: tuple[Path, ...]) -> asyncio.subprocess.Process:
    """A sleeper that joins the cgroup itself before exec, as the launcher's wrapper does."""
    joins = "".join(f"echo $$ > {p} && " for p in procs_files)
    proc = await asyncio.create_subprocess_exec(
        "/bin/sh", "-c", f"{joins} echo joined && exec sleep 60",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    assert await proc.stdout.readline() == b"joined\n"
    return proc


@needs_v1
async def test_v1_detect_uses_our_own_paths(v1: V1Backend) -> None:
    own = parse_proc_cgroup(Path("/proc/self/cgroup").read_text())
    assert v1.own["memory"] == Path("/sys/fs/cgroup/memory") / own["memory"].lstrip("/")
    assert v1.own["pids"] == Path("/sys/fs/cgroup/pids") / own["pids"].lstrip("/")


@needs_v1
async def test_v1_create_limit_join_kill_destroy(v1: V1Backend) -> None:
    sid = sandbox_id()
    cg = v1.create(sid, Limits(memory_mb=100, pids=20, cpu_percent=50))
    dirs = {ctrl: own / "ash" / sid for ctrl, own in v1.own.items()}
    try:
        mem = dirs["memory"]
        assert (mem / "memory.limit_in_bytes").read_text().strip() == str(100 << 20)
        if (mem / "memory.memsw.limit_in_bytes").exists():
            assert (mem / "memory.memsw.limit_in_bytes").read_text().strip() == str(100 << 20)
        assert (dirs["pids"] / "pids.max").read_text().strip() == "20"
        assert (dirs["cpu"] / "cpu.cfs_quota_us").read_text().strip() == "50000"
        assert (dirs["cpu"] / "cpu.cfs_period_us").read_text().strip() == "100000"
        assert cg.enforced == {"memory", "pids", "cpu"}
        assert set(cg.procs_files) == {d / "cgroup.procs" for d in dirs.values()}

        proc = await spawn_member(cg.procs_files)
        assert cg.pids() == {proc.pid}
        lines = Path(f"/proc/{proc.pid}/cgroup").read_text().splitlines()
        assert sum(line.endswith(f"/ash/{sid}") for line in lines) == len(dirs)
        assert not cg.oom_killed()

        cg.kill()
        assert await asyncio.wait_for(proc.wait(), 5) == -9
    finally:
        await cg.destroy()
    assert not any(d.exists() for d in dirs.values())
    await cg.destroy()  # idempotent


@needs_v1
async def test_v1_destroy_kills_what_is_inside(v1: V1Backend) -> None:
    cg = v1.create(sandbox_id(), Limits())
    try:
        procs = [await spawn_member(cg.procs_files) for _ in range(3)]
        assert cg.pids() == {p.pid for p in procs}
    finally:
        await cg.destroy()
    assert [await asyncio.wait_for(p.wait(), 5) for p in procs] == [-9, -9, -9]


@needs_v1
async def test_v1_kill_spares_a_reused_pid_outside_the_cgroup(v1: V1Backend) -> None:
    # kill_member() re-checks membership through a pidfd, so a pid listed in cgroup.procs that
    # has since been reused by a process outside the cgroup is left alone.
    cg = v1.create(sandbox_id(), Limits())
    member = await spawn_member(cg.procs_files)
    outsider = await asyncio.create_subprocess_exec("sleep", "60")
    try:
        kill_member(outsider.pid, f"/ash/{cg.name}")
        kill_member(member.pid, f"/ash/{cg.name}")
        # SIGKILL is queued (or already acted on) when the syscall returns, so this is exact.
        status = dict(
            line.split(":\t", 1)
            for line in Path(f"/proc/{outsider.pid}/status").read_text().splitlines()
        )
        assert status["State"][0] not in "ZX"
        sigkill = 1 << (9 - 1)
        assert not int(status["SigPnd"], 16) & sigkill and not int(status["ShdPnd"], 16) & sigkill
        assert await asyncio.wait_for(member.wait(), 5) == -9
    finally:
        outsider.kill()
        await outsider.wait()
        await cg.destroy()


@needs_unified
async def test_v2_for_real_on_the_unified_mount() -> None:
    # This host's v2 hierarchy has no memory/cpu/pids controllers, but grouping, freeze and
    # cgroup.kill are real v2 and are what production relies on for pause and teardown.
    own = parse_proc_cgroup(Path("/proc/self/cgroup").read_text()).get("")
    if own != "/":
        pytest.skip("not at the root of the unified hierarchy")
    root = Path("/sys/fs/cgroup/unified")
    backend = V2Backend(root, is_root=True)
    sid = sandbox_id()
    cg = backend.create(sid, Limits())
    try:
        available = set((root / "cgroup.controllers").read_text().split())
        assert cg.enforced <= available
        proc = await spawn_member(cg.procs_files)
        assert cg.pids() == {proc.pid}
        assert f"0::/ash/{sid}" in Path(f"/proc/{proc.pid}/cgroup").read_text().splitlines()

        cg.freeze()
        events = root / "ash" / sid / "cgroup.events"
        await wait_for_line(events, "frozen 1")
        cg.thaw()
        await wait_for_line(events, "frozen 0")

        cg.kill()
        assert await asyncio.wait_for(proc.wait(), 5) == -9
    finally:
        await cg.destroy()
        with contextlib.suppress(OSError):
            (root / "ash").rmdir()
    assert not (root / "ash" / sid).exists()


async def wait_for_line(path: Path, line: str, deadline_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while line not in path.read_text().splitlines():
        assert loop.time() < end, f"{path} never showed {line!r}"
        await asyncio.sleep(0.001)
