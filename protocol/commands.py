"""Commands, coordinator -> runner, over core NATS request/reply on `subjects.runner_commands`.

Every command is answered with a `CommandReply`: `Accepted` once the runner has done what was
asked (for `CreateSession`: the sandbox is up and the CLI connected), or `Rejected` with an
`ErrorInfo`. Turn output does not travel in the reply: it goes to the session's JetStream
event subject, so that any coordinator can follow it and a client can re-attach.

Exec and files commands answer with richer replies (`StreamOpened`, `FileListing`,
`UploadDone`); exec output and downloads then flow over a per-request stream subject
(`protocol.streams`), and uploads as a sequence of `UploadChunk` commands between
`OpenUpload` and `CloseUpload`.

Unknown fields are tolerated (rolling upgrades); unknown tags are rejected by the decoder.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from protocol.errors import ErrorInfo
from protocol.files import DEFAULT_EXEC_TIMEOUT_S, MAX_FILE_BYTES, FileEntry
from protocol.snapshots import SnapshotManifest


class AgentRef(msgspec.Struct, kw_only=True, frozen=True):
    """Which agent bundle a session runs: name for people, digest for caches."""

    name: str
    digest: str


class SessionOptions(msgspec.Struct, kw_only=True, frozen=True):
    """Per-session options that differ from the agent's defaults.

    `mcp_servers`: MCP servers by name, merged over the agent's `.mcp.json` (a name in both:
    the session's wins); each is the `.mcp.json` entry itself (`{"type": "stdio", "command",
    "args", "env"}` or `{"type": "http" | "sse", "url", "headers"}`)."""

    model: str | None = None
    system_prompt: str | None = None
    env: dict[str, str] = {}
    mcp_servers: dict[str, dict[str, Any]] = {}


class ModelCredential(msgspec.Struct, kw_only=True, frozen=True):
    """A stored credential for the model API, decrypted by the coordinator for one session.

    It travels only inside `CreateSession`, over NATS (TLS and a per-runner user that alone may
    read its command subject keep it from anyone else), and lives on the runner only in its
    egress proxy, which sends it upstream in place of the sandbox's placeholder: never in the
    sandbox, the event log or a log line (`repr` hides it)."""

    name: str
    api_key: str = ""  # sent as x-api-key
    auth_token: str = ""  # sent as authorization: Bearer

    def __repr__(self) -> str:
        return f"ModelCredential(name={self.name!r}, api_key=***, auth_token=***)"


class CreateSession(msgspec.Struct, kw_only=True, frozen=True, tag="create_session"):
    """Make a sandbox for the session and connect its CLI.

    `claude_session_id` set means: resume that Claude conversation rather than start one.

    `restore` (a cold resume, or a fork): fill the new sandbox's workspace and HOME from the
    latest snapshot of `restore_from` (default: this session) instead of the agent bundle, and
    resume `claude_session_id` (default: the snapshot's). Such a session never gets a warm
    sandbox. Without any snapshot the workspace is the bundle's; when the conversation's
    transcript is not there, the CLI starts a new conversation and the session's next turn
    carries an `error` event `conversation_not_restored` (the session itself does not fail).
    `fork`: resume the conversation as a fork, under a new Claude session id.
    `credential`: the model API key the runner's egress proxy uses for this session's sandbox
    instead of its own (the sandbox keeps its placeholder; a warm sandbox can still be claimed).
    """

    session_id: str
    agent: AgentRef
    options: SessionOptions = SessionOptions()
    claude_session_id: str | None = None
    restore: bool = False
    restore_from: str | None = None
    fork: bool = False
    credential: ModelCredential | None = None  # the model key for this session's sandbox


class SendTurn(msgspec.Struct, kw_only=True, frozen=True, tag="send_turn"):
    """Start one turn. Accepted means the turn runs; its events follow on the event subject."""

    session_id: str
    turn_id: str
    content: str
    model: str | None = None


class Interrupt(msgspec.Struct, kw_only=True, frozen=True, tag="interrupt"):
    """Stop the session's running turn, if any."""

    session_id: str


class EndSession(msgspec.Struct, kw_only=True, frozen=True, tag="end_session"):
    """Disconnect the CLI and destroy the sandbox."""

    session_id: str


class PauseSession(msgspec.Struct, kw_only=True, frozen=True, tag="pause_session"):
    """Freeze the session's sandbox (cgroup freezer) and snapshot it, so that it can be resumed
    warm here or cold anywhere. Refused with `conflict` while a turn runs. Accepted carries the
    snapshot's manifest (None when the session has nothing a snapshot would add)."""

    session_id: str


class ResumeSession(msgspec.Struct, kw_only=True, frozen=True, tag="resume_session"):
    """Thaw the session's sandbox (a warm resume); Accepted also for a session not paused.
    `not_found` means the sandbox is gone: resume it cold with `CreateSession(restore=True)`."""

    session_id: str


class SnapshotSession(msgspec.Struct, kw_only=True, frozen=True, tag="snapshot_session"):
    """Snapshot the session now (unless its latest snapshot is current); Accepted carries the
    manifest. Refused with `conflict` while a turn runs."""

    session_id: str


class WarmAgent(msgspec.Struct, kw_only=True, frozen=True, tag="warm_agent"):
    """Get ready for sessions of this agent: fetch its bundle and fill its warm pool.

    Optional: a runner also warms an agent when it first sees a session of it. Sent after a
    deploy so that even the first session claims a started CLI. Accepted once the bundle is
    fetched and its `ash.toml` is valid; the warming itself goes on in the background.
    """

    agent: AgentRef


class StartExec(msgspec.Struct, kw_only=True, frozen=True, tag="start_exec"):
    """Run a command in the session's sandbox; its output streams on `subjects.stream(exec_id)`
    (see `protocol.streams`).

    `command`: a string runs via `/bin/bash -lc`, a list is the argv itself. Answered with
    `StreamOpened` once the process runs.
    """

    session_id: str
    exec_id: str
    command: str | list[str]
    timeout_s: float = DEFAULT_EXEC_TIMEOUT_S
    env: dict[str, str] = {}


class ListFiles(msgspec.Struct, kw_only=True, frozen=True, tag="list_files"):
    """List a workspace directory (or describe one entry). Answered with `FileListing`."""

    session_id: str
    path: str = ""
    recursive: bool = False


class ReadFile(msgspec.Struct, kw_only=True, frozen=True, tag="read_file"):
    """Stream one regular file of the workspace on `subjects.stream(stream_id)`. Answered
    with `StreamOpened`."""

    session_id: str
    stream_id: str
    path: str
    max_bytes: int = MAX_FILE_BYTES


class ReadWorkspace(msgspec.Struct, kw_only=True, frozen=True, tag="read_workspace"):
    """Stream the whole workspace as a tar.gz on `subjects.stream(stream_id)`. Answered with
    `StreamOpened`."""

    session_id: str
    stream_id: str


class DeleteFile(msgspec.Struct, kw_only=True, frozen=True, tag="delete_file"):
    """Delete a file, a symlink (never its target) or a directory (`recursive` if not empty)."""

    session_id: str
    path: str
    recursive: bool = False


class OpenUpload(msgspec.Struct, kw_only=True, frozen=True, tag="open_upload"):
    """Begin an upload: `kind` file (written to `path` on commit) or archive (a tar.gz
    extracted into the workspace on commit). Nothing is visible in the workspace before."""

    session_id: str
    upload_id: str
    kind: Literal["file", "archive"] = "file"
    path: str = ""
    max_bytes: int = MAX_FILE_BYTES


class UploadChunk(msgspec.Struct, kw_only=True, frozen=True, tag="upload_chunk"):
    """The next bytes of an upload; `seq` counts from 1."""

    session_id: str
    upload_id: str
    seq: int
    data: bytes


class CloseUpload(msgspec.Struct, kw_only=True, frozen=True, tag="close_upload"):
    """Commit an upload of `size` bytes (answered with `UploadDone`), or abort it."""

    session_id: str
    upload_id: str
    commit: bool
    size: int = 0


Command = (
    CreateSession
    | SendTurn
    | Interrupt
    | EndSession
    | WarmAgent
    | PauseSession
    | ResumeSession
    | SnapshotSession
    | StartExec
    | ListFiles
    | ReadFile
    | ReadWorkspace
    | DeleteFile
    | OpenUpload
    | UploadChunk
    | CloseUpload
)


class Accepted(msgspec.Struct, kw_only=True, frozen=True, tag="accepted"):
    """The runner did (or started) what the command asked."""

    runner_id: str
    claude_session_id: str | None = None
    next_seq: int = 0  # CreateSession, SendTurn: the seq its next (the turn's first) event gets at least
    warm: bool = False  # CreateSession: the session claimed a pre-started sandbox and CLI
    snapshot: SnapshotManifest | None = None  # PauseSession, SnapshotSession: the snapshot
    warning: ErrorInfo | None = None  # done, but not all of it (a conversation not restored)
    # CreateSession: ms spent in each phase of getting the sandbox and CLI, timed by the runner
    # (`snapshot_fetch`, `untar`, `sandbox_prepare`, `cli_spawn`, ..., and `total`; each name is
    # described in runner/phases.py). For measurement: nothing may depend on which are there.
    phases: dict[str, float] | None = None


class Rejected(msgspec.Struct, kw_only=True, frozen=True, tag="rejected"):
    """The runner refused the command; `error` says why and whether to retry."""

    runner_id: str
    error: ErrorInfo


class StreamOpened(msgspec.Struct, kw_only=True, frozen=True, tag="stream_opened"):
    """A stream started; for a file, its size and mtime (the stream sends exactly `size`)."""

    runner_id: str
    size: int | None = None
    mtime: float | None = None


class FileListing(msgspec.Struct, kw_only=True, frozen=True, tag="file_listing"):
    """The answer to `ListFiles`; `truncated` when a limit stopped the walk."""

    runner_id: str
    entries: list[FileEntry] = []
    truncated: bool = False


class UploadDone(msgspec.Struct, kw_only=True, frozen=True, tag="upload_done"):
    """A committed upload: the file written (`created` if it did not exist), or for an
    archive the number of files, directories and symlinks extracted."""

    runner_id: str
    path: str = ""
    size: int = 0
    created: bool = False
    files: int = 0
    dirs: int = 0
    symlinks: int = 0


CommandReply = Accepted | Rejected | StreamOpened | FileListing | UploadDone
