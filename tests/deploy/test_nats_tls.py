"""NATS over TLS with a CA of our own (made with `cryptography`): the generated server config
requires TLS, a coordinator and a runner given ASH_NATS_TLS_CA serve a session through it, a
client that does not trust that CA is refused, and with --tls-verify only clients holding a
certificate the CA signed get in (ASH_NATS_TLS_CERT / ASH_NATS_TLS_KEY)."""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import nats
import pytest

from deploy import nats_auth
from protocol import access, subjects
from tests.deploy.natsproc import ConfNats, make_ca
from tests.deploy.test_nats_permissions import (
    RUNNER_ENV, a_session, env_file, turn,
)
from tests.procs import Stack

pytestmark = pytest.mark.e2e


def serve(tmp: Path, certs: dict[str, Path], *, verify: bool) -> tuple[ConfNats, Path]:
    out = tmp / "nats"
    tls = nats_auth.Tls(str(certs["server"]), str(certs["server-key"]), str(certs["ca"]), verify)
    nats_auth.write(out, nats_auth.Plan(runners=["tls-runner"], listen="127.0.0.1:-1",
                                        store_dir=str(tmp / "js"), tls=tls))
    return ConfNats(out / "nats-server.conf", tmp / "nats.log").start(), out


def handshake(url: str, context: ssl.SSLContext, login: dict[str, str] | None = None) -> bytes:
    """Read the plaintext INFO, upgrade to TLS, and log in: the server's answer to PING."""
    host, port = url.split("://")[-1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        info = raw.recv(4096)
        assert info.startswith(b"INFO ") and json.loads(info[5:].split(b"\r\n")[0])["tls_required"]
        with context.wrap_socket(raw, server_hostname=host) as tls:
            connect = {"verbose": False, **({"user": login["ASH_NATS_USER"],
                                             "pass": login["ASH_NATS_PASSWORD"]} if login else {})}
            tls.sendall(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
            return tls.recv(4096)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_ca(tmp_path_factory.mktemp("ca"), client=True)


@pytest.fixture
def tls_nats(tmp_path: Path, certs: dict[str, Path]) -> Iterator[tuple[ConfNats, Path]]:
    server, out = serve(tmp_path, certs, verify=False)
    try:
        yield server, out
    finally:
        server.stop()


async def test_a_session_runs_over_tls_and_strangers_are_refused(
    tls_nats: tuple[ConfNats, Path], certs: dict[str, Path], tmp_path: Path,
) -> None:
    server, out = tls_nats
    # The env files carry the CA, as the Ash processes read it.
    assert env_file(out / "coordinator.env")["ASH_NATS_TLS_CA"] == str(certs["ca"])
    stack = Stack(tmp_path, server.url)
    try:
        stack.start_coordinator(**env_file(out / "coordinator.env"))
        stack.start_runner("tls-runner", **RUNNER_ENV, **env_file(out / "runner-tls-runner.env"))
        stack.wait_ready()
        async with aiohttp.ClientSession() as http:
            sid = await a_session(http, stack.url)
            frames = await turn(http, stack.url, sid, "Hello over TLS")
        assert frames[-1].event == "done" and frames[-1].data["reason"] == "completed"
    finally:
        stack.stop()
    assert server.violations() == []

    # Trusting our CA, a user gets in, and TLS does not stand in for a login ...
    trusting = ssl.create_default_context(cafile=str(certs["ca"]))
    assert handshake(server.url, trusting, env_file(out / "coordinator.env")).startswith(b"PONG")
    assert b"Authorization Violation" in handshake(server.url, trusting)
    # ... the system's trust store does not know the server's certificate.
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(server.url, ssl.create_default_context())


async def test_mutual_tls_admits_only_clients_with_a_certificate(
    tmp_path: Path, certs: dict[str, Path],
) -> None:
    server, out = serve(tmp_path, certs, verify=True)
    try:
        login = env_file(out / "runner-tls-runner.env")
        options = access.connect_options(
            inbox_prefix=subjects.runner_inbox("tls-runner"), user=login["ASH_NATS_USER"],
            password=login["ASH_NATS_PASSWORD"], tls_ca=str(certs["ca"]),
            tls_cert=str(certs["client"]), tls_key=str(certs["client-key"]))
        nc = await nats.connect(server.url, **options)
        try:
            await nc.flush()
            assert nc.is_connected and nc.connected_url is not None
        finally:
            await nc.close()
        with_certificate = ssl.create_default_context(cafile=str(certs["ca"]))
        with_certificate.load_cert_chain(certs["client"], certs["client-key"])
        assert handshake(server.url, with_certificate, login).startswith(b"PONG")
        no_certificate = ssl.create_default_context(cafile=str(certs["ca"]))
        try:  # TLS 1.3 reports a refused client certificate on the first read, not the handshake
            answer = handshake(server.url, no_certificate, login)
        except (ssl.SSLError, ConnectionError):
            answer = b""
        assert not answer.startswith(b"PONG"), answer
    finally:
        server.stop()
