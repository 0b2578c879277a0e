"""Network namespaces for tests: made by the test, linked only to each other, always removed.

Nothing here touches the root network namespace: every link is created inside namespaces the
test made, no namespace gets a default route, so no packet can leave the machine whatever the
code under test does. `Namespaces` removes everything it made (and any network slot a pool
under test left behind with the same prefix) when its block ends, even on failure.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
from collections.abc import Iterator, Sequence

from pyroute2 import netns

NETNS_DIR = netns.NETNS_RUN_DIR
NSENTER = "/usr/bin/nsenter"


def ip(*args: str) -> str:
    """Run `ip ARGS`; raise with its stderr on failure."""
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def new_prefix() -> str:
    """A short unique prefix for one test's names (slot prefixes allow 8 characters)."""
    return "t" + secrets.token_hex(3)


def in_netns(name: str, argv: Sequence[str]) -> list[str]:
    """The argv that runs `argv` inside namespace `name`."""
    return [NSENTER, f"--net={os.path.join(NETNS_DIR, name)}", "--", *argv]


def socket_in(name: str, family: int = socket.AF_INET) -> socket.socket:
    """A TCP socket created inside namespace `name` (it stays there whoever uses it)."""
    return netns.create_socket(name, family, socket.SOCK_STREAM, flags=0)


class Namespaces:
    """Namespaces named `<prefix>-<suffix>`, removed with everything in them on exit."""

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix or new_prefix()
        self.names: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    def add(self, suffix: str) -> str:
        name = f"{self.prefix}-{suffix}"
        ip("netns", "add", name)
        self.names.append(name)
        ip("-n", name, "link", "set", "lo", "up")
        return name

    def link(self, a: str, a_if: str, b: str, b_if: str) -> None:
        """A veth pair made directly between two of our namespaces (never the root one)."""
        ip("-n", a, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b)
        ip("-n", a, "link", "set", a_if, "up")
        ip("-n", b, "link", "set", b_if, "up")

    def spawn(self, name: str, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        """Start a process inside namespace `name`; it is killed on exit."""
        proc = subprocess.Popen(in_netns(name, argv), start_new_session=True, **kwargs)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        for name in reversed(self.names):
            with contextlib.suppress(RuntimeError):
                ip("netns", "del", name)
        # Slots a pool under test made with our prefix, should it have died before cleaning up.
        for name in netns.listnetns():
            if name.startswith(self.prefix):
                with contextlib.suppress(RuntimeError):
                    ip("netns", "del", name)

    def __enter__(self) -> Namespaces:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def namespaces(prefix: str | None = None) -> Iterator[Namespaces]:
    with Namespaces(prefix) as ns:
        yield ns
