r"""The runner's egress proxy: a sandbox's only way out of its network slot.

    new --listen()--> serving --close()--> closed          (close() is idempotent)

One asyncio server per runner, listening on the host end of every network slot (and nowhere
else). It knows which sandbox a connection comes from by the connection's source address, the
slot's address, which the slot's firewall pins; an address that is not registered gets a 403.
Per connection, requests are read one after another (keep-alive) and dispatched:

    CONNECT host:port                  tunnel, if the sandbox's rule allows host and every
                                       address it resolves to is public
    GET http://host[:port]/path        forward (plain HTTP), same checks
    POST /v1/messages                  model endpoint: placeholder checked, real credential
    (or absolute form to the proxy)    swapped in, relayed to the model upstream, streamed back

Model requests go out with `Connection: keep-alive` and their upstream connections are kept
(IdleConnections) for the next one, sparing a TLS handshake per model call; every other
request gets its own upstream connection.

Every refusal is an immediate HTTP answer with a reason line (403 for policy, 502/504 when a
destination does not resolve or answer, 400 for bad requests) and the connection is closed;
nothing waits on the sandbox. `unregister()` cuts that sandbox's open connections, so a recycled
slot never inherits its previous tenant's tunnels.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Self

from runner.egress import http1
from runner.egress.grants import Credentials, Grant
from runner.egress.http1 import Head, HttpError
from runner.egress.model import ModelUpstream, swap_credentials
from runner.egress.policy import Policy, Refused, Rule, check_host, pick_address
from runner.egress.upstream import (
    Connector,
    IdleConnections,
    Resolver,
    Streams,
    SystemResolver,
    TcpConnector,
    connect_first,
    is_local_address,
)

log = logging.getLogger(__name__)

IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
MAX_REPLAYABLE_BODY = 32 << 20  # model request bodies are read whole (a long context is MBs)


class _UpstreamClosed(Exception):
    """The upstream closed the connection before sending a response head."""


@dataclass(slots=True, eq=False)  # identity-hashed: kept in sets
class _Conn:
    """One accepted connection from a sandbox."""

    peer: str
    local: tuple[str, int]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    responded: bool = False  # a response head went out: too late for an error answer


class EgressProxy:
    """HTTP CONNECT, plain-HTTP forwarding and the model endpoint for registered sandboxes."""

    def __init__(
        self,
        *,
        model: ModelUpstream | None = None,
        resolver: Resolver | None = None,
        connector: Connector | None = None,
        is_local: Callable[[str], bool] = is_local_address,
        connect_timeout_s: float = 10.0,
        head_timeout_s: float = 30.0,
        idle_timeout_s: float = 120.0,
        upstream_timeout_s: float = 600.0,
        max_connections_per_sandbox: int = 128,
    ) -> None:
        """`upstream_timeout_s` bounds the wait for a response head (a model may think long).
        `is_local` tells the runner's own addresses, refused like private ones."""
        self._model = model
        self._is_local = is_local
        self._resolver = resolver or SystemResolver()
        self._connector = connector or TcpConnector()
        self._connect_timeout = connect_timeout_s
        self._head_timeout = head_timeout_s
        self._idle_timeout = idle_timeout_s
        self._upstream_timeout = upstream_timeout_s
        self._max_conns = max_connections_per_sandbox
        self._idle = IdleConnections()
        self._grants: dict[str, Grant] = {}
        self._conns: dict[str, set[_Conn]] = collections.defaultdict(set)
        self._tasks: set[asyncio.Task[None]] = set()
        self._servers: list[asyncio.Server] = []
        self._closed = False
        self.addresses: list[tuple[str, int]] = []
        self.stats: collections.Counter[str] = collections.Counter()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ lifecycle, registry

    async def listen(self, host: str, port: int = 0, *, freebind: bool = True) -> int:
        """Listen on `host:port` as well; returns the port (useful with port 0).

        With `freebind` the address need not exist yet (IP_FREEBIND), so the proxy can listen
        on every slot's host end before the slot is built, and keeps listening while a slot is
        rebuilt.
        """
        if self._closed:
            raise RuntimeError("the proxy is closed")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if freebind:
                sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
            sock.bind((host, port))
            sock.listen(1024)
            sock.setblocking(False)
            server = await asyncio.start_server(self._accept, sock=sock, limit=2 * http1.MAX_HEAD)
        except BaseException:
            sock.close()
            raise
        self._servers.append(server)
        bound = sock.getsockname()[1]
        self.addresses.append((host, bound))
        log.debug("egress proxy listening on %s:%d", host, bound)
        return bound

    def register(
        self,
        address: str,
        *,
        policy: Policy | str = Policy.ALLOWLIST,
        allowlist: Iterable[str] = (),
        credentials: Credentials | None = None,
        label: str = "",
    ) -> None:
        """Let connections from `address` (a slot's address) through under this rule.

        Raises ValueError on a bad allowlist entry or if `address` is already registered.
        """
        if address in self._grants:
            raise ValueError(f"{address} is already registered")
        self._grants[address] = Grant(Rule.make(policy, allowlist), credentials, label)

    def set_credentials(self, address: str, *, api_key: str = "", auth_token: str = "") -> None:
        """Send this real credential upstream for the sandbox at `address` from now on (a
        session's own model key), in place of the one it was registered with. The sandbox's
        placeholder stays what it was, so a warm sandbox can take a session's key when claimed.

        Raises ValueError if `address` is not registered with model credentials, or the
        credential is not acceptable (`Credentials`).
        """
        grant = self._grants.get(address)
        if grant is None or grant.credentials is None:
            raise ValueError(f"{address} is not registered with model credentials")
        placeholder = grant.credentials.placeholder
        self._grants[address] = dataclasses.replace(
            grant, credentials=Credentials(placeholder, api_key=api_key, auth_token=auth_token))

    def unregister(self, address: str) -> None:
        """Forget `address` and cut its open connections. Idempotent."""
        self._grants.pop(address, None)
        for conn in self._conns.pop(address, set()):
            conn.writer.transport.abort()

    async def close(self) -> None:
        """Stop listening, cut every connection, wait for the handlers. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for server in self._servers:
            server.close()
        for conns in self._conns.values():
            for conn in conns:
                conn.writer.transport.abort()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._idle.close()
        for server in self._servers:
            await server.wait_closed()
        log.debug("egress proxy closed")

    # ------------------------------------------------------------------ one connection

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peer = str(writer.get_extra_info("peername")[0])
        conn = _Conn(peer, writer.get_extra_info("sockname")[:2], reader, writer)
        try:
            await self._serve(conn)
        except asyncio.CancelledError:
            # close() cancels handlers; end quietly (asyncio's stream callback in 3.11 would
            # log a cancelled handler as an error). Any other cancellation propagates.
            if not self._closed:
                raise
        finally:
            self._tasks.discard(task)
            if (conns := self._conns.get(peer)) is not None:
                conns.discard(conn)
                if not conns:
                    del self._conns[peer]
            writer.transport.abort()

    async def _serve(self, conn: _Conn) -> None:
        model = False
        first = True
        try:
            if len(self._conns[conn.peer]) >= self._max_conns:
                raise HttpError(503, "too many connections from this sandbox")
            self._conns[conn.peer].add(conn)
            while True:
                try:
                    async with asyncio.timeout(
                        self._head_timeout if first else self._idle_timeout
                    ):
                        head = await http1.read_head(conn.reader, request=True)
                except TimeoutError:
                    if first:
                        raise HttpError(408, "timed out waiting for a request") from None
                    return  # an idle keep-alive connection: just close it
                if head is None:
                    return
                first = False
                grant = self._grants.get(conn.peer)
                if grant is None:
                    raise Refused(f"{conn.peer} is not a registered sandbox")
                model = _is_model_request(head, conn.local)
                conn.responded = False
                if not await self._exchange(conn, head, grant, model):
                    return
        except Refused as e:
            self.stats["refused"] += 1
            grant = self._grants.get(conn.peer)
            log.info("egress: refused %s (%s): %s", conn.peer, grant.label if grant else "?",
                     e.reason)  # fmt: skip
            await self._answer_error(conn, 403, e.reason, model)
        except HttpError as e:
            self.stats[f"error_{e.status}"] += 1
            await self._answer_error(conn, e.status, e.reason, model)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except RuntimeError as e:
            # uvloop raises RuntimeError, not ConnectionError, on a write to a transport that
            # closed under us (either end went away mid-body): the same event, end quietly.
            if "handler is closed" not in str(e):
                raise

    async def _exchange(self, conn: _Conn, head: Head, grant: Grant, model: bool) -> bool:
        """Handle one request; True if the connection may carry another."""
        if head.method == "CONNECT":
            await self._tunnel(conn, head, grant.rule)
            return False
        if model:
            path = head.target if head.target.startswith("/") else http1.split_url(head.target)[3]
            return await self._to_model(conn, head, path, grant.credentials)
        return await self._forward(conn, head, grant.rule)

    async def _open(self, host: str, port: int, rule: Rule) -> Streams:
        name = check_host(host, port, rule)
        addresses = await self._resolver.resolve(name, port)
        if not addresses:
            raise HttpError(502, f"{name} does not resolve")
        picked = pick_address(name, addresses)
        for address in picked:
            if self._is_local(address):
                shown = name if name == address else f"{name} resolves to {address}, which"
                raise Refused(f"{shown} is this runner's own address")
        try:
            return await connect_first(self._connector, picked, port, self._connect_timeout)
        except TimeoutError as e:
            raise HttpError(504, f"{name}:{port} did not answer in time") from e
        except OSError as e:
            raise HttpError(502, f"cannot connect to {name}:{port}: {e.strerror or e}") from e

    async def _tunnel(self, conn: _Conn, head: Head, rule: Rule) -> None:
        host, port = http1.split_authority(head.target)
        up_reader, up_writer = await self._open(host, port, rule)
        self.stats["tunnel"] += 1
        try:
            conn.writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            conn.responded = True
            await conn.writer.drain()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(_pump(conn.reader, up_writer))
                tg.create_task(_pump(up_reader, conn.writer))
        except* (ConnectionError, OSError):
            pass
        finally:
            up_writer.transport.abort()

    async def _forward(self, conn: _Conn, head: Head, rule: Rule) -> bool:
        host, port, authority, path = http1.split_url(head.target)
        http1.request_framing(head)  # refuse an ambiguous body before connecting anywhere
        streams = await self._open(host, port, rule)
        self.stats["forward"] += 1
        headers = [*head.end_to_end(drop=frozenset({"host", "expect"})), ("Host", authority)]

        async def opened() -> Streams:
            return streams

        return await self._relay(conn, head, path, headers, opened, idle=None)

    async def _to_model(
        self, conn: _Conn, head: Head, path: str, credentials: Credentials | None
    ) -> bool:
        upstream = self._model
        if upstream is None or credentials is None:
            raise Refused("no model endpoint is configured for this sandbox")
        headers = [*swap_credentials(head, credentials), ("Host", upstream.authority)]
        self.stats["model"] += 1

        async def connect() -> Streams:
            addresses = await self._resolver.resolve(upstream.host, upstream.port)
            if not addresses:
                raise HttpError(502, f"the model host {upstream.host} does not resolve")
            try:
                return await connect_first(
                    self._connector, addresses, upstream.port, self._connect_timeout,
                    tls=upstream.tls, server_hostname=upstream.host,
                )  # fmt: skip
            except TimeoutError as e:
                raise HttpError(504, "the model API did not answer in time") from e
            except OSError as e:
                raise HttpError(502, f"cannot reach the model API: {e.strerror or e}") from e

        return await self._relay(conn, head, upstream.target(path), headers, connect,
                                 idle=self._idle)  # fmt: skip

    async def _relay(
        self,
        conn: _Conn,
        head: Head,
        target: str,
        headers: list[tuple[str, str]],
        connect: Callable[[], Awaitable[Streams]],
        idle: IdleConnections | None,
    ) -> bool:
        """Send the request upstream and stream the response back; True if `conn` lives on.

        With `idle` (the model upstream), a body of known size is read first so the request
        can be sent again if a kept-alive connection turns out dead before it answers, and the
        upstream connection goes back to `idle` after a complete response. Otherwise the body
        streams through and the upstream connection serves this request only.
        """
        framing = http1.request_framing(head)
        if (head.get("expect") or "").lower() == "100-continue" and framing.kind != "none":
            conn.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body: bytes | None = None
        if idle is not None and framing.kind in ("none", "length"):
            if framing.length > MAX_REPLAYABLE_BODY:
                raise HttpError(413, "the request body is too large")
            body = await conn.reader.readexactly(framing.length)
        reuse = body is not None and idle is not None
        request = http1.encode_request(
            head.method, target, [*headers, ("Connection", "keep-alive" if reuse else "close")])
        for attempt in (0, 1):
            streams = idle.take() if reuse and idle is not None and attempt == 0 else None
            reused = streams is not None
            up_reader, up_writer = streams or await connect()
            keep_upstream = False
            try:
                try:
                    up_writer.write(request)
                    if body is None:
                        await http1.relay_body(framing, conn.reader, up_writer)
                    else:
                        up_writer.write(body)
                        await up_writer.drain()
                    resp = await self._response_head(up_reader)
                except (ConnectionError, _UpstreamClosed) as e:
                    if reused:
                        continue  # a stale kept-alive connection: once more on a fresh one
                    why = "closed without answering" if isinstance(e, _UpstreamClosed) else e
                    raise HttpError(502, f"the upstream connection failed: {why}") from e
                out = http1.response_framing(resp, head.method)
                keep = out.kind != "close" and head.keep_alive()
                reply = [*resp.end_to_end(), ("Connection", "keep-alive" if keep else "close")]
                conn.writer.write(http1.encode_response(resp.status, resp.reason, reply))
                conn.responded = True
                await http1.relay_body(out, up_reader, conn.writer)
                keep_upstream = reuse and out.kind != "close" and resp.keep_alive()
                return keep
            finally:
                if keep_upstream and idle is not None:
                    idle.put((up_reader, up_writer))
                else:
                    up_writer.transport.abort()
        raise HttpError(502, "the upstream closed without answering")

    async def _response_head(self, reader: asyncio.StreamReader) -> Head:
        """The final response head (interim 1xx ones skipped), bounded by upstream_timeout."""
        try:
            async with asyncio.timeout(self._upstream_timeout):
                while True:
                    resp = await http1.read_head(reader, request=False)
                    if resp is None:
                        raise _UpstreamClosed
                    if resp.status == 101:
                        raise HttpError(502, "the upstream switched protocols")
                    if not 100 <= resp.status < 200:
                        return resp
        except TimeoutError as e:
            raise HttpError(504, "the upstream did not answer in time") from e

    async def _answer_error(self, conn: _Conn, status: int, reason: str, model: bool) -> None:
        """Tell the sandbox why, unless a response is already under way (then just close)."""
        if conn.responded or conn.writer.is_closing():
            return
        if model:
            kind = "permission_error" if status == 403 else "api_error"
            body = json.dumps({"type": "error", "error": {"type": kind,
                                                          "message": f"ash egress: {reason}"}})
            ctype = "application/json"
        else:
            body, ctype = f"ash egress proxy: {reason}\n", "text/plain; charset=utf-8"
        data = body.encode()
        headers = [("Content-Type", ctype), ("Content-Length", str(len(data))),
                   ("X-Ash-Egress", "refused" if status == 403 else "error"),
                   ("Connection", "close")]  # fmt: skip
        text = http1.REASONS.get(status, "Error")
        with contextlib.suppress(ConnectionError, RuntimeError):
            conn.writer.write(http1.encode_response(status, text, headers) + data)
            async with asyncio.timeout(5):
                await conn.writer.drain()


async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    while data := await src.read(http1.READ_SIZE):
        dst.write(data)
        await dst.drain()
    if dst.can_write_eof() and not dst.is_closing():
        dst.write_eof()


def _is_model_request(head: Head, local: tuple[str, int]) -> bool:
    """Origin form, or absolute form naming the proxy's own address: the model endpoint."""
    if head.method == "CONNECT":
        return False
    if head.target.startswith("/"):
        return True
    with contextlib.suppress(HttpError):
        host, port, _, _ = http1.split_url(head.target)
        return (host, port) == (local[0], local[1])
    return False
