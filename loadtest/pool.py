"""`POST /api/sessions` on a per-agent warm-pool hit versus a miss.

Starts its own stack (nats-server, a coordinator and a runner, each a process) under a temp
dir, with the scripted model, deploys `examples/hello` twice (as `hot`, pool on, and as `cold`,
whose ash.toml says `[pool] warm = 0`), then times n sequential session creates of each kind:

    hit               default options on `hot`, after its warm sandbox is ready: claims a
                      started CLI
    miss: options     `hot` with a system prompt: never a warm one, a CLI is started for it
    miss: no pool     `cold` with default options: a CLI is started for it
    hit: runner only  a hit asked of the runner directly over NATS (CreateSession), without
                      the coordinator's HTTP, SQLite and placement: the runner's share

Every session is ended before the next (not timed). Whether each create really was a hit or a
miss is checked from outside, the way the tests do: did the session's CLI process start
before or after the request? (`verified` column; for the direct case, Accepted.warm.) Runs as
root (bwrap, cgroups, loop mounts).

    .venv/bin/python -m loadtest.pool --cli standin -n 50
    .venv/bin/python -m loadtest.pool --cli claude -n 30
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import nats

from ash import AsyncClient
from ash.embedded_nats import start_nats
from protocol import codec, subjects
from protocol.commands import Accepted, AgentRef, CreateSession, EndSession

ROOT = Path(__file__).resolve().parent.parent
RUNNER = "bench-runner"
CLI_INSIDE = "/opt/ash/bin/cli"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def boot_time() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def cli_started(runner_dir: Path, session_id: str) -> float | None:
    """When the CLI in the session's sandbox started (seconds since boot), from /proc."""
    slot = (runner_dir / "sessions" / session_id).resolve().parent.name
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if f"/{slot}-" not in Path(entry.path, "cgroup").read_text():
                continue
            argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
            if CLI_INSIDE.encode() not in argv[:2]:
                continue
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        return int(stat.rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
    return None


async def warm_count(nc: nats.NATS, agent: str) -> int:
    kv = await nc.jetstream().key_value(subjects.RUNNERS_BUCKET)
    entry = await kv.get(RUNNER)
    return codec.decode_advert(entry.value or b"{}").warm.get(agent, 0)


async def wait_warm(nc: nats.NATS, agent: str, timeout: float = 60.0) -> None:
    """Until an advert made after this call says `agent` has a warm sandbox (an older advert
    may still count the one the previous session just claimed)."""
    since = time.time()
    deadline = time.monotonic() + timeout
    kv = await nc.jetstream().key_value(subjects.RUNNERS_BUCKET)
    while True:
        advert = codec.decode_advert((await kv.get(RUNNER)).value or b"{}")
        if advert.ts > since and advert.warm.get(agent, 0) >= 1:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"{agent} never got a warm sandbox")
        await asyncio.sleep(0.02)


async def direct_hits(nc: nats.NATS, ref: AgentRef, n: int) -> tuple[list[float], int]:
    """CreateSession straight to the runner over NATS: the runner's share of a hit."""
    times, warm = [], 0
    for _ in range(n):
        await wait_warm(nc, ref.name)
        cmd = CreateSession(session_id=uuid.uuid4().hex, agent=ref)
        t0 = time.perf_counter()
        reply = codec.decode_reply((await nc.request(
            subjects.runner_commands(RUNNER), codec.encode(cmd), timeout=60)).data)
        times.append((time.perf_counter() - t0) * 1000)
        warm += isinstance(reply, Accepted) and reply.warm
        await nc.request(subjects.runner_commands(RUNNER),
                         codec.encode(EndSession(session_id=cmd.session_id)), timeout=60)
    return times, warm


async def measure(url: str, nats_url: str, runner_dir: Path, n: int) -> dict[str, tuple[list[float], int]]:
    out: dict[str, tuple[list[float], int]] = {}
    nc = await nats.connect(nats_url)
    try:
        async with AsyncClient(url) as client:
            with tempfile.TemporaryDirectory() as tmp:
                cold = Path(tmp) / "cold"
                shutil.copytree(ROOT / "examples" / "hello", cold)
                (cold / "ash.toml").write_text("[pool]\nwarm = 0\n")
                hot = await client.deploy(ROOT / "examples" / "hello", name="hot")
                await client.deploy(cold, name="cold")
            # One untimed session each: the runner fetches the bundles and starts the pool.
            for agent in ("hot", "cold"):
                await client.end_session((await client.create_session(agent)).id)

            cases = [
                ("hit", "hot", {}, True),
                ("miss: options", "hot", {"system_prompt": "You are a benchmark."}, False),
                ("miss: no pool", "cold", {}, False),
            ]
            for label, agent, options, warm in cases:
                times, verified = [], 0
                for _ in range(n):
                    if warm:
                        await wait_warm(nc, agent)
                    asked = boot_time()
                    t0 = time.perf_counter()
                    session = await client.create_session(agent, **options)
                    times.append((time.perf_counter() - t0) * 1000)
                    started = cli_started(runner_dir, session.id)
                    if started is not None and (started < asked) == warm:
                        verified += 1
                    await client.end_session(session.id)
                out[label] = (times, verified)
            out["hit: runner only"] = await direct_hits(nc, AgentRef(name="hot", digest=hot.digest), n)
    finally:
        await nc.close()
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--cli", default="standin", help="standin | claude")
    parser.add_argument("-n", type=int, default=30)
    parser.add_argument("--generic", type=int, default=2, help="ASH_POOL_GENERIC (ready disks)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ash-bench-") as tmp:
        server = start_nats(Path(tmp) / "nats")
        port = 4900 + os.getpid() % 500
        base = {k: v for k, v in os.environ.items() if not k.startswith(("ASH_", "ANTHROPIC_"))}
        env = {**base, "ASH_NATS_URL": server.url, "ASH_HOME": tmp, "ASH_PORT": str(port),
               "ASH_LOG_LEVEL": "WARNING"}
        runner_env = {**env, "ASH_CLI": args.cli, "ASH_RUNNER_ID": RUNNER,
                      "ASH_ADVERT_INTERVAL_S": "0.05", "ASH_POOL_GENERIC": str(args.generic)}
        procs = [
            subprocess.Popen([sys.executable, "-m", "coordinator"], env=env, cwd=ROOT),
            subprocess.Popen([sys.executable, "-m", "runner"], env=runner_env, cwd=ROOT),
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
            results = await measure(url, server.url, Path(tmp) / "runner", args.n)
        finally:
            for p in reversed(procs):
                p.terminate()
                p.wait(30)
            server.stop()
    print(f"\nPOST /api/sessions, cli={args.cli}, n={args.n}, generic pool={args.generic} (ms)")
    print(f"{'case':<16}{'p50':>9}{'p99':>9}{'mean':>9}{'verified':>10}")
    for name, (values, verified) in results.items():
        print(f"{name:<16}{pct(values, 50):>9.1f}{pct(values, 99):>9.1f}"
              f"{statistics.mean(values):>9.1f}{verified:>7}/{len(values)}")


if __name__ == "__main__":
    asyncio.run(main())
