"""The NATS subject grammar. No other module builds or parses a subject.

    ash.v1.runner.<runner_id>.cmd      core request/reply: commands for one runner
    ash.v1.events.<session_id>         JetStream (stream ASH_EVENTS): a session's event log
    ash.v1.stream.<stream_id>          core request/reply: runner -> coordinator byte stream of
                                       one exec or download (protocol.streams)
    _INBOX.ash.coordinator.>           replies to coordinators (their inbox prefix)
    _INBOX.ash.runner.<runner_id>.>    replies to one runner (its inbox prefix), so that NATS
                                       permissions can keep each one's replies its own
                                       (protocol.access)

Key-value and object-store buckets are named here too, so that every process agrees.
"""

from __future__ import annotations

import re

PREFIX = "ash.v1"

EVENTS_STREAM = "ASH_EVENTS"
EVENTS_WILDCARD = f"{PREFIX}.events.>"
RUNNERS_BUCKET = "ash_runners"
BUNDLES_BUCKET = "ash_bundles"
SNAPSHOTS_BUCKET = "ash_snapshots"

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class SubjectError(ValueError):
    """A token or subject that does not fit the grammar."""


def _token(value: str) -> str:
    if not _TOKEN.match(value):
        raise SubjectError(f"invalid subject token {value!r}")
    return value


def runner_commands(runner_id: str) -> str:
    """The subject a runner serves its commands on."""
    return f"{PREFIX}.runner.{_token(runner_id)}.cmd"


def session_events(session_id: str) -> str:
    """The JetStream subject that holds one session's events."""
    return f"{PREFIX}.events.{_token(session_id)}"


def stream(stream_id: str) -> str:
    """The subject one exec's output or one download flows on, runner -> coordinator."""
    return f"{PREFIX}.stream.{_token(stream_id)}"


STREAMS_WILDCARD = f"{PREFIX}.stream.>"
RUNNER_COMMANDS_WILDCARD = f"{PREFIX}.runner.*.cmd"
INBOX_PREFIX = "_INBOX.ash"


def coordinator_inbox() -> str:
    """The inbox prefix of every coordinator (`nats.connect(inbox_prefix=...)`)."""
    return f"{INBOX_PREFIX}.coordinator"


def runner_inbox(runner_id: str) -> str:
    """The inbox prefix of one runner."""
    return f"{INBOX_PREFIX}.runner.{_token(runner_id)}"


def parse_session_events(subject: str) -> str:
    """Return the session id of an events subject, or raise SubjectError."""
    parts = subject.split(".")
    if len(parts) != 4 or f"{parts[0]}.{parts[1]}" != PREFIX or parts[2] != "events":
        raise SubjectError(f"not an events subject: {subject!r}")
    return _token(parts[3])


def is_token(value: str) -> bool:
    """Whether `value` may stand as one subject token (ids, names)."""
    return bool(_TOKEN.match(value))

# The event log: a session's events are kept for a week (resume, replay, re-attach), and a
# duplicate publish of the same (session, seq) inside the window is dropped by the server.
EVENTS_MAX_AGE_S = 7 * 24 * 3600
EVENTS_DUPLICATE_WINDOW_S = 120
MSG_ID_HEADER = "Nats-Msg-Id"


# Session snapshots (workspace + HOME, `protocol.snapshots`): one object per session, named by
# the session id, replaced by each newer snapshot. Kept at most this long after it was written.
SNAPSHOTS_MAX_AGE_S = 30 * 24 * 3600


def event_msg_id(session_id: str, seq: int) -> str:
    """The JetStream de-duplication id of one event."""
    return f"{session_id}:{seq}"
