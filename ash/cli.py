"""The `ash` command line: deploy agents, talk to them, and run the local stack.

    ash deploy PATH [--name NAME]         pack a folder and deploy it (a new version if NAME exists)
    ash agents [get NAME | delete NAME]   list deployed agents (or show / delete one)
    ash session create AGENT [--model M] [--system-prompt S] [--env K=V ...]
                          [--credential NAME] [--mcp FILE]
    ash session list [--agent A] | get ID | end ID
    ash send SESSION TEXT                 one turn: text to stdout as it streams, tools to stderr
    ash chat AGENT TEXT                   a new session and its first turn; its id goes to stderr
    ash history SESSION                   the session's messages
    ash pause SESSION                     freeze and snapshot the session (a message resumes it)
    ash resume SESSION                    thaw it, or restore it from its snapshot on any runner
    ash fork SESSION                      a new session with copies of its workspace and
                                          conversation; prints the new id
    ash attach SESSION [--after N] [--follow]
                                          print a session's events: the rest of the running
                                          turn (or those after event id N; every turn with
                                          --follow); a turn goes on when its stream is left
    ash interrupt SESSION                 stop the running turn (its done says interrupted)
    ash logs SESSION [--after N] [-f]     a session's events, one line each, every turn's
                                          (-f: keep following new turns)
    ash runners                           the fleet's runners: sessions, capacity, draining,
                                          labels
    ash exec SESSION [--timeout S] [--env K=V ...] -- CMD [ARG ...]
                                          run a command in the session's sandbox; its stdout and
                                          stderr stream to ours, and its exit code is ours. One
                                          word runs via `bash -lc` ('echo a; exit 3'), several
                                          are the argv itself
    ash files ls SESSION [PATH] [-r]      list the workspace (or a directory of it)
    ash files get SESSION PATH [-o FILE]  a file of the workspace, to stdout or FILE
    ash files put SESSION FILE PATH       write FILE (or - for stdin) to PATH in the workspace
    ash files rm SESSION PATH [-r]        delete a file, a symlink or a directory
    ash workspace download SESSION FILE   the workspace as a tar.gz (FILE - for stdout)
    ash workspace upload SESSION FILE     extract a tar.gz into the workspace
    ash credentials add NAME [--kind K] [--from-env VAR]
                                          store a credential (sealed at rest), its value read
                                          from stdin (or VAR), never from the command line
    ash credentials list | rm NAME        list them (never their values), or delete one
    ash health                            the server's health
    ash usage [--group-by G] [--since T]  tokens, cost, tool calls and CPU, summed
    ash start [--port P] [--host H] [--foreground] | ash stop | ash status
    ash runner NATS_URL [--id ID] [--env-file FILE]
                                          run a runner here that joins the fleet on NATS_URL
                                          (configured by ASH_* env; needs root, see deploy/)

Options anywhere: --url (or ASH_URL; default http://127.0.0.1:4100), --api-key (or ASH_API_KEY),
--json (raw JSON; `send` and `exec` print one event per line). Transfers show progress on
stderr when it is a terminal (or with --progress); a create, chat, pause, resume or fork that
takes over a second shows what it waits for. The local stack lives in ASH_HOME (~/.ash).
Exit codes: 0 ok; 1 error (one `error:` line and a hint); 2 usage; 3 `status` found nothing
running; 130 interrupted; `exec` exits with the command's own code.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, TypeVar, get_args

import msgspec

from ash import launcher, ops_cli, sandbox_cli
from ash.client import DEFAULT_URL, AsyncClient
from ash.errors import AshConnectionError, AshError
from ash.process import pid_alive
from ash.render import ago, human_size, render_content, short_digest, table, tool_summary
from ash.stack import StackConfig, stored_api_key
from protocol import codec
from protocol.api import AgentView, KeyScope, SessionView
from protocol.errors import ErrorCode
from protocol.events import Done, Error, Event, TextDelta, ToolResult, ToolUse, TurnComplete

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_RUNNING, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


@dataclass(slots=True)
class _Ctx:
    """What every command gets: parsed args, the environment, and where to write."""

    args: argparse.Namespace
    environ: Mapping[str, str]
    out: TextIO
    err: TextIO

    @property
    def url(self) -> str:
        return getattr(self.args, "url", None) or self.environ.get("ASH_URL") or DEFAULT_URL

    @property
    def json(self) -> bool:
        return bool(getattr(self.args, "json", False))

    @property
    def home(self) -> Path:
        return Path(os.path.abspath(os.path.expanduser(self.environ.get("ASH_HOME") or "~/.ash")))

    def client(self) -> AsyncClient:
        # --api-key, else ASH_API_KEY, else the admin key `ash start` stored in ASH_HOME.
        key = (getattr(self.args, "api_key", None) or self.environ.get("ASH_API_KEY")
               or stored_api_key(self.home))
        return AsyncClient(self.url, key)

    def dim(self, text: str) -> str:
        tty = getattr(self.err, "isatty", lambda: False)()
        return f"\x1b[2m{text}\x1b[0m" if tty and "NO_COLOR" not in self.environ else text

    def print_json(self, value: Any) -> None:
        self.out.write(msgspec.json.format(codec.encode(value), indent=2).decode() + "\n")


# -- commands that talk to a server -----------------------------------------------------------


async def _deploy(ctx: _Ctx, ash: AsyncClient) -> int:
    path = ctx.args.path
    name = ctx.args.name or os.path.basename(os.path.abspath(path))
    agent = await ash.deploy(path, name)
    if ctx.json:
        ctx.print_json(agent)
    else:
        ctx.out.write(
            f"deployed {agent.name} v{agent.version} ({agent.files} files, {human_size(agent.size)}, "
            f"digest {short_digest(agent.digest)})\n"
        )
    return EXIT_OK


KEY_SCOPES = frozenset(get_args(KeyScope))


async def _keys(ctx: _Ctx, ash: AsyncClient) -> int:
    match ctx.args.keys_command:
        case "create":
            made = await ash.create_key(ctx.args.name, ctx.args.scope or ["sessions:read",
                                        "sessions:write"], ctx.args.tenant)
            if ctx.json:
                ctx.print_json(made)
            else:
                ctx.err.write(f"key {made.info.id} of tenant {made.info.tenant} "
                              f"({' '.join(made.info.scopes)}); shown once, keep it now:\n")
                ctx.out.write(made.key + "\n")
        case "revoke":
            key = await ash.revoke_key(ctx.args.id)
            ctx.print_json(key) if ctx.json else ctx.out.write(f"revoked {key.id}\n")
        case _:
            keys = await ash.list_keys(getattr(ctx.args, "tenant", None))
            if ctx.json:
                ctx.print_json(keys)
            else:
                for k in keys:
                    state = "revoked" if k.revoked_at else "active"
                    ctx.out.write(f"{k.id}  {k.tenant:<12} {state:<8} {' '.join(k.scopes):<32} "
                                  f"{k.name}\n")
    return EXIT_OK


async def _credentials(ctx: _Ctx, ash: AsyncClient) -> int:
    args = ctx.args
    match args.credentials_command:
        case "add":
            if args.from_env:
                value = os.environ.get(args.from_env, "")
                if not value:
                    raise AshError(f"${args.from_env} is not set or empty")
            elif sys.stdin.isatty():
                value = getpass.getpass(f"value of {args.name}: ")
            else:
                value = sys.stdin.read().strip()
            view = await ash.add_credential(args.name, value, args.kind)
            if ctx.json:
                ctx.print_json(view)
            else:
                ctx.out.write(f"stored {view.name} ({view.kind})\n")
        case "rm":
            await ash.delete_credential(args.name)
            if not ctx.json:
                ctx.out.write(f"deleted {args.name}\n")
        case _:
            views = await ash.list_credentials()
            if ctx.json:
                ctx.print_json(views)
            else:
                for v in views:
                    ctx.out.write(f"{v.name:<24} {v.kind}\n")
    return EXIT_OK


async def _agents(ctx: _Ctx, ash: AsyncClient) -> int:
    match ctx.args.agents_command:
        case "get":
            agent = await ash.get_agent(ctx.args.name)
            ctx.print_json(agent) if ctx.json else _print_agents(ctx, [agent])
        case "delete":
            await ash.delete_agent(ctx.args.name)
            ctx.out.write(f"deleted {ctx.args.name}\n")
        case _:
            agents = await ash.list_agents()
            ctx.print_json(agents) if ctx.json else _print_agents(ctx, agents)
    return EXIT_OK


def _print_agents(ctx: _Ctx, agents: list[AgentView]) -> None:
    if not agents:
        ctx.out.write("no agents deployed yet; deploy one with `ash deploy PATH`\n")
        return
    rows = [
        [
            a.name,
            str(a.version),
            str(a.files),
            human_size(a.size),
            short_digest(a.digest),
            ago(a.updated_at),
        ]
        for a in agents
    ]
    table(ctx.out, ["NAME", "VERSION", "FILES", "SIZE", "DIGEST", "UPDATED"], rows)


def _mcp_file(path: str) -> dict[str, Any]:
    """The servers of a `.mcp.json`-shaped file (`{"mcpServers": {...}}`, or the map itself)."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise AshError(f"cannot read MCP servers from {path}: {e}") from e
    servers = doc.get("mcpServers", doc) if isinstance(doc, dict) else None
    if not isinstance(servers, dict):
        raise AshError(f'{path}: expected {{"mcpServers": {{"name": {{...}}}}}}')
    return servers


T = TypeVar("T")
WAIT_NOTICE_S = 1.0  # a call slower than this says what it waits for, on a terminal


async def waiting(ctx: _Ctx, what: str, call: Awaitable[T]) -> T:
    """Await `call`; if it takes longer than WAIT_NOTICE_S and stderr is a terminal, show
    `what` with the seconds waited so far (a cold start or a busy fleet can take a while)."""
    task = asyncio.ensure_future(call)
    tty = getattr(ctx.err, "isatty", lambda: False)() and not ctx.json
    started = time.monotonic()
    shown = False
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=WAIT_NOTICE_S)
            if done:
                return task.result()
            if tty:
                ctx.err.write(f"\r{what}... {time.monotonic() - started:.0f} s")
                ctx.err.flush()
                shown = True
    finally:
        task.cancel()
        if shown:
            ctx.err.write("\r\x1b[K")
            ctx.err.flush()


async def _session(ctx: _Ctx, ash: AsyncClient) -> int:
    args = ctx.args
    match args.session_command:
        case "create":
            options: dict[str, Any] = {"env": _env_pairs(args.env)}
            if args.model:
                options["model"] = args.model
            if args.system_prompt:
                options["system_prompt"] = args.system_prompt
            if args.credential:
                options["credential"] = args.credential
            if args.mcp:
                options["mcp_servers"] = _mcp_file(args.mcp)
            session = await waiting(ctx, "starting the session",
                                    ash.create_session(args.agent, **options))
            ctx.print_json(session) if ctx.json else ctx.out.write(session.id + "\n")
        case "list":
            sessions = await ash.list_sessions(args.agent)
            ctx.print_json(sessions) if ctx.json else _print_sessions(ctx, sessions)
        case "get":
            session = await ash.get_session(args.id)
            ctx.print_json(session) if ctx.json else _print_session(ctx, session)
        case "end":
            session = await ash.end_session(args.id)
            ctx.print_json(session) if ctx.json else ctx.out.write(f"ended {session.id}\n")
    return EXIT_OK


def _print_sessions(ctx: _Ctx, sessions: list[SessionView]) -> None:
    if not sessions:
        ctx.out.write("no sessions; start one with `ash session create AGENT`\n")
        return
    rows = [
        [s.id, s.agent, s.status, str(s.turns), s.model or "-", ago(s.updated_at)] for s in sessions
    ]
    table(ctx.out, ["ID", "AGENT", "STATUS", "TURNS", "MODEL", "UPDATED"], rows)


def _print_session(ctx: _Ctx, s: SessionView) -> None:
    rows = [
        ["id", s.id], ["agent", f"{s.agent} ({short_digest(s.agent_digest)})"],
        ["status", s.status], ["turns", str(s.turns)], ["last seq", str(s.last_seq)],
        ["model", s.model or "-"], ["runner", s.runner_id or "-"],
        ["claude session", s.claude_session_id or "-"],
        ["created", ago(s.created_at)], ["updated", ago(s.updated_at)],
    ]  # fmt: skip
    table(ctx.out, None, rows)


async def _send(ctx: _Ctx, ash: AsyncClient) -> int:
    return await _turn(ctx, ash, ctx.args.session, ctx.args.text)


async def _chat(ctx: _Ctx, ash: AsyncClient) -> int:
    session = await waiting(ctx, "starting a session", ash.create_session(ctx.args.agent))
    try:
        return await _turn(ctx, ash, session.id, ctx.args.text)
    finally:
        ctx.err.write(
            ctx.dim(f"session {session.id}: continue with `ash send {session.id} TEXT`") + "\n"
        )


async def _attach(ctx: _Ctx, ash: AsyncClient) -> int:
    """Print a session's events: the rest of the running turn, or after an event id."""
    follow = "session" if ctx.args.follow else "turn"
    stream = ash.stream(ctx.args.session, ctx.args.after, follow=follow)
    return await _print_events(ctx, stream)


async def _interrupt(ctx: _Ctx, ash: AsyncClient) -> int:
    result = await ash.interrupt(ctx.args.session)
    if ctx.json:
        ctx.print_json(result)
    elif result.done_seq is not None:
        ctx.out.write(f"interrupted turn {result.turn_id} (done #{result.done_seq}: {result.reason})\n")
    else:
        ctx.out.write("interrupt sent; the turn's done event follows on its stream\n")
    return EXIT_OK


async def _lifecycle(ctx: _Ctx, ash: AsyncClient) -> int:
    """`ash pause|resume|fork SESSION`."""
    sid = ctx.args.session
    match ctx.args.command:
        case "pause":
            session = await waiting(ctx, "pausing (freeze, then snapshot)", ash.pause_session(sid))
        case "resume":
            session = await waiting(ctx, "resuming", ash.resume_session(sid))
        case _:
            session = await waiting(ctx, "forking", ash.fork_session(sid))
    if ctx.json:
        ctx.print_json(session)
    elif ctx.args.command == "fork":
        ctx.out.write(session.id + "\n")
        ctx.err.write(ctx.dim(f"forked from {sid}: continue with `ash send {session.id} TEXT`")
                      + "\n")
    else:
        ctx.out.write(f"{session.status} {session.id} (runner {session.runner_id or '-'})\n")
    return EXIT_OK


async def _turn(ctx: _Ctx, ash: AsyncClient, session_id: str, text: str) -> int:
    return await _print_events(ctx, ash.send(session_id, text))


async def _print_events(ctx: _Ctx, stream: AsyncIterator[Event]) -> int:
    """Print a stream of events. Text goes to stdout as it arrives; tool calls and errors to
    stderr."""
    printed = ""  # the last character written to stdout, to end the turn on a fresh line
    failure: str | None = None
    try:
        async for event in stream:
            if ctx.json:
                ctx.out.write(codec.encode(event).decode() + "\n")
                ctx.out.flush()
            else:
                printed = _show(ctx, event, printed)
            failure = _failure(event, failure)
    finally:
        if printed and not printed.endswith("\n"):
            ctx.out.write("\n")
        ctx.out.flush()
    if failure is not None:
        ctx.err.write(f"error: {failure}\n")
        return EXIT_ERROR
    return EXIT_OK


def _show(ctx: _Ctx, event: Event, printed: str) -> str:
    match event:
        case TextDelta(delta=delta) if delta:
            ctx.out.write(delta)
            ctx.out.flush()
            return delta[-1]
        case ToolUse(name=name, input=tool_input):
            if printed and printed != "\n" and getattr(ctx.out, "isatty", lambda: False)():
                ctx.out.write("\n")  # same terminal: keep the tool line off the text's line
                printed = "\n"
            ctx.err.write(ctx.dim(f"[tool] {name}: {tool_summary(tool_input)}") + "\n")
            ctx.err.flush()
        case ToolResult(is_error=True, content=content):
            ctx.err.write(ctx.dim(f"[tool error] {render_content(content, limit=200)}") + "\n")
        case TurnComplete(result=result, is_error=False) if result and not printed:
            ctx.out.write(result)  # the model sent no deltas: show the final text instead
            return result[-1]
        case Error(error=error) if error.code == ErrorCode.conversation_not_restored:
            ctx.err.write(f"warning: {error.message}\n")
            ctx.err.flush()
    return printed


def _failure(event: Event, failure: str | None) -> str | None:
    match event:
        case Error(error=error) if error.code == ErrorCode.conversation_not_restored:
            return failure  # a warning (shown by _show): the turn itself goes on
        case Error(error=error):
            return f"{error.message} ({error.code})"
        case TurnComplete(is_error=True, result=result):
            return failure or (result or "the agent reported an error")
        case Done(reason="interrupted"):
            return "the turn was interrupted"
        case Done(reason=reason) if reason != "completed":
            return failure or f"the turn ended: {reason}"
    return failure


async def _history(ctx: _Ctx, ash: AsyncClient) -> int:
    messages = await ash.messages(ctx.args.session)
    if ctx.json:
        ctx.print_json(messages)
    elif not messages:
        ctx.out.write("no messages yet\n")
    else:
        for m in messages:
            text = render_content(m.content).replace("\n", "\n" + " " * 18)
            ctx.out.write(f"#{m.seq:<5} {m.role:<9}  {text}\n")
    return EXIT_OK


async def _usage(ctx: _Ctx, ash: AsyncClient) -> int:
    a = ctx.args
    report = await ash.usage(group_by=a.group_by, agent=a.agent, session=a.session,
                             since=a.since, until=a.until, tenant=a.tenant, limit=a.limit)
    if ctx.json:
        ctx.print_json(report)
        return EXIT_OK
    header = {"turn": "TURN", "session": "SESSION", "agent": "AGENT", "tenant": "TENANT",
              "day": "DAY"}[report.group_by]
    rows = [[u.key, str(u.turns), str(u.input_tokens), str(u.output_tokens),
             str(u.cache_read_input_tokens + u.cache_creation_input_tokens),
             f"{u.cost_usd:.4f}", str(u.tool_calls), f"{u.cpu_s:.2f}"]
            for u in [*report.usage, report.total]]
    rows[-1][0] = "TOTAL"
    table(ctx.out, [header, "TURNS", "INPUT", "OUTPUT", "CACHE", "COST $", "TOOLS", "CPU S"], rows)
    return EXIT_OK


async def _health(ctx: _Ctx, ash: AsyncClient) -> int:
    health = await ash.health()
    if ctx.json:
        ctx.print_json(health)
    else:
        nats = "up" if health.nats else "down"
        ctx.out.write(
            f"{health.status}: version {health.version}, nats {nats}, "
            f"{health.runners} runner(s) at {ash.base_url}\n"
        )
        if health.scripted_model:
            ctx.out.write(_SCRIPTED_NOTE + "\n")
    return EXIT_OK if health.status == "ok" else EXIT_ERROR


_SCRIPTED_NOTE = (
    "note: no ANTHROPIC_API_KEY is set, so agents answer from the offline scripted model, "
    "not Claude; set it and run `ash stop && ash start` to use Claude"
)


# -- the local stack --------------------------------------------------------------------------


def _start(ctx: _Ctx) -> int:
    args = ctx.args
    config = StackConfig(home=str(ctx.home), host=args.host, port=args.port)
    if args.foreground:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        return launcher.run_foreground(config, ctx.environ, out=ctx.err)
    started = asyncio.run(launcher.start(config, out=ctx.err, deadline=args.timeout))
    if started.already_running:
        ctx.out.write(f"ash is already running at {started.url} (pid {started.pid})\n")
        return EXIT_OK
    ctx.out.write(f"ash is running at {started.url} (stop it with `ash stop`)\n")
    if started.health is not None and started.health.scripted_model:
        ctx.out.write(_SCRIPTED_NOTE + "\n")
    return EXIT_OK


def _runner(ctx: _Ctx) -> int:
    """Become `python -m runner` (exec: signals, exit code and pid are the runner's own), with
    the env file's settings, then the flags, over the environment's."""
    env = dict(ctx.environ)
    if ctx.args.env_file:
        env.update(_read_env_file(ctx.args.env_file))
    env["ASH_NATS_URL"] = ctx.args.nats_url
    if ctx.args.id:
        env["ASH_RUNNER_ID"] = ctx.args.id
    argv = [sys.executable, "-m", "runner", *(["check-config"] if ctx.args.check else [])]
    ctx.out.flush()
    ctx.err.flush()
    os.execve(sys.executable, argv, env)
    return EXIT_ERROR  # not reached


def _read_env_file(path: str) -> dict[str, str]:
    """KEY=VALUE lines (systemd EnvironmentFile / docker env_file style); # comments."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise AshError(f"cannot read {path}: {e.strerror}", code="validation_failed") from e
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip().strip('"')
    return out


def _stop(ctx: _Ctx) -> int:
    pid = launcher.stop(ctx.home)
    ctx.out.write("ash is not running\n" if pid is None else f"stopped ash (pid {pid})\n")
    return EXIT_OK


def _status(ctx: _Ctx) -> int:
    status = launcher.status(ctx.home)
    state = status.state
    if ctx.json:
        ctx.print_json({"running": status.running, "pid": status.pid, "state": state})
        return EXIT_OK if status.running else EXIT_NOT_RUNNING
    if not status.running:
        ctx.out.write(f"ash is not running (home {status.home})\n")
        if state is not None and state.failed:
            ctx.out.write(f"last run stopped because {state.failure or state.failed + ' failed'}\n")
        return EXIT_NOT_RUNNING
    url = state.url if state else "?"
    ctx.out.write(
        f"ash is {state.state if state else 'running'} at {url} (pid {status.pid}, home {status.home})\n"
    )
    if state is not None:
        rows = []
        for child in state.children:
            alive = "up" if pid_alive(child.pid) else "down"
            where = state.nats_url if child.name == "nats" else child.log
            rows.append([child.name, f"pid {child.pid}", alive, where or ""])
        table(ctx.out, None, rows, indent="  ")
    return EXIT_OK


_env_pairs = sandbox_cli.env_pairs


# -- plumbing ---------------------------------------------------------------------------------

_HINTS = {
    "not_found": "hint: `ash agents` and `ash session list` show what exists",
    "unauthorized": "hint: set ASH_API_KEY or pass --api-key",
    "forbidden": "hint: this API key may not do that",
    "conflict": "hint: `ash session get ID` shows the session's state; "
    "`ash session create AGENT` starts a new one",
    "gone": "hint: the session has ended; start another with `ash session create AGENT`",
    "validation_failed": "hint: check the arguments (`ash COMMAND --help`)",
    "bad_bundle": "hint: an agent folder holds CLAUDE.md, and optionally .claude/, .mcp.json, ash.toml",
    "no_runner": "hint: no runner is registered; `ash status` shows the local stack",
}


def _hint(ctx: _Ctx, exc: AshError) -> str:
    if isinstance(exc, AshConnectionError):
        return "hint: `ash status` shows whether the local stack runs"
    if exc.code == "stack_failed":
        return f"hint: the logs are in {ctx.home / 'logs'}"
    if exc.code == "conflict" and ctx.args.command == "interrupt":
        return "hint: nothing to stop; `ash history SESSION` shows the finished turns"
    if exc.code == "validation_failed" and ctx.args.command == "deploy":
        return "hint: pass a valid agent name with --name"
    if exc.code in _HINTS:
        return _HINTS[exc.code]
    if exc.retryable:
        return "hint: this may succeed if you try again"
    return "hint: `ash health` checks the server"


Handler = Callable[[_Ctx, AsyncClient], Awaitable[int]]


async def _with_client(ctx: _Ctx, handler: Handler) -> int:
    async with ctx.client() as ash:
        return await handler(ctx, ash)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", default=argparse.SUPPRESS, help=f"server URL (ASH_URL; {DEFAULT_URL})"
    )
    common.add_argument("--api-key", default=argparse.SUPPRESS, help="API key (ASH_API_KEY)")
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print raw JSON"
    )
    parser = argparse.ArgumentParser(
        prog="ash", parents=[common], description="Deploy Claude agents as HTTP APIs.",
        epilog="Run `ash COMMAND --help` for a command's options.",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help: str, run: Any, parent: Any = sub) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(
            name, parents=[common], help=help, description=help
        )
        p.set_defaults(run=run)
        return p

    p = command("deploy", "pack an agent folder and deploy it", _deploy)
    p.add_argument("path", help="the agent folder (with CLAUDE.md at its root)")
    p.add_argument("--name", help="the agent's name (default: the folder's name)")

    p = command("keys", "create, list or revoke API keys (admin)", _keys)
    keys = p.add_subparsers(dest="keys_command", metavar="{create,list,revoke}", required=True)
    c = command("create", "create a key; prints it (once)", _keys, keys)
    c.add_argument("name", help="what the key is for")
    c.add_argument("--scope", action="append", choices=sorted(KEY_SCOPES),
                   help="a scope (repeat; default sessions:read and sessions:write)")
    c.add_argument("--tenant", help="another tenant's key (admins of the default tenant)")
    c = command("list", "list keys (never their secrets)", _keys, keys)
    c.add_argument("--tenant", help="another tenant's keys (admins of the default tenant)")
    command("revoke", "revoke a key", _keys, keys).add_argument("id")

    p = command("credentials", "add, list or delete stored credentials (admin)", _credentials)
    creds = p.add_subparsers(dest="credentials_command", metavar="{add,list,rm}", required=True)
    c = command("add", "store a credential, its value read from stdin (never argv)",
                _credentials, creds)
    c.add_argument("name")
    c.add_argument("--kind", default="anthropic_api_key",
                   choices=["anthropic_api_key", "anthropic_auth_token"])
    c.add_argument("--from-env", metavar="VAR", help="read the value from this variable")
    command("list", "list credentials (never their values)", _credentials, creds)
    command("rm", "delete a credential", _credentials, creds).add_argument("name")

    p = command("agents", "list deployed agents", _agents)
    agents = p.add_subparsers(dest="agents_command", metavar="{get,delete}")
    command("get", "show one agent", _agents, agents).add_argument("name")
    command("delete", "delete an agent", _agents, agents).add_argument("name")

    p = command("session", "create, list, show or end sessions", _session)
    sessions = p.add_subparsers(
        dest="session_command", metavar="{create,list,get,end}", required=True
    )
    c = command("create", "start a session with an agent; prints its id", _session, sessions)
    c.add_argument("agent")
    c.add_argument("--model", help="the model for this session")
    c.add_argument("--system-prompt", help="extra system prompt for this session")
    c.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="repeatable")
    c.add_argument("--credential", metavar="NAME",
                   help="a stored credential: this session's model API key")
    c.add_argument("--mcp", metavar="FILE",
                   help="MCP servers, a .mcp.json-shaped file, merged over the agent's")
    command("list", "list sessions", _session, sessions).add_argument(
        "--agent", help="only this agent's"
    )
    command("get", "show a session", _session, sessions).add_argument("id")
    command("end", "end a session", _session, sessions).add_argument("id")

    p = command("send", "send a message and stream the reply", _send)
    p.add_argument("session")
    p.add_argument("text")
    p = command("chat", "start a session with an agent and send the first message", _chat)
    p.add_argument("agent")
    p.add_argument("text")
    command("history", "show a session's messages", _history).add_argument("session")
    for name, what in (
        ("pause", "pause a session: freeze its sandbox and snapshot it"),
        ("resume", "resume a paused session (warm where it was, or cold on any runner)"),
        ("fork", "fork a session: a new one with copies of its workspace and conversation"),
    ):
        command(name, what, _lifecycle).add_argument("session")
    p = command("attach", "follow a session's events: the rest of the running turn", _attach)
    p.add_argument("session")
    p.add_argument("--after", type=int, metavar="N",
                   help="only events after id N, e.g. the last one you saw (default: the running "
                        "turn from its start)")
    p.add_argument("--follow", action="store_true",
                   help="keep following turn after turn (Ctrl-C to leave)")
    command("interrupt", "stop the session's running turn", _interrupt).add_argument("session")

    sandbox_cli.add_commands(command)
    ops_cli.add_commands(command)
    command("health", "show the server's health", _health)
    p = command("usage", "tokens, cost, tool calls and sandbox CPU of turns, summed", _usage)
    p.add_argument("--group-by", default="session",
                   choices=["turn", "session", "agent", "tenant", "day"],
                   help="one row per ... (default: session)")
    p.add_argument("--agent", help="only this agent's turns")
    p.add_argument("--session", help="only this session's turns")
    p.add_argument("--since", help="from: epoch seconds, ISO 8601 or an age such as 24h or 7d")
    p.add_argument("--until", help="to (excluded), in the same forms")
    p.add_argument("--tenant", help="this tenant's (admin keys only)")
    p.add_argument("--limit", type=int, help="at most this many rows (1000)")

    p = command("start", "start the local stack (nats, coordinator, runner) in ASH_HOME", _start)
    p.add_argument("--port", type=int, default=4100, help="the coordinator's port (4100)")
    p.add_argument("--host", default="127.0.0.1", help="the coordinator's address (127.0.0.1)")
    p.add_argument("--foreground", action="store_true", help="run here until Ctrl-C")
    p.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for readiness (90)")
    p = command("runner", "run a runner that joins a fleet's NATS (needs root: bwrap, cgroups, "
                          "network namespaces)", _runner)
    p.add_argument("nats_url", help="the fleet's NATS, e.g. tls://nats.internal:4222")
    p.add_argument("--id", help="its runner id (ASH_RUNNER_ID; default <hostname>-<hash>)")
    p.add_argument("--env-file", help="KEY=VALUE settings to add, e.g. the NATS login from "
                                      "`python -m deploy.nats_auth`")
    p.add_argument("--check", action="store_true", help="print the id, data dir and CLI; exit")
    command("stop", "stop the local stack", _stop)
    command("status", "show what the local stack runs (exit 3 if nothing)", _status)
    return parser


_LOCAL = {_start, _stop, _status, _runner}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `ash` command line; returns the exit code."""
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    head, tail = sandbox_cli.split_exec(argv)
    try:
        args = parser.parse_args(head)
    except SystemExit as exc:  # --help, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if tail is not None:
        args.command_after_dashes = tail
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    ctx = _Ctx(args=args, environ=os.environ, out=sys.stdout, err=sys.stderr)
    try:
        if args.run in _LOCAL:
            return int(args.run(ctx))
        return asyncio.run(_with_client(ctx, args.run))
    except AshError as exc:
        ctx.out.flush()
        ctx.err.write(f"error: {exc.message}\n{_hint(ctx, exc)}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        ctx.err.write("interrupted\n")
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 -- never a traceback for people; ASH_DEBUG=1 shows it
        if ctx.environ.get("ASH_DEBUG"):
            traceback.print_exc()
        ctx.err.write(
            f"error: unexpected {type(exc).__name__}: {exc}\n"
            "hint: this is a bug in ash; run again with ASH_DEBUG=1 to see the traceback\n"
        )
        return EXIT_ERROR
