"""One session's workspace, reached from the host through file descriptors only.

The agent owns its workspace and is hostile: it can create symlinks (to /etc, or to another
session's workspace as the host sees it), FIFOs and sockets, and it can swap any entry for
another at any moment, while the runner (root on the host) reads and writes there for the
files API. So every operation here:

* checks the path string with `protocol.files.split_path` (relative, no `..`, no NUL);
* walks it one component at a time from a descriptor of the workspace root, opening each
  directory with `O_DIRECTORY | O_NOFOLLOW` relative to the one before (`dir_fd=`): a symlink
  anywhere on the path is refused, never followed (what `openat2` with RESOLVE_BENEATH |
  RESOLVE_NO_SYMLINKS does, by hand). A swap after a check cannot redirect the walk: each
  step opens relative to a descriptor already held, never by name from the root;
* opens files with `O_NOFOLLOW | O_NONBLOCK` and then checks `fstat` of what it opened: only
  a regular file is read or replaced. `O_NONBLOCK` makes opening a FIFO return at once rather
  than wait for a writer, and the type check then refuses it;
* writes through `O_TMPFILE`: an upload has no name until its commit links it next to the
  target and renames it into place, so an aborted or oversize upload leaves nothing behind,
  and a reader never sees half a file. A rename never follows a symlink: whatever the agent
  swaps in at the last moment, only an entry inside the workspace is replaced.

Everything here is blocking file work; callers run it in a thread. Errors are
`WorkspaceError(code, message)` with a `protocol.errors.ErrorCode`.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import secrets
import stat
from collections.abc import Iterator

from protocol import codec
from protocol.errors import ErrorCode
from protocol.files import (
    LIST_REPLY_BYTES,
    MAX_DEPTH,
    MAX_LIST_ENTRIES,
    FileEntry,
    FileType,
    PathError,
    join_path,
    split_path,
)

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
DIR_MODE = 0o755
FILE_MODE = 0o644
TMP_PREFIX = ".ash-"
SORT_WINDOW = 10 * MAX_LIST_ENTRIES


class WorkspaceError(Exception):
    """A files operation refused or failed; `code` is an ErrorCode, the message says why."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse(path: str, *, allow_root: bool = False) -> tuple[str, ...]:
    """`split_path`, raising WorkspaceError(validation_failed)."""
    try:
        return split_path(path, allow_root=allow_root)
    except PathError as e:
        raise WorkspaceError(ErrorCode.validation_failed, str(e)) from None


def file_type(st: os.stat_result) -> FileType:
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def display(parts: tuple[str, ...]) -> str:
    """A path for people and JSON (a name that is not UTF-8 shows U+FFFD)."""
    return join_path(parts).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def lstat_at(dirfd: int, name: str) -> os.stat_result | None:
    """`lstat` of `name` in `dirfd`, or None if it does not exist."""
    try:
        return os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def refusal(st: os.stat_result | None, shown: str, want: str = "a regular file") -> WorkspaceError:
    """The error for an entry that is not what an operation needs."""
    if st is None:
        return WorkspaceError(ErrorCode.not_found, f"{shown!r} does not exist")
    kind = file_type(st)
    if kind == "symlink":
        return WorkspaceError(
            ErrorCode.unprocessable,
            f"{shown!r} is a symlink; the files API never follows symlinks",
        )
    what = {"file": "a regular file", "dir": "a directory"}.get(
        kind, "a special file (FIFO, socket or device)"
    )
    return WorkspaceError(ErrorCode.unprocessable, f"{shown!r} is {what}, not {want}")


def open_dir(dirfd: int, name: str, shown: str, *, create: bool = False) -> int:
    """Open directory `name` in `dirfd` without following a symlink (creating it if asked)."""
    try:
        return os.open(name, DIR_FLAGS, dir_fd=dirfd)
    except FileNotFoundError:
        if not create:
            raise WorkspaceError(ErrorCode.not_found, f"{shown!r} does not exist") from None
        with contextlib.suppress(FileExistsError):  # someone made it meanwhile: open decides
            os.mkdir(name, DIR_MODE, dir_fd=dirfd)
        try:
            return os.open(name, DIR_FLAGS, dir_fd=dirfd)
        except OSError as e:
            raise _os_refusal(dirfd, name, shown, e, "a directory") from None
    except OSError as e:
        raise _os_refusal(dirfd, name, shown, e, "a directory") from None


def _os_refusal(dirfd: int, name: str, shown: str, e: OSError, want: str) -> WorkspaceError:
    if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENXIO, errno.EISDIR, errno.ENOENT):
        return refusal(lstat_at(dirfd, name), shown, want)
    if e.errno == errno.ENAMETOOLONG:
        return WorkspaceError(ErrorCode.validation_failed, f"{shown!r}: name too long")
    return WorkspaceError(ErrorCode.unprocessable, f"{shown!r}: {e.strerror}")


def tmpfile_at(dirfd: int) -> int:
    """A new unnamed file (O_TMPFILE) on the filesystem of `dirfd`, for writing."""
    return os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600, dir_fd=dirfd)


def install_at(dirfd: int, name: str, fd: int, shown: str) -> bool:
    """Give the unnamed file `fd` the name `name` in `dirfd`, atomically replacing a regular
    file there. Returns True if `name` did not exist. Refuses to replace anything else."""
    st = lstat_at(dirfd, name)
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise refusal(st, shown)
    tmp = f"{TMP_PREFIX}{secrets.token_hex(8)}.tmp"
    os.link(f"/proc/self/fd/{fd}", tmp, dst_dir_fd=dirfd, follow_symlinks=True)
    try:
        os.rename(tmp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dirfd)
        raise _os_refusal(dirfd, name, shown, e, "a regular file") from None
    return st is None


class Workspace:
    """The workspace directory of one session, at host path `root`."""

    def __init__(self, root: str) -> None:
        self.root = root

    @contextlib.contextmanager
    def directory(self, parts: tuple[str, ...], *, create: bool = False) -> Iterator[int]:
        """A descriptor of the directory `parts` (the root for `()`), walked without following
        any symlink; missing directories are made when `create`."""
        fd = os.open(self.root, DIR_FLAGS)
        try:
            for i, name in enumerate(parts):
                child = open_dir(fd, name, display(parts[: i + 1]), create=create)
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    # -- reading ---------------------------------------------------------------------------

    def list(
        self,
        path: str,
        *,
        recursive: bool = False,
        limit: int = MAX_LIST_ENTRIES,
        budget: int = LIST_REPLY_BYTES,
    ) -> tuple[list[FileEntry], bool]:
        """The entries of directory `path` (all below it if `recursive`), or the one entry
        `path` names if it is not a directory. Returns (entries, truncated)."""
        parts = parse(path, allow_root=True)
        listing = _Listing(limit, budget)
        if not parts:
            with self.directory(()) as fd:
                listing.visit(fd, (), recursive, 0)
            return listing.entries, listing.truncated
        with self.directory(parts[:-1]) as parent:
            st = lstat_at(parent, parts[-1])
            if st is None:
                raise refusal(None, display(parts))
            if not stat.S_ISDIR(st.st_mode):
                return [entry(parts, st)], False
            fd = open_dir(parent, parts[-1], display(parts))
        try:
            listing.visit(fd, parts, recursive, 0)
        finally:
            os.close(fd)
        return listing.entries, listing.truncated

    def open_file(self, path: str, max_bytes: int) -> tuple[int, os.stat_result]:
        """Open regular file `path` for reading: (fd, its fstat). The caller closes the fd."""
        parts = parse(path)
        shown = display(parts)
        with self.directory(parts[:-1]) as parent:
            st = lstat_at(parent, parts[-1])
            if st is None or not stat.S_ISREG(st.st_mode):
                raise refusal(st, shown)
            try:
                fd = os.open(parts[-1], FILE_FLAGS, dir_fd=parent)
            except OSError as e:  # swapped for a symlink (ELOOP) or removed since the lstat
                raise _os_refusal(parent, parts[-1], shown, e, "a regular file") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # swapped for a FIFO: O_NONBLOCK made the open return
            os.close(fd)
            raise refusal(st, shown)
        if st.st_size > max_bytes:
            os.close(fd)
            raise WorkspaceError(
                ErrorCode.payload_too_large,
                f"{shown!r} is {st.st_size} bytes; the files API reads at most {max_bytes}",
            )
        return fd, st

    # -- writing ---------------------------------------------------------------------------

    def check_writable(self, path: str) -> None:
        """Refuse now, before an upload's bytes arrive, a target its commit would refuse: a
        symlink, directory or special file at `path` or in place of one of its parents."""
        parts = parse(path)
        try:
            with self.directory(parts[:-1]) as parent:
                st = lstat_at(parent, parts[-1])
        except WorkspaceError as e:
            if e.code == ErrorCode.not_found:
                return  # the commit makes the missing directories
            raise
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise refusal(st, display(parts))

    def new_upload(self) -> int:
        """An unnamed file in the workspace's filesystem to receive an upload."""
        with self.directory(()) as root:
            return tmpfile_at(root)

    def commit_file(self, fd: int, path: str) -> bool:
        """Put the unnamed file `fd` at `path` (parent directories made as needed).

        Returns True if the file is new, False if it replaced a regular file.
        """
        parts = parse(path)
        os.fchmod(fd, FILE_MODE)
        with self.directory(parts[:-1], create=True) as parent:
            return install_at(parent, parts[-1], fd, display(parts))

    def delete(self, path: str, *, recursive: bool = False) -> None:
        """Remove a file, a symlink (never what it points to), a special file, or a directory
        (which must be empty unless `recursive`)."""
        parts = parse(path)
        shown = display(parts)
        with self.directory(parts[:-1]) as parent:
            st = lstat_at(parent, parts[-1])
            if st is None:
                raise refusal(None, shown)
            if not stat.S_ISDIR(st.st_mode):
                os.unlink(parts[-1], dir_fd=parent)
            elif recursive:
                _remove_tree(parent, parts[-1], shown, 0)
            else:
                try:
                    os.rmdir(parts[-1], dir_fd=parent)
                except OSError as e:
                    if e.errno != errno.ENOTEMPTY:
                        raise _os_refusal(parent, parts[-1], shown, e, "a directory") from None
                    raise WorkspaceError(
                        ErrorCode.conflict, f"{shown!r} is a directory that is not empty; "
                        "delete it with recursive=true"
                    ) from None


def entry(parts: tuple[str, ...], st: os.stat_result) -> FileEntry:
    return FileEntry(path=display(parts), type=file_type(st), size=st.st_size, mtime=st.st_mtime)


class _Listing:
    """A depth-first walk that stops at `limit` entries or `budget` encoded bytes."""

    def __init__(self, limit: int, budget: int) -> None:
        self.entries: list[FileEntry] = []
        self.truncated = False
        self._limit = limit
        self._budget = budget

    def visit(self, fd: int, prefix: tuple[str, ...], recursive: bool, depth: int) -> None:
        # Names come sorted; a hostile workspace may hold millions in one directory, so at most
        # SORT_WINDOW are read (beyond it, a truncated listing shows some of them, sorted).
        with os.scandir(fd) as it:
            names = sorted(itertools.islice((e.name for e in it), SORT_WINDOW))
        for name in names:
            if len(self.entries) >= self._limit:
                self.truncated = True
                return
            st = lstat_at(fd, name)
            if st is None:  # removed while we looked
                continue
            item = entry((*prefix, name), st)
            self._budget -= len(codec.encode(item)) + 1
            if self._budget < 0:
                self.truncated = True
                return
            self.entries.append(item)
            if recursive and stat.S_ISDIR(st.st_mode):
                if depth + 1 >= MAX_DEPTH:
                    self.truncated = True
                    continue
                try:
                    child = os.open(name, DIR_FLAGS, dir_fd=fd)
                except OSError:  # swapped for something else, or removed: not a directory now
                    continue
                try:
                    self.visit(child, (*prefix, name), recursive, depth + 1)
                finally:
                    os.close(child)
                if self.truncated:
                    return


def _remove_tree(parent: int, name: str, shown: str, depth: int) -> None:
    """`rm -r` by descriptors. Unlike shutil.rmtree it opens with O_DIRECTORY | O_NOFOLLOW, so
    an entry swapped for a FIFO or symlink mid-way is unlinked, never opened or followed."""
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        return
    except OSError as e:
        if e.errno in (errno.ENOTDIR, errno.ELOOP):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=parent)
            return
        raise
    try:
        if depth >= MAX_DEPTH:
            raise WorkspaceError(
                ErrorCode.unprocessable, f"{shown!r} is nested deeper than {MAX_DEPTH} levels"
            )
        with os.scandir(fd) as it:
            names = [e.name for e in it]
        for child in names:
            st = lstat_at(fd, child)
            if st is None:
                continue
            if stat.S_ISDIR(st.st_mode):
                _remove_tree(fd, child, shown, depth + 1)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(child, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent)
