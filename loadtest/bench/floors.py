"""Physical floors, measured in the same run as the figures they are set against.

    NATS request/reply   this process -> nats-server -> a bare responder process -> back
                         (40-byte payload, core NATS, uvloop on both ends)
    HTTP round trip      aiohttp client -> a bare aiohttp server process answering GET with a
                         small JSON body, keep-alive
    bwrap spawn          spawn `bwrap --unshare-all` + the usual read-only binds running
                         /bin/true, until it exits

The responder and the server are this module run as a process:
`python -m loadtest.bench.floors nats URL` / `http PORT`.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import aiohttp
import nats

from loadtest.bench.stack import ROOT, free_port

SUBJECT = "bench.floor.echo"
BWRAP = ["/usr/bin/bwrap", "--unshare-all", "--die-with-parent", "--new-session",
         "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64",
         "/lib64", "--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin",
         "--ro-bind", "/etc", "/etc", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
         "--chdir", "/tmp", "/bin/true"]


async def _serve_nats(url: str) -> None:
    nc = await nats.connect(url)

    async def echo(msg: nats.aio.msg.Msg) -> None:
        await msg.respond(msg.data)

    await nc.subscribe(SUBJECT, cb=echo)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()


async def _serve_http(port: int) -> None:
    from aiohttp import web

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


def _helper(*args: str) -> subprocess.Popen[bytes]:
    p = subprocess.Popen([sys.executable, "-m", "loadtest.bench.floors", *args], cwd=ROOT,
                         stdout=subprocess.PIPE)
    assert p.stdout is not None
    if p.stdout.readline().strip() != b"ready":
        p.kill()
        raise RuntimeError(f"floor helper {args} did not start")
    return p


async def nats_rr(nats_url: str, n: int) -> list[float]:
    helper = _helper("nats", nats_url)
    try:
        nc = await nats.connect(nats_url)
        payload = b"x" * 40
        for _ in range(min(200, n)):  # warm-up
            await nc.request(SUBJECT, payload, timeout=5)
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            await nc.request(SUBJECT, payload, timeout=5)
            out.append((time.perf_counter() - t0) * 1000)
        await nc.close()
        return out
    finally:
        helper.terminate()
        helper.wait(10)


async def http_rtt(n: int) -> list[float]:
    port = free_port()
    helper = _helper("http", str(port))
    try:
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{port}/"
            out = []
            for i in range(n + min(200, n)):
                t0 = time.perf_counter()
                async with http.get(url) as r:
                    await r.read()
                if i >= min(200, n):
                    out.append((time.perf_counter() - t0) * 1000)
            return out
    finally:
        helper.terminate()
        helper.wait(10)


async def bwrap_spawn(n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        p = await asyncio.create_subprocess_exec(*BWRAP)
        if await p.wait() != 0:
            raise RuntimeError("bwrap /bin/true failed")
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main() -> None:
    import uvloop

    kind, arg = sys.argv[1], sys.argv[2]
    uvloop.run(_serve_nats(arg) if kind == "nats" else _serve_http(int(arg)))


if __name__ == "__main__":
    main()
