"""A pid file that is also a lock: its owner holds an exclusive `flock` on it while it lives.

The kernel drops the lock when the owner exits, however it exits (even SIGKILL), so a stale file
is never mistaken for a live process and a reused pid never is either. Readers try a shared lock:
if they get it, nobody owns the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path


def acquire(path: Path) -> int | None:
    """Own `path`: lock it and write our pid. The locked fd, or None if another process owns it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def release(path: Path, fd: int) -> None:
    """Remove the file, then let go of the lock (so a newer owner's file is never removed)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    os.close(fd)


def holder(path: Path) -> int | None:
    """The pid of the process that owns `path`, None if none does; 0 if it has not written it yet."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 64).decode(errors="replace").strip()
            return int(text) if text.isdigit() else 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None  # a stale file: nobody holds the lock
    finally:
        os.close(fd)
