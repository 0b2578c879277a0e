"""What this runner's machine offers sandboxes, for its advert: total and free memory and CPU.

    total memory   MemTotal (/proc/meminfo), or the runner's cgroup memory limit if lower
    free memory    MemAvailable, or what is left under that cgroup limit if less
    total CPU      the CPUs the runner may run on (affinity), or its cgroup CPU quota if lower
    free CPU       total less the one-minute load average

Sandboxes' cgroups nest under the runner's own, so the runner's cgroup limits (and those of
every cgroup above it) bound them all. The parsers are pure; `HostCapacity` finds the cgroup
directories once and reads a few small files per advert (microseconds).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from protocol.runners import Resources
from runner.sandbox.cgroups import own_dir, parse_mountinfo, parse_proc_cgroup

logger = logging.getLogger(__name__)

MB = 1 << 20
UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as a number near 2**63


def parse_meminfo(text: str) -> tuple[int, int]:
    """(MemTotal, MemAvailable) in MB from a /proc/meminfo text (MemFree if no MemAvailable)."""
    kb: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            kb[name] = int(fields[0])
    total = kb.get("MemTotal", 0)
    return total // 1024, kb.get("MemAvailable", kb.get("MemFree", total)) // 1024


def parse_memory_limit(text: str) -> int | None:
    """Bytes from a memory.max / memory.limit_in_bytes text; None for no limit."""
    word = text.strip()
    if not word.isdigit():
        return None  # "max"
    value = int(word)
    return None if value >= UNLIMITED else value


def parse_cpu_max(text: str) -> float | None:
    """CPUs from a v2 cpu.max text ("quota period"); None for no limit ("max ...")."""
    words = text.split()
    if len(words) != 2 or not words[0].isdigit() or not words[1].isdigit() or int(words[1]) == 0:
        return None
    return int(words[0]) / int(words[1])


def parse_cfs(quota: str, period: str) -> float | None:
    """CPUs from v1 cpu.cfs_quota_us and cpu.cfs_period_us; None for no limit (-1)."""
    try:
        q, p = int(quota.strip()), int(period.strip())
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _chain(directory: Path | None, mount_point: Path) -> list[Path]:
    """`directory` and every cgroup above it up to the mount point (limits nest)."""
    chain: list[Path] = []
    while directory is not None and directory.is_relative_to(mount_point):
        chain.append(directory)
        if directory == mount_point:
            break
        directory = directory.parent
    return chain


class HostCapacity:
    """Reads the runner's total and free memory and CPU (see the module docstring)."""

    def __init__(self, proc: Path = Path("/proc")) -> None:
        self._proc = proc
        self._v2: list[Path] = []
        self._v1_memory: list[Path] = []
        self._v1_cpu: list[Path] = []
        try:
            mounts = parse_mountinfo((proc / "self" / "mountinfo").read_text())
            own = parse_proc_cgroup((proc / "self" / "cgroup").read_text())
        except OSError as e:
            logger.info("no cgroup limits read for the advert: %s", e)
            return
        for m in mounts:
            if m.version == 2 and "" in own:
                self._v2 = self._v2 or _chain(own_dir(m, own[""]), m.mount_point)
            elif m.version == 1 and "memory" in m.options and "memory" in own:
                self._v1_memory = _chain(own_dir(m, own["memory"]), m.mount_point)
            elif m.version == 1 and "cpu" in m.options and "cpu" in own:
                self._v1_cpu = _chain(own_dir(m, own["cpu"]), m.mount_point)

    def sample(self) -> tuple[Resources, Resources]:
        """(total, free) now."""
        try:
            total_mb, available_mb = parse_meminfo((self._proc / "meminfo").read_text())
        except OSError:
            total_mb = available_mb = 0
        limit, usage = self._memory_limit()
        if limit is not None:
            total_mb = min(total_mb, limit // MB) if total_mb else limit // MB
            available_mb = min(available_mb, max(0, limit - usage) // MB)
        cpus = float(len(os.sched_getaffinity(0)))
        quota = self._cpu_quota()
        if quota is not None:
            cpus = min(cpus, quota)
        try:
            load = os.getloadavg()[0]
        except OSError:
            load = 0.0
        total = Resources(memory_mb=total_mb, cpu_percent=round(cpus * 100))
        free = Resources(memory_mb=available_mb, cpu_percent=max(0, round((cpus - load) * 100)))
        return total, free

    def _memory_limit(self) -> tuple[int | None, int]:
        """The tightest memory limit over the runner's cgroup and its ancestors, and the usage
        of the cgroup that sets it."""
        best: tuple[int | None, int] = (None, 0)
        files = [(d / "memory.max", d / "memory.current") for d in self._v2]
        files += [(d / "memory.limit_in_bytes", d / "memory.usage_in_bytes")
                  for d in self._v1_memory]
        for limit_file, usage_file in files:
            try:
                limit = parse_memory_limit(limit_file.read_text())
                if limit is not None and (best[0] is None or limit < best[0]):
                    best = (limit, int(usage_file.read_text().strip() or 0))
            except (OSError, ValueError):
                continue
        return best

    def _cpu_quota(self) -> float | None:
        quotas: list[float] = []
        for d in self._v2:
            try:
                q = parse_cpu_max((d / "cpu.max").read_text())
            except OSError:
                continue
            if q is not None:
                quotas.append(q)
        for d in self._v1_cpu:
            try:
                q = parse_cfs((d / "cpu.cfs_quota_us").read_text(),
                              (d / "cpu.cfs_period_us").read_text())
            except OSError:
                continue
            if q is not None:
                quotas.append(q)
        return min(quotas) if quotas else None
