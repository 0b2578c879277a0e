"""Workspace archives on a real filesystem: a faithful round trip, and hostile uploads that are
refused whole, before anything is written."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from protocol.errors import ErrorCode
from runner.archive import extract_archive, write_archive
from runner.workspace import Workspace, WorkspaceError
from tests.runner.test_workspace import SECRET, snapshot

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "workspace"
    path.mkdir()
    return path


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    path = tmp_path / "outside"
    path.mkdir()
    (path / "secret.txt").write_bytes(SECRET)
    return path


Member = tuple[str, str, bytes | str]  # (name, kind, content or link target)


def make_tar(members: list[Member], *, gz: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, body in members:
            info = tarfile.TarInfo(name)
            if "\0" in name:  # only a pax header can carry a NUL in a name
                info = tarfile.TarInfo("placeholder")
                info.pax_headers = {"path": name}
            if kind == "file":
                assert isinstance(body, bytes)
                info.size = len(body)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(body))
                continue
            info.type = {
                "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
                "fifo": tarfile.FIFOTYPE, "chardev": tarfile.CHRTYPE,
            }[kind]  # fmt: skip
            if kind in ("symlink", "hardlink"):
                assert isinstance(body, str)
                info.linkname = body
            tar.addfile(info)
    return buf.getvalue()


def extract(root: Path, data: bytes, **limits: int) -> object:
    fd = os.open(root, os.O_TMPFILE | os.O_RDWR)
    try:
        os.write(fd, data)
        return extract_archive(Workspace(str(root)), fd, **limits)
    finally:
        os.close(fd)


def archive_of(root: Path, **kw: int) -> bytes:
    buf = io.BytesIO()
    write_archive(Workspace(str(root)), buf, **kw)
    return buf.getvalue()


def test_a_workspace_round_trips_through_its_archive(tmp_path: Path, root: Path) -> None:
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "src" / "pkg" / "app.py").write_text("print('hi')\n")
    (root / "run.sh").write_text("#!/bin/sh\necho run\n")
    (root / "run.sh").chmod(0o755)
    (root / "empty").mkdir()
    (root / "latest").symlink_to("src/pkg/app.py")
    os.mkfifo(root / "pipe")  # has no content to carry: left out
    os.utime(root / "run.sh", (1_600_000_000, 1_600_000_000))

    data = archive_of(root)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        names = {m.name: m for m in tar.getmembers()}
    assert set(names) == {"src", "src/pkg", "src/pkg/app.py", "run.sh", "empty", "latest"}
    assert names["latest"].issym() and names["latest"].linkname == "src/pkg/app.py"

    copy = tmp_path / "copy"
    copy.mkdir()
    done = extract(copy, data)
    size = len("print('hi')\n") + len("#!/bin/sh\necho run\n")
    assert done == type(done)(files=2, dirs=3, symlinks=1, size=size)
    assert snapshot(copy) == {k: v for k, v in snapshot(root).items() if k != "pipe"}
    assert os.stat(copy / "run.sh").st_mode & 0o777 == 0o755
    assert os.stat(copy / "run.sh").st_mtime == 1_600_000_000


def test_the_download_skips_special_files_and_never_follows_links(
    root: Path, outside: Path
) -> None:
    (root / "out").symlink_to(outside)
    (root / "pw").symlink_to("/etc/passwd")
    data = archive_of(root)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = tar.getmembers()
    assert sorted((m.name, m.issym()) for m in members) == [("out", True), ("pw", True)]
    assert SECRET not in gzip.decompress(data)


def test_the_download_stops_past_its_size_cap(root: Path) -> None:
    (root / "a").write_bytes(b"x" * 600)
    (root / "b").write_bytes(b"x" * 600)
    with pytest.raises(WorkspaceError) as e:
        archive_of(root, max_bytes=1000)
    assert e.value.code == ErrorCode.payload_too_large


def test_an_upload_replaces_files_and_merges_directories(root: Path) -> None:
    (root / "keep.txt").write_text("kept")
    (root / "src").mkdir()
    (root / "src" / "old.py").write_text("old")
    extract(root, make_tar([("src/old.py", "file", b"new"), ("./src/more.py", "file", b"more")]))
    assert (root / "src" / "old.py").read_text() == "new"
    assert (root / "src" / "more.py").read_text() == "more"
    assert (root / "keep.txt").read_text() == "kept"


HOSTILE: list[tuple[str, list[Member], str]] = [
    ("parent reference", [("../escaped.txt", "file", b"x")], "'..'"),
    ("nested parent reference", [("a/../../escaped.txt", "file", b"x")], "'..'"),
    ("absolute", [("/tmp/escaped.txt", "file", b"x")], "absolute"),
    ("absolute symlink", [("l", "symlink", "/etc")], "absolute"),
    ("climbing symlink", [("d/l", "symlink", "../../outside")], "outside"),
    ("through its own symlink", [("l", "symlink", "sub"), ("l/x.txt", "file", b"x")], "symlink"),
    ("below its own file", [("f", "file", b"x"), ("f/x.txt", "file", b"x")], "file"),
    ("hard link", [("f", "file", b"x"), ("h", "hardlink", "f")], "hard link"),
    ("fifo", [("p", "fifo", b"")], "special file"),
    ("device", [("d", "chardev", b"")], "special file"),
    ("NUL", [("a\0b", "file", b"x")], "NUL"),
]


@pytest.mark.parametrize(("case", "members", "why"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_a_hostile_archive_is_refused_whole(
    tmp_path: Path, root: Path, outside: Path, case: str, members: list[Member], why: str
) -> None:
    (root / "existing.txt").write_text("before")
    # A harmless member first: it must not be written either.
    data = make_tar([("innocent.txt", "file", b"innocent"), *members])
    before_ws, before_out, before_tmp = snapshot(root), snapshot(outside), sorted(os.listdir(tmp_path))
    with pytest.raises(WorkspaceError) as e:
        extract(root, data)
    assert e.value.code == ErrorCode.unprocessable, e.value.message
    assert why in e.value.message
    assert snapshot(root) == before_ws
    assert snapshot(outside) == before_out
    assert sorted(os.listdir(tmp_path)) == before_tmp


@pytest.mark.parametrize("agent_made", ["symlink to outside", "symlink to /etc", "fifo"])
def test_an_upload_never_goes_through_what_the_agent_planted(
    root: Path, outside: Path, agent_made: str
) -> None:
    if agent_made == "fifo":
        os.mkfifo(root / "planted")
    else:
        (root / "planted").symlink_to(outside if agent_made == "symlink to outside" else "/etc")
    before_ws, before_out = snapshot(root), snapshot(outside)
    for members in (
        [("planted/secret.txt", "file", b"owned")],  # through it
        [("planted", "file", b"owned")],  # replacing it
        [("ok.txt", "file", b"fine"), ("planted/new/deep.txt", "file", b"owned")],
    ):
        with pytest.raises(WorkspaceError) as e:
            extract(root, make_tar(members))
        assert e.value.code == ErrorCode.unprocessable and "planted" in e.value.message
        assert snapshot(root) == before_ws
        assert snapshot(outside) == before_out


def test_oversize_archives_are_refused_before_writing(root: Path) -> None:
    big = make_tar([("a.bin", "file", b"x" * 600), ("b.bin", "file", b"x" * 600)])
    with pytest.raises(WorkspaceError) as e:
        extract(root, big, max_bytes=1000)
    assert e.value.code == ErrorCode.payload_too_large
    many = make_tar([(f"f{i}", "file", b"") for i in range(11)])
    with pytest.raises(WorkspaceError) as e:
        extract(root, many, max_members=10)
    assert e.value.code == ErrorCode.payload_too_large
    assert list(root.iterdir()) == []


def test_a_gigantic_header_in_a_small_archive_is_refused(root: Path) -> None:
    # 64 MiB of long name compresses to almost nothing; tarfile would read it whole.
    info = tarfile.TarInfo("x")
    info.pax_headers = {"comment": "a" * (64 * 1024 * 1024)}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(b""))
    assert len(buf.getvalue()) < 1024 * 1024
    with pytest.raises(WorkspaceError) as e:
        extract(root, buf.getvalue())
    assert e.value.code == ErrorCode.unprocessable and "header" in e.value.message
    assert list(root.iterdir()) == []


@pytest.mark.parametrize("data", [b"not a tar", b"", make_tar([("a", "file", b"x")], gz=False)])
def test_what_is_not_a_tar_gz_is_a_bad_request(root: Path, data: bytes) -> None:
    fn: Callable[[], object] = lambda: extract(root, data)  # noqa: E731
    with pytest.raises(WorkspaceError) as e:
        fn()
    assert e.value.code == ErrorCode.bad_request
    assert list(root.iterdir()) == []
