"""The workspace as a tar.gz: written from it for a download, extracted into it for an upload.

Both directions go through `runner.workspace`'s descriptor walk, never through path names
from the root, so the agent's symlinks are carried as symlinks and never followed, and FIFOs,
sockets and devices are left out (download) or refused (upload).

Extraction is three passes, so that a bad archive changes nothing:

    plan    read every header: names are plain relative paths (no absolute, no `..`, no NUL;
            also `tarfile.data_filter`), only files, directories and symlinks whose target
            stays inside, no member below a file or symlink of the archive, within the member
            and size limits (413 beyond them)
    check   against the workspace as it is: no member goes through, or replaces, a symlink,
            a special file, or an entry of another kind
    apply   create directories, write each file as an unnamed O_TMPFILE linked into place
            (with its mode and mtime), create symlinks by rename

The agent may still change its workspace between `check` and `apply`; the descriptor walk then
refuses the step it changed (nothing is written outside), and extraction stops there.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import posixpath
import stat
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Literal

from protocol.errors import ErrorCode
from protocol.files import (
    MAX_DEPTH,
    MAX_DOWNLOAD_BYTES,
    MAX_EXTRACT_BYTES,
    MAX_EXTRACT_MEMBERS,
    PathError,
    join_path,
    split_path,
)
from runner.workspace import (
    DIR_FLAGS,
    FILE_FLAGS,
    TMP_PREFIX,
    Workspace,
    WorkspaceError,
    display,
    file_type,
    install_at,
    lstat_at,
    refusal,
    tmpfile_at,
)

AGENT_ID = 1000
MAX_HEADER_READ = 1024 * 1024  # a pax or GNU long-name header larger than this is refused
_FILTER_ROOT = "/nonexistent-ash-workspace"  # data_filter's dest: never exists, so purely lexical
_COPY = 1024 * 1024

Kind = Literal["file", "dir", "symlink"]


@dataclass(slots=True, frozen=True)
class Extracted:
    """What an extraction put into the workspace."""

    files: int
    dirs: int
    symlinks: int
    size: int


@dataclass(slots=True, frozen=True)
class _Member:
    info: tarfile.TarInfo
    kind: Kind
    parts: tuple[str, ...]
    mode: int
    linkname: str = ""


def _unprocessable(message: str) -> WorkspaceError:
    return WorkspaceError(ErrorCode.unprocessable, message)


# -- download ---------------------------------------------------------------------------------


def write_archive(ws: Workspace, sink: IO[bytes], *, max_bytes: int = MAX_DOWNLOAD_BYTES) -> int:
    """Write the workspace to `sink` as a tar.gz; returns the number of entries.

    Raises WorkspaceError(payload_too_large) once the files' sizes pass `max_bytes`.
    """
    return write_trees([((), ws)], sink, max_bytes=max_bytes)


Skip = Callable[[tuple[str, ...], str], bool]
"""`skip(parts, kind)`: True to leave an entry (and, for a directory, all below it) out."""


def write_trees(
    trees: list[tuple[tuple[str, ...], Workspace]],
    sink: IO[bytes],
    *,
    max_bytes: int = MAX_DOWNLOAD_BYTES,
    max_members: int | None = None,
    skip: Skip | None = None,
) -> int:
    """Write several directory trees into one tar.gz, each under its own prefix (a snapshot
    holds `workspace/` and `home/`); returns the number of entries.

    Raises WorkspaceError(payload_too_large) once the files' sizes pass `max_bytes`, or the
    entries `max_members`.
    """
    writer = _Writer(max_bytes, max_members, skip)
    with tarfile.open(fileobj=sink, mode="w|gz", format=tarfile.PAX_FORMAT) as tar:
        writer.tar = tar
        for prefix, ws in trees:
            with ws.directory(()) as root:
                if prefix:
                    writer.add_dir_entry(prefix)
                writer.add_tree(root, prefix, 0)
    return writer.count


class _Writer:
    def __init__(self, max_bytes: int, max_members: int | None = None, skip: Skip | None = None) -> None:
        self.tar: tarfile.TarFile | None = None
        self.count = 0
        self._left = max_bytes
        self._max = max_bytes
        self._max_members = max_members
        self._skip = skip

    def _counted(self) -> None:
        self.count += 1
        if self._max_members is not None and self.count > self._max_members:
            raise WorkspaceError(
                ErrorCode.payload_too_large, f"more than {self._max_members} entries to archive"
            )

    def add_dir_entry(self, parts: tuple[str, ...]) -> None:
        assert self.tar is not None
        info = tarfile.TarInfo(join_path(parts))
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        info.uid = info.gid = AGENT_ID
        info.uname = info.gname = "agent"
        self.tar.addfile(info)
        self._counted()

    def add_tree(self, fd: int, prefix: tuple[str, ...], depth: int) -> None:
        assert self.tar is not None
        with os.scandir(fd) as it:
            names = sorted(e.name for e in it)
        for name in names:
            st = lstat_at(fd, name)
            if st is None:
                continue
            parts = (*prefix, name)
            info = tarfile.TarInfo(join_path(parts))
            info.mtime = int(st.st_mtime)
            info.uid = info.gid = AGENT_ID
            info.uname = info.gname = "agent"
            info.mode = stat.S_IMODE(st.st_mode)
            kind = file_type(st)
            if self._skip is not None and self._skip(parts, kind):
                continue
            if kind == "dir":
                if depth + 1 >= MAX_DEPTH:
                    raise _unprocessable(f"the workspace is nested deeper than {MAX_DEPTH} levels")
                try:
                    child = os.open(name, DIR_FLAGS, dir_fd=fd)
                except OSError:  # swapped or removed since the lstat
                    continue
                try:
                    info.type = tarfile.DIRTYPE
                    self.tar.addfile(info)
                    self._counted()
                    self.add_tree(child, parts, depth + 1)
                finally:
                    os.close(child)
            elif kind == "file":
                self._add_file(fd, name, info)
            elif kind == "symlink":
                try:
                    info.linkname = os.readlink(name, dir_fd=fd)
                except OSError:
                    continue
                info.type = tarfile.SYMTYPE
                self.tar.addfile(info)
                self._counted()
            # FIFOs, sockets and devices have no content to carry: left out.

    def _add_file(self, dirfd: int, name: str, info: tarfile.TarInfo) -> None:
        assert self.tar is not None
        try:
            fd = os.open(name, FILE_FLAGS, dir_fd=dirfd)
        except OSError:  # swapped for a symlink, or removed
            return
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return
            self._left -= st.st_size
            if self._left < 0:
                raise WorkspaceError(
                    ErrorCode.payload_too_large,
                    f"the workspace holds more than {self._max} bytes of files; "
                    "download parts of it with the files API",
                )
            info.size = st.st_size
            self.tar.addfile(info, _Exact(fd, st.st_size))
            self._counted()
        finally:
            os.close(fd)


class _Exact(io.RawIOBase):
    """Exactly `size` bytes of `fd`: cut if the file grew, zero-padded if it shrank meanwhile
    (the archive's header already promised `size`)."""

    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self._left = size

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        n = self._left if n is None or n < 0 else min(n, self._left)
        data = bytearray()
        while len(data) < n:
            got = os.read(self._fd, n - len(data))
            if not got:
                data += bytes(n - len(data))
                break
            data += got
        self._left -= n
        return bytes(data)


# -- upload -----------------------------------------------------------------------------------


def extract_archive(
    ws: Workspace,
    fd: int,
    *,
    max_bytes: int = MAX_EXTRACT_BYTES,
    max_members: int = MAX_EXTRACT_MEMBERS,
    any_symlink: bool = False,
) -> Extracted:
    """Extract the tar.gz in `fd` (read from its start) into the workspace: plan, check, apply.

    `any_symlink`: keep symlinks whatever they point at (a snapshot restores the agent's own
    links, `/usr/bin/python3` included); they are still created, never followed, here.

    Raises WorkspaceError: bad_request (not a tar.gz), unprocessable (a member that may not be
    extracted, with its name), payload_too_large (too many members or bytes).
    """
    raw = os.fdopen(os.dup(fd), "rb")  # shares the offset with `fd`: rewind
    raw.seek(0)
    with raw, gzip.GzipFile(fileobj=raw, mode="rb") as gz:
        guarded = _Guard(gz)
        try:
            with tarfile.open(fileobj=guarded, mode="r:") as tar:  # type: ignore[call-overload]
                plan = _plan(tar, max_bytes, max_members, any_symlink)
                _check(ws, plan)
                return _apply(ws, tar, plan)
        except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as e:
            raise WorkspaceError(ErrorCode.bad_request, f"not a readable tar.gz: {e}") from None


class _Guard(io.RawIOBase):
    """Passes reads through, refusing any single read larger than MAX_HEADER_READ: tarfile
    reads a pax or GNU long-name header whole, and a small gzip can hold a gigabyte header."""

    def __init__(self, inner: IO[bytes]) -> None:
        self._inner = inner

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or n > MAX_HEADER_READ:
            raise WorkspaceError(ErrorCode.unprocessable, "the archive has an oversized header")
        return self._inner.read(n)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._inner.seek(offset, whence)

    def tell(self) -> int:
        return self._inner.tell()


def _plan(
    tar: tarfile.TarFile, max_bytes: int, max_members: int, any_symlink: bool = False
) -> list[_Member]:
    plan: list[_Member] = []
    kinds: dict[tuple[str, ...], Kind] = {}
    total = 0
    while (info := tar.next()) is not None:
        if len(plan) >= max_members:
            raise WorkspaceError(
                ErrorCode.payload_too_large, f"the archive has more than {max_members} members"
            )
        member = _member(info, any_symlink)
        if member is None:
            continue
        if member.kind == "file":
            total += info.size
            if total > max_bytes:
                raise WorkspaceError(
                    ErrorCode.payload_too_large,
                    f"the archive holds more than {max_bytes} bytes of files",
                )
        previous = kinds.get(member.parts)
        if previous is not None and previous != member.kind:
            raise _unprocessable(f"{info.name!r} appears in the archive as a {previous} and a {member.kind}")
        kinds[member.parts] = member.kind
        plan.append(member)
    for member in plan:
        for i in range(1, len(member.parts)):
            above = kinds.get(member.parts[:i])
            if above not in (None, "dir"):
                raise _unprocessable(
                    f"{member.info.name!r} lies below {join_path(member.parts[:i])!r}, "
                    f"which the archive makes a {above}"
                )
    return plan


def _member(info: tarfile.TarInfo, any_symlink: bool = False) -> _Member | None:
    name = info.name
    if name.startswith("/"):
        raise _unprocessable(f"{name!r} is an absolute path; members must be relative")
    try:
        parts = split_path(name, allow_root=True)
    except PathError as e:
        raise _unprocessable(f"member {name!r}: {e}") from None
    if any_symlink and info.issym() and parts:
        target = info.linkname
        if "\0" in target or not target:
            raise _unprocessable(f"symlink {name!r} has an empty or NUL target")
        return _Member(info=info, kind="symlink", parts=parts, mode=0o777, linkname=target)
    try:
        filtered = tarfile.data_filter(info, _FILTER_ROOT)
    except tarfile.FilterError as e:
        raise _unprocessable(f"member {name!r} may not be extracted: {e}") from None
    if info.islnk():
        raise _unprocessable(f"member {name!r} is a hard link; hard links are not supported")
    if not parts:
        if info.isdir():
            return None  # "./" itself: the workspace exists
        raise _unprocessable(f"member {name!r} names the workspace itself")
    if info.isreg():
        return _Member(info=info, kind="file", parts=parts, mode=(filtered.mode or 0o644) & 0o755)
    if info.isdir():
        return _Member(info=info, kind="dir", parts=parts, mode=0o755)
    if info.issym():
        target = info.linkname
        if "\0" in target or not target or posixpath.isabs(target):
            raise _unprocessable(f"symlink {name!r} -> {target!r} must point inside the workspace")
        resolved = posixpath.normpath(posixpath.join(*parts[:-1], target) if len(parts) > 1 else target)
        if resolved == ".." or resolved.startswith("../"):
            raise _unprocessable(f"symlink {name!r} -> {target!r} points outside the workspace")
        return _Member(info=info, kind="symlink", parts=parts, mode=0o777, linkname=target)
    raise _unprocessable(f"member {name!r} is a special file; only files, directories and "
                         "symlinks can be uploaded")


def _check(ws: Workspace, plan: list[_Member]) -> None:
    """Refuse, before anything is written, members that would go through or replace an entry
    of the workspace that is not of their own kind (above all, the agent's symlinks)."""
    seen: dict[tuple[str, ...], str] = {}

    def kind_of(parts: tuple[str, ...]) -> str:
        if parts not in seen:
            if parts[:-1] and kind_of(parts[:-1]) != "dir":
                seen[parts] = "missing"
            else:
                try:
                    with ws.directory(parts[:-1]) as parent:
                        st = lstat_at(parent, parts[-1])
                except WorkspaceError:
                    st = None
                seen[parts] = "missing" if st is None else file_type(st)
        return seen[parts]

    for member in plan:
        for i in range(1, len(member.parts)):
            above = kind_of(member.parts[:i])
            if above == "missing":
                break
            if above != "dir":
                raise refusal_for(member, member.parts[:i], above)
        else:
            now = kind_of(member.parts)
            if now not in ("missing", member.kind):
                raise refusal_for(member, member.parts, now)


def refusal_for(member: _Member, parts: tuple[str, ...], kind: str) -> WorkspaceError:
    what = {"symlink": "a symlink", "other": "a special file"}.get(kind, f"a {kind}")
    return _unprocessable(
        f"member {member.info.name!r}: {display(parts)!r} in the workspace is {what}; "
        f"the upload would {'go through' if parts != member.parts else 'replace'} it"
    )


def _apply(ws: Workspace, tar: tarfile.TarFile, plan: list[_Member]) -> Extracted:
    files = dirs = links = size = 0
    for member in plan:
        parts, shown = member.parts, display(member.parts)
        if member.kind == "dir":
            with ws.directory(parts, create=True):
                dirs += 1
            continue
        with ws.directory(parts[:-1], create=True) as parent:
            if member.kind == "file":
                _write_file(tar, member, parent, shown)
                files += 1
                size += member.info.size
            else:
                _make_symlink(member, parent, shown)
                links += 1
    return Extracted(files=files, dirs=dirs, symlinks=links, size=size)


def _write_file(tar: tarfile.TarFile, member: _Member, parent: int, shown: str) -> None:
    source = tar.extractfile(member.info)
    assert source is not None
    fd = tmpfile_at(parent)
    try:
        left = member.info.size
        while left > 0:
            data = source.read(min(_COPY, left))
            if not data:
                raise WorkspaceError(ErrorCode.bad_request, f"the archive ends inside {shown!r}")
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            left -= len(data)
        os.fchmod(fd, member.mode | 0o600)
        os.utime(fd, (member.info.mtime, member.info.mtime))
        install_at(parent, member.parts[-1], fd, shown)
    finally:
        os.close(fd)


def _make_symlink(member: _Member, parent: int, shown: str) -> None:
    st = lstat_at(parent, member.parts[-1])
    if st is not None and not stat.S_ISLNK(st.st_mode):
        raise refusal(st, shown, "a symlink")
    tmp = f"{TMP_PREFIX}{os.urandom(8).hex()}.tmp"
    os.symlink(member.linkname, tmp, dir_fd=parent)
    try:
        os.rename(tmp, member.parts[-1], src_dir_fd=parent, dst_dir_fd=parent)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=parent)
        raise
