"""cgroup v2: one directory in the unified hierarchy, controllers enabled down the path."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from pathlib import Path

from runner.sandbox.cgroups.base import (
    CPU_PERIOD_US,
    PARENT,
    CgroupBase,
    mkdir_leaf,
    read_words,
    write,
)
from runner.sandbox.errors import CgroupError
from runner.sandbox.spec import Limits

log = logging.getLogger(__name__)


class V2Cgroup(CgroupBase):
    """A sandbox cgroup in the unified (v2) hierarchy."""

    def __init__(self, name: str, directory: Path, enforced: frozenset[str]) -> None:
        super().__init__(name, [directory], enforced)
        self._dir = directory

    def kill(self) -> None:
        if (self._dir / "cgroup.kill").exists():  # Linux 5.14+: atomic, race-free
            write(self._dir / "cgroup.kill", "1")
            return
        self.freeze()
        try:
            self._kill_listed()  # v2 frozen tasks do die on SIGKILL
        finally:
            self.thaw()

    def freeze(self) -> None:
        write(self._dir / "cgroup.freeze", "1")

    def thaw(self) -> None:
        write(self._dir / "cgroup.freeze", "0")

    def oom_killed(self) -> bool:
        return self.oom_kills() > 0

    def oom_kills(self) -> int:
        try:
            text = (self._dir / "memory.events").read_text()
        except FileNotFoundError:
            return 0
        counts = dict(line.split() for line in text.splitlines() if len(line.split()) == 2)
        return int(counts.get("oom_kill", "0"))

    def cpu_usage_us(self) -> int | None:
        # cpu.stat's usage_usec is there whether or not the cpu controller is enabled.
        try:
            text = (self._dir / "cpu.stat").read_text()
        except FileNotFoundError:
            return None
        counts = dict(line.split() for line in text.splitlines() if len(line.split()) == 2)
        value = counts.get("usage_usec")
        return int(value) if value is not None else None


class V2Backend:
    """cgroup v2: `<own>/ash/<id>`, with memory, cpu and pids enabled down the path.

    v2 forbids processes in a cgroup whose subtree_control enables controllers ("no internal
    processes"), except at the root. If the runner's own cgroup holds processes, they are moved
    into a leaf `<own>/runner` first: the same move a systemd unit with Delegate=yes or a
    container init makes. If enabling controllers is refused, sandboxes are still grouped
    (kill, freeze) but not limited, and a warning says so.
    """

    name = "v2"
    WANTED = ("cpu", "memory", "pids")
    LEAF = "runner"

    def __init__(self, own: Path, *, is_root: bool = False) -> None:
        """`own` is the runner's own v2 cgroup directory; `is_root` if it is the hierarchy root."""
        self._own = own
        self._is_root = is_root
        self._enabled: frozenset[str] | None = None

    @property
    def own(self) -> Path:
        """The runner's own v2 cgroup directory (sandboxes go in `ash/`)."""
        return self._own

    def _setup(self) -> frozenset[str]:
        if self._enabled is not None:
            return self._enabled
        wanted = read_words(self._own / "cgroup.controllers") & set(self.WANTED)
        parent = self._own / PARENT
        try:
            if wanted - read_words(self._own / "cgroup.subtree_control"):
                self._evacuate()
                write(self._own / "cgroup.subtree_control", _plus(wanted))
            parent.mkdir(exist_ok=True)
            if wanted:
                write(parent / "cgroup.subtree_control", _plus(wanted))
        except OSError as exc:
            log.warning("cgroup v2: cannot enable %s under %s (%s)", sorted(wanted), self._own, exc)
            parent.mkdir(exist_ok=True)
            wanted = set()
        missing = set(self.WANTED) - wanted
        if missing:
            log.warning("cgroup v2 at %s: %s limits are NOT enforced", self._own, sorted(missing))
        self._enabled = frozenset(wanted)
        return self._enabled

    def _evacuate(self) -> None:
        pids = read_words(self._own / "cgroup.procs")
        if self._is_root or not pids:
            return
        leaf = self._own / self.LEAF
        leaf.mkdir(exist_ok=True)
        log.info("cgroup v2: moving %d processes from %s into %s", len(pids), self._own, leaf)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
                write(leaf / "cgroup.procs", pid)

    def create(self, sandbox_id: str, limits: Limits) -> V2Cgroup:
        enabled = self._setup()
        directory = self._own / PARENT / sandbox_id
        try:
            mkdir_leaf(directory)
            if "memory" in enabled:
                write(directory / "memory.max", str(limits.memory_mb << 20))
                try:  # absent when swap accounting is off; then there is no swap to limit
                    write(directory / "memory.swap.max", "0")
                except OSError:
                    pass
            if "cpu" in enabled:
                quota = CPU_PERIOD_US * limits.cpu_percent // 100
                write(directory / "cpu.max", f"{quota} {CPU_PERIOD_US}")
            if "pids" in enabled:
                write(directory / "pids.max", str(limits.pids))
        except OSError as exc:
            with contextlib.suppress(OSError):
                directory.rmdir()
            raise CgroupError(f"cannot create v2 cgroup {sandbox_id}: {exc}") from exc
        return V2Cgroup(sandbox_id, directory, enabled)


def _plus(controllers: Iterable[str]) -> str:
    return " ".join(f"+{c}" for c in sorted(controllers))
