"""The runner side of the network escape suite, run INSIDE the test's "runner" namespace.

    nsenter --net=<prefix>-run python -m tests.runner.netlab_runner  < commands (JSON lines)

Holds what a runner holds: a NetworkPool (host ends in this namespace, its own), an
EgressProxy on every slot gateway, the scripted model on loopback as the model upstream, and
two services standing for NATS and the coordinator, and a DNS server (UDP 53) that counts
what reaches it. The first stdin line is the
config; each further line is a command, answered with one JSON line on stdout:

    {"op": "run", "argv": [...], "policy": "allowlist", "allowlist": [...], "files": {...},
     "cli": false, "timeout": 30}      -> {"exit", "stdout", "stderr", "placeholder", "slot"}
    {"op": "state"}                    -> model requests, loopback hits, pool gauges, timings

The real key comes in on stdin, never in this process's environment or argv.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import uuid
from collections import Counter
from typing import Any

from runner import bridge
from runner.egress import Credentials, EgressProxy, ModelUpstream, StaticResolver
from runner.egress import new_placeholder, sandbox_env
from runner.sandbox import NetworkPool, Sandbox, SandboxSpec, detect
from runner.scripted.model_api import ScriptedModelServer

CLI_ENV = {"DISABLE_TELEMETRY": "1", "DISABLE_AUTOUPDATER": "1",
           "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}  # fmt: skip


async def main() -> None:
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    config = json.loads(await stdin.readline())
    hits: Counter[str] = Counter()

    async def count(name: str, _r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        hits[name] += 1
        w.close()

    async with contextlib.AsyncExitStack() as stack:
        for name, host, port in (("nats", "0.0.0.0", 4222), ("coordinator", "127.0.0.1", 4100)):
            server = await asyncio.start_server(
                lambda r, w, n=name: count(n, r, w), host, port, reuse_address=True)
            stack.push_async_callback(_stop, server)
        class Datagrams(asyncio.DatagramProtocol):  # a DNS server standing on the runner
            def datagram_received(self, data: bytes, addr: Any) -> None:
                hits["dns"] += 1

        dns, _ = await loop.create_datagram_endpoint(Datagrams, local_addr=("0.0.0.0", 53))
        stack.callback(dns.close)
        model = await stack.enter_async_context(ScriptedModelServer("127.0.0.1", 0))
        pool = await stack.enter_async_context(NetworkPool(
            size=config["slots"], proxy_port=config["proxy_port"], subnet=config["subnet"],
            prefix=config["prefix"]))  # fmt: skip
        proxy = await stack.enter_async_context(EgressProxy(
            model=ModelUpstream.from_url(model.url), resolver=StaticResolver(config["names"]),
            connect_timeout_s=3))  # fmt: skip
        # Listening first (IP_FREEBIND), as a runner does: the gateways do not exist yet.
        for gateway in pool.gateways():
            await proxy.listen(gateway, config["proxy_port"])
        await pool.populate()
        backend = detect()
        reply({"ready": True, "model_url": model.url})
        while line := await stdin.readline():
            cmd = json.loads(line)
            if cmd["op"] == "run":
                try:
                    reply(await run(cmd, config, pool, proxy, backend))
                except Exception as e:  # noqa: BLE001 - reported to the test, which fails
                    reply({"error": repr(e)})
            elif cmd["op"] == "state":
                reply({
                    "model_requests": [{"path": r.path, "credential": r.credential,
                                        "purpose": r.purpose} for r in model.requests],
                    "loopback_hits": dict(hits),
                    "gauges": pool.gauges(),
                    "counters": dict(pool.counters),
                    "timings_ms": {k: [round(v * 1000, 3) for v in vs]
                                   for k, vs in pool.timings.items()},
                    "proxy_stats": dict(proxy.stats),
                })  # fmt: skip
            else:
                reply({"error": f"unknown op {cmd['op']!r}"})


async def run(
    cmd: dict[str, Any], config: dict[str, Any], pool: NetworkPool, proxy: EgressProxy,
    backend: Any,
) -> dict[str, Any]:  # fmt: skip
    slot = await pool.acquire()
    placeholder = new_placeholder()
    try:
        proxy.register(slot.address, policy=cmd.get("policy", "allowlist"),
                       allowlist=cmd.get("allowlist", ()),
                       credentials=Credentials(placeholder=placeholder,
                                               api_key=config["real_key"]))  # fmt: skip
        sid = f"sb-{uuid.uuid4().hex[:10]}"
        root = os.path.join(config["data_dir"], sid)
        env = {**sandbox_env(slot.proxy_url, placeholder), **CLI_ENV, **cmd.get("env", {})}
        spec = SandboxSpec(
            sandbox_id=sid, state_dir=os.path.join(root, "state"),
            workspace=os.path.join(root, "workspace"), home=os.path.join(root, "home"),
            cli=bridge.bundled_cli() if cmd.get("cli") else None, env=env,
            netns=slot.netns_path,
        )  # fmt: skip
        async with Sandbox(spec, backend, remove_dirs=True) as sb:
            for rel, text in cmd.get("files", {}).items():
                with open(os.path.join(spec.workspace, rel), "w") as f:
                    f.write(text)
            result = await sb.run(cmd["argv"], cmd.get("timeout", 30))
    finally:
        proxy.unregister(slot.address)
        await pool.release(slot)
    return {"exit": result.exit_code, "stdout": result.stdout.decode(errors="replace"),
            "stderr": result.stderr.decode(errors="replace"), "placeholder": placeholder,
            "slot": {"address": slot.address, "gateway": slot.gateway,
                     "proxy_url": slot.proxy_url}}  # fmt: skip


def reply(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _stop(server: asyncio.Server) -> None:
    server.close()
    await server.wait_closed()


if __name__ == "__main__":
    asyncio.run(main())
