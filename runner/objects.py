"""Objects of a JetStream object store read and re-labelled in fewer round trips than
nats-py's `ObjectStore` takes (its `get` reads the object's info again and creates and deletes
an ordered consumer for the chunks; its `update_meta` reads the info again before writing it).

The layout is the object store's (NATS ADR-20): stream `OBJ_<bucket>`, an object's info as the
last message on `$O.<bucket>.M.<base64url(name)>` (JSON, `ObjectInfo`), its data as the
messages on `$O.<bucket>.C.<nuid>` in order.

    read_chunks   the data of an object whose info is in hand, by direct gets of its chunk
                  messages one after the other (~0.2 ms each; a snapshot is one or a few);
                  False when a chunk is not there (a replica behind its leader): the caller
                  falls back to `ObjectStore.get`, which reads through the stream's leader
    put_info      the object's info written back (a new description), as `update_meta` does,
                  from the info in hand: one acked publish

What the data must be is checked by whoever reads it (a snapshot's size and sha-256 are in its
manifest, checked before it is unpacked).
"""

from __future__ import annotations

import base64
import json
from typing import IO

from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError


def _stream(bucket: str) -> str:
    return f"OBJ_{bucket}"


def meta_subject(bucket: str, name: str) -> str:
    return f"$O.{bucket}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"


async def read_chunks(js: JetStreamContext, bucket: str, info: api.ObjectInfo,
                      out: IO[bytes]) -> bool:
    """Write the object's data to `out`; False (with `out` partly written) when a chunk
    could not be had this way, or the chunks do not add up to the info's size."""
    if not info.nuid:
        return False
    subject = f"$O.{bucket}.C.{info.nuid}"
    seq, size = 1, 0
    for _ in range(info.chunks or 0):
        try:
            raw = await js.get_msg(_stream(bucket), seq=seq, subject=subject, next=True,
                                   direct=True)
        except NotFoundError:
            return False
        data = raw.data or b""
        out.write(data)
        size += len(data)
        seq = int(raw.seq) + 1
    return size == (info.size or 0)


async def put_info(js: JetStreamContext, bucket: str, info: api.ObjectInfo) -> None:
    """Write `info` as the object's info (replacing the previous one, as `update_meta`)."""
    info.headers = None  # as update_meta leaves them
    await js.publish(
        meta_subject(bucket, info.name),
        json.dumps(info.as_dict()).encode(),
        headers={api.Header.ROLLUP: "sub"},
    )
