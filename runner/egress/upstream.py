"""How the proxy reaches a destination: a resolver and a connector, both injectable.

    Resolver.resolve(host, port) -> [address, ...]     names to addresses (system DNS by default)
    Connector.connect(address, port, tls=...) -> streams   one TCP (optionally TLS) connection

The proxy resolves once, checks the addresses (policy.pick_address) and hands the connector an
address, never a name, so what was checked is what is connected to. Tests pass a resolver that
knows only their own hosts; nothing in this package opens a socket except through a connector.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time
from collections.abc import Mapping, Sequence
from typing import Protocol

from runner.egress.http1 import MAX_HEAD

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Resolver(Protocol):
    """Turns a host name into addresses (IP literals in text form), in preference order."""

    async def resolve(self, host: str, port: int) -> list[str]: ...


class Connector(Protocol):
    """Opens one connection to an address; with `tls`, wraps it, verifying `server_hostname`."""

    async def connect(
        self,
        address: str,
        port: int,
        *,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> Streams: ...


class SystemResolver:
    """The host's resolver (getaddrinfo in the event loop's executor); literals pass through."""

    async def resolve(self, host: str, port: int) -> list[str]:
        if _literal(host):
            return [host]
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror:
            return []
        out: list[str] = []
        for *_, sockaddr in infos:
            if (a := str(sockaddr[0])) not in out:
                out.append(a)
        return out


class StaticResolver:
    """A fixed table of names; anything else does not resolve. For tests and pinned setups."""

    def __init__(self, table: Mapping[str, Sequence[str]]) -> None:
        self._table = {k.lower().rstrip("."): list(v) for k, v in table.items()}

    async def resolve(self, host: str, port: int) -> list[str]:
        if _literal(host):
            return [host]
        return list(self._table.get(host.lower().rstrip("."), ()))


class TcpConnector:
    """Plain `asyncio.open_connection` to the address, in the caller's network namespace."""

    async def connect(
        self,
        address: str,
        port: int,
        *,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> Streams:
        return await asyncio.open_connection(
            address, port, ssl=tls, server_hostname=server_hostname if tls else None,
            limit=2 * MAX_HEAD,
        )  # fmt: skip


async def connect_first(
    connector: Connector,
    addresses: Sequence[str],
    port: int,
    timeout_s: float,
    *,
    tls: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> Streams:
    """Connect to the first address that answers, each try bounded by `timeout_s`.

    Raises OSError (the last failure) or TimeoutError when none answers.
    """
    last: BaseException = OSError("no address to connect to")
    for address in addresses:
        try:
            async with asyncio.timeout(timeout_s):
                return await connector.connect(
                    address, port, tls=tls, server_hostname=server_hostname
                )
        except (OSError, TimeoutError, ssl.SSLError) as e:
            last = e
    raise last


def is_local_address(address: str) -> bool:
    """True if `address` belongs to this network namespace (the runner host itself).

    Binding to it succeeds only then; no packet is sent. A public address of the runner's own
    (a bare-metal host, say) passes every range check, yet leads to the runner's services.
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((address, 0))
        except OSError:
            return False
    return True


def _literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class IdleConnections:
    """Kept-alive connections to one trusted upstream (the model API), newest first, bounded.

    Saves a TCP and TLS handshake per model request. A connection idle longer than
    `max_idle_s`, or one the upstream has closed, is dropped rather than reused; the proxy
    retries once on a fresh connection if a reused one dies before answering.
    """

    def __init__(self, size: int = 16, max_idle_s: float = 30.0) -> None:
        self._size = size
        self._max_idle = max_idle_s
        self._idle: list[tuple[float, Streams]] = []

    def __len__(self) -> int:
        return len(self._idle)

    def take(self) -> Streams | None:
        now = time.monotonic()
        while self._idle:
            since, (reader, writer) = self._idle.pop()
            if now - since <= self._max_idle and not reader.at_eof() and not writer.is_closing():
                return reader, writer
            writer.transport.abort()
        return None

    def put(self, streams: Streams) -> None:
        self._idle.append((time.monotonic(), streams))
        while len(self._idle) > self._size:
            _, (_, writer) = self._idle.pop(0)
            writer.transport.abort()

    def close(self) -> None:
        for _, (_, writer) in self._idle:
            writer.transport.abort()
        self._idle.clear()
