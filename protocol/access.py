"""Who may use which NATS subject, and how a process logs in to NATS.

Two roles share one NATS account (`ASH`, with JetStream):

    coordinator   the control plane: sends every runner its commands, owns the streams and
                  buckets, reads every event log (recorder, SSE; a live turn's events also as
                  they are published), the registry and the stores
    runner <id>   one node: takes only its own commands, publishes events, its own advert,
                  snapshots and the byte streams of exec/download; reads bundles and snapshots

A runner's permissions name its id, so that it can neither read another runner's commands
(user messages, session env) nor speak as another runner in the registry, and it cannot
publish a command, write an agent bundle, delete or reconfigure a stream, or attach a
consumer to the event log (the recorder's durable included). Replies to requests go to
per-role inbox prefixes (`subjects.coordinator_inbox`, `subjects.runner_inbox`) instead of
the shared `_INBOX.>`, so that no one reads another's replies.

What a runner may still do, because any runner may be handed any session (cold resume,
placement): write any session's events and snapshot, read any snapshot, bundle, and a
session's last event (its next seq). Those are guarded by the coordinator's placement, not
by the bus.

`permissions(...)` returns the `permissions` block of a nats-server user; `deploy/nats_auth.py`
renders them into a server config. `connect_options(...)` is what both composition roots pass
to `nats.connect`: credentials, TLS, and the role's inbox prefix.
"""

from __future__ import annotations

import ssl
from typing import Any

from protocol import subjects

ACCOUNT = "ASH"

_STREAMS = (
    subjects.EVENTS_STREAM,
    f"KV_{subjects.RUNNERS_BUCKET}",
    f"OBJ_{subjects.BUNDLES_BUCKET}",
    f"OBJ_{subjects.SNAPSHOTS_BUCKET}",
)


def _js_api(verb: str, *streams: str, more: bool = False) -> list[str]:
    """`$JS.API.<verb>.<stream>` for each stream; with `more`, also the subjects under it (a
    consumer's name and filter, a direct get's subject)."""
    api = [f"$JS.API.{verb}.{stream}" for stream in streams]
    return api + [f"{s}.>" for s in api] if more else api


def coordinator_permissions() -> dict[str, Any]:
    """The `permissions` of the coordinator user (every coordinator logs in as it)."""
    publish = [
        subjects.RUNNER_COMMANDS_WILDCARD,     # commands to any runner
        subjects.EVENTS_WILDCARD,              # the reaper's runner_lost / done events
        f"$KV.{subjects.RUNNERS_BUCKET}.>",
        f"$O.{subjects.BUNDLES_BUCKET}.>",
        f"$O.{subjects.SNAPSHOTS_BUCKET}.>",
        "$JS.API.INFO",
        *_js_api("STREAM.*", *_STREAMS),       # create, info, update, purge
        *_js_api("STREAM.*.*", *_STREAMS),     # msg get, msg delete
        *_js_api("DIRECT.GET", *_STREAMS, more=True),
        *_js_api("CONSUMER.*", *_STREAMS, more=True),     # create, info, delete: followers, watches
        *_js_api("CONSUMER.*.*", *_STREAMS, more=True),   # the recorder's durable create, msg next
        "$JS.API.STREAM.NAMES", "$JS.API.STREAM.LIST",
        *[f"$JS.ACK.{s}.>" for s in _STREAMS],  # the recorder acks what it recorded
        *[f"$JS.FC.{s}.>" for s in _STREAMS],   # flow control of ordered consumers
    ]
    return {
        "publish": {"allow": publish},
        "subscribe": {"allow": [
            subjects.STREAMS_WILDCARD,
            subjects.EVENTS_WILDCARD,  # a live turn is followed by a plain subscription
            f"{subjects.coordinator_inbox()}.>",
        ]},
        # answer a runner's stream chunks (acks) on the reply subject it gave
        "allow_responses": True,
    }


def runner_permissions(runner_id: str) -> dict[str, Any]:
    """The `permissions` of one runner's user: only its own commands, adverts and inbox."""
    commands = subjects.runner_commands(runner_id)  # validates the id as one subject token
    events, _, bundles, snaps = _STREAMS
    publish = [
        subjects.EVENTS_WILDCARD,
        subjects.STREAMS_WILDCARD,
        f"$KV.{subjects.RUNNERS_BUCKET}.{runner_id}",
        f"$O.{subjects.SNAPSHOTS_BUCKET}.>",
        "$JS.API.INFO",
        "$JS.API.STREAM.NAMES",                 # an object's chunks: which stream holds them
        # start in any order: bind to, or create, Ash's own streams and buckets (a create with
        # another config than the existing one fails, so it cannot change them)
        *_js_api("STREAM.INFO", *_STREAMS),
        *_js_api("STREAM.CREATE", *_STREAMS),
        *_js_api("STREAM.MSG.GET", events, bundles, snaps),  # last seq; object metadata
        *_js_api("DIRECT.GET", events, bundles, snaps, more=True),
        *_js_api("STREAM.PURGE", snaps),        # a snapshot replaced or deleted
        # reading an object is an ordered consumer on its chunks
        *_js_api("CONSUMER.CREATE", bundles, snaps, more=True),
        *_js_api("CONSUMER.DELETE", bundles, snaps, more=True),
        *_js_api("CONSUMER.INFO", bundles, snaps, more=True),
        *[f"$JS.FC.{s}.>" for s in (bundles, snaps)],
    ]
    return {
        "publish": {"allow": publish},
        "subscribe": {"allow": [
            commands,
            f"{subjects.runner_inbox(runner_id)}.>",
        ]},
        # answer the commands it takes, on the coordinator's reply subject
        "allow_responses": True,
    }


def servers(nats_url: str) -> list[str]:
    """`ASH_NATS_URL` as a server list: a cluster's servers may be given comma-separated."""
    return [u.strip() for u in nats_url.split(",") if u.strip()]


def connect_options(
    *,
    inbox_prefix: str,
    user: str = "",
    password: str = "",
    tls_ca: str = "",
    tls_cert: str = "",
    tls_key: str = "",
) -> dict[str, Any]:
    """Keyword arguments for `nats.connect`: the inbox prefix, credentials and TLS.

    TLS is used when the URL says `tls://`, the server requires it, or `tls_ca` is set; `tls_ca`
    is the CA bundle that signed the server's certificate (default: the system's), and
    `tls_cert` with `tls_key` a client certificate for servers that verify clients.
    """
    options: dict[str, Any] = {"inbox_prefix": inbox_prefix}
    if user:
        options["user"] = user
        options["password"] = password
    if tls_ca or tls_cert:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls_ca or None)
        if tls_cert:
            context.load_cert_chain(tls_cert, tls_key or None)
        options["tls"] = context
    return options
