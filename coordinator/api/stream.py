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
LIVE_GAP_S = 0.5  # a live follower waits this long for a missing event, then reads the log
_READY_WAIT_S = 0.001  # how long a read said to be ready may wait before frames go out
LIVE_CHECK_MIN_S = 1.0  # a quiet live wait at least this long looks at the log before ending
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
    """One event as delivered: decoded, its JSON, and its stream sequence (None when it came
    by the live subscription, which does not carry it)."""

    event: events.Event
    data: bytes
    stream_seq: int | None


class Follower:
    """Yields each event of one session with seq > `after` once, in order.

    Two sources:
      log   `start` given: an ordered JetStream consumer on the session's subject from
            `start.stream_seq` (a replay, then live).
      live  `start` None and `nc` given: a plain NATS subscription on the session's subject,
            for a turn about to start (the runner publishes each event there; JetStream stores
            it and NATS hands the same message to plain subscribers, so following costs no
            consumer on the server and no extra hop). Set `after` with `begin_after` once
            known. Plain NATS drops messages a slow subscriber cannot take, or that come
            while reconnecting, so the live source falls back to the log: when a gap is not
            filled within `live_gap_s`, or a wait ends quiet while the log holds events past
            the last one passed on, it re-reads from the log where it stands (`locate`) and
            goes on from there.
      `start` None and no `nc`: an ordered consumer delivering only new events.

    An event that comes after a gap (seq > last + 1) is held until the missing ones arrive
    (a republished event lands later in the log), for at most GAP_WAIT_S; then the gap is
    given up on, logged, and the held events go out."""

    def __init__(
        self, js: JetStreamContext, session_id: str, start: Start | None, *,
        gap_wait_s: float = GAP_WAIT_S, nc: Any = None, live_gap_s: float = LIVE_GAP_S,
    ) -> None:
        self._js = js
        self.session_id = session_id
        self._start = start
        self.last = start.after if start is not None else 0
        self._sub: Any = None
        self._live = start is None and nc is not None
        self._begun = False
        self._nc = nc
        self._held: dict[int, Delivered] = {}
        self._gap_wait_s = gap_wait_s
        self._live_gap_s = live_gap_s
        self._gap_deadline = 0.0

    @property
    def live(self) -> bool:
        """Reading the plain subscription (not yet fallen back to the log)."""
        return self._live

    async def __aenter__(self) -> Follower:
        if self._live:
            # Subscribed before the command that starts the turn is sent on the same
            # connection, so the server has the subscription before any event exists.
            self._sub = await self._nc.subscribe(
                subjects.session_events(self.session_id),
                pending_msgs_limit=10_000,
                pending_bytes_limit=32 * 1024 * 1024,
            )
        else:
            self._sub = await self._log_subscription(self._start)
        return self

    async def _log_subscription(self, start: Start | None) -> Any:
        if start is None:
            policy, config = api.DeliverPolicy.NEW, None
        else:
            policy = api.DeliverPolicy.BY_START_SEQUENCE
            config = api.ConsumerConfig(opt_start_seq=max(1, start.stream_seq))
        return await self._js.subscribe(
            subjects.session_events(self.session_id),
            stream=subjects.EVENTS_STREAM,
            config=config,
            ordered_consumer=True,
            deliver_policy=policy,
            pending_msgs_limit=10_000,
            pending_bytes_limit=32 * 1024 * 1024,
        )

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def ready(self) -> bool:
        """Whether the next event may be had without waiting: held and next in line, or
        delivered and not read yet."""
        return (self.last + 1) in self._held or (
            self._sub is not None and self._sub.pending_msgs > 0)

    def begin_after(self, after: int) -> None:
        """Live: pass on only events with seq > `after` (the turn's first is `after` + 1)."""
        self.last = max(self.last, after)
        self._begun = True  # from here, a first event past `after` + 1 is a gap too

    async def to_log(self, why: str) -> None:
        """Live -> log: go on from the log, from the last event passed on."""
        if not self._live:
            return
        logger.info("session %s: following from the log after seq %d (%s)", self.session_id,
                    self.last, why)
        start = await EventLog(self._js, self.session_id).locate(self.last)
        sub = await self._log_subscription(start)
        old, self._sub, self._live = self._sub, sub, False
        with contextlib.suppress(Exception):
            await old.unsubscribe()
        if self._held:  # what is missing may be in the log: wait for it as long as a log read
            self._gap_deadline = time.monotonic() + self._gap_wait_s

    async def _missed(self) -> bool:
        """Live: whether the log holds an event of the session past the last one passed on."""
        last = await EventLog(self._js, self.session_id).last()
        return last is not None and last[1].seq > self.last

    async def next(self, timeout: float) -> Delivered | None:
        """The next new event, or None after `timeout` seconds without one."""
        assert self._sub is not None, "enter the follower first"
        deadline = time.monotonic() + timeout
        while True:
            if (ready := self._pop_held()) is not None:
                return ready
            now = time.monotonic()
            if self._live and self._held and now >= self._gap_deadline:
                await self.to_log(f"events {self.last + 1}..{min(self._held) - 1} did not come")
                continue
            left = deadline - now
            if left <= 0:
                if self._live and timeout >= LIVE_CHECK_MIN_S and await self._missed():
                    await self.to_log("the log is ahead of the subscription")
                    deadline = time.monotonic() + timeout
                    continue
                return None
            if self._held:
                left = max(0.0, min(left, self._gap_deadline - now))
            try:
                msg = await self._sub.next_msg(timeout=left)
            except nats.errors.TimeoutError:
                if self._held and not self._live and time.monotonic() >= self._gap_deadline:
                    self._give_up_gap()
                continue
            try:
                ev = codec.decode_event(msg.data)
            except (codec.DecodeError, codec.ValidationError):
                logger.warning("skipping an undecodable event of session %s", self.session_id)
                continue
            if ev.seq <= self.last or ev.seq in self._held:
                continue  # before the start, or a re-published duplicate
            got = Delivered(ev, msg.data, None if self._live else msg.metadata.sequence.stream)
            if (self.last or self._begun) and ev.seq != self.last + 1:
                if not self._held:
                    self._gap_deadline = time.monotonic() + (
                        self._live_gap_s if self._live else self._gap_wait_s)
                self._held[ev.seq] = got
                if len(self._held) > GAP_HELD_MAX:
                    if self._live:
                        await self.to_log("too many events held after a gap")
                    else:
                        self._give_up_gap()
                elif not self._live and time.monotonic() >= self._gap_deadline:
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


async def wait_history(svc: Services, session_id: str, seq: int, stream_seq: int | None) -> bool:
    """Wait (bounded) until the event `seq` of the session is recorded. `stream_seq`: where
    it sits in the log, None when it came live (then the log is asked, if it comes to that)."""
    # Nearly always this process's recorder has it, or will in a moment (with one
    # coordinator it records everything): no need to ask JetStream.
    if await svc.recorder.wait_recorded(session_id, seq, _RECORD_LOCAL_S):
        return True
    deadline = time.monotonic() + RECORD_WAIT_S
    while True:
        # The shared consumer's ack floor covers what any coordinator recorded (a replayed
        # turn is long recorded: one look); this process's recorder wakes us at once.
        with contextlib.suppress(Exception):
            if stream_seq is None:
                # The session's newest event in the log is this one or a later one: once
                # the ack floor passes it, this one is recorded too.
                last = await EventLog(svc.layout.js, session_id).last()
                if last is not None and last[1].seq >= seq:
                    stream_seq = last[0]
            if stream_seq is not None:
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
    # Events already delivered are written together: one write (a syscall, a wake-up of the
    # client) for a burst instead of one per event.
    frames: list[bytes] = []

    async def flush() -> None:
        if frames:
            await resp.write(b"".join(frames))
            frames.clear()

    while True:
        if frames and not follower.ready():
            await flush()
        got = await follower.next(_READY_WAIT_S if frames else keepalive)
        if got is None:
            if frames:
                await flush()
                continue
            if still_there is not None and not await still_there():
                return None
            await resp.write(sse.KEEPALIVE)
            continue
        ev = got.event
        if not select(ev):
            continue
        if isinstance(ev, events.Done):
            await flush()
            await wait_history(svc, follower.session_id, ev.seq, got.stream_seq)
        frames.append(sse.frame(ev.seq, _TAGS[type(ev)], got.data))
        if isinstance(ev, events.Done) and until_done:
            await flush()
            return ev
        if stop_at is not None and ev.seq >= stop_at:
            await flush()
            return None


async def wait_done(
    svc: Services, follower: Follower, timeout_s: float
) -> tuple[events.Done, int | None] | None:
    """The next `done` the follower delivers and its stream seq, or None after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        got = await follower.next(left)
        if got is None:
            return None
        if isinstance(got.event, events.Done):
            return got.event, got.stream_seq
    return None
