"""The byte streams and uploads between coordinator and runner, over a real nats-server.

Both ends are the real classes (`runner.streams.StreamSender`, `coordinator.transfer`); only the
runner's command handling is a stand-in that records what it was sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NatsClient

from ash.embedded_nats import NatsServer, start_nats
from coordinator.bus import RunnerBus
from coordinator.errors import ApiError
from coordinator.transfer import StreamBroken, StreamReceiver, upload
from protocol import codec, subjects
from protocol.commands import (
    Accepted,
    CloseUpload,
    Command,
    OpenUpload,
    Rejected,
    UploadChunk,
    UploadDone,
)
from protocol.errors import ErrorCode, ErrorInfo
from protocol.files import CHUNK_BYTES
from protocol.streams import Chunk
from runner.streams import ListenerGone, StreamSender

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    srv = start_nats(tmp_path_factory.mktemp("nats"))
    yield srv
    srv.stop()


@pytest.fixture
async def nc(server: NatsServer) -> AsyncIterator[NatsClient]:
    client = await nats.connect(server.url)
    yield client
    await client.close()


async def test_chunks_arrive_in_order_and_each_waits_for_its_ack(nc: NatsClient) -> None:
    async with StreamReceiver(nc, "s1") as rx:
        sender = StreamSender(nc, subjects.stream("s1"), "s1", ack_timeout_s=5)
        big = bytes(range(256)) * (CHUNK_BYTES // 256) + b"tail"  # two chunks
        sending = asyncio.create_task(sender.send(big))
        items = rx.messages(tick=0.5)
        first = await anext(items)
        assert isinstance(first, Chunk) and first.seq == 1 and len(first.data) == CHUNK_BYTES
        await asyncio.sleep(0.3)  # give an unbounded sender the chance to run ahead
        assert not sending.done(), "the second chunk must wait for the first one's ack"
        await rx.ack()
        second = await anext(items)
        assert isinstance(second, Chunk) and second.seq == 2 and second.data == b"tail"
        await rx.ack()
        await sending
        assert first.data + second.data == big and sender.size == len(big)
        ending = asyncio.create_task(sender.end(exit_code=3))
        end = await anext(items)
        await rx.ack()
        await ending
        assert end is not None and not isinstance(end, Chunk)
        assert (end.seq, end.exit_code, end.size) == (3, 3, len(big))


async def test_heartbeats_are_acked_and_surface_as_idle_ticks(nc: NatsClient) -> None:
    async with StreamReceiver(nc, "s2") as rx:
        sender = StreamSender(nc, subjects.stream("s2"), "s2", ack_timeout_s=5)
        beat = asyncio.create_task(sender.send(b""))
        items = rx.messages(tick=5)
        assert await anext(items) is None
        await beat  # acked by the receiver itself
        assert sender.seq == 1


async def test_a_sender_learns_at_once_that_nobody_listens(nc: NatsClient) -> None:
    rx = StreamReceiver(nc, "s3")
    async with rx:
        pass  # subscribed, then gone: the HTTP client left
    sender = StreamSender(nc, subjects.stream("s3"), "s3", ack_timeout_s=5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ListenerGone):
        await sender.send(b"anyone?")
    assert loop.time() - started < 2  # no responders, not the ack timeout


async def test_a_silent_runner_and_a_gap_break_the_stream(nc: NatsClient) -> None:
    async with StreamReceiver(nc, "s4", idle_timeout_s=0.3) as rx:
        with pytest.raises(StreamBroken) as e:
            async for _ in rx.messages(tick=0.1):
                pass
        assert e.value.info.code == ErrorCode.runner_unreachable
    async with StreamReceiver(nc, "s5") as rx:
        skipped = Chunk(stream_id="s5", seq=2, data=b"x")
        await nc.publish(subjects.stream("s5"), codec.encode(skipped))
        with pytest.raises(StreamBroken, match="gap"):
            async for _ in rx.messages(tick=1):
                pass


class FakeRunner:
    """Answers a runner's command subject; records the commands; refuses what it is told to."""

    def __init__(self, nc: NatsClient, refuse_chunk: int | None = None) -> None:
        self.nc = nc
        self.commands: list[Command] = []
        self.refuse_chunk = refuse_chunk

    async def __aenter__(self) -> FakeRunner:
        self.sub = await self.nc.subscribe(subjects.runner_commands("r1"), cb=self.on_msg)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.sub.unsubscribe()

    async def on_msg(self, msg: nats.aio.msg.Msg) -> None:
        cmd = codec.decode_command(msg.data)
        self.commands.append(cmd)
        reply: object = Accepted(runner_id="r1")
        if isinstance(cmd, UploadChunk) and cmd.seq == self.refuse_chunk:
            reply = Rejected(runner_id="r1", error=ErrorInfo(code="payload_too_large", message="full"))
        elif isinstance(cmd, CloseUpload) and cmd.commit:
            reply = UploadDone(runner_id="r1", path="p", size=cmd.size, created=True)
        await msg.respond(codec.encode(reply))

    def kinds(self) -> list[str]:
        return [type(c).__name__ + (f"({c.commit})" if isinstance(c, CloseUpload) else "")
                for c in self.commands]  # fmt: skip


class body:  # noqa: N801 -- reads like a call in the tests
    """A request body that arrives in small, uneven pieces, like one off a socket."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def read(self, n: int = -1) -> bytes:
        n = min(n if n >= 0 else len(self._data), 70_000)
        piece, self._data = self._data[:n], self._data[n:]
        return piece


async def test_an_upload_goes_in_chunks_and_commits(nc: NatsClient) -> None:
    data = b"a" * (CHUNK_BYTES * 2 + 10)
    async with FakeRunner(nc) as runner:
        done = await upload(RunnerBus(nc), "r1", "sess", body(data), kind="file", path="p",
                            max_bytes=10 * CHUNK_BYTES, upload_id="u1")  # fmt: skip
    assert done.size == len(data)
    assert runner.kinds() == ["OpenUpload", "UploadChunk", "UploadChunk", "UploadChunk",
                              "CloseUpload(True)"]  # fmt: skip
    chunks = [c for c in runner.commands if isinstance(c, UploadChunk)]
    assert [c.seq for c in chunks] == [1, 2, 3] and b"".join(c.data for c in chunks) == data
    assert isinstance(runner.commands[0], OpenUpload) and runner.commands[0].path == "p"


async def test_an_oversize_upload_is_413_and_aborted_on_the_runner(nc: NatsClient) -> None:
    async with FakeRunner(nc) as runner:
        with pytest.raises(ApiError) as e:
            await upload(RunnerBus(nc), "r1", "sess", body(b"b" * (CHUNK_BYTES + 1)), kind="file",
                         path="p", max_bytes=CHUNK_BYTES, upload_id="u2")  # fmt: skip
    assert e.value.status == 413 and e.value.info.code == ErrorCode.payload_too_large
    # The byte too many never left the coordinator, and the runner was told to drop the rest.
    assert runner.kinds() == ["OpenUpload", "UploadChunk", "CloseUpload(False)"]


async def test_a_refused_chunk_aborts_the_upload_with_the_runners_error(nc: NatsClient) -> None:
    async with FakeRunner(nc, refuse_chunk=2) as runner:
        with pytest.raises(ApiError) as e:
            await upload(RunnerBus(nc), "r1", "sess", body(b"c" * (CHUNK_BYTES * 3)), kind="archive",
                         max_bytes=10 * CHUNK_BYTES, upload_id="u3")  # fmt: skip
    assert e.value.status == 413 and e.value.info.message == "full"
    assert runner.kinds() == ["OpenUpload", "UploadChunk", "UploadChunk", "CloseUpload(False)"]


async def test_uploads_to_a_missing_runner_are_503(nc: NatsClient, tmp_path: Path) -> None:
    with pytest.raises(ApiError) as e:
        await upload(RunnerBus(nc), "nobody", "sess", body(b"x"), kind="file", path="p",
                      max_bytes=10, upload_id="u4")  # fmt: skip
    assert e.value.status == 503 and e.value.info.code == ErrorCode.runner_unreachable
