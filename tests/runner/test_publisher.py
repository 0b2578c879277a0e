"""The event publisher against a real nats-server: pipelined events are stored in order, once
each; `done` goes out only once every earlier event is stored; events lost with a broken
connection are republished from the window, and none is stored twice."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.js import JetStreamContext

from ash.embedded_nats import start_nats
from protocol import codec, events, subjects
from protocol.jetstream import ensure_layout
from runner.publisher import EventPublisher, last_seq


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp: Path = tmp_path_factory.mktemp("nats")
    server = start_nats(tmp / "nats", log_path=tmp / "nats.log")
    try:
        yield server.url
    finally:
        server.stop()


class Proxy:
    """A TCP proxy in front of nats-server that can hold the client's bytes and cut the
    connection, losing what it holds (what a connection that breaks mid-write loses)."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("nats://").rsplit(":", 1)
        self._up = (host, int(port))
        self.holding = False
        self.held = 0  # bytes held (and lost on a cut) since holding began
        self.connections = 0
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> Proxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"nats://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        assert self._server is not None
        self._server.close()

    def cut(self) -> None:
        """Close every connection; held bytes are lost."""
        self.holding = False
        for w in self._writers:
            w.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection(*self._up)
        self._writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    if up and self.holding:
                        self.held += len(data)
                        continue  # swallowed: lost when the connection is cut
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))


@contextlib.asynccontextmanager
async def connected(url: str) -> AsyncIterator[tuple[nats.NATS, JetStreamContext]]:
    nc = await nats.connect(url, reconnect_time_wait=0.05, max_reconnect_attempts=-1)
    try:
        js = nc.jetstream()
        await ensure_layout(js)
        yield nc, js
    finally:
        await nc.close()


async def stored(js: JetStreamContext, session_id: str) -> list[int]:
    """The seqs of the session's events, in the stream's order."""
    sub = await js.subscribe(subjects.session_events(session_id), stream=subjects.EVENTS_STREAM,
                             ordered_consumer=True)
    info = await js.stream_info(subjects.EVENTS_STREAM, subjects_filter=subjects.session_events(session_id))
    total = (info.state.subjects or {}).get(subjects.session_events(session_id), 0)
    seqs = []
    for _ in range(total):
        msg = await sub.next_msg(timeout=5)
        seqs.append(codec.decode_event(msg.data).seq)
    await sub.unsubscribe()
    return seqs


async def test_a_turn_is_stored_in_order_once_each_and_done_last(nats_url: str) -> None:
    async with connected(nats_url) as (_, js):
        pub = EventPublisher(js, "pub-order", 0, window=64)
        for i in range(300):
            await pub.emit(events.TextDelta, "t1", delta=f"d{i}")
        await pub.emit(events.Done, "t1", reason="completed")
        # Once `done` is out, everything before it is stored: nothing is left to ack.
        assert pub.unacked == 0
        assert await stored(js, "pub-order") == list(range(1, 302))
        # A second runner taking the session over continues the sequence.
        assert await last_seq(js, "pub-order") == 301


async def test_events_lost_with_a_broken_connection_are_republished_once(nats_url: str) -> None:
    async with Proxy(nats_url) as proxy:
        async with connected(proxy.url) as (nc, js):
            pub = EventPublisher(js, "pub-lost", 0, ack_timeout_s=0.5)
            for i in range(20):
                await pub.emit(events.TextDelta, "t1", delta=f"a{i}")
            await pub.flush()
            proxy.holding = True  # what is published now never reaches the server ...
            for i in range(20):
                await pub.emit(events.TextDelta, "t1", delta=f"b{i}")
            while proxy.held == 0:  # ... once the client has written it
                await asyncio.sleep(0.01)
            proxy.cut()  # ... and is lost with the connection
            while not nc.is_connected or proxy.connections < 2:
                await asyncio.sleep(0.01)
            for i in range(20):  # published after the reconnect: stored, after a gap
                await pub.emit(events.TextDelta, "t1", delta=f"c{i}")
            await pub.emit(events.Done, "t1", reason="completed")
            seqs = await stored(js, "pub-lost")
            # Every event exactly once; `done` (61) last, after the republished ones.
            assert sorted(seqs) == list(range(1, 62))
            assert seqs[-1] == 61
            assert proxy.held > 0


async def test_done_waits_for_earlier_events_which_a_cut_loses_and_are_republished(nats_url: str) -> None:
    async with Proxy(nats_url) as proxy:
        async with connected(proxy.url) as (_, js):
            pub = EventPublisher(js, "pub-stall", 0, ack_timeout_s=0.3)
            for i in range(10):
                await pub.emit(events.TextDelta, "t1", delta=f"a{i}")
            await pub.flush()
            proxy.holding = True
            for i in range(10):
                await pub.emit(events.TextDelta, "t1", delta=f"b{i}")
            done = asyncio.create_task(pub.emit(events.Done, "t1", reason="completed"))
            while proxy.held == 0:
                await asyncio.sleep(0.01)
            # `done` cannot go out while earlier events are not confirmed stored.
            assert not done.done()
            proxy.cut()  # the held bytes are lost; the client reconnects, the publisher retries
            await asyncio.wait_for(done, 30)
            seqs = await stored(js, "pub-stall")
            assert sorted(seqs) == list(range(1, 22)) and seqs[-1] == 21
