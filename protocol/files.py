"""Workspace files and exec on the wire: path rules, limits, and what a listing holds.

Every path the files API takes is relative to the session's workspace (`/workspace` inside
the sandbox). `split_path` is the one syntax check, shared by the coordinator (to answer a bad
path before anything reaches a runner) and the runner (which checks again, then resolves the
components one directory file descriptor at a time and never follows a symlink):

    "notes.txt"        -> ("notes.txt",)
    "./src//app.py"    -> ("src", "app.py")      "." and empty components are dropped
    "" or "."          -> ()                      the workspace itself (listing only)
    "/etc/passwd"      -> PathError               absolute
    "a/../b", ".."     -> PathError               parent references, wherever they are
    "a\\0b"            -> PathError               NUL
    longer than 4096 bytes, or a component longer than 255 bytes -> PathError

The limits below are the contract both sides enforce; a client may check them early.
"""

from __future__ import annotations

from typing import Literal

import msgspec

MiB = 1024 * 1024

MAX_PATH_BYTES = 4096  # PATH_MAX
MAX_NAME_BYTES = 255  # NAME_MAX
MAX_FILE_BYTES = 100 * MiB  # one file read or written through the API
MAX_ARCHIVE_BYTES = 100 * MiB  # a workspace upload, as sent (compressed)
MAX_EXTRACT_BYTES = 1024 * MiB  # a workspace upload, the sum of its files' sizes
MAX_EXTRACT_MEMBERS = 100_000
MAX_DOWNLOAD_BYTES = 1024 * MiB  # a workspace download, the sum of its files' sizes
MAX_LIST_ENTRIES = 10_000  # a recursive listing stops here and says `truncated`
LIST_REPLY_BYTES = 768 * 1024  # ... or when its reply would no longer fit one NATS message
MAX_DEPTH = 256  # directory levels a recursive listing or an archive descends
CHUNK_BYTES = 512 * 1024  # bytes per NATS message (base64 in JSON: ~700 KB < 1 MiB max payload)

MAX_EXEC_OUTPUT = 16 * MiB  # stdout + stderr of one exec; beyond it the command is killed
DEFAULT_EXEC_TIMEOUT_S = 60.0
MAX_EXEC_TIMEOUT_S = 3600.0
EXEC_SHELL = ("/bin/bash", "-lc", "--")  # how a string command runs ("--": it may start with -)

ENV_KEY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"

FileType = Literal["file", "dir", "symlink", "other"]


class PathError(ValueError):
    """A path string that is not a plain relative path inside the workspace."""


def split_path(path: str, *, allow_root: bool = False) -> tuple[str, ...]:
    """The components of a workspace-relative `path` (see the module docstring).

    Raises:
        PathError: the path is absolute, climbs with `..`, holds a NUL, is too long, or
            names the workspace itself while `allow_root` is False.
    """
    if not isinstance(path, str):
        raise PathError("a path must be a string")
    if "\0" in path:
        raise PathError("a path may not contain a NUL byte")
    if len(path.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        raise PathError(f"a path may be at most {MAX_PATH_BYTES} bytes")
    if path.startswith("/"):
        raise PathError(f"{path!r} is absolute; paths are relative to the workspace (/workspace)")
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise PathError(f"{path!r} climbs out with '..'; paths stay inside the workspace")
        if len(part.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
            raise PathError(f"a path component may be at most {MAX_NAME_BYTES} bytes")
        parts.append(part)
    if not parts and not allow_root:
        raise PathError("the path names the workspace itself; name a file inside it")
    return tuple(parts)


def join_path(parts: tuple[str, ...] | list[str]) -> str:
    """The canonical spelling of a split path ("" for the workspace itself)."""
    return "/".join(parts)


class FileEntry(msgspec.Struct, kw_only=True, frozen=True):
    """One workspace entry, as `lstat` sees it (a symlink is reported, never followed).

    `type`: file, dir, symlink or other (FIFO, socket, device). `mtime` in epoch seconds.
    """

    path: str
    type: FileType
    size: int
    mtime: float
