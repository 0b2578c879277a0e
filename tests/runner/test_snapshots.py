"""Snapshots: packing a sandbox disk's workspace and HOME, restoring them, and keeping them in a
real nats-server's object store (with the guard against a superseded writer)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import stat
import tarfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgspec
import nats
import pytest

from ash.embedded_nats import NatsServer, start_nats
from protocol import subjects
from protocol.errors import ErrorCode
from protocol.jetstream import ensure_layout
from protocol.snapshots import SnapshotManifest
from runner import objects
from runner.snapshots import (
    Restore,
    SnapshotError,
    SnapshotStore,
    SnapshotSuperseded,
    is_cache,
    pack,
    restore_into,
    transcript_exists,
    unpack,
)

CLAUDE_ID = "3f0c8a52-6a0e-4b7e-9d7e-0b8c2f1a9e11"
MB = 1 << 20


def make_disk(root: Path) -> None:
    """A slot disk as a session leaves it: files, a script, symlinks in and out, a FIFO, caches,
    and the real CLI's transcript under HOME."""
    ws, home = root / "workspace", root / "home"
    (ws / "src" / "pkg").mkdir(parents=True)
    (ws / "notes.txt").write_text("remember the otter\n")
    (ws / "src" / "pkg" / "mod.py").write_text("x = 1\n")
    (ws / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (ws / "run.sh").chmod(0o755)
    (ws / "python").symlink_to("/usr/bin/python3")  # outside: kept as it is
    (ws / "link-to-notes").symlink_to("notes.txt")
    os.mkfifo(ws / "pipe")
    (ws / "src" / "__pycache__").mkdir()
    (ws / "src" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\0" * 100)
    transcript = home / ".claude" / "projects" / "-workspace" / f"{CLAUDE_ID}.jsonl"
    transcript.parent.mkdir(parents=True)
    transcript.write_text('{"type":"user","message":"Remember the word otter"}\n')
    (home / ".claude.json").write_text("{}")
    (home / ".cache" / "pip").mkdir(parents=True)
    (home / ".cache" / "pip" / "wheel.whl").write_bytes(b"w" * 1000)
    (home / ".npm").mkdir()
    (home / ".npm" / "x").write_text("npm cache")
    (root / "lost+found").mkdir()


def tree(root: Path) -> dict[str, str]:
    """Every entry under root: files by content, symlinks by target, dirs as 'dir'."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            elif p.is_file():
                out[rel] = p.read_text(errors="replace")
            else:
                out[rel] = "special"
    return out


def manifest_for(size: int, sha: str) -> SnapshotManifest:
    return SnapshotManifest(session_id="s1", claude_session_id=CLAUDE_ID, sha256=sha, size=size,
                            taken_at=0.0, runner_id="r1", writer="w1")


def test_a_snapshot_restores_workspace_and_home_without_caches_or_special_files(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    make_disk(src)
    snap = tmp_path / "snap.tar.gz"
    size, sha = pack(str(src), str(snap), max_bytes=10 * MB)
    assert size == snap.stat().st_size and len(sha) == 64
    unpack(str(snap), manifest_for(size, sha), str(dst), max_bytes=10 * MB)

    restored = tree(dst)
    expected = {k: v for k, v in tree(src).items()
                if not k.startswith(("lost+found", "home/.cache", "home/.npm"))
                and "__pycache__" not in k and k != "workspace/pipe"}
    assert restored == expected
    assert restored[f"home/.claude/projects/-workspace/{CLAUDE_ID}.jsonl"].startswith('{"type"')
    assert restored["workspace/python"] == "-> /usr/bin/python3"
    assert os.access(dst / "workspace" / "run.sh", os.X_OK)
    assert stat.S_IMODE((dst / "home").stat().st_mode) == 0o700
    with tarfile.open(snap) as tar:
        names = tar.getnames()
    assert all(n.split("/")[0] in ("workspace", "home") for n in names), names


def test_a_snapshot_that_does_not_match_its_manifest_is_not_restored(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    make_disk(src)
    snap = tmp_path / "snap.tar.gz"
    size, sha = pack(str(src), str(snap), max_bytes=10 * MB)
    with pytest.raises(SnapshotError, match="does not match"):
        unpack(str(snap), manifest_for(size, "0" * 64), str(dst), max_bytes=10 * MB)
    newer = msgspec.structs.replace(manifest_for(size, sha), format=99)
    with pytest.raises(SnapshotError, match="format 99"):
        unpack(str(snap), newer, str(dst), max_bytes=10 * MB)
    assert list(dst.iterdir()) == []


def test_a_snapshot_is_bounded(tmp_path: Path) -> None:
    (tmp_path / "workspace").mkdir()
    (tmp_path / "workspace" / "big").write_bytes(b"x" * (2 * MB))
    with pytest.raises(SnapshotError, match="more than"):
        pack(str(tmp_path), str(tmp_path / "snap.tar.gz"), max_bytes=MB)
    (tmp_path / "workspace" / "big").unlink()
    for i in range(20):
        (tmp_path / "workspace" / f"f{i}").write_text("x")
    with pytest.raises(SnapshotError, match="more than 10 entries"):
        pack(str(tmp_path), str(tmp_path / "snap.tar.gz"), max_bytes=MB, max_members=10)


@pytest.mark.parametrize(("parts", "kind", "cache"), [
    (("home", ".cache"), "dir", True),
    (("home", ".npm"), "dir", True),
    (("home", ".cache"), "file", False),  # only directories are caches
    (("home", ".claude"), "dir", False),
    (("home", "x", ".cache"), "dir", False),  # only HOME's own
    (("workspace", ".cache"), "dir", False),  # the workspace is the user's
    (("workspace", "src", "__pycache__"), "dir", True),
    (("home", "lib", "__pycache__"), "dir", True),
])
def test_what_counts_as_a_cache(parts: tuple[str, ...], kind: str, cache: bool) -> None:
    assert is_cache(parts, kind) is cache


def test_the_transcript_is_found_where_each_cli_keeps_it_and_symlinks_are_not_followed(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    assert not transcript_exists(str(home), CLAUDE_ID)
    real = home / ".claude" / "projects" / "-workspace" / f"{CLAUDE_ID}.jsonl"
    real.parent.mkdir(parents=True)
    real.write_text("{}\n")
    assert transcript_exists(str(home), CLAUDE_ID)
    assert not transcript_exists(str(home), "another-id")
    assert not transcript_exists(str(home), "../" + CLAUDE_ID)  # never a path
    standin = home / ".claude-standin" / "abc.jsonl"
    standin.parent.mkdir()
    standin.write_text("{}\n")
    assert transcript_exists(str(home), "abc")
    # The agent owns HOME: a .claude that is a symlink elsewhere is not looked through.
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "projects" / "p").mkdir(parents=True)
    (elsewhere / "projects" / "p" / "zzz.jsonl").write_text("{}\n")
    other = tmp_path / "other-home"
    other.mkdir()
    (other / ".claude").symlink_to(elsewhere)
    assert not transcript_exists(str(other), "zzz")


def test_restore_into_says_what_became_of_the_conversation(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_disk(src)
    snap = tmp_path / "snap.tar.gz"
    size, sha = pack(str(src), str(snap), max_bytes=10 * MB)
    restore = Restore(str(snap), manifest_for(size, sha))

    def fresh_into(root: Path) -> None:
        (root / "workspace").mkdir()
        (root / "workspace" / "CLAUDE.md").write_text("bundle\n")
        (root / "home").mkdir()

    # The snapshot holds the transcript: resume it.
    a = tmp_path / "a"
    a.mkdir()
    assert restore_into(str(a), restore, CLAUDE_ID, lambda: fresh_into(a), max_bytes=10 * MB) == \
        (CLAUDE_ID, None)
    assert (a / "workspace" / "notes.txt").read_text() == "remember the otter\n"
    # The snapshot lacks the transcript asked for: a new conversation, and a notice.
    b = tmp_path / "b"
    b.mkdir()
    resume, notice = restore_into(str(b), restore, "not-in-there", lambda: fresh_into(b),
                                  max_bytes=10 * MB)
    assert resume is None and notice is not None
    assert notice.code == ErrorCode.conversation_not_restored
    assert "not-in-there" in notice.message and "not in the session's snapshot" in notice.message
    # No snapshot at all: the bundle's workspace, and a notice for the conversation.
    c = tmp_path / "c"
    c.mkdir()
    resume, notice = restore_into(str(c), Restore(None, None), CLAUDE_ID, lambda: fresh_into(c),
                                  max_bytes=10 * MB)
    assert resume is None and notice is not None and "no snapshot" in notice.message
    assert (c / "workspace" / "CLAUDE.md").read_text() == "bundle\n"
    # No snapshot and no conversation to resume (a session that never had a turn): no notice.
    d = tmp_path / "d"
    d.mkdir()
    assert restore_into(str(d), Restore(None, None), None, lambda: fresh_into(d),
                        max_bytes=10 * MB) == (None, None)


# -- the object store ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    srv = start_nats(tmp_path_factory.mktemp("nats"))
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
async def store(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[SnapshotStore]:
    nc = await nats.connect(nats_server.url)
    try:
        layout = await ensure_layout(nc.jetstream())
        yield SnapshotStore(layout.snapshots, "r1", str(tmp_path / "tmp"), max_bytes=10 * MB,
                            js=nc.jetstream())
    finally:
        await nc.close()


async def test_a_snapshot_goes_to_the_object_store_and_comes_back_whole(
    store: SnapshotStore, tmp_path: Path,
) -> None:
    sid = "s-" + os.urandom(4).hex()
    disk = tmp_path / "disk"
    disk.mkdir()
    make_disk(disk)
    (disk / "workspace" / "large.bin").write_bytes(os.urandom(3 * MB))  # several chunks
    assert await store.latest(sid) is None
    assert await store.fetch(sid) == Restore(None, None)

    taken = await store.take(sid, str(disk / "workspace"), claude_session_id=CLAUDE_ID,
                             writer="w1", expect_writer=None, reason="pause")
    assert (taken.session_id, taken.claude_session_id, taken.runner_id, taken.writer,
            taken.reason) == (sid, CLAUDE_ID, "r1", "w1", "pause")
    assert await store.latest(sid) == taken
    assert os.listdir(tmp_path / "tmp") == []  # the packed file is gone once stored

    fetched = await store.fetch(sid)
    assert fetched.manifest == taken and fetched.path is not None
    into = tmp_path / "into"
    into.mkdir()
    unpack(fetched.path, taken, str(into), max_bytes=10 * MB)
    fetched.discard()
    assert os.listdir(tmp_path / "tmp") == []
    assert (into / "workspace" / "large.bin").read_bytes() == \
        (disk / "workspace" / "large.bin").read_bytes()
    assert transcript_exists(str(into / "home"), CLAUDE_ID)


async def test_a_sandbox_whose_snapshot_was_taken_over_cannot_replace_it(
    store: SnapshotStore, tmp_path: Path,
) -> None:
    sid = "s-" + os.urandom(4).hex()
    disk = tmp_path / "disk"
    disk.mkdir()
    make_disk(disk)
    ws = str(disk / "workspace")
    first = await store.take(sid, ws, claude_session_id=CLAUDE_ID, writer="old", expect_writer=None,
                             reason="turn")
    # The old sandbox goes on writing while it owns the snapshot ...
    await store.take(sid, ws, claude_session_id=CLAUDE_ID, writer="old", expect_writer="old",
                     reason="turn")
    # ... until a cold resume elsewhere claims it (data unchanged, new writer).
    claimed = await store.claim(first, "new")
    assert (claimed.writer, claimed.reason, claimed.sha256) == ("new", "claim", first.sha256)
    assert (await store.latest(sid)) == claimed
    with pytest.raises(SnapshotSuperseded, match="no longer owns"):
        await store.take(sid, ws, claude_session_id=CLAUDE_ID, writer="old", expect_writer="old",
                         reason="turn")
    # The new owner still can, and the claimed data restores as it was.
    fetched = await store.fetch(sid)
    assert fetched.manifest == claimed
    fetched.discard()
    await store.take(sid, ws, claude_session_id=CLAUDE_ID, writer="new", expect_writer="new",
                     reason="turn")
    # A brand-new session must not replace a snapshot it never saw.
    with pytest.raises(SnapshotSuperseded):
        await store.take(sid, ws, claude_session_id=None, writer="x", expect_writer=None,
                         reason="turn")
    await store.forget(sid)
    assert await store.latest(sid) is None
    await store.forget(sid)  # twice is fine


async def test_chunks_are_read_by_direct_gets_and_a_claim_writes_the_info_in_hand(
    store: SnapshotStore, nats_server: NatsServer, tmp_path: Path,
) -> None:
    sid = "s-" + os.urandom(4).hex()
    disk = tmp_path / "disk"
    disk.mkdir()
    make_disk(disk)
    (disk / "workspace" / "large.bin").write_bytes(os.urandom(MB))  # several chunks
    taken = await store.take(sid, str(disk / "workspace"), claude_session_id=CLAUDE_ID,
                             writer="old", expect_writer=None, reason="pause")
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        layout = await ensure_layout(js)
        info = await layout.snapshots.get_info(sid)
        assert (info.chunks or 0) > 1
        out = io.BytesIO()
        assert await objects.read_chunks(js, subjects.SNAPSHOTS_BUCKET, info, out)
        assert hashlib.sha256(out.getvalue()).hexdigest() == taken.sha256
        # An object whose chunks are not there (its nuid is another's) is not read this way.
        gone = dataclasses.replace(info, nuid="nosuchnuid")
        assert not await objects.read_chunks(js, subjects.SNAPSHOTS_BUCKET, gone, io.BytesIO())
    finally:
        await nc.close()
    fetched = await store.fetch(sid)
    assert fetched.info is not None and fetched.manifest == taken
    fetched.discard()
    claimed = await store.claim(taken, "new", fetched.info)
    assert await store.latest(sid) == claimed and claimed.writer == "new"
    with pytest.raises(SnapshotSuperseded):  # the sandbox it came from can no longer write
        await store.take(sid, str(disk / "workspace"), claude_session_id=CLAUDE_ID,
                         writer="old", expect_writer="old", reason="turn")
    again = await store.fetch(sid)  # data unchanged by the claim
    assert again.path is not None
    with open(again.path, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == taken.sha256
    again.discard()
