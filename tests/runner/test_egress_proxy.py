"""The egress proxy in one process, on loopback: CONNECT, forwarding, the model endpoint.

Nothing here reaches a real network. The proxy gets a resolver that knows only `*.test` names
(mapped to public-looking addresses) and a connector that maps those addresses to test servers
on 127.0.0.1 and refuses everything else, recording every attempt. Real network isolation, with
real namespaces and sandboxes, is in test_escape_network.py.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from runner.egress import Credentials, EgressProxy, ModelUpstream, StaticResolver
from runner.egress.upstream import Streams

ALLOWED_IP, OTHER_IP = "11.231.0.10", "11.231.0.20"
NAMES = {
    "allowed.test": [ALLOWED_IP],
    "other.test": [OTHER_IP],
    "private.test": ["10.99.0.10"],
    "metadata.test": ["169.254.169.254"],
    "rebind.test": [ALLOWED_IP, "127.0.0.1"],
    "nowhere.test": ["11.231.0.99"],
}
REAL_KEY = "sk-ant-REAL-never-in-the-sandbox"
PLACEHOLDER = "ash-placeholder-0123456789abcdef"


@dataclass
class MapConnector:
    """Connects (address, port) pairs it knows to loopback test servers; refuses the rest."""

    routes: dict[tuple[str, int], int] = field(default_factory=dict)
    attempts: list[tuple[str, int]] = field(default_factory=list)
    hang: bool = False

    async def connect(
        self, address: str, port: int, *, tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> Streams:  # fmt: skip
        self.attempts.append((address, port))
        if self.hang:
            await asyncio.Event().wait()
        local = self.routes.get((address, port))
        if local is None:
            raise ConnectionRefusedError(111, "Connection refused")
        return await asyncio.open_connection("127.0.0.1", local)


@dataclass
class Lab:
    proxy: EgressProxy
    port: int
    connector: MapConnector
    seen: list[web.Request]
    model_seen: list[dict[str, str]]
    gate: asyncio.Event

    async def open(self) -> Streams:
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def ask(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        """One request on a fresh connection; the whole response (until the proxy closes)."""
        reader, writer = await self.open()
        writer.write(raw)
        async with asyncio.timeout(10):
            data = await reader.read()
        writer.close()
        return parse_response(data)


def parse_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


async def web_server(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


@pytest.fixture
async def lab() -> AsyncIterator[Lab]:
    seen: list[web.Request] = []
    model_seen: list[dict[str, str]] = []
    gate = asyncio.Event()

    async def hello(request: web.Request) -> web.Response:
        seen.append(request)
        body = await request.read()
        return web.Response(text=f"hello {request.method} {request.path_qs} {len(body)}\n")

    async def messages(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        model_seen.append({**{k.lower(): v for k, v in request.headers.items()},
                           "_path": request.path_qs, "_body": body.decode()})  # fmt: skip
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"event: one\ndata: {}\n\n")
        if json.loads(body or b"{}").get("gated"):
            await gate.wait()
        await resp.write(b"event: two\ndata: {}\n\n")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hello)
    model_app = web.Application()
    model_app.router.add_post("/v1/messages", messages)
    web_runner, web_port = await web_server(app)
    model_runner, model_port = await web_server(model_app)
    connector = MapConnector({(ALLOWED_IP, 80): web_port, (OTHER_IP, 80): web_port,
                              ("127.0.0.1", model_port): model_port})  # fmt: skip
    proxy = EgressProxy(
        model=ModelUpstream.from_url(f"http://127.0.0.1:{model_port}"),
        resolver=StaticResolver(NAMES), connector=connector, connect_timeout_s=0.5,
        head_timeout_s=5,
    )  # fmt: skip
    port = await proxy.listen("127.0.0.1", 0, freebind=False)
    proxy.register("127.0.0.1", policy="allowlist", allowlist=["allowed.test", "private.test",
                   "metadata.test", "rebind.test", "nowhere.test"],
                   credentials=Credentials(placeholder=PLACEHOLDER, api_key=REAL_KEY))  # fmt: skip
    try:
        yield Lab(proxy, port, connector, seen, model_seen, gate)
    finally:
        gate.set()
        await proxy.close()
        await web_runner.cleanup()
        await model_runner.cleanup()


# ------------------------------------------------------------------------------- CONNECT


async def test_connect_tunnels_to_the_resolved_address_of_an_allowed_host(lab: Lab) -> None:
    reader, writer = await lab.open()
    writer.write(b"CONNECT allowed.test:80 HTTP/1.1\r\nHost: allowed.test:80\r\n\r\n")
    assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 200 Connection established\r\n\r\n"
    writer.write(b"GET /through HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n")
    status, _, body = parse_response(await reader.read())
    assert (status, body) == (200, b"hello GET /through 0\n")
    assert lab.connector.attempts == [(ALLOWED_IP, 80)]  # the address, never the name
    writer.close()


@pytest.mark.parametrize(
    ("target", "reason", "attempts"),
    [
        ("other.test:80", "other.test is not on this sandbox's allowlist", []),
        ("private.test:80", "private.test resolves to 10.99.0.10, which is a private address", []),
        ("metadata.test:80",
         "metadata.test resolves to 169.254.169.254, which is the cloud metadata address", []),
        ("rebind.test:80", "rebind.test resolves to 127.0.0.1, which is a loopback address", []),
        ("127.0.0.1:4222", "127.0.0.1 is not on this sandbox's allowlist", []),
        ("[::1]:4222", "::1 is not on this sandbox's allowlist", []),
        ("allowed.test:0", "port 0 is not allowed", []),
    ],
)  # fmt: skip
async def test_connect_refusals_answer_403_with_the_reason(
    lab: Lab, target: str, reason: str, attempts: list[tuple[str, int]]
) -> None:
    status, headers, body = await lab.ask(f"CONNECT {target} HTTP/1.1\r\n\r\n".encode())
    assert (status, body.decode()) == (403, f"ash egress proxy: {reason}\n")
    assert headers["x-ash-egress"] == "refused" and headers["connection"] == "close"
    assert lab.connector.attempts == attempts


async def test_open_policy_still_refuses_private_addresses(lab: Lab) -> None:
    lab.proxy.unregister("127.0.0.1")
    lab.proxy.register("127.0.0.1", policy="open")
    reader, writer = await lab.open()
    writer.write(b"CONNECT other.test:80 HTTP/1.1\r\n\r\n")
    assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 200 Connection established\r\n\r\n"
    writer.close()
    for target, why in [("10.1.2.3:80", "10.1.2.3 is a private address"),
                        ("169.254.169.254:80", "169.254.169.254 is the cloud metadata address"),
                        ("[::ffff:127.0.0.1]:80", "::ffff:7f00:1 is an IPv4-mapped address")]:
        status, _, body = await lab.ask(f"CONNECT {target} HTTP/1.1\r\n\r\n".encode())
        assert (status, body.decode()) == (403, f"ash egress proxy: {why}\n")
    assert lab.connector.attempts == [(OTHER_IP, 80)]


async def test_the_runners_own_public_address_is_refused(lab: Lab) -> None:
    lab.proxy._is_local = lambda address: address == OTHER_IP  # noqa: SLF001
    lab.proxy.unregister("127.0.0.1")
    lab.proxy.register("127.0.0.1", policy="open")
    status, _, body = await lab.ask(b"CONNECT other.test:80 HTTP/1.1\r\n\r\n")
    assert (status, body) == (403, b"ash egress proxy: other.test resolves to 11.231.0.20, "
                                   b"which is this runner's own address\n")  # fmt: skip
    status, _, body = await lab.ask(b"GET http://11.231.0.20:4222/ HTTP/1.1\r\n\r\n")
    assert (status, body) == (403, b"ash egress proxy: 11.231.0.20 is this runner's own "
                                   b"address\n")  # fmt: skip
    assert lab.connector.attempts == []


async def test_policy_none_refuses_every_host_but_keeps_the_model(lab: Lab) -> None:
    lab.proxy.unregister("127.0.0.1")
    lab.proxy.register("127.0.0.1", policy="none",
                       credentials=Credentials(placeholder=PLACEHOLDER, api_key=REAL_KEY))
    status, _, body = await lab.ask(b"CONNECT allowed.test:80 HTTP/1.1\r\n\r\n")
    assert (status, body) == (403, b"ash egress proxy: this sandbox's network policy is 'none'\n")
    status, _, body = await lab.ask(model_request(b"{}"))
    assert status == 200 and b"event: two" in body


async def test_unreachable_and_silent_destinations_fail_fast(lab: Lab) -> None:
    status, _, body = await lab.ask(b"CONNECT nowhere.test:80 HTTP/1.1\r\n\r\n")
    assert (status, body) == (502, b"ash egress proxy: cannot connect to nowhere.test:80: "
                                   b"Connection refused\n")  # fmt: skip
    lab.connector.hang = True
    status, _, body = await lab.ask(b"CONNECT allowed.test:80 HTTP/1.1\r\n\r\n")
    assert (status, body) == (504, b"ash egress proxy: allowed.test:80 did not answer in time\n")


async def test_unregister_cuts_open_tunnels(lab: Lab) -> None:
    reader, writer = await lab.open()
    writer.write(b"CONNECT allowed.test:80 HTTP/1.1\r\n\r\n")
    await reader.readuntil(b"\r\n\r\n")
    lab.proxy.unregister("127.0.0.1")
    async with asyncio.timeout(5):
        assert await reader.read() == b""  # cut, not left dangling
    writer.close()
    status, _, body = await lab.ask(b"CONNECT allowed.test:80 HTTP/1.1\r\n\r\n")
    assert (status, body) == (403, b"ash egress proxy: 127.0.0.1 is not a registered sandbox\n")


# ------------------------------------------------------------------------------- forwarding


async def test_plain_http_is_forwarded_in_origin_form_with_keep_alive(lab: Lab) -> None:
    reader, writer = await lab.open()
    for i in range(2):
        writer.write(f"POST http://allowed.test/p{i}?q=1 HTTP/1.1\r\nHost: allowed.test\r\n"
                     "Proxy-Authorization: Basic x\r\nConnection: keep-alive, x-hop\r\n"
                     "X-Hop: 1\r\nContent-Length: 5\r\n\r\nabcde".encode())  # fmt: skip
        head = await reader.readuntil(b"\r\n\r\n")
        _, headers, _ = parse_response(head)
        body = await reader.readexactly(int(headers["content-length"]))
        assert body == f"hello POST /p{i}?q=1 5\n".encode()
        assert headers["connection"] == "keep-alive"
    writer.close()
    assert [r.headers.get("Host") for r in lab.seen] == ["allowed.test", "allowed.test"]
    assert not any("Proxy-Authorization" in r.headers or "X-Hop" in r.headers for r in lab.seen)


async def test_forwarding_to_a_host_off_the_allowlist_is_refused(lab: Lab) -> None:
    status, _, body = await lab.ask(b"GET http://other.test/ HTTP/1.1\r\nHost: other.test\r\n\r\n")
    assert (status, body) == (403, b"ash egress proxy: other.test is not on this sandbox's "
                                   b"allowlist\n")  # fmt: skip
    assert lab.connector.attempts == [] and lab.seen == []


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"garbage\r\n\r\n", 400),
        (b"GET https://allowed.test/ HTTP/1.1\r\n\r\n", 400),
        (b"GET http://u:p@allowed.test/ HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\n\r\n", 505),
        (b"GET http://allowed.test/ HTTP/1.1\r\nBad Header: x\r\n\r\n", 400),
        (b"POST http://allowed.test/ HTTP/1.1\r\nContent-Length: 3\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST http://allowed.test/ HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * 70000 + b"\r\n\r\n", 431),
    ],
)
async def test_malformed_requests_get_a_clear_4xx(lab: Lab, raw: bytes, status: int) -> None:
    got, _, body = await lab.ask(raw)
    assert (got, body[:18]) == (status, b"ash egress proxy: ")
    assert lab.connector.attempts == []


async def test_a_silent_client_gets_408_not_a_hang(lab: Lab) -> None:
    lab.proxy._head_timeout = 0.2  # noqa: SLF001 - a short wait for this test only
    reader, writer = await lab.open()
    async with asyncio.timeout(5):
        status, _, _ = parse_response(await reader.read())
    assert status == 408
    writer.close()


# ------------------------------------------------------------------------------- model


def model_request(body: bytes, key: str = PLACEHOLDER, target: str = "/v1/messages") -> bytes:
    return (f"POST {target} HTTP/1.1\r\nHost: x\r\nx-api-key: {key}\r\n"
            f"anthropic-version: 2023-06-01\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode() + body  # fmt: skip


async def test_model_requests_get_the_real_key_and_stream_unbuffered(lab: Lab) -> None:
    reader, writer = await lab.open()
    writer.write(model_request(b'{"gated": true}'))
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    # The upstream holds the stream open after its first event; it must reach us anyway.
    async with asyncio.timeout(5):
        first = b""
        while b"event: one" not in first:
            first += await reader.read(100)
    assert b"event: two" not in first
    lab.gate.set()
    rest = await reader.read()
    assert b"event: two" in rest
    writer.close()
    (seen,) = lab.model_seen
    assert seen["x-api-key"] == REAL_KEY and PLACEHOLDER not in json.dumps(seen)
    assert seen["_path"] == "/v1/messages" and seen["anthropic-version"] == "2023-06-01"
    assert REAL_KEY.encode() not in head + first + rest


async def test_model_request_addressed_to_the_proxy_in_absolute_form(lab: Lab) -> None:
    target = f"http://127.0.0.1:{lab.port}/v1/messages?beta=true"
    status, _, body = await lab.ask(model_request(b"{}", target=target))
    assert status == 200 and b"event: two" in body
    assert lab.model_seen[0]["_path"] == "/v1/messages?beta=true"


async def test_model_request_with_a_chunked_body(lab: Lab) -> None:
    raw = (f"POST /v1/messages HTTP/1.1\r\nx-api-key: {PLACEHOLDER}\r\n"
           "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
           "3\r\n{\"a\r\n6\r\n\": 1}\n\r\n0\r\n\r\n").encode()  # fmt: skip
    status, _, body = await lab.ask(raw)
    assert status == 200 and lab.model_seen[0]["_body"] == '{"a": 1}\n'


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        (REAL_KEY, "the model request carries a credential that is not this sandbox's"),
        ("ash-placeholder-someone-else", "the model request carries a credential that is not "
                                         "this sandbox's"),
        (None, "the model request carries no credential"),
    ],
)  # fmt: skip
async def test_model_requests_without_the_placeholder_are_refused(
    lab: Lab, key: str | None, reason: str
) -> None:
    raw = model_request(b"{}", key=key or "")
    if key is None:
        raw = raw.replace(b"x-api-key: \r\n", b"")
    status, headers, body = await lab.ask(raw)
    assert status == 403 and headers["content-type"] == "application/json"
    assert json.loads(body) == {"type": "error", "error": {
        "type": "permission_error", "message": f"ash egress: {reason}"}}  # fmt: skip
    assert lab.model_seen == []


async def test_unregistered_sources_are_refused(lab: Lab) -> None:
    lab.proxy.unregister("127.0.0.1")
    lab.proxy.register("10.231.0.2", policy="open")
    status, _, body = await lab.ask(model_request(b"{}"))
    assert status == 403 and b"127.0.0.1 is not a registered sandbox" in body
    assert lab.model_seen == [] and lab.connector.attempts == []


async def test_model_connections_are_kept_alive_and_reused(lab: Lab) -> None:
    for _ in range(3):
        status, _, body = await lab.ask(model_request(b"{}"))
        assert status == 200 and body.endswith(b"0\r\n\r\n")  # the chunked stream, complete
    model_port = lab.proxy._model.port  # type: ignore[union-attr]  # noqa: SLF001
    assert lab.connector.attempts == [("127.0.0.1", model_port)]  # one connection, 3 requests
    assert len(lab.model_seen) == 3


async def test_a_dead_kept_alive_connection_is_retried_on_a_fresh_one(lab: Lab) -> None:
    got = asyncio.Queue[bytes]()

    async def swallow_and_close(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        got.put_nowait(await r.read(65536))
        w.close()

    dead = await asyncio.start_server(swallow_and_close, "127.0.0.1", 0)
    try:
        streams = await asyncio.open_connection("127.0.0.1", dead.sockets[0].getsockname()[1])
        lab.proxy._idle.put(streams)  # noqa: SLF001 - as if an earlier request had left it
        status, _, body = await lab.ask(model_request(b'{"n": 1}'))
        assert status == 200 and b"event: two" in body
        assert b'{"n": 1}' in await got.get()  # it was tried first, and died without answering
        assert [s["_body"] for s in lab.model_seen] == ['{"n": 1}']
    finally:
        dead.close()
        await dead.wait_closed()
