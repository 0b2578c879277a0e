"""An agent folder packed as a deterministic gzip'd tar: the body of `POST /api/agents`.

The same folder content always packs to the same bytes (names sorted, mtimes, owners and gzip
header zeroed, modes normalised to 0644/0755), so the server's content digest only changes when
the agent does. Tool caches and VCS data (`EXCLUDED_NAMES`) never travel. Symlinks are kept as
relative links when they stay inside the folder and refused when they leave it; sockets, FIFOs and
devices are refused. Every refusal is a `BundleError` that says what to change.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path

from ash.errors import BundleError

EXCLUDED_NAMES = frozenset({".git", "node_modules", "__pycache__", ".venv", ".DS_Store"})
"""Names skipped wherever they appear in the folder (files or folders)."""

DEFAULT_MAX_BYTES = 50 * 1024 * 1024
"""Default cap on the total size of the files in a bundle."""

ENTRY_FILE = "CLAUDE.md"


@dataclass(slots=True)
class _Entry:
    arcname: str
    kind: str  # "dir" | "file" | "symlink"
    path: str
    size: int = 0
    executable: bool = False
    linkname: str = ""


def pack(folder: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Pack `folder` into gzip'd tar bytes, or raise `BundleError` saying what is wrong."""
    root = Path(folder)
    _check_root(root)
    entries = _collect(root)
    _check_size(root, entries, max_bytes)
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for entry in entries:
            _add(tar, entry)
    data = buffer.getvalue()
    if len(data) > max_bytes:  # only possible for incompressible content near the cap
        raise BundleError(
            f"the packed agent is {_mb(len(data))}, over the {_mb(max_bytes)} limit; "
            "remove large files from the folder"
        )
    return data


def _check_root(root: Path) -> None:
    if not root.exists():
        raise BundleError(f"{root}: no such folder; pass the path of an agent folder")
    if not root.is_dir():
        raise BundleError(f"{root} is not a folder; pass the folder that holds {ENTRY_FILE}")
    if (root / ENTRY_FILE).is_file():
        return
    hint = ""
    near = [p.name for p in root.iterdir() if p.name.lower() == ENTRY_FILE.lower()]
    if near:
        hint = f" (found {near[0]}: rename it to {ENTRY_FILE})"
    raise BundleError(
        f"{root} has no {ENTRY_FILE} at its root{hint}. An agent folder needs a {ENTRY_FILE} "
        f"with the agent's instructions: create one (for example "
        f"`printf '# My agent\\n\\nYou are a helpful assistant.\\n' > {root / ENTRY_FILE}`) "
        "or deploy the folder that already has it"
    )


def _collect(root: Path) -> list[_Entry]:
    root_real = os.path.realpath(root)
    entries: list[_Entry] = []
    _walk(root_real, str(root), "", entries)
    return entries


def _walk(root_real: str, dirpath: str, prefix: str, out: list[_Entry]) -> None:
    try:
        with os.scandir(dirpath) as it:
            children = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        raise BundleError(f"cannot read folder {prefix or '.'}: {exc.strerror}") from exc
    for child in children:
        if child.name in EXCLUDED_NAMES:
            continue
        arcname = prefix + child.name
        try:
            st = child.stat(follow_symlinks=False)
        except OSError as exc:
            raise BundleError(f"cannot read {arcname}: {exc.strerror}") from exc
        if stat.S_ISLNK(st.st_mode):
            out.append(_symlink(root_real, child.path, arcname))
        elif stat.S_ISDIR(st.st_mode):
            out.append(_Entry(arcname, "dir", child.path))
            _walk(root_real, child.path, arcname + "/", out)
        elif stat.S_ISREG(st.st_mode):
            executable = bool(st.st_mode & 0o111)
            out.append(_Entry(arcname, "file", child.path, st.st_size, executable))
        else:
            raise BundleError(
                f"{arcname} is a {_special_kind(st.st_mode)}, not a file, folder or symlink; "
                "remove it from the agent folder (or move it out) and deploy again"
            )


def _symlink(root_real: str, path: str, arcname: str) -> _Entry:
    target = os.readlink(path)
    resolved = os.path.realpath(path)
    if resolved != root_real and not resolved.startswith(root_real + os.sep):
        raise BundleError(
            f"{arcname} is a symlink to {target}, outside the agent folder; "
            "copy what it points to into the folder, or remove the link"
        )
    # Stored relative to the link's own folder so it resolves the same way after unpacking.
    parent_real = os.path.realpath(os.path.dirname(path))
    return _Entry(arcname, "symlink", path, linkname=os.path.relpath(resolved, parent_real))


def _special_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device file"
    return "special file"


def _check_size(root: Path, entries: list[_Entry], max_bytes: int) -> None:
    total = sum(e.size for e in entries)
    if total <= max_bytes:
        return
    largest = sorted((e for e in entries if e.kind == "file"), key=lambda e: -e.size)[:3]
    listing = ", ".join(f"{e.arcname} ({_mb(e.size)})" for e in largest)
    raise BundleError(
        f"the agent folder {root} holds {_mb(total)} of files, over the {_mb(max_bytes)} limit; "
        f"largest: {listing}. Move data the agent does not need out of the folder"
    )


def _add(tar: tarfile.TarFile, entry: _Entry) -> None:
    info = tarfile.TarInfo(entry.arcname)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if entry.kind == "dir":
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tar.addfile(info)
    elif entry.kind == "symlink":
        info.type = tarfile.SYMTYPE
        info.mode = 0o777
        info.linkname = entry.linkname
        tar.addfile(info)
    else:
        try:
            with open(entry.path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise BundleError(f"cannot read {entry.arcname}: {exc.strerror}") from exc
        info.type = tarfile.REGTYPE
        info.mode = 0o755 if entry.executable else 0o644
        info.size = len(data)  # what was read, even if the file changed since it was listed
        tar.addfile(info, io.BytesIO(data))


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB"
