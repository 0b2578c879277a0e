"""The embedded nats-server: a real server, real clients, clean stops, and readable failures."""

from __future__ import annotations

import socket
from pathlib import Path

import nats
import pytest

from ash.embedded_nats import EmbeddedNats, NatsServer, find_nats_server, start_nats
from ash.errors import StackError
from ash.process import pid_alive
from tests.ash.fake_server import free_port


def _refuses(url: str) -> bool:
    host, port = url.removeprefix("nats://").rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


async def test_serves_jetstream_and_stops(tmp_path: Path) -> None:
    async with EmbeddedNats(tmp_path / "data", log_path=tmp_path / "nats.log") as server:
        url, pid = server.url, server.pid
        assert url.startswith("nats://127.0.0.1:") and pid is not None
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            info = await js.account_info()
            await js.add_stream(name="PROBE", subjects=["probe.>"])
            ack = await js.publish("probe.one", b"hello")
        finally:
            await nc.close()
    assert info.limits is not None and ack.stream == "PROBE" and ack.seq == 1
    assert (tmp_path / "data" / "jetstream").is_dir()  # JetStream stored under data_dir
    assert not pid_alive(pid)
    assert _refuses(url)
    assert "Server is ready" in (tmp_path / "nats.log").read_text()


async def test_jetstream_data_survives_a_restart(tmp_path: Path) -> None:
    async with EmbeddedNats(tmp_path / "data") as server:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await js.add_stream(name="KEEP", subjects=["keep"])
        await js.publish("keep", b"1")
        await nc.close()
    async with EmbeddedNats(tmp_path / "data") as server:
        nc = await nats.connect(server.url)
        info = await nc.jetstream().stream_info("KEEP")
        await nc.close()
    assert info.state.messages == 1


def test_blocking_start_on_a_chosen_port(tmp_path: Path) -> None:
    port = free_port()
    server = start_nats(tmp_path / "data", port=port)
    try:
        assert server.url == f"nats://127.0.0.1:{port}"
        with socket.create_connection(("127.0.0.1", port)) as sock:
            assert sock.recv(5) == b"INFO "
    finally:
        code = server.stop()
    assert code == 0  # SIGTERM is a clean exit for nats-server
    assert server.stop() == 0  # idempotent
    assert _refuses(f"nats://127.0.0.1:{port}")


def test_a_port_in_use_fails_with_the_servers_own_words(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        server = NatsServer(tmp_path / "data", port=port, log_path=tmp_path / "nats.log")
        with pytest.raises(StackError) as caught:
            server.start(timeout=10)
    assert "nats-server exited with code 1 while starting" in caught.value.message
    assert "address already in use" in caught.value.message
    assert server.process is not None and server.process.returncode is not None


def test_a_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "data", binary=str(tmp_path / "no-such-nats-server"))
    with pytest.raises(StackError, match="cannot run nats-server"):
        server.start()


def test_the_binary_comes_from_the_wheel_next_to_python() -> None:
    import sys

    assert find_nats_server() == str(Path(sys.executable).parent / "nats-server")
