"""The descriptor walk of `runner.workspace` against a hostile workspace, on a real filesystem.

The agent controls everything inside the workspace: these tests plant what it could plant
(symlinks out to a host directory and to /etc/passwd, symlinked parents, FIFOs) and swap
entries between the walk's check and its use, and show that the files API neither reads nor
writes anything outside, nor blocks.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from protocol.errors import ErrorCode
from runner import workspace as wsmod
from runner.workspace import Workspace, WorkspaceError

pytestmark = pytest.mark.timeout(20)  # a FIFO opened by mistake would block: fail, don't hang

SECRET = b"host secret: never through the files API\n"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "workspace"
    path.mkdir()
    return path


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A host directory next to the workspace, with a secret the agent must not reach."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "secret.txt").write_bytes(SECRET)
    return path


@pytest.fixture
def ws(root: Path) -> Workspace:
    return Workspace(str(root))


def code_of(fn: Callable[[], object]) -> ErrorCode:
    with pytest.raises(WorkspaceError) as e:
        fn()
    return e.value.code


def read(ws: Workspace, path: str, max_bytes: int = 1 << 20) -> bytes:
    fd, st = ws.open_file(path, max_bytes)
    try:
        return os.read(fd, st.st_size + 1)
    finally:
        os.close(fd)


def write(ws: Workspace, path: str, data: bytes) -> bool:
    fd = ws.new_upload()
    try:
        os.write(fd, data)
        return ws.commit_file(fd, path)
    finally:
        os.close(fd)


def snapshot(path: Path) -> dict[str, tuple[str, bytes | str]]:
    """Everything under `path` as lstat and content see it, to show that nothing changed."""
    found: dict[str, tuple[str, bytes | str]] = {}
    for p in sorted(path.rglob("*")):
        rel = str(p.relative_to(path))
        if p.is_symlink():
            found[rel] = ("symlink", os.readlink(p))
        elif p.is_dir():
            found[rel] = ("dir", "")
        elif p.is_file():
            found[rel] = ("file", p.read_bytes())
        else:
            found[rel] = ("other", "")
    return found


# -- the ordinary path ------------------------------------------------------------------------


def test_write_read_list_delete_round_trip(ws: Workspace, root: Path) -> None:
    assert write(ws, "src/pkg/app.py", b"print('hi')\n") is True
    assert write(ws, "src/pkg/app.py", b"print('bye')\n") is False  # replaced, not created
    assert (root / "src/pkg/app.py").read_bytes() == b"print('bye')\n"
    assert stat.S_IMODE((root / "src/pkg/app.py").stat().st_mode) == 0o644
    assert read(ws, "./src//pkg/app.py") == b"print('bye')\n"

    entries, truncated = ws.list("", recursive=True)
    assert not truncated
    assert [(e.path, e.type) for e in entries] == [
        ("src", "dir"), ("src/pkg", "dir"), ("src/pkg/app.py", "file")]
    assert entries[2].size == len(b"print('bye')\n")
    top, _ = ws.list("src")
    assert [e.path for e in top] == ["src/pkg"]
    one, _ = ws.list("src/pkg/app.py")  # a file lists as itself
    assert [(e.path, e.type) for e in one] == [("src/pkg/app.py", "file")]

    assert code_of(lambda: ws.delete("src")) == ErrorCode.conflict  # not empty
    ws.delete("src/pkg/app.py")
    assert not (root / "src/pkg/app.py").exists()
    ws.delete("src", recursive=True)
    assert list(root.iterdir()) == []
    assert code_of(lambda: ws.delete("src")) == ErrorCode.not_found
    assert code_of(lambda: read(ws, "nope.txt")) == ErrorCode.not_found
    assert code_of(lambda: ws.list("nope")) == ErrorCode.not_found


def test_bad_path_strings_are_validation_failures(ws: Workspace) -> None:
    for path in ("../x", "/etc/passwd", "a/../../x", "a\0b", ""):
        assert code_of(lambda p=path: read(ws, p)) == ErrorCode.validation_failed
        assert code_of(lambda p=path: ws.commit_file(-1, p)) == ErrorCode.validation_failed
        assert code_of(lambda p=path: ws.delete(p)) == ErrorCode.validation_failed


def test_an_upload_is_invisible_until_committed(ws: Workspace, root: Path) -> None:
    fd = ws.new_upload()
    os.write(fd, b"partial")
    assert list(root.iterdir()) == []
    os.close(fd)  # aborted: nothing was ever there
    assert list(root.iterdir()) == []


def test_reads_past_the_size_cap_are_refused(ws: Workspace, root: Path) -> None:
    (root / "big.bin").write_bytes(b"x" * 1001)
    assert code_of(lambda: read(ws, "big.bin", max_bytes=1000)) == ErrorCode.payload_too_large
    assert read(ws, "big.bin", max_bytes=1001) == b"x" * 1001


def test_listings_stop_at_their_limits(ws: Workspace, root: Path) -> None:
    for i in range(30):
        (root / f"f{i:02}").write_text("x")
    entries, truncated = ws.list("", limit=10)
    assert truncated and [e.path for e in entries] == [f"f{i:02}" for i in range(10)]
    entries, truncated = ws.list("", budget=500)
    assert truncated and 0 < len(entries) < 30
    entries, truncated = ws.list("")
    assert not truncated and len(entries) == 30


# -- symlinks the agent planted ---------------------------------------------------------------


def test_a_symlink_to_a_host_file_is_never_followed(
    ws: Workspace, root: Path, outside: Path
) -> None:
    (root / "passwd").symlink_to("/etc/passwd")
    (root / "secret").symlink_to(outside / "secret.txt")
    before = snapshot(outside)

    for name in ("passwd", "secret"):
        assert code_of(lambda n=name: read(ws, n)) == ErrorCode.unprocessable
        assert code_of(lambda n=name: write(ws, n, b"owned")) == ErrorCode.unprocessable
        assert code_of(lambda n=name: ws.check_writable(n)) == ErrorCode.unprocessable
    entries, _ = ws.list("", recursive=True)
    assert {(e.path, e.type) for e in entries} == {("passwd", "symlink"), ("secret", "symlink")}
    assert snapshot(outside) == before
    assert Path("/etc/passwd").read_bytes() != b"owned"

    ws.delete("secret")  # removes the link itself, never its target
    assert not (root / "secret").is_symlink()
    assert snapshot(outside) == before


def test_a_symlinked_parent_directory_is_refused_for_every_operation(
    ws: Workspace, root: Path, outside: Path
) -> None:
    (root / "link").symlink_to(outside)
    (root / "etc").symlink_to("/etc")
    before = snapshot(outside)

    assert code_of(lambda: read(ws, "link/secret.txt")) == ErrorCode.unprocessable
    assert code_of(lambda: read(ws, "etc/passwd")) == ErrorCode.unprocessable
    assert code_of(lambda: write(ws, "link/new.txt", b"x")) == ErrorCode.unprocessable
    assert code_of(lambda: write(ws, "link/deeper/new.txt", b"x")) == ErrorCode.unprocessable
    assert code_of(lambda: ws.check_writable("link/new.txt")) == ErrorCode.unprocessable
    assert code_of(lambda: ws.delete("link/secret.txt")) == ErrorCode.unprocessable
    assert code_of(lambda: ws.delete("link/secret.txt", recursive=True)) == ErrorCode.unprocessable
    entries, _ = ws.list("", recursive=True)  # listed as links, never descended into
    assert {e.path for e in entries} == {"link", "etc"}
    assert snapshot(outside) == before

    (root / "tree").mkdir()
    (root / "tree" / "out").symlink_to(outside)
    ws.delete("tree", recursive=True)  # the link inside goes, the directory it names stays
    assert not (root / "tree").exists()
    assert snapshot(outside) == before


def test_listing_a_symlink_describes_it_without_following(ws: Workspace, root: Path, outside: Path) -> None:
    (root / "link").symlink_to(outside)
    entries, truncated = ws.list("link")
    assert not truncated
    assert [(e.path, e.type) for e in entries] == [("link", "symlink")]


# -- swaps between the check and the use ------------------------------------------------------


def test_a_parent_swapped_for_a_symlink_after_the_walk_changes_nothing_outside(
    ws: Workspace, root: Path, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent replaces `sub` with a symlink to a host directory right after the walk opened
    it. Every later step is relative to the descriptor already held, so the read finds the
    workspace's own file, and the write lands in the workspace's own directory."""
    (root / "sub").mkdir()
    (root / "sub" / "secret.txt").write_bytes(b"the workspace's own file")
    before = snapshot(outside)
    real_open_dir = wsmod.open_dir

    def open_then_swap(dirfd: int, name: str, shown: str, *, create: bool = False) -> int:
        fd = real_open_dir(dirfd, name, shown, create=create)
        if name == "sub" and not (root / "sub").is_symlink():
            os.rename(root / "sub", root / "sub.moved")
            (root / "sub").symlink_to(outside)
        return fd

    monkeypatch.setattr(wsmod, "open_dir", open_then_swap)
    assert read(ws, "sub/secret.txt") == b"the workspace's own file"

    (root / "sub").unlink()
    os.rename(root / "sub.moved", root / "sub")
    assert write(ws, "sub/new.txt", b"written") is True
    assert (root / "sub.moved" / "new.txt").read_bytes() == b"written"
    assert snapshot(outside) == before


def test_a_file_swapped_for_a_symlink_after_its_check_is_not_followed(
    ws: Workspace, root: Path, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (root / "f.txt").write_bytes(b"ok")
    real_lstat = wsmod.lstat_at

    def lstat_then_swap(dirfd: int, name: str) -> os.stat_result | None:
        st = real_lstat(dirfd, name)
        if name == "f.txt" and not (root / "f.txt").is_symlink():
            (root / "f.txt").unlink()
            (root / "f.txt").symlink_to(outside / "secret.txt")
        return st

    monkeypatch.setattr(wsmod, "lstat_at", lstat_then_swap)
    with pytest.raises(WorkspaceError) as e:
        read(ws, "f.txt")
    assert e.value.code == ErrorCode.unprocessable and "symlink" in e.value.message


def test_a_file_swapped_for_a_fifo_after_its_check_is_refused_without_blocking(
    ws: Workspace, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (root / "f.txt").write_bytes(b"ok")
    real_lstat = wsmod.lstat_at

    def lstat_then_swap(dirfd: int, name: str) -> os.stat_result | None:
        st = real_lstat(dirfd, name)
        if name == "f.txt" and (root / "f.txt").is_file():
            (root / "f.txt").unlink()
            os.mkfifo(root / "f.txt")
        return st

    monkeypatch.setattr(wsmod, "lstat_at", lstat_then_swap)
    with pytest.raises(WorkspaceError) as e:
        read(ws, "f.txt")  # would hang without O_NONBLOCK (the timeout mark fails it)
    assert e.value.code == ErrorCode.unprocessable and "special file" in e.value.message


# -- special files ----------------------------------------------------------------------------


def test_fifos_are_listed_refused_for_reading_and_writing_and_deletable(
    ws: Workspace, root: Path
) -> None:
    os.mkfifo(root / "pipe")
    assert code_of(lambda: read(ws, "pipe")) == ErrorCode.unprocessable
    assert code_of(lambda: write(ws, "pipe", b"x")) == ErrorCode.unprocessable
    assert code_of(lambda: write(ws, "pipe/x", b"x")) == ErrorCode.unprocessable
    entries, _ = ws.list("")
    assert [(e.path, e.type) for e in entries] == [("pipe", "other")]
    ws.delete("pipe")
    assert not (root / "pipe").exists()


def test_a_directory_is_neither_read_nor_overwritten(ws: Workspace, root: Path) -> None:
    (root / "d").mkdir()
    assert code_of(lambda: read(ws, "d")) == ErrorCode.unprocessable
    assert code_of(lambda: write(ws, "d", b"x")) == ErrorCode.unprocessable
    (root / "f").write_text("x")
    assert code_of(lambda: write(ws, "f/below", b"x")) == ErrorCode.unprocessable
    assert (root / "f").read_text() == "x"
