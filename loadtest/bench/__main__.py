"""`python -m loadtest.bench`: start fresh stacks, measure, print the performance table.

    .venv/bin/python -m loadtest.bench                   # everything, default n (~15 min)
    .venv/bin/python -m loadtest.bench --quick           # small n, sweep to 10 sessions
    .venv/bin/python -m loadtest.bench --only create,resume --json /tmp/bench.json

Sections (`--only`, comma-separated): floors create resume message tti burst sse sweep realcli.
Progress goes to stderr, the table to stdout, and with `--json PATH` every row (n, p50, p99,
floor, multiple, the original Ash's figure, notes) to a file. Runs as root (bwrap, cgroups,
loop-mounted disks, network namespaces). Three stacks, one after the other, each under its own
temp dir: two stand-in runners (most sections), one stand-in runner sized for 500 sessions (the
sweep), one runner with the real Claude Code CLI and the offline scripted model (realcli).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import nats
import uvloop

from loadtest.bench import latency, load
from loadtest.bench.context import Ctx, log
from loadtest.bench.probe import Http, now_ms
from loadtest.bench.report import ASH_CREATE, Row, render, write_json
from loadtest.bench.stack import Stack, capacity_env, wait_warm

SECTIONS = ("floors", "create", "resume", "message", "tti", "burst", "sse", "sweep", "realcli")
MAIN = ("floors", "create", "resume", "message", "tti", "burst", "sse")
SWEEP_LEVELS = [1, 10, 100, 500]
REAL_CLI_MB = 210  # RSS of one real CLI after a turn (reference/floors.md)


@contextlib.asynccontextmanager
async def stack_ctx(args: argparse.Namespace, tmp: Path, rows: list[Row], floors: dict[str, float],
                    runners: dict[str, dict[str, str]],
                    coordinator: dict[str, str]) -> AsyncIterator[Ctx]:
    stack = Stack(tmp, profile=Path(args.profile) if args.profile else None)
    if stack.profile is not None:
        stack.profile.mkdir(parents=True, exist_ok=True)
    try:
        stack.start(runners, coordinator)
        await stack.wait_ready(len(runners))
        nc = await nats.connect(stack.nats_url)
        http = Http(stack.url, key=stack.key)
        try:
            yield Ctx(stack=stack, http=http, nc=nc, n=args.n, quick=args.quick, tmp=tmp,
                      runners=list(runners), floors=floors, rows=rows)
        finally:
            await http.close()
            await nc.close()
    finally:
        log(f"stopping the stack under {tmp}")
        stack.stop()
        keep = Path(tempfile.gettempdir()) / "ash-bench-logs" / tmp.name
        keep.mkdir(parents=True, exist_ok=True)
        for f in tmp.glob("*.log"):
            shutil.copy(f, keep / f.name)
        log(f"logs kept in {keep}")


async def guarded(ctx: Ctx, name: str, fn: Callable[[Ctx], Awaitable[None]]) -> bool:
    """Run a section; a failure becomes a row saying why, not a crash. True if it ran."""
    try:
        await fn(ctx)
        return True
    except Exception as e:
        traceback.print_exc(file=sys.stderr)
        ctx.add(Row(name, f"{name}: failed", "", [], value=f"failed: {type(e).__name__}: "
                    f"{str(e)[:300]}"))
        return False


async def run_realcli(ctx: Ctx) -> None:
    n = min(ctx.n, 3 if ctx.quick else 10)
    log(f"real CLI: create no pool x{n}, pool hit x{n}")
    await latency.setup_agents(ctx)
    miss, hit = [], []
    for agent, out in ((latency.COLD, miss), (latency.HOT, hit)):
        for _ in range(n):
            if agent == latency.HOT:
                await wait_warm(ctx.nc, ctx.runners, latency.HOT, timeout=120)
            t0 = now_ms()
            sid = (await ctx.http.create(agent))["id"]
            out.append(now_ms() - t0)
            await ctx.http.end(sid)
    ctx.add(Row("session create (real CLI)", "no pool: fresh sandbox, real CLI", "POST "
                "/api/sessions -> 201 for an agent with `[pool] warm = 0`: sandbox, network slot, "
                "the bundled Claude Code CLI's start and SDK initialize", miss, ash=ASH_CREATE),
            "http", "nats", "bwrap")
    ctx.add(Row("session create (real CLI)", "warm-pool hit, real CLI", "as the stand-in's hit "
                "row, the claimed sandbox running the real CLI", hit, ash=ASH_CREATE,
                goal="p50 <= 2"), "http", "nats")
    levels = [1, 2] if ctx.quick else [1, 10, 100, 500]
    why = f"~{REAL_CLI_MB} MB RSS per real CLI x N and their start on 2 shared cores"
    await load.sweep(ctx, levels, "real CLI", {k: why for k in levels if k > 10})


async def main(args: argparse.Namespace) -> int:
    only = set(args.only.split(",")) if args.only else set(SECTIONS)
    unknown = only - set(SECTIONS)
    if unknown:
        raise SystemExit(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    if os.geteuid() != 0:
        raise SystemExit("the benchmark starts runners, which need root (bwrap, cgroups, mounts)")
    rows: list[Row] = []
    floors: dict[str, float] = {}
    started = time.time()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="ash-bench-") as tmp_s:
        try:
            await sections(args, only, Path(tmp_s), rows, floors)
        except Exception as e:  # a stack that would not start: the table says so
            traceback.print_exc(file=sys.stderr)
            rows.append(Row("stack", "stack: failed", "", [], value=f"failed: {e}"[:300]))
    print_table(args, rows, floors, only, started, load_before)
    return 0


async def sections(args: argparse.Namespace, only: set[str], tmp: Path, rows: list[Row],
                   floors: dict[str, float]) -> None:
    """Each stack in turn, each section guarded."""
    if only & set(MAIN):
        coord, cap = capacity_env(160)
        runner = {"ASH_CLI": "standin", "ASH_ADVERT_INTERVAL_S": "0.1", **cap,
                  "ASH_POOL_WARM_MAX": str(load.BURST_WARM)}
        async with stack_ctx(args, tmp / "main", rows, floors,
                             {"runner-a": runner, "runner-b": runner}, coord) as ctx:
            ctx.tmp.mkdir(exist_ok=True)
            if "floors" in only or only & {"resume", "message"}:
                await guarded(ctx, "floors", latency.run_floors)
            ready = await guarded(ctx, "setup", latency.setup_agents)
            for name, fn in (("create", latency.run_create), ("resume", latency.run_resume),
                             ("message", latency.run_message), ("tti", latency.run_tti),
                             ("burst", load.run_burst), ("sse", load.run_sse)):
                if ready and name in only:
                    await guarded(ctx, name, fn)
    if "sweep" in only:
        levels = [1, 10] if args.quick else SWEEP_LEVELS
        coord, cap = capacity_env(max(levels) + 20)
        sweep_runner = {"ASH_CLI": "standin", "ASH_POOL_GENERIC": "8", **cap}
        async with stack_ctx(args, tmp / "sweep", rows, floors, {"runner-s": sweep_runner},
                             coord) as ctx:
            if await guarded(ctx, "sweep setup", latency.setup_agents):
                await guarded(ctx, "sweep (stand-in)", lambda c: load.sweep(
                    c, levels, "stand-in", {}))
    if "realcli" in only:
        coord, cap = capacity_env(16)
        real = {"ASH_CLI": "claude", **cap, "ASH_MEMORY_MB": "1024"}
        async with stack_ctx(args, tmp / "real", rows, floors, {"runner-c": real}, coord) as ctx:
            await guarded(ctx, "real CLI", run_realcli)


def print_table(args: argparse.Namespace, rows: list[Row], floors: dict[str, float],
                only: set[str], started: float, load_before: tuple[float, float, float]) -> None:
    header = (f"Ash benchmark, {time.strftime('%Y-%m-%d %H:%M', time.localtime(started))}, "
              f"n={args.n}{' (quick)' if args.quick else ''}, {os.cpu_count()} cores, "
              f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
              f"load average at start {load_before[0]:.2f}, took {time.time() - started:.0f} s. "
              "Milliseconds; p50/p99 nearest rank; `x floor` = p50 / the sum of the named "
              "floors' p50s measured in this run.")
    print(render(rows, header))
    if args.json:
        write_json(args.json, rows, {"header": header, "n": args.n, "quick": args.quick,
                                     "floors": floors, "sections": sorted(only)})
        log(f"wrote {args.json}")


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small n, a short sweep")
    parser.add_argument("-n", type=int, default=None, help="samples per row (default 50, quick 8)")
    parser.add_argument("--json", metavar="PATH", help="also write every row as JSON here")
    parser.add_argument("--profile", metavar="DIR", help="run the coordinator and runners under "
                        "cProfile, writing DIR/<process>.prof (slows them: for hot spots only)")
    parser.add_argument("--only", metavar="SECTION[,SECTION]", help=", ".join(SECTIONS))
    args = parser.parse_args()
    if args.n is None:
        args.n = 8 if args.quick else 50
    sys.exit(uvloop.run(main(args)))


if __name__ == "__main__":
    cli()
