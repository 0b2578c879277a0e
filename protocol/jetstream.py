"""The JetStream layout both sides of the bus rely on, declared once.

    stream  ASH_EVENTS   ash.v1.events.>   every session's event log (file storage, one week)
    kv      ash_runners                    runner adverts, one key per runner
    object  ash_bundles                    agent bundles, one object per content digest
    object  ash_snapshots                  session snapshots (workspace + HOME), one object per
                                           session, named by its id (`protocol.snapshots`)

`ensure_layout` is idempotent: coordinators and runners both call it at start, in any order.
"""

from __future__ import annotations

from dataclasses import dataclass

from nats.js import JetStreamContext, api
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from protocol import codec, events, subjects


@dataclass(slots=True)
class Layout:
    """Handles on the JetStream resources of Ash."""

    js: JetStreamContext
    runners: KeyValue
    bundles: ObjectStore
    snapshots: ObjectStore


async def ensure_layout(js: JetStreamContext, *, runner_ttl_s: float = 30.0) -> Layout:
    """Create (or bind to) the events stream and the buckets."""
    config = api.StreamConfig(
        name=subjects.EVENTS_STREAM,
        subjects=[subjects.EVENTS_WILDCARD],
        storage=api.StorageType.FILE,
        retention=api.RetentionPolicy.LIMITS,
        discard=api.DiscardPolicy.OLD,
        max_age=subjects.EVENTS_MAX_AGE_S,
        duplicate_window=subjects.EVENTS_DUPLICATE_WINDOW_S,
        allow_direct=True,
    )
    try:
        await js.stream_info(subjects.EVENTS_STREAM)
    except NotFoundError:
        try:
            await js.add_stream(config)
        except BadRequestError:
            # Another process created it between our look and our add.
            await js.stream_info(subjects.EVENTS_STREAM)
    try:
        runners = await js.key_value(subjects.RUNNERS_BUCKET)
    except (NotFoundError, BadRequestError):
        runners = await js.create_key_value(
            bucket=subjects.RUNNERS_BUCKET, history=1, ttl=runner_ttl_s
        )
    try:
        bundles = await js.object_store(subjects.BUNDLES_BUCKET)
    except (NotFoundError, BadRequestError):
        bundles = await js.create_object_store(bucket=subjects.BUNDLES_BUCKET)
    try:
        snapshots = await js.object_store(subjects.SNAPSHOTS_BUCKET)
    except (NotFoundError, BadRequestError):
        snapshots = await js.create_object_store(
            bucket=subjects.SNAPSHOTS_BUCKET,
            config=api.ObjectStoreConfig(
                description="Ash session snapshots: workspace and HOME, one object per session",
                ttl=subjects.SNAPSHOTS_MAX_AGE_S,
            ),
        )
    return Layout(js=js, runners=runners, bundles=bundles, snapshots=snapshots)


async def last_event(js: JetStreamContext, session_id: str) -> events.Event | None:
    """The newest event in a session's log, or None for a session with no events yet."""
    try:
        msg = await js.get_last_msg(subjects.EVENTS_STREAM, subjects.session_events(session_id))
    except NotFoundError:
        return None
    return codec.decode_event(msg.data)
