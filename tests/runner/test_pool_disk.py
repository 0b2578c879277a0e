"""The warm pool's slots: quota disks (loop-mounted ext4) and the /tmp cap, on real mounts,
real bwrap and real cgroups; the reaper that unmounts after a runner dies, even by SIGKILL."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runner.sandbox import Limits, Sandbox, SandboxSpec, bwrap_args, detect
from runner.sandbox import disk as disks
from tests.procs import ROOT

pytestmark = pytest.mark.skipif(
    not (os.geteuid() == 0 and shutil.which("bwrap") and isinstance(disks.detect(), disks.LoopDisks)),
    reason="needs root, bubblewrap and loop devices",
)


def mounted(path: str | Path) -> bool:
    return str(path) in disks.mounts_under(str(path), Path("/proc/self/mountinfo").read_text())


@pytest.fixture
async def disk(tmp_path: Path) -> AsyncIterator[disks.Disk]:
    d = await disks.LoopDisks().make(str(tmp_path / "slot"), 16)
    yield d
    await d.destroy()


def spec_on(tmp_path: Path, disk: disks.Disk, **limits: int) -> SandboxSpec:
    for sub in ("workspace", "home"):
        os.makedirs(os.path.join(disk.path, sub), exist_ok=True)
    return SandboxSpec(
        sandbox_id=f"disk-{os.urandom(4).hex()}", state_dir=str(tmp_path / "slot" / "sandbox"),
        workspace=os.path.join(disk.path, "workspace"), home=os.path.join(disk.path, "home"),
        limits=Limits(memory_mb=256, **limits),
    )


async def sh(sb: Sandbox, script: str) -> tuple[int, str]:
    r = await sb.run(["/bin/sh", "-c", script], timeout_s=30)
    return r.exit_code, (r.stdout + r.stderr).decode()


async def test_writing_past_the_quota_fails_with_enospc_inside_and_the_host_holds_no_more(
    tmp_path: Path, disk: disks.Disk
) -> None:
    host_free = shutil.disk_usage(tmp_path).free
    async with Sandbox(spec_on(tmp_path, disk), detect()) as sb:
        code, out = await sh(sb, "dd if=/dev/urandom of=/workspace/fill bs=1M count=64 2>&1;"
                                 " echo rc=$?; ls -s --block-size=1M /workspace/fill")
        assert "No space left on device" in out and "rc=1" in out, out
        home_code, home_out = await sh(sb, "head -c 4M /dev/zero > /home/agent/more; echo rc=$?")
        assert "rc=1" in home_out, "home shares the workspace's quota"
    written = int(out.strip().splitlines()[-1].split()[0])
    assert 8 <= written <= 16, out  # what fit, never more than the quota
    image = Path(disk.path).parent / disks.IMAGE
    assert image.stat().st_blocks * 512 <= 17 << 20  # the sparse image: at most its size
    assert host_free - shutil.disk_usage(tmp_path).free < 32 << 20


async def test_tmp_is_capped_by_its_own_size(tmp_path: Path, disk: disks.Disk) -> None:
    async with Sandbox(spec_on(tmp_path, disk, tmp_mb=4), detect()) as sb:
        _, out = await sh(sb, "dd if=/dev/zero of=/tmp/fill bs=1M count=16 2>&1; echo rc=$?;"
                              " df -k /tmp | tail -1")
    assert "No space left on device" in out and "rc=1" in out, out
    assert int(out.strip().splitlines()[-1].split()[1]) == 4096  # df: 4 MiB in 1K blocks


def test_the_tmp_cap_is_a_size_option_just_before_the_tmpfs() -> None:
    def tmp_options(limits: Limits) -> list[str]:
        args = bwrap_args(SandboxSpec(sandbox_id="x", state_dir="/s", workspace="/w", home="/h",
                                      limits=limits))
        i = next(i for i in range(len(args) - 1) if args[i:i + 2] == ["--tmpfs", "/tmp"])
        return args[i - 2:i] if args[i - 2] == "--size" else []

    assert tmp_options(Limits(tmp_mb=8)) == ["--size", str(8 << 20)]
    assert tmp_options(Limits()) == []
    with pytest.raises(ValueError, match="tmp_mb"):
        Limits(tmp_mb=0)


async def test_wipe_empties_the_disk_and_gives_the_space_back(disk: disks.Disk) -> None:
    image = Path(disk.path).parent / disks.IMAGE
    Path(disk.path, "workspace", "deep").mkdir(parents=True)
    Path(disk.path, "workspace", "deep", "blob").write_bytes(os.urandom(8 << 20))
    Path(disk.path, "link").symlink_to("/etc/hostname")
    os.sync()
    before = image.stat().st_blocks * 512
    await disk.wipe()
    assert sorted(os.listdir(disk.path)) == ["lost+found"]
    assert Path("/etc/hostname").exists(), "a symlink is removed, never followed"
    assert image.stat().st_blocks * 512 < before - (6 << 20)


async def test_destroy_unmounts_and_removes_the_image_and_is_idempotent(tmp_path: Path) -> None:
    d = await disks.LoopDisks().make(str(tmp_path / "slot"), 8)
    assert mounted(d.path)
    await d.destroy()
    await d.destroy()
    assert not mounted(d.path) and not (tmp_path / "slot" / disks.IMAGE).exists()
    with pytest.raises(disks.DiskError):
        await d.wipe()


async def test_a_disk_too_small_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(disks.DiskError, match="at least"):
        await disks.LoopDisks().make(str(tmp_path / "slot"), 4)
    assert not disks.mounts_under(str(tmp_path), Path("/proc/self/mountinfo").read_text())


async def test_sweep_unmounts_what_a_dead_runner_left(tmp_path: Path) -> None:
    left = [await disks.LoopDisks().make(str(tmp_path / "sandboxes" / f"s{i}"), 8) for i in range(2)]
    assert await disks.sweep(str(tmp_path / "sandboxes")) == 2
    assert not any(mounted(d.path) for d in left)
    assert await disks.sweep(str(tmp_path / "sandboxes")) == 0


def test_mounts_under_matches_the_root_and_below_only() -> None:
    info = textwrap.dedent("""\
        36 27 7:1 / /r/sandboxes/a/disk rw - ext4 /dev/loop1 rw
        37 27 7:2 / /r/sandboxes-other/disk rw - ext4 /dev/loop2 rw
        38 36 0:5 / /r/sandboxes/a/disk/x rw - tmpfs t rw
        39 27 7:3 / /r/sandboxes/with\\040space rw - ext4 /dev/loop3 rw
    """)
    assert disks.mounts_under("/r/sandboxes", info) == [
        "/r/sandboxes/a/disk/x", "/r/sandboxes/a/disk", "/r/sandboxes/with space"]


REAPED_RUNNER = """
import asyncio, sys
from runner.sandbox import disk
async def main():
    d = await disk.LoopDisks().make(sys.argv[1] + "/s1", 8)
    async with disk.Reaper(sys.argv[1], sys.executable):
        print(d.path, flush=True)
        await asyncio.sleep(60)
asyncio.run(main())
"""


async def test_the_reaper_unmounts_after_its_runner_is_sigkilled(tmp_path: Path) -> None:
    root = tmp_path / "sandboxes"
    proc = subprocess.Popen([sys.executable, "-c", REAPED_RUNNER, str(root)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        path = proc.stdout.readline().strip()
        assert path and mounted(path)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        for _ in range(200):  # the reaper wakes on the pipe's EOF: tens of ms
            if not mounted(path):
                break
            await asyncio.sleep(0.025)
        assert not mounted(path)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
        await disks.sweep(str(root))


async def test_closing_the_reaper_unmounts_everything_under_its_root(tmp_path: Path) -> None:
    d = await disks.LoopDisks().make(str(tmp_path / "sandboxes" / "s1"), 8)
    async with disks.Reaper(str(tmp_path / "sandboxes"), sys.executable):
        assert mounted(d.path)
    assert not mounted(d.path)
