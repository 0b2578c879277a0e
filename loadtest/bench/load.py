"""Sections that load the stack: a burst of creates, event throughput, the concurrency sweep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from loadtest.bench.context import Ctx, log
from loadtest.bench.latency import HOT
from loadtest.bench.probe import Http, command, cpu_seconds, memory_kb, now_ms, proc_tree
from loadtest.bench.report import ASH_CREATE, Row, pct
from loadtest.bench.stack import wait_warm
from protocol.commands import AgentRef, WarmAgent

BURST = 100
BURST_WARM = 55  # warm sandboxes per runner for the deep-pool burst (2 runners)
SSE_STREAMS = 4
SSE_PROMPT = "x" * 48_000  # the stand-in echoes it in ~2,000 text_delta events of 24 chars


async def _open_connections(http: Http, k: int) -> None:
    """Leave k idle keep-alive connections in the client's pool, so no timed request pays a
    TCP connect."""
    await asyncio.gather(*(http.call("GET", "/health") for _ in range(k)))


async def _gather_limited(k: int, jobs: list[Callable[[], Awaitable[Any]]]) -> list[Any]:
    sem = asyncio.Semaphore(k)

    async def one(job: Callable[[], Awaitable[Any]]) -> Any:
        async with sem:
            try:
                return await job()
            except Exception as e:  # counted by the caller
                return e

    return await asyncio.gather(*(one(j) for j in jobs))


async def _burst(ctx: Ctx, agent: str, rounds: int, warm: int) -> tuple[list[float], int, int, list[str]]:
    http = Http(ctx.stack.url, key=ctx.stack.key)
    lat: list[float] = []
    ok = total = 0
    errors: list[str] = []
    try:
        for _ in range(rounds):
            await wait_warm(ctx.nc, ctx.runners, agent, timeout=300, count=warm)
            await _open_connections(http, BURST)
            gate = asyncio.Event()

            async def one() -> str | None:
                await gate.wait()
                t0 = now_ms()
                try:
                    sid = (await http.create(agent))["id"]
                    lat.append(now_ms() - t0)
                    return str(sid)
                except Exception as e:
                    errors.append(str(e)[:300])
                    return None

            tasks = [asyncio.create_task(one()) for _ in range(BURST)]
            await asyncio.sleep(0)  # every task is now waiting on the gate
            gate.set()
            sids = await asyncio.gather(*tasks)
            total += BURST
            ok += sum(s is not None for s in sids)
            await _gather_limited(8, [lambda s=s: http.end(s) for s in sids if s])
    finally:
        await http.close()
    return lat, ok, total, errors


async def run_burst(ctx: Ctx) -> None:
    rounds = 1 if ctx.quick else 2
    deep = "deep"
    ctx.digests[deep] = (await ctx.http.deploy(deep, {"ash.toml": f"[pool]\nwarm = {BURST_WARM}\n"}))["digest"]
    for rid in ctx.runners:
        await command(ctx.nc, rid, WarmAgent(agent=AgentRef(name=deep, digest=ctx.digests[deep])))
    for agent, warm, label in ((HOT, 1, "default pool (1 warm per runner)"),
                               (deep, BURST_WARM, f"deep pool ({BURST_WARM} warm per runner)")):
        log(f"burst: {rounds} x {BURST} simultaneous creates, {label}")
        lat, ok, total, errors = await _burst(ctx, agent, rounds, warm)
        value = f"{ok}/{total} ok"
        if errors:
            value += f"; first error: {errors[0]}"
        ctx.add(Row("burst", f"{BURST} simultaneous creates, {label}", "all POST /api/sessions "
                    "released at once on pre-opened connections, each timed sent -> 201 "
                    f"(successes only); {rounds} round(s), each after the pools refilled, "
                    "sessions ended between rounds; 2 stand-in runners", lat, value=value,
                    ash=ASH_CREATE, goal="100% ok, p99 <= 200"), "http", "nats")
    await ctx.http.call("DELETE", f"/api/agents/{deep}", want=204)


async def run_sse(ctx: Ctx) -> None:
    rounds = 2 if ctx.quick else 5
    log(f"events/s: {rounds} rounds of {SSE_STREAMS} concurrent long turns")
    sids = [(await ctx.http.create(HOT))["id"] for _ in range(SSE_STREAMS)]
    await _open_connections(ctx.http, SSE_STREAMS)
    single, multi = [], []
    try:
        for _ in range(rounds):
            one = await ctx.http.turn(sids[0], SSE_PROMPT)
            single.append(one.events / (one.done / 1000))
            t0 = now_ms()
            turns = await asyncio.gather(*(ctx.http.turn(s, SSE_PROMPT) for s in sids))
            wall = now_ms() - t0
            multi.append(sum(t.events for t in turns) / (wall / 1000))
            if any(t.gaps for t in turns):
                raise RuntimeError("a stream skipped an event id")
    finally:
        await _gather_limited(4, [lambda s=s: ctx.http.end(s) for s in sids])
    ctx.add(Row("events/s", "one SSE stream", "events of one long turn (~2,000 text_delta) / "
                "(POST sent -> `done` read); median of rounds", [],
                value=f"{pct(single, 50):,.0f} events/s"))
    ctx.add(Row("events/s", f"{SSE_STREAMS} SSE streams at once", "events of "
                f"{SSE_STREAMS} concurrent long turns on one coordinator / (first POST sent -> "
                "last `done` read); median of rounds", [],
                value=f"{pct(multi, 50):,.0f} events/s"))


def _footprint(runner_pid: int) -> dict[str, float]:
    """The runner's own memory and its descendants' (sandboxes: bwrap + CLI), in MB."""
    tree = proc_tree(runner_pid)
    r_rss, r_pss = memory_kb(runner_pid)
    kids = [memory_kb(p) for p in tree if p != runner_pid]
    return {"runner_rss": r_rss / 1024, "runner_pss": r_pss / 1024,
            "sandbox_rss": sum(k[0] for k in kids) / 1024,
            "sandbox_pss": sum(k[1] for k in kids) / 1024, "procs": len(tree) - 1}


async def sweep(ctx: Ctx, levels: list[int], label: str, skip: dict[int, str]) -> None:
    """Sessions held at once on one runner, grown level by level: memory per sandbox while
    idle, then one turn in every session at once (latency, the runner's CPU)."""
    rid = ctx.runners[0]
    pid = ctx.stack.procs[rid].pid
    coord = ctx.stack.procs["coordinator"].pid
    await asyncio.sleep(2)  # let the warm pool settle before the baseline
    base = _footprint(pid)
    http = Http(ctx.stack.url, key=ctx.stack.key)
    held: list[str] = []
    try:
        for level in levels:
            if level in skip:
                ctx.add(Row(f"sweep ({label})", f"{level} sessions", "", [],
                            value=f"skipped: {skip[level]}"))
                continue
            log(f"sweep ({label}): growing to {level} sessions")
            t_grow = time.monotonic()
            results = await _gather_limited(8, [lambda: http.create(HOT)
                                                for _ in range(level - len(held))])
            errs = [r for r in results if isinstance(r, Exception)]
            held += [r["id"] for r in results if not isinstance(r, Exception)]
            grow_s = time.monotonic() - t_grow
            if len(held) < level:
                ctx.add(Row(f"sweep ({label})", f"{level} sessions", "", [],
                            value=f"stopped: {len(held)}/{level} sessions created; first error: "
                            f"{str(errs[0])[:200]}"))
                break
            await asyncio.sleep(1)  # idle: nothing running
            fp = _footprint(pid)
            rounds = 2 if level <= 100 else 1
            await _open_connections(http, min(level, 500))
            lat: list[float] = []
            failed = 0
            cpu0, ccpu0, w0 = cpu_seconds(pid), cpu_seconds(coord), time.monotonic()
            for _ in range(rounds):
                turns = await asyncio.gather(*(http.turn(s) for s in held), return_exceptions=True)
                for t in turns:
                    if isinstance(t, BaseException):
                        failed += 1
                    else:
                        lat.append(t.done)
            cpu, wall = cpu_seconds(pid) - cpu0, time.monotonic() - w0
            ccpu = cpu_seconds(coord) - ccpu0
            per_runner = (fp["runner_pss"] - base["runner_pss"]) / level
            per_box = (fp["sandbox_pss"] - base["sandbox_pss"]) / level
            per_box_rss = (fp["sandbox_rss"] - base["sandbox_rss"]) / level
            value = (f"CPU {100 * cpu / wall:.0f}%, {1000 * cpu / max(1, len(lat)):.1f} ms/turn; "
                     f"{per_runner:+.2f} MB runner, {per_box:+.1f} MB sandbox")
            detail = (f"per session while idle: runner {per_runner:+.2f} MB PSS, sandbox processes "
                      f"{per_box:+.1f} MB PSS ({per_box_rss:.1f} MB RSS); coordinator CPU "
                      f"{100 * ccpu / wall:.0f}% of a core ({1000 * ccpu / max(1, len(lat)):.1f} "
                      f"ms/turn) during the turns; {level} sessions "
                      f"created in {grow_s:.1f} s (8 at a time)")
            if failed:
                value += f"; {failed} turns failed"
            ctx.add(Row(f"sweep ({label})", f"{level} sessions, a turn in each at once",
                        f"{level} sessions held on one runner; every session sends one turn at "
                        f"once ({rounds} round(s)), each timed POST /messages -> `done`. Runner "
                        "CPU: its process's utime+stime over the turns' wall time. Memory: PSS "
                        "while idle minus the baseline before any session, divided by sessions "
                        f"(runner process; its descendants: bwrap + CLI). {detail}", lat,
                        value=value),
                    "http", "nats")
    finally:
        await _gather_limited(8, [lambda s=s: http.end(s) for s in held])
        await http.close()
