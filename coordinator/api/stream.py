"""Reading a session's event log for HTTP streams: where a replay starts, following it, and
writing it as SSE.

A session's events live in the one JetStream stream `ASH_EVENTS` on the session's subject,
interleaved with every other session's. Their per-session `seq` grows with their stream
sequence (the runner publishes them in order on one connection, and a runner taking a
session over continues from the log's last seq). The exception: an event whose publish was
lost is republished by the runner after later ones were stored (`runner/publisher.py`); the
follower holds the events after such a gap until it is filled (bounded), so a client still
reads them in order. So "where does the event after seq N sit in
the stream?" is a search over a monotonic function, answered with direct gets:

    probe(x) = the session's first event at stream sequence >= x   (`next_by_subj`, one get)

`locate` reads the session's last event (one `last_by_subj` get); when that is already at or
before N it starts one past it. Otherwise it gallops backwards from there (x = last-1, last-3,
last-7, ...) until a probe lands on an event <= N, then bisects between the two. A re-attach
is nearly always to the current or a recent turn, near the end of the stream, so this costs
about 2*log2(distance) gets (a handful, ~0.2 ms each) however long the stream is, needs no
state in any coordinator or in the store, and any coordinator can serve it. An ordered
consumer then delivers from that stream sequence with the session's subject as its filter.

Why not the alternatives: replaying the session from its start (DeliverPolicy.ALL) costs the
whole session on every re-attach; a cursor kept by the recorder lags the log (the recorder may
not have seen the events being asked for yet) and needs a schema change.

The follower never trusts the start to be exact: it passes on only events with seq greater than
the last one it passed on, so the stream is gapless and duplicate-free even if the log held a
re-published event. A probe that finds nothing (a replica behind the leader) moves the start
earlier, never later, which is always safe.

A `done` frame is written only once the history of the turn is recorded: by this process's
recorder (fast path: waited on in-process for a moment before anything else), or by any
coordinator's, which the shared durable consumer's ack floor shows (several coordinators
split the recording between them).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import nats.errors
from aiohttp import web
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError

from coordinator.api import sse
from coordinator.api.common import Services
from coordinator.recorder import DURABLE
from protocol import codec, events, subjects

logger = logging.getLogger(__name__)

RECORD_WAIT_S = 5.0  # longest wait for the history of a turn before its `done` goes out
GAP_WAIT_S = 10.0  # how long events after a missing one are held for it (the runner
#                    republishes an event whose ack did not come within 5 s)
GAP_HELD_MAX = 4096  # ... and at most this many
_RECORD_POLL_S = 0.05
_RECORD_LOCAL_S = 0.002  # how long to wait for this process's recorder before asking JetStream
_TAGS: dict[type, str] = {t: t.__struct_config__.tag for t in events.Event.__args__}  # type: ignore[attr-defined]

Located = tuple[int, events.Event]
"""An event of the log and its stream sequence."""


class Probe(Protocol):
    """The session's first event at stream sequence >= `stream_seq`, or None."""

    async def __call__(self, stream_seq: int) -> Located | None: ...


async def last_where(
    probe: Probe, last: Located, holds: Callable[[events.Event], bool]
) -> Located | None:
    """The session's last event for which `holds` is true, or None if there is none.

    `holds` must be true for a prefix of the session's events and false after it (seq <= N;
    not of the latest turn); `last` is the session's last event. Gallops back from `last`,
    then bisects, so the cost grows with the distance from the end, not the stream's size.
    """
    if holds(last[1]):
        return last
    bad = last[0]  # the first session event at stream seq >= bad does not hold
    step = 1
    good: Located | None = None
    while good is None:
        if bad <= 1:
            return None
        x = max(1, bad - step)
        found = await probe(x)
        if found is not None and found[0] < bad and holds(found[1]):
            good = found
        else:
            bad = x
            step *= 2
    lo, hi = good[0] + 1, bad
    while lo < hi:
        mid = (lo + hi) // 2
        found = await probe(mid)
        if found is not None and found[0] < hi and holds(found[1]):
            good = found
            lo = found[0] + 1
        else:
            hi = mid
    return good


@dataclass(slots=True, frozen=True)
class Start:
    """Where to read a session's log from: the stream sequence to start the consumer at, the
    seq after which events are passed on, and the session's last seq when located (0: none)."""

    stream_seq: int
    after: int
    last_seq: int = 0
    last_is_done: bool = True


class EventLog:
    """One session's events in the `ASH_EVENTS` stream, read with direct gets."""

    def __init__(self, js: JetStreamContext, session_id: str) -> None:
        self._js = js
        self.session_id = session_id
        self.subject = subjects.session_events(session_id)

    async def last(self) -> Located | None:
        """The session's newest event, or None when it has none."""
        try:
            raw = await self._js.get_msg(subjects.EVENTS_STREAM, subject=self.subject, direct=True)
        except NotFoundError:
            return None
        return _located(raw)

    async def probe(self, stream_seq: int) -> Located | None:
        """The session's first event at stream sequence >= `stream_seq` (a `Probe`)."""
        try:
            raw = await self._js.get_msg(
                subjects.EVENTS_STREAM, seq=stream_seq, subject=self.subject, next=True, direct=True
            )
        except NotFoundError:
            return None
        return _located(raw)

    async def locate(self, after: int | None) -> Start:
        """Where to start so that every event with seq > `after` is delivered, and only those.

        `after` None: the running turn from its first event, or the next turn if none runs.
        """
        last = await self.last()
        if last is None:
            info = await self._js.stream_info(subjects.EVENTS_STREAM)
            return Start(stream_seq=info.state.last_seq + 1, after=after or 0)
        last_seq, last_done = last[1].seq, isinstance(last[1], events.Done)
        if after is None:
            turn = last[1].turn_id
            found = last if last_done else await last_where(
                self.probe, last, lambda ev: ev.turn_id != turn
            )
            after = found[1].seq if found is not None else 0
        else:
            cut = after
            found = await last_where(self.probe, last, lambda ev: ev.seq <= cut)
        start = found[0] + 1 if found is not None else 1
        return Start(stream_seq=start, after=after, last_seq=last_seq, last_is_done=last_done)


def _located(raw: Any) -> Located | None:
    try:
        return int(raw.seq), codec.decode_event(raw.data or b"")
    except (codec.DecodeError, codec.ValidationError, TypeError):
        logger.warning("undecodable event at stream seq %s on %s", raw.seq, raw.subject)
        return None


@dataclass(slots=True, frozen=True)
class Delivered:
    """One event as the log delivered it: decoded, its JSON, and its stream sequence."""

    event: events.Event
    data: bytes
    stream_seq: int


class Follower:
    """An ordered consumer on one session's subject: yields each event with seq > `after`
    once, in order. `start` None: only events published from now on.

    An event that comes after a gap (seq > last + 1) is held until the missing ones arrive
    (a republished event lands later in the log), for at most GAP_WAIT_S; then the gap is
    given up on, logged, and the held events go out."""

    def __init__(
        self, js: JetStreamContext, session_id: str, start: Start | None, *,
        gap_wait_s: float = GAP_WAIT_S,
    ) -> None:
        self._js = js
        self.session_id = session_id
        self._start = start
        self.last = start.after if start is not None else 0
        self._sub: JetStreamContext.PushSubscription | None = None
        self._held: dict[int, Delivered] = {}
        self._gap_wait_s = gap_wait_s
        self._gap_deadline = 0.0

    async def __aenter__(self) -> Follower:
        if self._start is None:
            policy, config = api.DeliverPolicy.NEW, None
        else:
            policy = api.DeliverPolicy.BY_START_SEQUENCE
            config = api.ConsumerConfig(opt_start_seq=max(1, self._start.stream_seq))
        self._sub = await self._js.subscribe(
            subjects.session_events(self.session_id),
            stream=subjects.EVENTS_STREAM,
            config=config,
            ordered_consumer=True,
            deliver_policy=policy,
            pending_msgs_limit=10_000,
            pending_bytes_limit=32 * 1024 * 1024,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def next(self, timeout: float) -> Delivered | None:
        """The next new event, or None after `timeout` seconds without one."""
        assert self._sub is not None, "enter the follower first"
        deadline = time.monotonic() + timeout
        while True:
            if (ready := self._pop_held()) is not None:
                return ready
            now = time.monotonic()
            left = deadline - now
            if left <= 0:
                return None
            if self._held:
                left = max(0.0, min(left, self._gap_deadline - now))
            try:
                msg = await self._sub.next_msg(timeout=left)
            except nats.errors.TimeoutError:
                if self._held and time.monotonic() >= self._gap_deadline:
                    self._give_up_gap()
                    continue
                if time.monotonic() >= deadline:
                    return None
                continue
            try:
                ev = codec.decode_event(msg.data)
            except (codec.DecodeError, codec.ValidationError):
                logger.warning("skipping an undecodable event of session %s", self.session_id)
                continue
            if ev.seq <= self.last or ev.seq in self._held:
                continue  # before the start, or a re-published duplicate
            got = Delivered(ev, msg.data, msg.metadata.sequence.stream)
            if self.last and ev.seq != self.last + 1:
                if not self._held:
                    self._gap_deadline = time.monotonic() + self._gap_wait_s
                self._held[ev.seq] = got
                if len(self._held) > GAP_HELD_MAX or time.monotonic() >= self._gap_deadline:
                    self._give_up_gap()
                continue
            self.last = ev.seq
            return got

    def _pop_held(self) -> Delivered | None:
        """The held event that comes next, if the gap before it has been filled."""
        got = self._held.pop(self.last + 1, None)
        if got is not None:
            self.last = got.event.seq
        return got

    def _give_up_gap(self) -> None:
        """Stop waiting for the missing events: go on from the first held one."""
        first = min(self._held)
        logger.warning("session %s: events %d..%d are missing from the log",
                       self.session_id, self.last + 1, first - 1)
        self.last = first - 1
        self._gap_deadline = time.monotonic() + self._gap_wait_s  # for a further gap in the held


async def wait_history(svc: Services, session_id: str, seq: int, stream_seq: int) -> bool:
    """Wait (bounded) until the event `seq` of the session, at `stream_seq`, is recorded."""
    # Nearly always this process's recorder has it, or will in a moment (with one
    # coordinator it records everything): no need to ask JetStream.
    if await svc.recorder.wait_recorded(session_id, seq, _RECORD_LOCAL_S):
        return True
    deadline = time.monotonic() + RECORD_WAIT_S
    while True:
        # The shared consumer's ack floor covers what any coordinator recorded (a replayed
        # turn is long recorded: one look); this process's recorder wakes us at once.
        with contextlib.suppress(Exception):
            info = await svc.layout.js.consumer_info(subjects.EVENTS_STREAM, DURABLE)
            if info.ack_floor is not None and info.ack_floor.stream_seq >= stream_seq:
                return True
        if await svc.recorder.wait_recorded(session_id, seq, _RECORD_POLL_S):
            return True
        if time.monotonic() >= deadline:
            logger.warning("history of session %s not recorded up to seq %d in time", session_id, seq)
            return False


Select = Callable[[events.Event], bool]
StillThere = Callable[[], Awaitable[bool]]


async def pump(
    svc: Services,
    resp: web.StreamResponse,
    follower: Follower,
    *,
    select: Select = lambda ev: True,
    until_done: bool = True,
    still_there: StillThere | None = None,
    stop_at: int | None = None,
) -> events.Done | None:
    """Write the follower's selected events to `resp` as SSE, keep-alives while it is quiet.

    Returns the first selected `done` when `until_done`; else runs until `still_there` says
    the session is gone, the event `stop_at` was written, or the client leaves (the write
    fails, or aiohttp cancels the handler).
    """
    keepalive = svc.config.keepalive_s
    if stop_at is not None and follower.last >= stop_at:
        return None
    while True:
        got = await follower.next(keepalive)
        if got is None:
            if still_there is not None and not await still_there():
                return None
            await resp.write(sse.KEEPALIVE)
            continue
        ev = got.event
        if not select(ev):
            continue
        if isinstance(ev, events.Done):
            await wait_history(svc, follower.session_id, ev.seq, got.stream_seq)
        await resp.write(sse.frame(ev.seq, _TAGS[type(ev)], got.data))
        if isinstance(ev, events.Done) and until_done:
            return ev
        if stop_at is not None and ev.seq >= stop_at:
            return None


async def wait_done(
    svc: Services, follower: Follower, timeout_s: float
) -> tuple[events.Done, int] | None:
    """The next `done` the follower delivers and its stream seq, or None after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        got = await follower.next(left)
        if got is None:
            return None
        if isinstance(got.event, events.Done):
            return got.event, got.stream_seq
    return None
