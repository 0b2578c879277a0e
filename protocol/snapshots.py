"""Session snapshots on the wire: what a snapshot holds and the manifest that describes it.

A snapshot is everything a cold resume needs that is not in the agent bundle: the session's
workspace **and** its sandbox HOME (where the Claude Code CLI keeps its conversation transcript,
`~/.claude/projects/<cwd>/<claude_session_id>.jsonl`). It lives in the JetStream object store
bucket `subjects.SNAPSHOTS_BUCKET`, one object per session named by the session id; a newer
snapshot replaces the older one.

    object data          a gzip'd PAX tar:  workspace/...   the workspace, as /workspace sees it
                                            home/...        the HOME, as /home/agent sees it
                         caches are left out (`home/.cache`, `home/.npm`, `__pycache__`),
                         symlinks are kept as symlinks, special files are left out
    object description   the `SnapshotManifest` as JSON

`SnapshotManifest.writer` says which sandbox life wrote (or last claimed) the object. A runner
only replaces an object whose writer is the one it last saw, so a sandbox left behind on a
runner that was cut off cannot overwrite the snapshot of the session's new home elsewhere.
"""

from __future__ import annotations

import msgspec

FORMAT = 1  # the archive layout above; a reader refuses a format it does not know
WORKSPACE_DIR = "workspace"
HOME_DIR = "home"


class SnapshotManifest(msgspec.Struct, kw_only=True, frozen=True):
    """One snapshot: whose, of which Claude conversation, its digest and size, when and why.

    `reason`: `pause`, `turn` (debounced, after turns), `drain`, `evict` (the sandbox went
    while the session lives on), `fork` (asked for by a fork) or `claim` (a cold resume took
    the snapshot over; the data is unchanged).
    """

    format: int = FORMAT
    session_id: str
    claude_session_id: str | None = None
    sha256: str  # of the object data (the tar.gz), hex
    size: int  # bytes of the object data
    taken_at: float  # epoch seconds, the writer's clock
    runner_id: str
    writer: str  # a random id of the sandbox life that wrote or claimed the object
    reason: str = "turn"
