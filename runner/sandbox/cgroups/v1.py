"""cgroup v1: one directory per controller hierarchy (memory, pids, cpu, freezer)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path

from runner.sandbox.cgroups.base import (
    CPU_PERIOD_US,
    PARENT,
    CgroupBase,
    mkdir_leaf,
    write,
)
from runner.sandbox.errors import CgroupError
from runner.sandbox.spec import Limits


class V1Cgroup(CgroupBase):
    """A sandbox cgroup spread over the v1 hierarchies (one directory per controller)."""

    def __init__(self, name: str, dirs: Mapping[str, Path], enforced: frozenset[str]) -> None:
        super().__init__(name, dirs.values(), enforced)
        self._by_ctrl = dict(dirs)

    def kill(self) -> None:
        # Freeze first when we can: frozen processes cannot fork between listing and killing.
        # v1 frozen tasks act on SIGKILL only once thawed, hence the thaw.
        freezer = self._by_ctrl.get("freezer")
        if freezer is not None:
            write(freezer / "freezer.state", "FROZEN")
        try:
            self._kill_listed()
        finally:
            if freezer is not None:
                write(freezer / "freezer.state", "THAWED")

    def freeze(self) -> None:
        write(self._freezer() / "freezer.state", "FROZEN")

    def thaw(self) -> None:
        write(self._freezer() / "freezer.state", "THAWED")

    def _freezer(self) -> Path:
        if "freezer" not in self._by_ctrl:
            raise CgroupError("the v1 freezer controller is not mounted")
        return self._by_ctrl["freezer"]

    def oom_killed(self) -> bool:
        return self.oom_kills() > 0

    def oom_kills(self) -> int:
        # memory.oom_control has an "oom_kill <count>" line since Linux 4.13.
        try:
            text = (self._by_ctrl["memory"] / "memory.oom_control").read_text()
        except FileNotFoundError:
            return 0
        counts = dict(line.split() for line in text.splitlines() if len(line.split()) == 2)
        return int(counts.get("oom_kill", "0"))

    def cpu_usage_us(self) -> int | None:
        # cpuacct.usage is nanoseconds; cpuacct is often co-mounted with cpu ("cpu,cpuacct").
        for ctrl in ("cpuacct", "cpu"):
            directory = self._by_ctrl.get(ctrl)
            if directory is not None and (directory / "cpuacct.usage").exists():
                return int((directory / "cpuacct.usage").read_text()) // 1000
        return None


class V1Backend:
    """cgroup v1: `<own>/ash/<id>` in the memory, pids, cpu and freezer hierarchies."""

    name = "v1"
    CONTROLLERS = ("memory", "pids", "cpu", "freezer", "cpuacct")  # cpuacct: usage accounting

    def __init__(self, own: Mapping[str, Path]) -> None:
        """`own` maps controller name to the runner's own cgroup directory in that hierarchy."""
        self._own = {c: own[c] for c in self.CONTROLLERS if c in own}
        if self._own.get("cpuacct") is not None and self._own.get("cpuacct") == self._own.get("cpu"):
            del self._own["cpuacct"]  # co-mounted with cpu: the one directory serves both

    @property
    def own(self) -> Mapping[str, Path]:
        """Controller name -> the runner's own cgroup directory (sandboxes go in `ash/`)."""
        return dict(self._own)

    def create(self, sandbox_id: str, limits: Limits) -> V1Cgroup:
        dirs: dict[str, Path] = {}
        try:
            for ctrl, own in self._own.items():
                mkdir_leaf(own / PARENT / sandbox_id)
                dirs[ctrl] = own / PARENT / sandbox_id
            mem = dirs["memory"]
            # memsw (memory + swap) must stay >= the memory limit, so memory goes first.
            write(mem / "memory.limit_in_bytes", str(limits.memory_mb << 20))
            if (mem / "memory.memsw.limit_in_bytes").exists():
                write(mem / "memory.memsw.limit_in_bytes", str(limits.memory_mb << 20))
            write(dirs["pids"] / "pids.max", str(limits.pids))
            if "cpu" in dirs:
                write(dirs["cpu"] / "cpu.cfs_period_us", str(CPU_PERIOD_US))
                quota = CPU_PERIOD_US * limits.cpu_percent // 100
                write(dirs["cpu"] / "cpu.cfs_quota_us", str(quota))
        except OSError as exc:
            for d in dirs.values():
                with contextlib.suppress(OSError):
                    d.rmdir()
            raise CgroupError(f"cannot create v1 cgroup {sandbox_id}: {exc}") from exc
        enforced = frozenset({"memory", "pids"} | ({"cpu"} if "cpu" in dirs else set()))
        return V1Cgroup(sandbox_id, dirs, enforced)
