"""What placement and a network hop cost: session create and time to first event, fleet vs one host.

Two setups, measured one after the other in the same run with the same client code:

    single   nats-server, one coordinator and one runner on loopback (the embedded default)
    fleet    the multi-host lab of tests/fleet: nats-server, two coordinators and three runners,
             each in a network namespace of its own behind a bridge (veth hops between every
             pair), placement choosing among the three runners

Both use the zero-latency stand-in CLI, so the figures are the platform's alone. For each setup
it creates `n` sessions one after another through one coordinator (timing `POST
/api/sessions` to its 201; before each, it waits until a runner advertises a warm sandbox of
the agent, so every create is a pool hit in both setups and the difference is placement and
the hops) and sends one turn to each (timing the POST to the first SSE event),
then prints n, p50 and p99 side by side, and the fleet's figure as a multiple of the single
host's. Needs root (namespaces, bwrap, cgroups).

    .venv/bin/python -m loadtest.fleet -n 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from ash import AsyncClient
from ash.embedded_nats import start_nats
from loadtest.spine import pct
from tests.fleet.harness import open_fleet
from tests.procs import ROOT, Stack

AGENT = "hello"
RUNNER_ENV = {"ASH_CLI": "standin", "ASH_MAX_SESSIONS": "32", "ASH_POOL_WARM_MAX": "1",
              "ASH_ADVERT_INTERVAL_S": "0.1"}
Samples = dict[str, list[float]]


async def wait_runners(client: AsyncClient, runners: int) -> None:
    deadline = time.monotonic() + 90
    while True:
        try:
            if (await client.health()).runners >= runners:
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"fewer than {runners} runners came up")
        await asyncio.sleep(0.05)


async def wait_warm(url: str) -> None:
    """Until some runner advertises a warm sandbox of the agent (the pool refilled)."""
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as http:
        while True:
            async with http.get(f"{url}/api/runners") as r:
                runners = (await r.json())["runners"]
            if any(v["live"] and v["warm"].get(AGENT, 0) > 0 for v in runners):
                return
            if time.monotonic() > deadline:
                raise SystemExit("no warm sandbox of the agent within 60 s")
            await asyncio.sleep(0.02)


async def measure(url: str, runners: int, n: int, label: str) -> Samples:
    out: Samples = {"session create": [], "time to first event": []}
    async with AsyncClient(url) as client:
        await wait_runners(client, runners)
        await client.deploy(ROOT / "examples" / AGENT, name=AGENT)
        for i in range(n + 3):  # the first 3 warm up connections and caches, and are dropped
            if i > 0:  # a runner warms an agent's pool after its first session there
                await wait_warm(url)  # so every measured create is a warm-pool hit
            t0 = time.perf_counter()
            session = await client.create_session(AGENT)
            created = (time.perf_counter() - t0) * 1000
            t0 = time.perf_counter()
            first = None
            async for _ in client.send(session.id, "Hello"):
                if first is None:
                    first = (time.perf_counter() - t0) * 1000
            await client.end_session(session.id)
            if i >= 3:
                out["session create"].append(created)
                out["time to first event"].append(first if first is not None else 0.0)
            print(f"\r{label}: {i + 1}/{n + 3}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return out


async def single(tmp: Path, n: int) -> Samples:
    nats = start_nats(tmp / "nats")
    stack = Stack(tmp, nats.url)
    try:
        coordinator_url = (stack.start_coordinator(), stack.url)[1]
        stack.start_runner(**RUNNER_ENV)
        return await measure(coordinator_url, 1, n, "single host")
    finally:
        stack.stop()
        nats.stop()


async def fleet(tmp: Path, n: int) -> Samples:
    lab = await asyncio.to_thread(open_fleet, tmp, RUNNER_ENV, {})
    try:
        return await measure(lab.url("c1"), 3, n, "fleet")
    finally:
        await asyncio.to_thread(lab.close)


def table(results: dict[str, Samples]) -> str:
    lines = [f"{'what':<22}{'setup':<8}{'n':>5}{'p50 ms':>9}{'p99 ms':>9}{'x single p50':>14}"]
    for what in results["single"]:
        base = pct(results["single"][what], 50)
        for setup, samples in results.items():
            values = samples[what]
            ratio = pct(values, 50) / base if base else float("nan")
            lines.append(f"{what:<22}{setup:<8}{len(values):>5}{pct(values, 50):>9.2f}"
                         f"{pct(values, 99):>9.2f}{ratio:>14.2f}")
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=100)
    parser.add_argument("--json", type=Path, help="also write the samples' p50/p99 here")
    args = parser.parse_args()
    results: dict[str, Samples] = {}
    with tempfile.TemporaryDirectory(prefix="ash-fleet-bench-") as tmp:
        (Path(tmp) / "single").mkdir()
        (Path(tmp) / "fleet").mkdir()
        results["single"] = await single(Path(tmp) / "single", args.n)
        results["fleet"] = await fleet(Path(tmp) / "fleet", args.n)
    print(table(results))
    if args.json:
        summary: dict[str, Any] = {
            setup: {what: {"n": len(v), "p50_ms": pct(v, 50), "p99_ms": pct(v, 99)}
                    for what, v in samples.items()}
            for setup, samples in results.items()
        }
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
