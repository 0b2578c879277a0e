"""Child-process helpers shared by the embedded nats-server and the stack supervisor."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path


def terminate(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """Stop `proc`: SIGTERM, wait up to `timeout` seconds, then SIGKILL. Returns its exit code."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (and is not a zombie we could reap)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def tail(path: str | os.PathLike[str], lines: int = 20, *, start: int = 0) -> str:
    """The last `lines` lines of a text file from byte offset `start` ('' if unreadable)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(start, size - 64 * 1024))
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", "replace").rstrip("\n")
    return "\n".join(text.splitlines()[-lines:])


def file_size(path: Path) -> int:
    """The size of `path` in bytes, 0 if it does not exist."""
    try:
        return path.stat().st_size
    except OSError:
        return 0
