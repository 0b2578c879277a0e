"""Session snapshots: a sandbox's workspace and HOME, packed to the JetStream object store and
restored into a fresh sandbox on any runner (cold resume, fork). Format: `protocol.snapshots`.

Taking one (`SnapshotStore.take`): the disk root's `workspace/` and `home/` are written as one
tar.gz by `runner.archive`'s descriptor walk (symlinks kept, never followed; special files and
caches left out; at most `max_bytes` of files) to a temporary file on the runner's own disk,
hashed on the way, then put into the bucket under the session id with the manifest as its
description. Before replacing the object, the writer recorded in it must be the one this
sandbox last wrote or claimed (see `protocol.snapshots`): a sandbox left behind on a runner that
was cut off gets `SnapshotSuperseded` instead of overwriting the session's newer home.

Restoring one (`fetch` then `restore_into`, in `Runner.start`): download to a temporary file,
check its size and sha-256 against the manifest, extract into the empty slot disk (symlinks as
they were, nothing followed), and look for the conversation's transcript under the restored
HOME. A missing snapshot means the bundle's workspace; a missing transcript means a new
conversation and a `conversation_not_restored` notice, never a failed session.

When they are taken is `runner.autosave`'s business.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

import msgspec
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError
from nats.js.object_store import ObjectStore

from protocol import codec, subjects
from protocol.errors import ErrorCode, ErrorInfo
from protocol.files import MAX_EXTRACT_MEMBERS
from protocol.snapshots import FORMAT, HOME_DIR, WORKSPACE_DIR, SnapshotManifest
from runner import objects
from runner.archive import extract_archive, write_trees
from runner.workspace import Workspace, WorkspaceError

logger = logging.getLogger(__name__)

CHUNK_BYTES = 256 * 1024  # object store chunk: fewer acked publishes than the 128 KiB default
CONCURRENCY = 2  # snapshots packed or fetched at once per runner (CPU, host disk, bus)
CACHE_DIRS = {(HOME_DIR, ".cache"), (HOME_DIR, ".npm")}  # regenerable: left out
CACHE_NAMES = {"__pycache__"}
_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_COPY = 1024 * 1024


class SnapshotError(Exception):
    """A snapshot could not be taken, fetched or restored."""


class SnapshotSuperseded(SnapshotError):
    """The session's snapshot was written or claimed by another sandbox since this one's."""


# -- packing and unpacking (blocking; run in a thread) -----------------------------------------


def is_cache(parts: tuple[str, ...], kind: str) -> bool:
    """Whether an entry of a snapshot (`workspace/...`, `home/...`) is a cache, left out."""
    if kind != "dir":
        return False
    return (len(parts) == 2 and parts in CACHE_DIRS) or parts[-1] in CACHE_NAMES


class _Hashing:
    """A write-only file that hashes and counts what passes through."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self._sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._sha.update(data)
        self.size += len(data)
        return self._raw.write(data)

    def flush(self) -> None:
        self._raw.flush()

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def pack(
    root: str, dest: str, *, max_bytes: int, max_members: int = MAX_EXTRACT_MEMBERS
) -> tuple[int, str]:
    """Write `root`'s workspace/ and home/ to the file `dest` as a snapshot tar.gz; returns its
    size and sha-256. Raises SnapshotError (too big, unreadable)."""
    trees = [((name,), Workspace(os.path.join(root, name)))
             for name in (WORKSPACE_DIR, HOME_DIR) if _real_dir(os.path.join(root, name))]
    try:
        with open(dest, "wb") as raw:
            sink = _Hashing(raw)
            write_trees(trees, sink,  # type: ignore[arg-type]
                        max_bytes=max_bytes, max_members=max_members, skip=is_cache)
    except (WorkspaceError, OSError) as e:
        raise SnapshotError(f"cannot pack {root}: {e}") from e
    return sink.size, sink.hexdigest()


def unpack(path: str, manifest: SnapshotManifest, root: str, *, max_bytes: int) -> None:
    """Check the snapshot file against its manifest and extract it into the empty `root`."""
    if manifest.format != FORMAT:
        raise SnapshotError(
            f"snapshot format {manifest.format} is not {FORMAT}; upgrade the runner")
    sha, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_COPY):
            sha.update(chunk)
            size += len(chunk)
    if size != manifest.size or sha.hexdigest() != manifest.sha256:
        raise SnapshotError(f"the snapshot of {manifest.session_id} does not match its manifest")
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        extract_archive(Workspace(root), fd, max_bytes=max_bytes, max_members=MAX_EXTRACT_MEMBERS,
                        any_symlink=True)
    except (WorkspaceError, OSError) as e:  # OSError: ENOSPC on a smaller disk, say
        raise SnapshotError(f"cannot restore the snapshot of {manifest.session_id}: {e}") from e
    finally:
        os.close(fd)
    for name, mode in ((WORKSPACE_DIR, 0o755), (HOME_DIR, 0o700)):
        d = os.path.join(root, name)
        os.makedirs(d, mode=mode, exist_ok=True)
        os.chmod(d, mode)


def transcript_exists(home: str, claude_session_id: str) -> bool:
    """Whether the CLI's transcript of the conversation is under `home`: the real CLI's
    `.claude/projects/<cwd>/<id>.jsonl`, or the stand-in's `.claude-standin/<id>.jsonl`.
    Symlinks are not followed (the agent owns HOME)."""
    if not _ID.match(claude_session_id):
        return False
    name = claude_session_id + ".jsonl"
    found = _real_file(os.path.join(home, ".claude-standin", name))
    projects = os.path.join(home, ".claude", "projects")
    if not found and _real_dir(os.path.join(home, ".claude")) and _real_dir(projects):
        with os.scandir(projects) as entries:
            for i, e in enumerate(entries):
                if i >= 10_000:
                    break
                if e.is_dir(follow_symlinks=False) and _real_file(os.path.join(e.path, name)):
                    return True
    return found


def not_restored(claude_session_id: str, why: str) -> ErrorInfo:
    """The notice a session carries to its next turn when its conversation was not resumed."""
    return ErrorInfo(
        code=ErrorCode.conversation_not_restored,
        message=f"the Claude conversation {claude_session_id} could not be restored ({why}); "
                "the session goes on in a new conversation that does not know the earlier turns",
    )


@dataclass(slots=True)
class Restore:
    """What a cold resume or a fork starts from: a fetched snapshot, or (path None) nothing,
    in which case the workspace is the agent bundle's."""

    path: str | None
    manifest: SnapshotManifest | None
    fork: bool = False
    info: api.ObjectInfo | None = None  # the object's info it was fetched with (for `claim`)

    def discard(self) -> None:
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.path = None


def restore_into(
    root: str, restore: Restore, resume: str | None, fresh: Callable[[], None], *, max_bytes: int
) -> tuple[str | None, ErrorInfo | None]:
    """Fill the empty slot disk `root` from `restore` (or with `fresh()`, the bundle's copy);
    returns the conversation to resume (None: a new one) and the notice when it cannot be."""
    if restore.path is not None and restore.manifest is not None:
        unpack(restore.path, restore.manifest, root, max_bytes=max_bytes)
        why = "its transcript is not in the session's snapshot"
    else:
        fresh()
        why = "no snapshot of the session was found"
    if resume is not None and not transcript_exists(os.path.join(root, HOME_DIR), resume):
        return None, not_restored(resume, why)
    return resume, None


def _real_dir(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _real_file(path: str) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


# -- the object store ---------------------------------------------------------------------------


class SnapshotStore:
    """Snapshots of this runner's sessions in the object store; at most CONCURRENCY at once."""

    def __init__(self, store: ObjectStore, runner_id: str, tmp_dir: str, *, max_bytes: int,
                 js: JetStreamContext | None = None, bucket: str = subjects.SNAPSHOTS_BUCKET) -> None:
        """With `js` (the context of `store`, whose bucket is `bucket`), a restore reads the
        snapshot's chunks by direct gets and a claim writes the info in hand (`runner.objects`);
        without it, through `store` alone."""
        self._store = store
        self._js = js
        self._bucket = bucket
        self._runner_id = runner_id
        self._tmp = tmp_dir
        self.max_bytes = max_bytes
        self._sem = asyncio.Semaphore(CONCURRENCY)
        shutil.rmtree(tmp_dir, ignore_errors=True)  # half-written files of an earlier process
        os.makedirs(tmp_dir, mode=0o700, exist_ok=True)

    async def latest(self, session_id: str) -> SnapshotManifest | None:
        """The manifest of the session's snapshot, or None."""
        found = await self._latest(session_id)
        return None if found is None else found[1]

    async def _latest(self, session_id: str) -> tuple[api.ObjectInfo, SnapshotManifest] | None:
        """The object's info (read through the stream's leader: never an older snapshot) and
        the manifest in it, or None."""
        try:
            info = await self._store.get_info(session_id)
        except NotFoundError:
            return None
        try:
            return info, codec.decode_as((info.description or "").encode(), SnapshotManifest)
        except (codec.DecodeError, codec.ValidationError) as e:
            raise SnapshotError(
                f"the snapshot of {session_id} has an unreadable manifest: {e}") from e

    async def take(
        self, session_id: str, workspace: str, *, claude_session_id: str | None, writer: str,
        expect_writer: str | None, reason: str,
    ) -> SnapshotManifest:
        """Snapshot the sandbox whose workspace is `workspace` (its disk root holds workspace/
        and home/) as the session's latest. Raises SnapshotError, SnapshotSuperseded."""
        async with self._sem:
            current = await self.latest(session_id)
            if current is not None and current.writer != expect_writer:
                raise SnapshotSuperseded(
                    f"the snapshot of {session_id} was replaced by {current.runner_id} "
                    f"({current.reason}); this sandbox no longer owns the session")
            fd, path = tempfile.mkstemp(dir=self._tmp, prefix=f"{session_id}-", suffix=".tar.gz")
            os.close(fd)
            try:
                started = time.time()
                root = os.path.dirname(os.path.normpath(workspace))
                size, sha = await asyncio.to_thread(pack, root, path, max_bytes=self.max_bytes)
                manifest = SnapshotManifest(
                    session_id=session_id, claude_session_id=claude_session_id, sha256=sha,
                    size=size, taken_at=started, runner_id=self._runner_id, writer=writer,
                    reason=reason)
                with open(path, "rb") as f:  # read in a thread by the client, chunk by chunk
                    await self._store.put(
                        session_id, f, meta=self._meta(manifest))  # type: ignore[arg-type]
            except SnapshotError:
                raise
            except Exception as e:
                raise SnapshotError(f"cannot store the snapshot of {session_id}: {e}") from e
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        logger.info("snapshot of %s (%s): %d bytes in %.0f ms", session_id, reason, size,
                    (time.time() - started) * 1000)
        return manifest

    async def fetch(self, session_id: str) -> Restore:
        """Download the session's snapshot to a temporary file (discard() it when done); a
        Restore without a path when the session has none."""
        async with self._sem:
            found = await self._latest(session_id)
            if found is None:
                return Restore(None, None)
            info, manifest = found
            if manifest.size > self.max_bytes * 2 + (1 << 20):  # compressed; generous
                raise SnapshotError(f"the snapshot of {session_id} is {manifest.size} bytes, "
                                    f"more than this runner restores")
            fd, path = tempfile.mkstemp(dir=self._tmp, prefix=f"{session_id}-", suffix=".get")
            try:
                with os.fdopen(fd, "wb") as f:
                    if self._js is None or not await objects.read_chunks(
                            self._js, self._bucket, info, f):
                        f.seek(0)
                        f.truncate()
                        await self._store.get(session_id, writeinto=f)  # type: ignore[arg-type]
            except BaseException as e:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                if isinstance(e, Exception):
                    raise SnapshotError(f"cannot fetch the snapshot of {session_id}: {e}") from e
                raise
            return Restore(path, manifest, info=info)

    async def claim(self, manifest: SnapshotManifest, writer: str,
                    info: api.ObjectInfo | None = None) -> SnapshotManifest:
        """Mark the session's snapshot as this sandbox's (a cold resume took the session over),
        so that the sandbox it came from can no longer replace it. Data unchanged. `info`: the
        object's info as fetched with `manifest` (saves reading it again)."""
        claimed = msgspec.structs.replace(manifest, writer=writer, runner_id=self._runner_id,
                                          reason="claim")
        meta = self._meta(claimed)
        if self._js is not None and info is not None and info.name == manifest.session_id:
            info = dataclasses.replace(info, description=meta.description)
            await objects.put_info(self._js, self._bucket, info)
        else:
            await self._store.update_meta(manifest.session_id, meta)
        return claimed

    async def forget(self, session_id: str) -> None:
        """Delete the session's snapshot (its session ended)."""
        with contextlib.suppress(NotFoundError):
            await self._store.delete(session_id)

    @staticmethod
    def _meta(manifest: SnapshotManifest) -> api.ObjectMeta:
        return api.ObjectMeta(
            name=manifest.session_id, description=codec.encode(manifest).decode(),
            options=api.ObjectMetaOptions(max_chunk_size=CHUNK_BYTES))
