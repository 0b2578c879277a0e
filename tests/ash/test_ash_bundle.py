"""Packing agent folders: deterministic bytes, exclusions, and refusals that say what to do."""

from __future__ import annotations

import io
import os
import shutil
import socket
import tarfile
from pathlib import Path

import pytest

from ash.bundle import pack
from ash.errors import BundleError


def _members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name: m for m in tar.getmembers()}


def _read(data: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        f = tar.extractfile(name)
        assert f is not None
        return f.read()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "agent"
    (root / ".claude" / "skills" / "s").mkdir(parents=True)
    (root / "CLAUDE.md").write_text("# Agent\n")
    (root / ".claude" / "settings.json").write_text("{}\n")
    (root / ".claude" / "skills" / "s" / "SKILL.md").write_text("skill\n")
    (root / "bin").mkdir()
    (root / "bin" / "tool.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "bin" / "tool.sh").chmod(0o700)
    (root / "empty").mkdir()
    return root


def test_same_content_packs_to_same_bytes_whatever_the_metadata(
    folder: Path, tmp_path: Path
) -> None:
    first = pack(folder)
    copy = tmp_path / "elsewhere" / "agent"
    shutil.copytree(folder, copy)
    for path in [copy, *copy.rglob("*")]:
        os.utime(path, (1_000_000, 1_000_000))
    (copy / "CLAUDE.md").chmod(0o600)  # modes are normalised: only the exec bit counts
    assert pack(copy) == first
    (copy / "CLAUDE.md").write_text("# Agent, changed\n")
    assert pack(copy) != first


def test_entries_are_sorted_with_normalised_metadata(folder: Path) -> None:
    members = _members(pack(folder))
    assert list(members) == [
        ".claude", ".claude/settings.json", ".claude/skills", ".claude/skills/s",
        ".claude/skills/s/SKILL.md", "CLAUDE.md", "bin", "bin/tool.sh", "empty",
    ]  # fmt: skip
    for m in members.values():
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")
    assert members["bin/tool.sh"].mode == 0o755
    assert members["CLAUDE.md"].mode == 0o644
    assert members["empty"].isdir() and members["empty"].mode == 0o755


def test_vcs_and_caches_are_left_out(folder: Path) -> None:
    for d in (".git", "node_modules/left", "sub/__pycache__", ".venv/bin"):
        (folder / d).mkdir(parents=True)
        (folder / d / "junk").write_text("x")
    (folder / ".DS_Store").write_bytes(b"\0")
    (folder / "sub" / ".DS_Store").write_bytes(b"\0")
    (folder / "sub" / "keep.py").write_text("print()\n")
    names = set(_members(pack(folder)))
    assert "sub/keep.py" in names and "sub" in names
    leaked = [n for n in names if any(p in n.split("/") for p in
              (".git", "node_modules", "__pycache__", ".venv", ".DS_Store"))]  # fmt: skip
    assert leaked == []


def test_links_inside_the_folder_are_kept_relative(folder: Path) -> None:
    (folder / "docs").mkdir()
    (folder / "docs" / "guide.md").write_text("guide\n")
    (folder / "GUIDE.md").symlink_to("docs/guide.md")
    (folder / "docs" / "absolute.md").symlink_to(folder / "CLAUDE.md")
    data = pack(folder)
    members = _members(data)
    assert members["GUIDE.md"].issym() and members["GUIDE.md"].linkname == "docs/guide.md"
    assert members["docs/absolute.md"].linkname == "../CLAUDE.md"
    # It unpacks under the strict `data` filter a server should use.
    out = folder.parent / "unpacked"
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(out, filter="data")
    assert (out / "GUIDE.md").read_text() == "guide\n"
    assert (out / "docs" / "absolute.md").read_text() == "# Agent\n"


def test_links_leaving_the_folder_are_refused(folder: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("token")
    (folder / "bin" / "leak").symlink_to(secret)
    with pytest.raises(BundleError) as caught:
        pack(folder)
    assert "bin/leak" in caught.value.message and "outside the agent folder" in caught.value.message
    (folder / "bin" / "leak").unlink()
    (folder / "up").symlink_to("..")
    with pytest.raises(BundleError, match="up is a symlink to .., outside"):
        pack(folder)


def test_special_files_are_refused(folder: Path) -> None:
    os.mkfifo(folder / "pipe")
    with pytest.raises(BundleError, match=r"pipe is a named pipe \(FIFO\).*remove it"):
        pack(folder)
    (folder / "pipe").unlink()
    path = folder / "sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        with pytest.raises(BundleError, match="sock is a socket"):
            pack(folder)


def test_a_folder_without_claude_md_is_refused_with_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    with pytest.raises(BundleError) as caught:
        pack(tmp_path / "a")
    assert "has no CLAUDE.md" in caught.value.message and "create one" in caught.value.message
    (tmp_path / "a" / "claude.md").write_text("x")
    with pytest.raises(BundleError, match="found claude.md: rename it to CLAUDE.md"):
        pack(tmp_path / "a")
    with pytest.raises(BundleError, match="no such folder"):
        pack(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(BundleError, match="is not a folder"):
        pack(tmp_path / "file")


def test_size_cap_names_the_largest_files(folder: Path) -> None:
    (folder / "data.bin").write_bytes(os.urandom(3000))
    (folder / "small.txt").write_text("x" * 100)
    with pytest.raises(BundleError) as caught:
        pack(folder, max_bytes=2048)
    message = caught.value.message
    assert "over the" in message and "limit" in message
    assert message.index("data.bin") < message.index("small.txt")
    assert len(pack(folder, max_bytes=10_000)) < 10_000
