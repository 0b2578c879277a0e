"""Errors raised by the sandbox package.

    SandboxError            anything the sandbox layer refuses or fails to do
     +-- CgroupError        a cgroup could not be created, limited or joined
     +-- SandboxClosed      the Sandbox was used before prepare() or after close()
     +-- NetworkError       a network slot could not be built, checked or torn down
          +-- NetworkPoolExhausted   every slot is leased

Spec validation failures are plain `ValueError` (msgspec turns them into `ValidationError` when a
spec is decoded), because they are the caller's bug, not a runtime condition.
"""

from __future__ import annotations


class SandboxError(Exception):
    """Base class for sandbox failures."""


class CgroupError(SandboxError):
    """A cgroup operation the sandbox depends on failed (mkdir, a limit write, a join)."""


class SandboxClosed(SandboxError):
    """The sandbox is not prepared, or it is already closed."""


class NetworkError(SandboxError):
    """A network slot could not be built, checked or torn down."""


class NetworkPoolExhausted(NetworkError):
    """Every network slot is leased; answer "busy" rather than wait."""
