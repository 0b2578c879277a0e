"""Checking an uploaded agent bundle (a gzip'd tar of the agent folder) before keeping it.

Pure: bytes in, facts or a `BundleRejected` out. The runner extracts with tarfile's `data`
filter as well; this check exists so that a bad bundle is refused at deploy time, with a
message that says what is wrong, rather than at the first session.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import tarfile
from dataclasses import dataclass

from protocol.agentconf import AgentConfig, AgentConfigError, parse_agent_config


class BundleRejected(Exception):
    """The bundle cannot be deployed; `status` is 400 (not a bundle), 413 or 422."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True, frozen=True)
class BundleFacts:
    digest: str
    files: int
    size: int


def inspect(data: bytes, max_unpacked: int) -> BundleFacts:
    """Validate a bundle and return its digest, file count and unpacked size."""
    try:
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:gz")
        members = tar.getmembers()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise BundleRejected(400, f"the body is not a gzip'd tar of an agent folder ({e})") from e
    files = size = 0
    has_claude_md = False
    for m in members:
        name = posixpath.normpath(m.name)
        if name == ".":
            continue
        if m.name.startswith("/") or name == ".." or name.startswith("../"):
            raise BundleRejected(422, f"bundle path {m.name!r} points outside the agent folder")
        if m.issym() or m.islnk():
            target = posixpath.normpath(posixpath.join(posixpath.dirname(name), m.linkname))
            if m.linkname.startswith("/") or target == ".." or target.startswith("../"):
                raise BundleRejected(422, f"link {m.name!r} points outside the agent folder")
        elif not (m.isfile() or m.isdir()):
            raise BundleRejected(422, f"{m.name!r} is not a regular file or directory")
        if m.isfile():
            files += 1
            size += m.size
            if name == "CLAUDE.md":
                has_claude_md = True
            elif name == "ash.toml":
                _check_agent_config(tar, m)
        if size > max_unpacked:
            raise BundleRejected(413, f"the agent folder unpacks to more than {max_unpacked} bytes")
    if not has_claude_md:
        raise BundleRejected(
            422, "the agent folder has no CLAUDE.md at its root; add one that describes the agent"
        )
    return BundleFacts(digest=hashlib.sha256(data).hexdigest(), files=files, size=size)


def _check_agent_config(tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
    """Refuse an `ash.toml` the runners would refuse, at deploy time rather than first use."""
    if member.size > 1024 * 1024:
        raise BundleRejected(422, "ash.toml is larger than 1 MiB")
    f = tar.extractfile(member)
    assert f is not None
    try:
        parse_agent_config(f.read())
    except AgentConfigError as e:
        raise BundleRejected(422, str(e)) from e


def agent_config(data: bytes) -> AgentConfig:
    """The `ash.toml` of a bundle `inspect` accepted (the defaults when it has none), for
    placement: its limits and required runner labels.

    Raises:
        BundleRejected: the bundle or its ash.toml cannot be read.
    """
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for m in tar:
                if m.isfile() and posixpath.normpath(m.name) == "ash.toml":
                    f = tar.extractfile(m)
                    assert f is not None
                    return parse_agent_config(f.read(1024 * 1024 + 1))
    except (tarfile.TarError, OSError, EOFError) as e:
        raise BundleRejected(400, f"the bundle cannot be read ({e})") from e
    except AgentConfigError as e:
        raise BundleRejected(422, str(e)) from e
    return AgentConfig()
