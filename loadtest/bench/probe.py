"""The benchmark's client side: raw aiohttp (the client the floors are measured with, not
`ash.AsyncClient`, whose own parsing would count as Ash's time), a minimal SSE reader that
time-stamps each event as its blank line arrives, and commands straight to a runner over NATS.

Every timed span runs on an already-open keep-alive connection: each helper reads its
response to the end so the connection goes back to the pool.
"""

from __future__ import annotations

import asyncio
import io
import os
import tarfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import nats

from protocol import codec, subjects
from protocol.commands import Accepted, CommandReply

ROOT = Path(__file__).resolve().parents[2]


class BenchError(Exception):
    """A request the benchmark relies on did not succeed."""


def now_ms() -> float:
    return time.perf_counter() * 1000


def pack(folder: Path, extra: dict[str, str] | None = None) -> bytes:
    """A gzip'd tar of an agent folder, with `extra` files (name -> text) added."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(folder)), recursive=False)
        for name, text in (extra or {}).items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclass(slots=True)
class Turn:
    """One streamed turn, times in ms from the request's start."""

    first_event: float = 0.0
    first_text: float = 0.0
    done: float = 0.0
    before_done: float = 0.0  # the event before `done` (turn_complete or message)
    events: int = 0
    gaps: int = 0  # ids that did not grow by exactly one
    types: list[str] = field(default_factory=list)


class Http:
    """An aiohttp session against one coordinator."""

    def __init__(self, url: str, connections: int = 0, key: str = "") -> None:
        self.url = url
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections, force_close=False),
            timeout=aiohttp.ClientTimeout(total=None, sock_read=300),
            headers={"Authorization": f"Bearer {key}"} if key else None,
        )

    async def close(self) -> None:
        await self.session.close()

    async def call(self, method: str, path: str, *, want: int = 200, **kw: Any) -> Any:
        async with self.session.request(method, self.url + path, **kw) as r:
            body = await r.read()
            if r.status != want:
                raise BenchError(f"{method} {path}: {r.status} {body[:300]!r}")
            self.last_headers = r.headers
            return msgspec.json.decode(body) if body else None

    async def deploy(self, name: str, extra: dict[str, str] | None = None) -> dict[str, Any]:
        body = pack(ROOT / "examples" / "hello", extra)
        return await self.call("POST", "/api/agents", want=201, params={"name": name},  # type: ignore[no-any-return]
                               data=body, headers={"Content-Type": "application/gzip"})

    async def create(self, agent: str, **options: Any) -> dict[str, Any]:
        return await self.call("POST", "/api/sessions", want=201,  # type: ignore[no-any-return]
                               json={"agent": agent, **options})

    async def end(self, session_id: str) -> None:
        await self.call("DELETE", f"/api/sessions/{session_id}")

    async def pause(self, session_id: str, tries: int = 200) -> int:
        """Pause; a 409 right after a turn's `done` (the runner's turn task has not ended
        yet) is retried. Returns how many 409s came first."""
        for i in range(tries):
            try:
                await self.call("POST", f"/api/sessions/{session_id}/pause")
                return i
            except BenchError as e:
                if ": 409 " not in str(e) or i == tries - 1:
                    raise
                await asyncio.sleep(0.005)  # retry interval while the runner ends the turn
        return tries

    async def resume(self, session_id: str) -> str:
        await self.call("POST", f"/api/sessions/{session_id}/resume")
        return str(self.last_headers.get("Ash-Resumed", ""))

    async def turn(self, session_id: str, content: str = "Hello") -> Turn:
        """POST a message and read its SSE stream to `done` (then to its end, untimed)."""
        out = Turn()
        t0 = now_ms()
        last_id = None
        async with self.session.post(f"{self.url}/api/sessions/{session_id}/messages",
                                     json={"content": content}) as r:
            if r.status != 200:
                raise BenchError(f"message: {r.status} {(await r.read())[:300]!r}")
            event, ident = "", None
            async for line in r.content:
                if line in (b"\n", b"\r\n"):
                    if not event:
                        continue
                    t = now_ms() - t0
                    out.events += 1
                    out.types.append(event)
                    if out.events == 1:
                        out.first_event = t
                    if not out.first_text and event == "text_delta":
                        out.first_text = t
                    if last_id is not None and ident is not None and ident != last_id + 1:
                        out.gaps += 1
                    last_id = ident if ident is not None else last_id
                    if event == "done":
                        out.done = t
                    else:
                        out.before_done = t
                    event, ident = "", None
                elif line.startswith(b"event:"):
                    event = line[6:].strip().decode()
                elif line.startswith(b"id:"):
                    ident = int(line[3:].strip())
            if not out.done:
                raise BenchError(f"turn of {session_id} ended without done: {out.types[-5:]}")
        return out

    async def exec(self, session_id: str, command: list[str]) -> int | None:
        """Run a command in the session's sandbox; its exit code (None if none came)."""
        code = None
        async with self.session.post(f"{self.url}/api/sessions/{session_id}/exec",
                                     json={"command": command}) as r:
            if r.status != 200:
                raise BenchError(f"exec: {r.status} {(await r.read())[:300]!r}")
            event = ""
            async for line in r.content:
                if line.startswith(b"event:"):
                    event = line[6:].strip().decode()
                elif line.startswith(b"data:") and event == "exec_exit":
                    code = msgspec.json.decode(line[5:].strip()).get("exit_code")
        return code


async def command(nc: nats.NATS, runner_id: str, cmd: Any, timeout: float = 120.0) -> CommandReply:
    """A command straight to a runner over NATS request/reply; its decoded reply."""
    reply = await nc.request(subjects.runner_commands(runner_id), codec.encode(cmd), timeout=timeout)
    return codec.decode_reply(reply.data)


def accepted(reply: CommandReply, what: str) -> Accepted:
    if not isinstance(reply, Accepted):
        raise BenchError(f"{what}: {reply}")
    return reply


def new_id() -> str:
    return uuid.uuid4().hex


def proc_tree(root_pid: int) -> list[int]:
    """`root_pid` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB, from smaps_rollup; (0, 0) if it is gone."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss
