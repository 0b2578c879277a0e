"""The backend for hosts without a usable cgroup: sandboxes run, unlimited, after one warning."""

from __future__ import annotations

import logging
from pathlib import Path

from runner.sandbox.errors import CgroupError
from runner.sandbox.spec import Limits

log = logging.getLogger(__name__)


class NoCgroup:
    """Stands in for a cgroup where none is available: no limits, no kill, no freeze."""

    def __init__(self, name: str) -> None:
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    @property
    def procs_files(self) -> tuple[Path, ...]:
        return ()

    @property
    def enforced(self) -> frozenset[str]:
        return frozenset()

    def pids(self) -> set[int]:
        return set()

    def kill(self) -> None:
        pass  # nothing to find the processes by; bwrap --die-with-parent still applies

    def freeze(self) -> None:
        raise CgroupError("no cgroup: cannot freeze")

    def thaw(self) -> None:
        raise CgroupError("no cgroup: cannot thaw")

    def oom_killed(self) -> bool:
        return False

    def oom_kills(self) -> int:
        return 0

    def cpu_usage_us(self) -> int | None:
        return None

    async def destroy(self) -> None:
        pass


class NoCgroups:
    """The backend when no usable cgroup exists: sandboxes run, unlimited, after one warning."""

    name = "none"

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self._warned = False

    def create(self, sandbox_id: str, limits: Limits) -> NoCgroup:
        if not self._warned:
            self._warned = True
            log.warning("no usable cgroup (%s): sandbox limits are NOT enforced", self.reason)
        return NoCgroup(sandbox_id)
