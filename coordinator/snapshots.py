"""The coordinator's look at session snapshots in the object store (`protocol.snapshots`):
which is the latest, and deleting it when its session ends. Runners write them."""

from __future__ import annotations

import logging

from nats.js.errors import NotFoundError
from nats.js.object_store import ObjectStore

from protocol import codec
from protocol.snapshots import SnapshotManifest

logger = logging.getLogger(__name__)


async def latest_snapshot(store: ObjectStore, session_id: str) -> SnapshotManifest | None:
    """The manifest of the session's latest snapshot, or None."""
    try:
        info = await store.get_info(session_id)
        return codec.decode_as((info.description or "").encode(), SnapshotManifest)
    except NotFoundError:
        return None
    except (codec.DecodeError, codec.ValidationError) as e:
        logger.warning("session %s: unreadable snapshot manifest: %s", session_id, e)
        return None


async def forget_snapshot(store: ObjectStore, session_id: str) -> None:
    """Delete an ended session's snapshot; best effort (the bucket's max age bounds it too)."""
    try:
        await store.delete(session_id)
    except NotFoundError:
        pass
    except Exception as e:  # the session is ended either way
        logger.warning("session %s: cannot delete its snapshot: %s", session_id, e)


