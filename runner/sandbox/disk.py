"""Disk quotas: a sandbox's workspace and home live on a filesystem of their own, `disk_mb` big.

    <root>/disk.img    sparse image file, at most disk_mb on the host
    <root>/disk/       its ext4, loop-mounted (nosuid, nodev) on the host
        workspace/     bound at /workspace
        home/          bound at /home/agent

Writing past the quota fails inside with ENOSPC, and the host's filesystem never holds more
than the image's size for it. This is a real limit enforced by the kernel, not a `du` poll.

Why a loop-mounted ext4 image, not the alternatives (`python -m loadtest.disk`, 1 GB disks,
2-core dev box, p50, n=30):

    make    (truncate + mkfs.ext4 + mount -o loop)   12 ms
    wipe    (rm the contents + fstrim), to recycle     5 ms   (20 files, 1 MB written)
    destroy (umount + unlink)                         20 ms   (flushes what was written)
    size-capped tmpfs mount + umount                   6 ms   but RAM: tmpfs pages are charged
                                                              to the sandbox's memory cgroup, so
                                                              disk_mb would eat memory_mb
    project quotas (ext4 prjquota / XFS)              need the host fs mounted with quotas
                                                      (it is not here, and we cannot remount /)

Making and destroying are paid in the background by the warm pool (fresh slots made ahead,
used slots wiped and recycled), never on a session's path.
No journal: the disk is scratch that dies with its sandbox (durability is the snapshot's job), so
it only cost space on small quotas. `noinit_itable`: the image is a fresh sparse file whose
unwritten inode tables already read as zeros, so the kernel need not zero them in the background.

The mounts are made in the runner's own mount namespace, which is the host's: tests, operators
and the runner's files API see workspaces at their host paths. So that a runner that dies, even
by SIGKILL, leaves none behind, a `Reaper` (a tiny process holding a pipe from the runner)
unmounts everything under the sandboxes' root when the pipe closes; `sweep(root)` does the same
at the next start, in case the reaper died too. `-o loop` sets autoclear, so each loop device
goes with its mount.

A Disk's life:

    make() --> mounted --wipe()--> mounted, empty (reusable) --destroy()--> gone
                  \\_________________________destroy()_______________________/
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from pathlib import Path
from typing import Protocol

from runner.sandbox.errors import SandboxError

log = logging.getLogger(__name__)

MKFS = "/usr/sbin/mkfs.ext4"
MOUNT = "/usr/bin/mount"
UMOUNT = "/usr/bin/umount"
FSTRIM = "/usr/sbin/fstrim"
MIN_MB = 8
IMAGE = "disk.img"
MOUNT_DIR = "disk"
_KEEP = {"lost+found"}  # the one entry of a fresh ext4 root; wipe() leaves it


class DiskError(SandboxError):
    """A sandbox disk could not be made, wiped or removed."""


class Disk(Protocol):
    """A directory whose contents are limited to `size_mb`."""

    @property
    def path(self) -> str:
        """Host path of the limited directory (the mount point)."""
        ...

    @property
    def size_mb(self) -> int: ...

    async def wipe(self) -> None:
        """Remove everything in it, so another sandbox may use it. Raises DiskError."""
        ...

    async def destroy(self) -> None:
        """Unmount and remove it. Idempotent; never raises."""
        ...


class DiskBackend(Protocol):
    """Makes disks; `enforced` says whether `size_mb` is a real limit."""

    name: str
    enforced: bool

    async def make(self, root: str, size_mb: int) -> Disk:
        """A new disk under the directory `root` (created if missing). Raises DiskError."""
        ...


class LoopDisk:
    """An ext4 image loop-mounted at `<root>/disk`."""

    def __init__(self, root: str, size_mb: int) -> None:
        self._root = root
        self._image = os.path.join(root, IMAGE)
        self._path = os.path.join(root, MOUNT_DIR)
        self._size_mb = size_mb
        self._gone = False

    @property
    def path(self) -> str:
        return self._path

    @property
    def size_mb(self) -> int:
        return self._size_mb

    async def _make(self) -> None:
        os.makedirs(self._path, mode=0o700, exist_ok=True)
        fd = os.open(self._image, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, self._size_mb << 20)
        finally:
            os.close(fd)
        await _run(MKFS, "-q", "-F", "-m", "0", "-O", "^has_journal",
                   "-E", "lazy_itable_init=1,nodiscard", self._image)
        await _run(MOUNT, "-t", "ext4", "-o", "loop,nosuid,nodev,noatime,noinit_itable",
                   self._image, self._path)
        os.chmod(self._path, 0o700)

    async def wipe(self) -> None:
        if self._gone:
            raise DiskError(f"disk {self._path} is destroyed")
        try:
            await asyncio.to_thread(_empty_dir, self._path)
            # Give the freed blocks back to the host: the image shrinks to what is still used.
            await _run(FSTRIM, self._path)
        except (OSError, DiskError) as e:
            raise DiskError(f"cannot wipe {self._path}: {e}") from e

    async def destroy(self) -> None:
        if self._gone:
            return
        self._gone = True
        if os.path.ismount(self._path):  # not a flag: a cancelled make() may have mounted it
            try:
                await _run(UMOUNT, self._path)
            except DiskError as e:
                # Busy (a process we failed to kill?): detach it now, the kernel frees it later.
                log.warning("disk %s: %s; detaching lazily", self._path, e)
                try:
                    await _run(UMOUNT, "-l", self._path)
                except DiskError as e2:
                    log.error("disk %s: cannot unmount: %s", self._path, e2)
                    return  # leave the image: deleting files under a live mount would be worse
        for remove in (lambda: os.unlink(self._image), lambda: os.rmdir(self._path)):
            try:
                remove()
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warning("disk %s: %s", self._root, e)


class LoopDisks:
    """Disks as loop-mounted ext4 images (needs root, /dev/loop-control, mkfs.ext4)."""

    name = "loop-ext4"
    enforced = True

    async def make(self, root: str, size_mb: int) -> LoopDisk:
        if size_mb < MIN_MB:
            raise DiskError(f"a disk must be at least {MIN_MB} MB, got {size_mb}")
        disk = LoopDisk(root, size_mb)
        try:
            await disk._make()
        except BaseException as e:
            await asyncio.shield(disk.destroy())
            if isinstance(e, OSError):
                raise DiskError(f"cannot make a disk under {root}: {e}") from e
            raise
        return disk


class PlainDisk:
    """A plain directory: no limit."""

    def __init__(self, root: str, size_mb: int) -> None:
        self._path = os.path.join(root, MOUNT_DIR)
        self._size_mb = size_mb
        os.makedirs(self._path, mode=0o700, exist_ok=True)

    @property
    def path(self) -> str:
        return self._path

    @property
    def size_mb(self) -> int:
        return self._size_mb

    async def wipe(self) -> None:
        try:
            await asyncio.to_thread(_empty_dir, self._path)
        except OSError as e:
            raise DiskError(f"cannot wipe {self._path}: {e}") from e

    async def destroy(self) -> None:
        await asyncio.to_thread(shutil.rmtree, self._path, True)


class PlainDisks:
    """The fallback where loop mounts are impossible: directories, disk quotas NOT enforced."""

    name = "none"
    enforced = False

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self._warned = False

    async def make(self, root: str, size_mb: int) -> PlainDisk:
        if not self._warned:
            self._warned = True
            log.warning("no loop-mounted disks (%s): sandbox disk quotas are NOT enforced", self.reason)
        try:
            return PlainDisk(root, size_mb)
        except OSError as e:
            raise DiskError(f"cannot make a directory under {root}: {e}") from e


def detect() -> DiskBackend:
    """LoopDisks when this process can make loop mounts, else PlainDisks (with a warning)."""
    missing = [p for p in (MKFS, MOUNT, UMOUNT, FSTRIM) if not os.access(p, os.X_OK)]
    if missing:
        return PlainDisks(f"missing {', '.join(missing)}")
    if os.geteuid() != 0:
        return PlainDisks("the runner is not root")
    if not os.path.exists("/dev/loop-control"):
        return PlainDisks("no /dev/loop-control")
    return LoopDisks()


def mounts_under(root: str, mountinfo: str) -> list[str]:
    """Mount points at or below `root` in a /proc/self/mountinfo text, deepest first."""
    root = os.path.normpath(root)
    found = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        point = fields[4].encode().decode("unicode_escape").encode("latin-1").decode()
        if point == root or point.startswith(root.rstrip("/") + "/"):
            found.append(point)
    return sorted(found, key=lambda p: p.count("/"), reverse=True)


async def sweep(root: str) -> int:
    """Unmount whatever an earlier runner left mounted under `root`; returns how many."""
    try:
        text = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return 0
    stale = mounts_under(root, text)
    for point in stale:
        try:
            await _run(UMOUNT, "-l", point)
        except DiskError as e:
            log.warning("cannot unmount stale %s: %s", point, e)
    if stale:
        log.info("unmounted %d stale sandbox disks under %s", len(stale), root)
    return len(stale)


# Runs as `python -I -S -c _REAPER <root>`: stdlib only, ~10 ms to start, a few MB while it waits.
_REAPER = r"""
import os, subprocess, sys
root = os.path.normpath(sys.argv[1])
sys.stdin.buffer.read()  # EOF when the runner exits, however it exits
points = []
for line in open("/proc/self/mountinfo"):
    f = line.split()
    p = f[4].encode().decode("unicode_escape").encode("latin-1").decode() if len(f) > 4 else ""
    if p == root or p.startswith(root.rstrip("/") + "/"):
        points.append(p)
for p in sorted(points, key=lambda p: p.count("/"), reverse=True):
    subprocess.run(["umount", "-l", p], stderr=subprocess.DEVNULL)
"""


class Reaper:
    """Unmounts every disk under `root` once the runner exits, even if it is SIGKILLed.

    A child process in its own session (so a signal to the runner's process group spares it)
    blocks on a pipe whose only writer is the runner; the kernel closes the pipe when the
    runner dies, and the child sweeps. `close()` closes it on purpose and waits for the sweep.
    """

    def __init__(self, root: str, python: str) -> None:
        self._root = root
        self._python = python
        self._proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Reaper:
        self._proc = await asyncio.create_subprocess_exec(
            self._python, "-I", "-S", "-c", _REAPER, self._root,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            log.warning("the disk reaper did not finish; killing it")
            proc.kill()
            await proc.wait()


def _empty_dir(path: str) -> None:
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.name in _KEEP:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)


async def _run(*argv: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await proc.communicate()
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    if proc.returncode != 0:
        msg = err.decode(errors="replace").strip() or f"exit status {proc.returncode}"
        raise DiskError(f"{os.path.basename(argv[0])}: {msg}")
