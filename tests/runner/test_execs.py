"""ExecService over a real nats-server, with the coordinator's real receiver.

The sandbox is the one thing faked: its `command()` runs the argv on this host in a fresh pid
namespace that dies with its launcher (`unshare --kill-child`, as bwrap's does), so a kill takes
everything the command started with it. The e2e tests run the same service against real bwrap
sandboxes. What is under test here is the service: exit codes, the environment prelude, the
timeout, the output cap, backpressure and a listener that goes away.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NatsClient

from ash.embedded_nats import NatsServer, start_nats
from coordinator.transfer import StreamReceiver
from protocol.commands import StartExec
from protocol.errors import ErrorCode
from protocol.streams import Chunk, End
from runner.execs import ExecService, exec_argv
from runner.sessions import SessionError

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a pid namespace"),
]


@dataclass
class HostSandbox:
    workspace: str

    def command(self, argv_inside: list[str]) -> list[str]:
        # HOME is the workspace: the login shell of an exec must not read this host's own
        # ~/.profile (which may do anything, e.g. wait on a pyenv rehash lock).
        return ["env", f"HOME={self.workspace}", "unshare", "--pid", "--fork", "--kill-child",
                "--", *argv_inside]


@dataclass
class _Session:
    sandbox: HostSandbox


class Sessions:
    runner_id = "r1"

    def __init__(self, workspace: Path) -> None:
        self._session = _Session(HostSandbox(str(workspace)))

    def get(self, session_id: str) -> _Session:
        if session_id != "s1":
            raise SessionError(ErrorCode.not_found, "no such session")
        return self._session


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


async def collect(rx: StreamReceiver) -> tuple[dict[str, bytes], End]:
    out = {"stdout": b"", "stderr": b""}
    async for item in rx.messages(tick=1):
        if isinstance(item, Chunk):
            out[item.channel] += item.data
        elif isinstance(item, End):
            await rx.ack()
            return out, item
        if item is not None:
            await rx.ack()
    raise AssertionError("unreachable")


async def run(svc: ExecService, nc: NatsClient, exec_id: str, command: str | list[str],
              **kw: object) -> tuple[dict[str, bytes], End]:  # fmt: skip
    async with StreamReceiver(nc, exec_id) as rx:
        await svc.start(StartExec(session_id="s1", exec_id=exec_id, command=command, **kw))  # type: ignore[arg-type]
        return await collect(rx)


async def test_exit_codes_channels_and_environment(nc: NatsClient, tmp_path: Path) -> None:
    svc = ExecService(nc, Sessions(tmp_path))
    out, end = await run(svc, nc, "e1", "echo out; echo err >&2; exit 3")
    assert out == {"stdout": b"out\n", "stderr": b"err\n"}
    assert (end.exit_code, end.timed_out, end.truncated, end.error) == (3, False, False, None)
    value = "spaces and\nnewlines = 'quotes' $HOME"
    out, end = await run(svc, nc, "e2", ["printenv", "ODD"], env={"ODD": value})
    assert out["stdout"] == value.encode() + b"\n" and end.exit_code == 0
    await svc.close()


def test_a_string_runs_through_a_login_shell_and_a_list_as_argv() -> None:
    assert exec_argv("echo hi")[-4:] == ["/bin/bash", "-lc", "--", "echo hi"]
    assert exec_argv(["ls", "-la"])[-2:] == ["ls", "-la"]
    assert exec_argv(["ls"])[:2] == ["/bin/bash", "-c"]  # the env prelude comes first


async def test_the_timeout_kills_the_command(nc: NatsClient, tmp_path: Path) -> None:
    svc = ExecService(nc, Sessions(tmp_path))
    out, end = await run(svc, nc, "t1", "echo started; exec sleep 30", timeout_s=0.5)
    assert out["stdout"] == b"started\n"
    assert end.timed_out and end.exit_code == 137 and 500 <= end.duration_ms < 10_000


async def test_output_past_the_cap_is_cut_and_the_command_killed(nc: NatsClient, tmp_path: Path) -> None:
    svc = ExecService(nc, Sessions(tmp_path), max_output=100_000)
    out, end = await run(svc, nc, "c1", "yes")
    assert len(out["stdout"]) + len(out["stderr"]) == 100_000
    assert end.truncated and end.exit_code == 137 and not end.timed_out


async def test_unacked_output_holds_the_command_back(nc: NatsClient, tmp_path: Path) -> None:
    svc = ExecService(nc, Sessions(tmp_path))
    async with StreamReceiver(nc, "b1") as rx:
        await svc.start(StartExec(session_id="s1", exec_id="b1",
                                  command="head -c 10000000 /dev/zero; echo done >&2"))  # fmt: skip
        items = rx.messages(tick=0.5)
        first = await anext(items)
        assert isinstance(first, Chunk) and first.data
        # Not acked: nothing more may arrive, however much the command has to say ...
        assert await anext(items) is None
        assert svc.running() == 1
        # ... and once acked, the rest flows.
        await rx.ack()
        total, end = len(first.data), None
        async for item in items:
            if isinstance(item, Chunk):
                total += len(item.data)
            if isinstance(item, End):
                end = item
                await rx.ack()
                break
            if item is not None:
                await rx.ack()
    assert end is not None and end.exit_code == 0 and total == 10_000_000 + len(b"done\n")


async def test_a_command_whose_listener_left_is_killed(nc: NatsClient, tmp_path: Path) -> None:
    svc = ExecService(nc, Sessions(tmp_path), heartbeat_s=0.2)
    marker = tmp_path / "still-running"
    async with StreamReceiver(nc, "g1"):
        await svc.start(StartExec(session_id="s1", exec_id="g1",
                                  command=f"sleep 30; touch {marker}"))  # fmt: skip
        assert svc.running() == 1
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while svc.running():  # the next heartbeat finds no listener
        assert loop.time() < deadline, "the exec outlived its listener"
        await asyncio.sleep(0.05)  # poll interval of the condition above
    assert not marker.exists()


async def test_limits_and_unknown_sessions(nc: NatsClient, tmp_path: Path) -> None:
    svc = ExecService(nc, Sessions(tmp_path), per_session=1)
    async with StreamReceiver(nc, "l1"):
        await svc.start(StartExec(session_id="s1", exec_id="l1", command="sleep 30"))
        with pytest.raises(SessionError) as e:
            await svc.start(StartExec(session_id="s1", exec_id="l2", command="true"))
        assert e.value.info.code == ErrorCode.runner_busy and e.value.info.retryable
        await svc.close()
        assert svc.running() == 0
    with pytest.raises(SessionError) as e:
        await svc.start(StartExec(session_id="nope", exec_id="l3", command="true"))
    assert e.value.info.code == ErrorCode.conflict
    with pytest.raises(SessionError) as e:
        await svc.start(StartExec(session_id="s1", exec_id="l4", command="x", env={"1BAD": "v"}))
    assert e.value.info.code == ErrorCode.validation_failed
