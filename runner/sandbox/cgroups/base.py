"""The cgroup seam (Protocols) and what the v1 and v2 implementations share.

All file operations are small synchronous writes and reads (about 0.05 ms each on cgroupfs),
so they run inline in the event loop; only `destroy()` waits, and it polls with asyncio.sleep.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from runner.sandbox.spec import Limits

log = logging.getLogger(__name__)

PARENT = "ash"  # the runner's subtree inside its own cgroup
CPU_PERIOD_US = 100_000
DESTROY_DEADLINE_S = 2.0  # a SIGKILLed sandbox empties in milliseconds; this is the D-state guard
_POLL_S = 0.002


class Cgroup(Protocol):
    """One sandbox's cgroup (in one or several hierarchies)."""

    @property
    def name(self) -> str:
        """The sandbox id."""
        ...

    @property
    def procs_files(self) -> tuple[Path, ...]:
        """The `cgroup.procs` files a process writes its pid to in order to join."""
        ...

    @property
    def enforced(self) -> frozenset[str]:
        """Which of "memory", "cpu", "pids" limits are actually in force."""
        ...

    def pids(self) -> set[int]:
        """Pids of the processes in the cgroup now."""
        ...

    def kill(self) -> None:
        """Send SIGKILL to every process in the cgroup (does not wait)."""
        ...

    def freeze(self) -> None:
        """Stop every process in the cgroup (pause); raises CgroupError if unsupported."""
        ...

    def thaw(self) -> None:
        """Undo freeze()."""
        ...

    def oom_killed(self) -> bool:
        """True once the kernel has OOM-killed a process of this cgroup."""
        ...

    def oom_kills(self) -> int:
        """How many processes of this cgroup the kernel has OOM-killed so far."""
        ...

    def cpu_usage_us(self) -> int | None:
        """CPU time used by this cgroup's processes so far, in microseconds; None when the
        host does not account it (no cpuacct hierarchy, no cgroup)."""
        ...

    async def destroy(self) -> None:
        """Kill everything, wait (bounded) until empty, remove the cgroup. Idempotent."""
        ...


class CgroupBackend(Protocol):
    """Creates sandbox cgroups in one kind of cgroup hierarchy."""

    name: str

    def create(self, sandbox_id: str, limits: Limits) -> Cgroup:
        """Create the cgroup for `sandbox_id` with `limits` applied; raises CgroupError."""
        ...


class CgroupBase:
    """Membership, killing and teardown shared by both hierarchies."""

    def __init__(self, name: str, dirs: Iterable[Path], enforced: frozenset[str]) -> None:
        self._name = name
        self._dirs = tuple(dirs)
        self._enforced = enforced
        self._destroyed = False

    @property
    def name(self) -> str:
        return self._name

    @property
    def procs_files(self) -> tuple[Path, ...]:
        return tuple(d / "cgroup.procs" for d in self._dirs)

    @property
    def enforced(self) -> frozenset[str]:
        return self._enforced

    def pids(self) -> set[int]:
        found: set[int] = set()
        for procs in self.procs_files:
            found |= {int(p) for p in read_words(procs)}
        return found

    def _kill_listed(self) -> None:
        suffix = f"/{PARENT}/{self._name}"
        for pid in self.pids():
            kill_member(pid, suffix)

    async def destroy(self) -> None:
        if self._destroyed:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DESTROY_DEADLINE_S
        while True:
            self.kill()
            left = self.pids()
            if not left:
                break
            if loop.time() >= deadline:
                log.warning(
                    "cgroup %s: %d processes survived SIGKILL: %s", self._name, len(left), left
                )
                break
            await asyncio.sleep(_POLL_S)
        for d in self._dirs:
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cgroup %s: cannot remove %s: %s", self._name, d, exc)
        self._destroyed = True


def kill_member(pid: int, suffix: str) -> None:
    """SIGKILL `pid` only if it is still the process that is in our cgroup.

    A pid read from cgroup.procs may exit and be reused by an unrelated host process before we
    signal it. Holding a pidfd pins the process: if it is still alive after we checked its
    /proc/<pid>/cgroup, that check was about the same process.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            member = any(line.rstrip("\n").endswith(suffix) for line in f)
        if member:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except (FileNotFoundError, ProcessLookupError):
        pass  # it exited meanwhile
    finally:
        os.close(pidfd)


def write(path: Path, value: str) -> None:
    # One small write per cgroupfs file; the kernel applies it synchronously (~0.05 ms).
    with open(path, "w") as f:
        f.write(value)


def read_words(path: Path) -> set[str]:
    try:
        return set(path.read_text().split())
    except FileNotFoundError:
        return set()


def mkdir_leaf(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir()
    except FileNotFoundError:
        # Another process removed an empty parent between the two calls; once more.
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir()
