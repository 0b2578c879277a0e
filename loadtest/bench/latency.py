"""Sections timed one request at a time: floors, session create, resume, per-message.

Each sample runs alone (sequentially) on an already-open keep-alive connection; whatever a
sample needs first (a warm sandbox ready, a paused session, a snapshot) is waited for outside
the timed span.
"""

from __future__ import annotations

import asyncio
import time

from loadtest.bench import direct, floors
from loadtest.bench.context import Ctx, log
from loadtest.bench.probe import BenchError, accepted, command, cpu_seconds, new_id, now_ms
from loadtest.bench.report import (
    ASH_COLD,
    ASH_CREATE,
    ASH_MESSAGE,
    ASH_WARM,
    BLAXEL_RESUME,
    TTI_PEERS,
    Row,
    pct,
)
from loadtest.bench.stack import wait_warm
from protocol.commands import AgentRef, CreateSession, EndSession, PauseSession, ResumeSession, WarmAgent

HOT, COLD = "hot", "cold"  # the example agent with its warm pool on, and with it off


async def run_floors(ctx: Ctx) -> None:
    n = max(200, ctx.n * 20)
    log(f"floors: NATS request/reply x{n}, HTTP round trip x{n}, bwrap spawn x{ctx.n * 2}")
    rows = [
        Row("floors", "NATS request/reply", "request published -> reply received; bare "
            "responder process, 40 B, core NATS", await floors.nats_rr(ctx.stack.nats_url, n)),
        Row("floors", "HTTP round trip", "GET sent -> JSON body read; bare aiohttp server "
            "process, keep-alive", await floors.http_rtt(n)),
        Row("floors", "bwrap spawn", "spawn `bwrap --unshare-all` (read-only /usr, /etc) "
            "running /bin/true -> its exit", await floors.bwrap_spawn(ctx.n * 2)),
    ]
    spawn = await direct.spawn_times(ctx.tmp, max(5, ctx.n // 2))
    rows.append(Row("floors", "CLI spawn (stand-in, in a sandbox)", "SDK connect() of the "
                    "stand-in CLI in a fresh bwrap sandbox + cgroup, driven in the benchmark "
                    "process (bwrap, python start, initialize round trip)", spawn))
    for key, row in zip(("nats", "http", "bwrap", "cli_spawn"), rows):
        ctx.floors[key] = row.p50
        ctx.add(row)


async def setup_agents(ctx: Ctx) -> None:
    for name, extra in ((HOT, None), (COLD, {"ash.toml": "[pool]\nwarm = 0\n"})):
        view = await ctx.http.deploy(name, extra)
        ctx.digests[name] = view["digest"]
    # Every runner fetches the bundles and fills its pool (a deploy warms one runner only).
    for rid in ctx.runners:
        for agent in (HOT, COLD):
            accepted(await command(ctx.nc, rid, WarmAgent(agent=ref(ctx, agent))), "warm")
    for agent in (HOT, COLD):  # one untimed session each
        await ctx.http.end((await ctx.http.create(agent))["id"])
    await wait_warm(ctx.nc, ctx.runners, HOT, timeout=120)


def ref(ctx: Ctx, agent: str) -> AgentRef:
    return AgentRef(name=agent, digest=ctx.digests[agent])


async def run_create(ctx: Ctx) -> None:
    log(f"create: warm-pool hits x{ctx.n}")
    hit, runner_hit, miss = [], [], []
    for _ in range(ctx.n):
        await wait_warm(ctx.nc, ctx.runners, HOT)
        t0 = now_ms()
        sid = (await ctx.http.create(HOT))["id"]
        hit.append(now_ms() - t0)
        await ctx.http.end(sid)
    log(f"create: warm-pool hits asked of the runner over NATS x{ctx.n}")
    warm = 0
    rid = ctx.runners[0]
    for _ in range(ctx.n):
        await wait_warm(ctx.nc, [rid], HOT)
        sid = new_id()
        t0 = now_ms()
        reply = accepted(await command(ctx.nc, rid, CreateSession(session_id=sid, agent=ref(ctx, HOT))),
                         "create")
        runner_hit.append(now_ms() - t0)
        warm += reply.warm
        await command(ctx.nc, rid, EndSession(session_id=sid))
    log(f"create: no pool (fresh sandbox, stand-in CLI) x{ctx.n}")
    for _ in range(ctx.n):
        t0 = now_ms()
        sid = (await ctx.http.create(COLD))["id"]
        miss.append(now_ms() - t0)
        await ctx.http.end(sid)
    log(f"create: no pool asked of the runner over NATS x{ctx.n}")
    runner_miss = []
    for _ in range(ctx.n):
        sid = new_id()
        t0 = now_ms()
        accepted(await command(ctx.nc, rid, CreateSession(session_id=sid, agent=ref(ctx, COLD))),
                 "create")
        runner_miss.append(now_ms() - t0)
        await command(ctx.nc, rid, EndSession(session_id=sid))
    ctx.add(Row("session create", "warm-pool hit (HTTP)", "POST /api/sessions sent -> 201 body "
                "read, default options, after a fresh advert shows a warm sandbox on every runner; "
                "includes SQLite insert+update, placement, NATS CreateSession, the runner's claim",
                hit, ash=ASH_CREATE, goal="p50 <= 2"), "http", "nats")
    ctx.add(Row("session create", "warm-pool hit, runner only (NATS)", "CreateSession request "
                "published -> Accepted received, straight to the runner (no HTTP, no DB, no "
                "placement): the runner's share of a hit", runner_hit,
                value=f"{warm}/{ctx.n} warm"), "nats")
    ctx.add(Row("session create", "no pool: fresh sandbox, stand-in CLI", "POST /api/sessions "
                "-> 201 for an agent with `[pool] warm = 0`: workspace copy, sandbox prepare, "
                "bwrap + stand-in start, SDK initialize", miss, ash=ASH_CREATE),
            "http", "nats", "cli_spawn")
    ctx.add(Row("session create", "no pool, runner only (NATS)", "CreateSession for the "
                "`warm = 0` agent published -> Accepted, straight to the runner", runner_miss),
            "nats", "cli_spawn")


async def run_resume(ctx: Ctx) -> None:
    log(f"resume: warm x{ctx.n} (HTTP) and x{ctx.n} (runner over NATS)")
    view = await ctx.http.create(HOT)
    sid, rid = view["id"], view["runner_id"]
    await ctx.http.turn(sid)
    warm_http, warm_runner, kinds = [], [], set()
    for _ in range(ctx.n):
        await ctx.http.pause(sid)
        t0 = now_ms()
        kinds.add(await ctx.http.resume(sid))
        warm_http.append(now_ms() - t0)
    for _ in range(ctx.n):
        accepted(await command(ctx.nc, rid, PauseSession(session_id=sid)), "pause")
        t0 = now_ms()
        accepted(await command(ctx.nc, rid, ResumeSession(session_id=sid)), "resume")
        warm_runner.append(now_ms() - t0)
    await ctx.http.end(sid)
    if kinds != {"warm"}:
        raise BenchError(f"warm resumes answered Ash-Resumed {kinds}")
    ctx.add(Row("resume", "warm resume (HTTP)", "POST /resume sent -> 200 read (Ash-Resumed: "
                "warm), the sandbox frozen by an untimed POST /pause before: store read, NATS "
                "ResumeSession (cgroup thaw), store update", warm_http, ash=ASH_WARM,
                peers=BLAXEL_RESUME, goal="p50 <= 1"), "http", "nats")
    ctx.add(Row("resume", "warm resume, runner only (NATS)", "ResumeSession published -> "
                "Accepted received, straight to the runner (thaw of a frozen cgroup)",
                warm_runner, ash=ASH_WARM), "nats")

    n = ctx.n
    log(f"resume: cold x{n} each on the same runner, another runner (NATS) and via HTTP")
    if len(ctx.runners) < 2:
        raise BenchError("cold resume on another runner needs two runners")
    same, other, via_http = [], [], []
    same_phases: list[dict[str, float]] = []  # each sample's Accepted.phases, as the runner timed
    other_phases: list[dict[str, float]] = []
    for _ in range(n):
        view = await ctx.http.create(HOT)
        sid, home = view["id"], view["runner_id"]
        away = next(r for r in ctx.runners if r != home)
        await ctx.http.turn(sid, "Remember the word pelican")
        await ctx.http.pause(sid)  # snapshot taken: workspace, HOME (the transcript)
        await command(ctx.nc, home, EndSession(session_id=sid))  # the sandbox is gone
        for target, out, out_phases in ((home, same, same_phases), (away, other, other_phases)):
            t0 = now_ms()
            reply = accepted(await command(ctx.nc, target, CreateSession(
                session_id=sid, agent=ref(ctx, HOT), restore=True)), "cold resume")
            out.append(now_ms() - t0)
            out_phases.append(phases_of(reply.phases))
            await command(ctx.nc, target, EndSession(session_id=sid))
        t0 = now_ms()
        how = await ctx.http.resume(sid)
        via_http.append(now_ms() - t0)
        if how != "cold":
            raise BenchError(f"expected a cold resume, got {how!r}")
        await ctx.http.end(sid)
    note = ("CreateSession(restore) published -> Accepted, straight to the runner, after an "
            "untimed HTTP pause (snapshot) and EndSession there: snapshot fetch from the object "
            "store, untar into a pooled disk, sandbox prepare, CLI spawn + SDK initialize with "
            "--resume, snapshot claim")
    ctx.add(Row("resume", "cold, same runner (NATS)", note, same, ash=ASH_COLD,
                peers=BLAXEL_RESUME), "nats", "cli_spawn")
    ctx.add(Row("resume", "cold, another runner (NATS)", note + "; on the other runner",
                other, ash=ASH_COLD, peers=BLAXEL_RESUME), "nats", "cli_spawn")
    ctx.add(Row("resume", "cold, another runner (HTTP)", "POST /resume -> 200 (Ash-Resumed: "
                "cold): warm attempt refused by the old runner, placement elsewhere, the same "
                "restore, store updates", via_http, ash=ASH_COLD), "http", "nats", "cli_spawn")
    runs = (("same runner", same, same_phases), ("another runner", other, other_phases))
    for label, samples, phases in runs:
        ctx.add(Row("resume", f"cold, {label}, without the CLI spawn", f"per sample: the "
                    f"`cold, {label} (NATS)` time (CreateSession(restore) published -> Accepted "
                    "received) minus the `cli_spawn` phase the runner reported in that same "
                    "Accepted (bwrap + stand-in start + SDK initialize with --resume, timed "
                    "with perf_counter in Runner._start); what is left: snapshot fetch, untar, "
                    "sandbox prepare, snapshot claim, publisher, the NATS round trip and the "
                    "command's handling", [s - p["cli_spawn"] for s, p in zip(samples, phases)],
                    ash=ASH_COLD, goal="p50 <= 25"), "nats")
    for label, _, phases in runs:
        every = breakdown(phases, PHASES, gaps=True)
        ctx.add(Row("resume", f"cold, {label}: the runner's phases", "the `total` the runner "
                    "reported in each cold resume's Accepted (CreateSession reaching its session "
                    "manager -> the session registered, no NATS), with the p50 of each phase "
                    f"(ms, in the order they run): {every}; the value gives the main ones "
                    "(fetch = snapshot_fetch, prepare = sandbox_prepare, spawn = cli_spawn, "
                    "claim = snapshot_claim)",
                    [p["total"] for p in phases], value=breakdown(phases, MAIN_PHASES)))


# What a cold resume's Accepted.phases holds (runner/phases.py), in the order the runner runs them;
# the main ones with the short names the table shows.
PHASES = {name: name for name in ("bundle", "snapshot_fetch", "slot", "untar", "network",
                                  "sandbox_prepare", "cli_spawn", "snapshot_claim", "publisher")}
MAIN_PHASES = {"snapshot_fetch": "fetch", "untar": "untar", "sandbox_prepare": "prepare",
               "cli_spawn": "spawn", "snapshot_claim": "claim"}


def phases_of(phases: dict[str, float] | None) -> dict[str, float]:
    """A cold resume's phases as its runner reported them; the benchmark needs its CLI spawn."""
    if not phases or "cli_spawn" not in phases or "total" not in phases:
        raise BenchError(f"the runner's Accepted has no cli_spawn and total phases: {phases}")
    return phases


def breakdown(samples: list[dict[str, float]], names: dict[str, str], gaps: bool = False) -> str:
    """`label p50, ...` for the phases in `names` that any sample has; with `gaps`, also what
    no phase accounts for (total minus the sum of every phase, per sample)."""
    parts = [f"{label} {_ms(pct([p.get(name, 0.0) for p in samples], 50))}"
             for name, label in names.items() if any(name in p for p in samples)]
    if gaps:
        rest = [p["total"] - sum(v for k, v in p.items() if k != "total") for p in samples]
        parts.append(f"between phases {_ms(pct(rest, 50))}")
    return ", ".join(parts)


def _ms(x: float) -> str:
    return f"{x:.0f}" if x >= 10 else f"{x:.1f}" if x >= 1 else f"{x:.2f}"


async def run_message(ctx: Ctx) -> None:
    n = ctx.n * 4
    log(f"message: {n} turns through the platform interleaved with {n} direct SDK turns")
    view = await ctx.http.create(HOT)
    sid = view["id"]
    e2e, sdk, diff, first, first_text, events, tail = [], [], [], [], [], [], []
    pids = _platform_pids(ctx)
    async with direct.DirectStandin(ctx.tmp) as d:
        for _ in range(5):  # warm-up, both paths
            await ctx.http.turn(sid)
            await d.turn()
        idle = await _idle_cpu(pids)
        cpu0, t0 = {k: cpu_seconds(pid) for k, pid in pids.items()}, time.monotonic()
        busy = 0.0  # seconds spent in the platform's turns (not the direct SDK ones)
        for _ in range(n):
            started = time.monotonic()
            t = await ctx.http.turn(sid)
            busy += time.monotonic() - started
            s, _drafts = await d.turn()
            e2e.append(t.done)
            sdk.append(s)
            diff.append(t.done - s)
            first.append(t.first_event)
            first_text.append(t.first_text)
            events.append(t.events)
            tail.append(t.done - t.before_done)
        wall = time.monotonic() - t0
        per_turn = {k: max(0.0, (cpu_seconds(pid) - cpu0[k]) - idle[k] * wall) / n * 1000
                    for k, pid in pids.items()}
    await ctx.http.end(sid)
    ctx.add(Row("per message", "CPU per turn, by process", "each process's utime+stime over the "
                "turns (platform turns and the interleaved direct SDK turns, which run in the "
                "benchmark process, not these), minus its idle rate measured just before, / turns; "
                "runners: their own processes, not the sandboxes'",
                [], value=", ".join(f"{k} {v:.2f} ms" for k, v in per_turn.items())
                + f" ({busy / n * 1000:.1f} ms of wall per turn)"))
    ctx.add(Row("per message", "turn end to end (HTTP)", "POST /messages sent -> `done` SSE "
                "event read: coordinator subscribes to the session's subject, NATS SendTurn, runner -> SDK -> "
                "stand-in CLI in its sandbox, each event published to JetStream, relayed as SSE; "
                "`done` only after the history is recorded", e2e,
                value=f"{pct(events, 50):.0f} events"), "http", "nats")
    ctx.add(Row("per message", "same turn, SDK only", "Conversation.turn() (the runner's bridge "
                "over the SDK) query -> result, against the stand-in CLI in a bwrap sandbox, in "
                "the benchmark process: no HTTP, coordinator, NATS or JetStream", sdk))
    ctx.add(Row("per message", "per-message overhead", "per pair: end-to-end turn minus the SDK-"
                "only turn run right after it, same process, same clock", diff, ash=ASH_MESSAGE,
                goal="p50 <= 0.41"), "http", "nats")
    ctx.add(Row("per message", "last event -> done (history wait)", "from the event before "
                "`done` to `done`, both read by the client: the coordinator holds `done` until the "
                "turn's history is recorded (this coordinator's recorder wakes it; the shared ack floor only with several coordinators)",
                tail))
    ctx.add(Row("per message", "time to first event", "POST /messages sent -> first SSE event "
                "(user_message) read", first), "http", "nats")
    ctx.add(Row("per message", "time to first text_delta", "POST /messages sent -> first "
                "text_delta read", first_text), "http", "nats")


async def run_tti(ctx: Ctx) -> None:
    log(f"time to interactive: x{ctx.n} pool hit, x{ctx.n} no pool")
    for agent, label in ((HOT, "warm-pool hit"), (COLD, "no pool")):
        out = []
        for _ in range(ctx.n):
            if agent == HOT:
                await wait_warm(ctx.nc, ctx.runners, HOT)
            t0 = now_ms()
            sid = (await ctx.http.create(agent))["id"]
            code = await ctx.http.exec(sid, ["true"])
            out.append(now_ms() - t0)
            if code != 0:
                raise BenchError(f"exec true exited {code}")
            await ctx.http.end(sid)
        ctx.add(Row("time to interactive", f"create + first exec, {label}", "POST /api/sessions "
                    "sent -> 201, then POST /exec [\"true\"] -> `exec_exit` with exit code 0 read",
                    out, peers=TTI_PEERS), "http", "nats", "http", "nats")


def _platform_pids(ctx: Ctx) -> dict[str, int]:
    """The coordinator, the runners (together) and nats-server: name -> pid."""
    pids = {"coordinator": ctx.stack.procs["coordinator"].popen.pid}
    for rid in ctx.runners:
        pids[rid] = ctx.stack.procs[rid].popen.pid
    nats_pid = ctx.stack.nats_pid
    if nats_pid:
        pids["nats-server"] = nats_pid
    return pids


async def _idle_cpu(pids: dict[str, int], seconds: float = 1.0) -> dict[str, float]:
    """Each process's CPU seconds per second while nothing is asked of it (adverts, sweeps)."""
    before = {k: cpu_seconds(pid) for k, pid in pids.items()}
    await asyncio.sleep(seconds)  # the span the idle rate is measured over
    return {k: (cpu_seconds(pid) - before[k]) / seconds for k, pid in pids.items()}
