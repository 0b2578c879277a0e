"""A first measurement of the spine: session create, time to first event and turn time.

Starts its own stack (nats-server, a coordinator and a runner, each a process) under a temp
dir, with the scripted model, and prints p50/p99 for n sessions of one turn each.

    .venv/bin/python -m loadtest.spine --cli standin -n 50
    .venv/bin/python -m loadtest.spine --cli claude -n 20
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ash import AsyncClient
from ash.embedded_nats import start_nats
from protocol import events

ROOT = Path(__file__).resolve().parent.parent


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


async def measure(url: str, n: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"create": [], "first event": [], "first text": [], "turn": []}
    async with AsyncClient(url) as client:
        await client.deploy(ROOT / "examples" / "hello", name="hello")
        for _ in range(n):
            t0 = time.perf_counter()
            session = await client.create_session("hello")
            out["create"].append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            first = text = None
            async for ev in client.send(session.id, "Hello"):
                now = (time.perf_counter() - t0) * 1000
                first = first if first is not None else now
                if text is None and isinstance(ev, events.TextDelta):
                    text = now
            out["first event"].append(first or 0.0)
            out["first text"].append(text or 0.0)
            out["turn"].append((time.perf_counter() - t0) * 1000)
            await client.end_session(session.id)
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--cli", default="standin", help="standin | claude")
    parser.add_argument("-n", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ash-bench-") as tmp:
        nats = start_nats(Path(tmp) / "nats")
        port = 4900 + os.getpid() % 500
        base = {k: v for k, v in os.environ.items() if not k.startswith(("ASH_", "ANTHROPIC_"))}
        env = {**base, "ASH_NATS_URL": nats.url, "ASH_HOME": tmp, "ASH_PORT": str(port),
               "ASH_LOG_LEVEL": "WARNING"}
        procs = [
            subprocess.Popen([sys.executable, "-m", "coordinator"], env=env, cwd=ROOT),
            subprocess.Popen([sys.executable, "-m", "runner"], env={**env, "ASH_CLI": args.cli}, cwd=ROOT),
        ]
        url = f"http://127.0.0.1:{port}"
        try:
            async with AsyncClient(url) as client:
                deadline = time.monotonic() + 60
                while True:
                    try:
                        if (await client.health()).runners >= 1:
                            break
                    except Exception:
                        pass
                    if time.monotonic() > deadline:
                        raise SystemExit("the stack did not come up")
                    await asyncio.sleep(0.05)
            results = await measure(url, args.n)
        finally:
            for p in reversed(procs):
                p.terminate()
                p.wait(15)
            nats.stop()
    print(f"\nspine, cli={args.cli}, n={args.n} (ms)")
    print(f"{'what':<14}{'p50':>9}{'p99':>9}{'mean':>9}")
    for name, values in results.items():
        print(f"{name:<14}{pct(values, 50):>9.1f}{pct(values, 99):>9.1f}{statistics.mean(values):>9.1f}")


if __name__ == "__main__":
    asyncio.run(main())
