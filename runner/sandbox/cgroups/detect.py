"""Find the runner's own cgroups and pick a backend: v2, else v1, else none."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from runner.sandbox.cgroups.base import CgroupBackend, read_words
from runner.sandbox.cgroups.none import NoCgroups
from runner.sandbox.cgroups.v1 import V1Backend
from runner.sandbox.cgroups.v2 import V2Backend


@dataclass(frozen=True, slots=True)
class CgroupMount:
    """One cgroup filesystem mount from /proc/self/mountinfo."""

    mount_point: Path
    root: str  # the cgroup path mounted there; "/" unless a subtree was bound
    version: int  # 1 or 2
    options: frozenset[str]  # super options; for v1 they name the controllers


def parse_mountinfo(text: str) -> list[CgroupMount]:
    """The cgroup and cgroup2 mounts listed in a mountinfo text."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        mounts.append(
            CgroupMount(
                mount_point=Path(_unescape(fields[4])),
                root=_unescape(fields[3]),
                version=2 if tail[0] == "cgroup2" else 1,
                options=frozenset(tail[2].split(",")),
            )
        )
    return mounts


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """Controller -> our cgroup path, from a /proc/<pid>/cgroup text; the v2 entry is key ""."""
    own: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            own[""] = path
        for ctrl in controllers.split(","):
            if ctrl and not ctrl.startswith("name="):
                own[ctrl] = path
    return own


def own_dir(mount: CgroupMount, path: str) -> Path | None:
    """Where cgroup `path` lives under `mount`, or None if the mount does not contain it."""
    if mount.root == "/":
        return mount.mount_point / path.lstrip("/")
    if path == mount.root or path.startswith(mount.root.rstrip("/") + "/"):
        return mount.mount_point / path[len(mount.root) :].lstrip("/")
    return None


def detect(proc_self: Path = Path("/proc/self")) -> CgroupBackend:
    """Pick the cgroup backend for this process: v2, else v1, else NoCgroups (with a warning)."""
    try:
        mounts = parse_mountinfo((proc_self / "mountinfo").read_text())
        own = parse_proc_cgroup((proc_self / "cgroup").read_text())
    except OSError as exc:
        return NoCgroups(f"cannot read {proc_self}/mountinfo or cgroup: {exc}")

    for mount in (m for m in mounts if m.version == 2):
        directory = own_dir(mount, own[""]) if "" in own else None
        if directory is None or not _writable_dir(directory):
            continue
        if {"memory", "pids"} <= read_words(directory / "cgroup.controllers"):
            return V2Backend(directory, is_root=own[""] == mount.root)

    dirs: dict[str, Path] = {}
    for ctrl in V1Backend.CONTROLLERS:
        mount = next((m for m in mounts if m.version == 1 and ctrl in m.options), None)
        directory = own_dir(mount, own[ctrl]) if mount and ctrl in own else None
        if directory is not None and _writable_dir(directory):
            dirs[ctrl] = directory
    if {"memory", "pids"} <= dirs.keys():
        return V1Backend(dirs)
    return NoCgroups(
        "no writable cgroup with memory and pids controllers "
        f"(v1 found: {sorted(dirs) or 'none'}; v2 mounts: {sum(m.version == 2 for m in mounts)})"
    )


def _writable_dir(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK)


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    if "\\" not in field:
        return field
    return field.encode().decode("unicode_escape").encode("latin-1").decode()
