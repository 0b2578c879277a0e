"""`ash logs` and `ash runners`: what happened in a session, and what the fleet holds.

    ash logs SESSION [--after N] [-f]     a session's events, one line each (every turn's;
                                          -f keeps following new turns)
    ash runners                           the fleet's runners: sessions, capacity, draining,
                                          labels

`--json` prints one event per line (`logs`) or the runner list (`runners`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, Protocol, TextIO

from ash.client import AsyncClient
from ash.render import one_line, render_content, table, tool_summary
from protocol import codec
from protocol.api import RunnerView
from protocol.events import (
    Done,
    Error,
    Event,
    Message,
    SessionStart,
    TextDelta,
    ThinkingDelta,
    ToolResult,
    ToolUse,
    TurnComplete,
    UserMessage,
)

EXIT_OK = 0


class Ctx(Protocol):
    """What these commands need of the CLI's context (`ash.cli._Ctx` is one)."""

    args: argparse.Namespace
    out: TextIO
    err: TextIO

    @property
    def json(self) -> bool: ...

    def print_json(self, value: Any) -> None: ...


def add_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    """Add the commands to the CLI's parser; `command(name, help, run, parent=None)` makes one."""
    p = command("logs", "print a session's events, every turn's (-f: keep following)", _logs)
    p.add_argument("session")
    p.add_argument("--after", type=int, default=0, metavar="N",
                   help="only events after id N (default: from the session's start)")
    p.add_argument("-f", "--follow", action="store_true",
                   help="keep following new turns (Ctrl-C to leave)")  # fmt: skip
    command("runners", "list the fleet's runners: sessions, capacity, draining, labels",
            _runners)  # fmt: skip


async def _logs(ctx: Ctx, ash: AsyncClient) -> int:
    count = 0
    async for event in ash.logs(ctx.args.session, ctx.args.after, follow=ctx.args.follow):
        count += 1
        if ctx.json:
            ctx.out.write(codec.encode(event).decode() + "\n")
        else:
            ctx.out.write(log_line(event) + "\n")
        ctx.out.flush()
    if count == 0 and not ctx.json:
        ctx.err.write(f"no events after #{ctx.args.after}; `ash logs {ctx.args.session} -f` "
                      "waits for new ones\n")  # fmt: skip
    return EXIT_OK


def log_line(event: Event) -> str:
    """One line for an event: `#seq type  what it says`."""
    match event:
        case SessionStart(runner_id=runner, agent=agent):
            what = f"agent {agent} on runner {runner} (turn {event.turn_id})"
        case UserMessage(content=content):
            what = one_line(content, 200)
        case TextDelta(delta=text) | ThinkingDelta(delta=text):
            what = repr(text)
        case ToolUse(name=name, input=tool_input):
            what = f"{name}: {tool_summary(tool_input)}"
        case ToolResult(content=content, is_error=is_error):
            what = ("error: " if is_error else "") + render_content(content, limit=200)
        case Message(message=message):
            what = str(message.get("type", "?"))
        case TurnComplete(result=result, is_error=is_error, total_cost_usd=cost):
            what = ("error: " if is_error else "") + one_line(result or "", 160)
            if cost is not None:
                what += f" (${cost:.4f})"
        case Error(error=error):
            what = f"{error.code}: {error.message}"
        case Done(reason=reason):
            what = reason
        case _:
            what = ""
    tag = type(event).__struct_config__.tag  # type: ignore[attr-defined]
    return f"#{event.seq:<5} {tag:<14} {what}".rstrip()


async def _runners(ctx: Ctx, ash: AsyncClient) -> int:
    runners = await ash.list_runners()
    if ctx.json:
        ctx.print_json(runners)
    elif not runners:
        ctx.out.write("no runners in the registry; `ash start` runs one here, "
                      "`ash runner NATS_URL` joins one to a fleet\n")  # fmt: skip
    else:
        table(ctx.out, ["ID", "STATE", "SESSIONS", "WARM", "MEMORY", "CPU", "LABELS", "SEEN"],
              [_runner_row(r) for r in runners])  # fmt: skip
    return EXIT_OK


def _runner_row(r: RunnerView) -> list[str]:
    state = "draining" if r.draining else ("live" if r.live else "stale")
    cap = f"{r.sessions}/{r.max_sessions}" if r.max_sessions else str(r.sessions)
    memory = cpu = "-"
    if r.total is not None and r.committed is not None:
        memory = f"{r.committed.memory_mb}/{r.total.memory_mb} MB"
        cpu = f"{r.committed.cpu_percent}/{r.total.cpu_percent}%"
    labels = ",".join(f"{k}={v}" for k, v in sorted(r.labels.items())) or "-"
    warm = str(sum(r.warm.values()))
    return [r.runner_id, state, cap, warm, memory, cpu, labels, f"{r.seen_s:.1f}s ago"]
