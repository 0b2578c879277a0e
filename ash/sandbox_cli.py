"""`ash exec`, `ash files` and `ash workspace`: a session's sandbox from the shell.

    ash exec SESSION [--timeout S] [--env K=V ...] -- CMD [ARG ...]
    ash files ls SESSION [PATH] [-r] | get SESSION PATH [-o FILE] | put SESSION FILE PATH
              | rm SESSION PATH [-r]
    ash workspace download SESSION FILE | upload SESSION FILE

`exec` prints the command's stdout and stderr to ours as they arrive and exits with its exit
code. Everything after the first `--` is the command, verbatim (`ash.cli` cuts it off before
argparse sees it): one word runs via `bash -lc`, several are the argv. Transfers stream in
pieces and draw progress on stderr when it is a terminal, or with --progress.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Protocol, TextIO

from ash.client import AsyncClient
from ash.errors import AshError
from ash.render import ago, human_size, table
from protocol import codec
from protocol.events import ExecExit, ExecStderr, ExecStdout
from protocol.files import FileEntry

EXIT_OK, EXIT_ERROR = 0, 1


class Ctx(Protocol):
    """What these commands need of the CLI's context (`ash.cli._Ctx` is one)."""

    args: argparse.Namespace
    out: TextIO
    err: TextIO

    @property
    def json(self) -> bool: ...

    def dim(self, text: str) -> str: ...

    def print_json(self, value: Any) -> None: ...


def env_pairs(pairs: list[str]) -> dict[str, str]:
    """`KEY=VALUE` arguments as a dict; AshError(validation_failed) for anything else."""
    env = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise AshError(f"--env takes KEY=VALUE, not {pair!r}", code="validation_failed")
        env[key] = value
    return env


_VALUED = {"--url", "--api-key"}  # global options that take a value


def split_exec(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """For `ash exec`, everything after the first `--` is the command, untouched (argparse
    would take its options for ours, and drop a second `--`)."""
    words = iter(enumerate(argv))
    for i, word in words:
        if word in _VALUED:
            next(words, None)
        elif not word.startswith("-"):
            if word == "exec" and "--" in argv[i:]:
                cut = argv.index("--", i)
                return argv[:cut], argv[cut + 1 :]
            break
    return argv, None


def add_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    """Add the commands to the CLI's parser; `command(name, help, run, parent=None)` makes one."""
    p = command("exec", "run a command in a session's sandbox", _exec)
    p.add_argument("session")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds before it is killed (60)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="repeatable")
    p.add_argument("argv", nargs="*", metavar="-- CMD",
                   help="after --: one word runs via bash -lc, several are the argv")
    p.set_defaults(command_after_dashes=None)

    p = command("files", "list, get, put or delete files of a session's workspace", _files)
    files = p.add_subparsers(dest="files_command", metavar="{ls,get,put,rm}", required=True)
    c = command("ls", "list the workspace or a directory of it", _files, files)
    c.add_argument("session")
    c.add_argument("path", nargs="?", default="", help="relative to the workspace")
    c.add_argument("-r", "--recursive", action="store_true")
    c = command("get", "download a file (to stdout unless -o)", _files, files)
    c.add_argument("session")
    c.add_argument("path")
    c.add_argument("-o", "--output", default="-", help="where to save it (- for stdout)")
    c.add_argument("--progress", action="store_true", default=False, help="show progress")
    c = command("put", "upload a file (parent directories are made)", _files, files)
    c.add_argument("session")
    c.add_argument("file", help="the local file, or - for stdin")
    c.add_argument("path", help="where in the workspace")
    c.add_argument("--progress", action="store_true", default=False, help="show progress")
    c = command("rm", "delete a file, a symlink, or a directory (-r if not empty)", _files, files)
    c.add_argument("session")
    c.add_argument("path")
    c.add_argument("-r", "--recursive", action="store_true")

    p = command("workspace", "download or upload a session's whole workspace", _workspace)
    ws = p.add_subparsers(dest="workspace_command", metavar="{download,upload}", required=True)
    for name, help_ in (("download", "save the workspace as a tar.gz"),
                        ("upload", "extract a tar.gz into the workspace")):  # fmt: skip
        c = command(name, help_, _workspace, ws)
        c.add_argument("session")
        c.add_argument("file", help="the tar.gz (- for stdout / stdin)")
        c.add_argument("--progress", action="store_true", default=False, help="show progress")


async def _exec(ctx: Ctx, ash: AsyncClient) -> int:
    """Stream a command's output to ours; exit with its code."""
    args = ctx.args
    words = args.command_after_dashes if args.command_after_dashes is not None else args.argv
    if not words:
        raise AshError("give the command after `--`, e.g. `ash exec SESSION -- ls -la`",
                       code="validation_failed")  # fmt: skip
    command: str | list[str] = words[0] if len(words) == 1 else words
    exit_event: ExecExit | None = None
    async for event in ash.exec(args.session, command, timeout_s=args.timeout,
                                env=env_pairs(args.env)):  # fmt: skip
        if ctx.json:
            ctx.out.write(codec.encode(event).decode() + "\n")
            ctx.out.flush()
            continue
        match event:
            case ExecStdout(data=data):
                ctx.out.write(data)
                ctx.out.flush()
            case ExecStderr(data=data):
                ctx.err.write(data)
                ctx.err.flush()
        if isinstance(event, ExecExit):
            exit_event = event
    assert exit_event is not None  # the client raises if the stream ends without it
    if exit_event.error is not None:
        ctx.err.write(f"error: {exit_event.error.message} ({exit_event.error.code})\n")
        return EXIT_ERROR
    if not ctx.json:
        if exit_event.timed_out:
            ctx.err.write(ctx.dim(f"ash: the command timed out after {args.timeout:g} s and was "
                                  "killed") + "\n")  # fmt: skip
        if exit_event.truncated:
            ctx.err.write(ctx.dim("ash: the output passed its cap and the command was killed; "
                                  "write big output to a file and `ash files get` it") + "\n")
    return exit_event.exit_code if exit_event.exit_code is not None else EXIT_ERROR


class _Progress:
    """`  12.3 MB / 50.0 MB  24%` on stderr, redrawn in place; a no-op when not shown."""

    def __init__(self, ctx: Ctx, label: str) -> None:
        forced = bool(getattr(ctx.args, "progress", False))
        tty = getattr(ctx.err, "isatty", lambda: False)()
        self._err = ctx.err
        self._label = label
        self._on = forced or (tty and not ctx.json)
        self._shown = -1

    def __call__(self, done: int, total: int | None) -> None:
        if not self._on:
            return
        step = done * 100 // total if total else done // (1 << 20)
        if step == self._shown and done != total:
            return
        self._shown = step
        of = f" / {human_size(total)}  {step}%" if total else ""
        self._err.write(f"\r{self._label} {human_size(done)}{of}   ")
        self._err.flush()

    def end(self) -> None:
        if self._on and self._shown >= 0:
            self._err.write("\n")
            self._err.flush()


async def _files(ctx: Ctx, ash: AsyncClient) -> int:
    args = ctx.args
    match args.files_command:
        case "ls":
            listing = await ash.files_list(args.session, args.path, recursive=args.recursive)
            if ctx.json:
                ctx.print_json(listing)
            else:
                _print_entries(ctx, listing.entries)
                if listing.truncated:
                    ctx.err.write(ctx.dim("ash: the listing was cut at its limit") + "\n")
        case "get":
            progress = _Progress(ctx, args.path)
            with _output(ctx, args.output) as out:
                size = await ash.files_download(args.session, args.path, out, progress=progress)
            progress.end()
            if args.output != "-":
                _done(ctx, {"path": args.path, "size": size, "output": args.output},
                      f"saved {args.path} to {args.output} ({human_size(size)})")
        case "put":
            progress = _Progress(ctx, args.file)
            with _input(args.file) as source:
                written = await ash.files_write(args.session, args.path, source, progress=progress)
            progress.end()
            verb = "created" if written.created else "replaced"
            _done(ctx, written, f"{verb} {written.path} ({human_size(written.size)})")
        case "rm":
            await ash.files_delete(args.session, args.path, recursive=args.recursive)
            _done(ctx, {"path": args.path, "deleted": True}, f"deleted {args.path}")
    return EXIT_OK


async def _workspace(ctx: Ctx, ash: AsyncClient) -> int:
    args = ctx.args
    progress = _Progress(ctx, "workspace")
    if args.workspace_command == "download":
        with _output(ctx, args.file) as out:
            size = await ash.workspace_download(args.session, out, progress=progress)
        progress.end()
        if args.file != "-":
            _done(ctx, {"output": args.file, "size": size},
                  f"saved the workspace to {args.file} ({human_size(size)})")
    else:
        with _input(args.file) as source:
            up = await ash.workspace_upload(args.session, source, progress=progress)
        progress.end()
        _done(ctx, up, f"extracted {up.files} files, {up.dirs} directories and {up.symlinks} "
                       f"symlinks ({human_size(up.size)})")  # fmt: skip
    return EXIT_OK


def _print_entries(ctx: Ctx, entries: list[FileEntry]) -> None:
    if not entries:
        ctx.out.write("(empty)\n")
        return
    rows = [[e.type, human_size(e.size) if e.type == "file" else "-", ago(e.mtime),
             e.path + ("/" if e.type == "dir" else "")] for e in entries]  # fmt: skip
    table(ctx.out, ["TYPE", "SIZE", "MODIFIED", "PATH"], rows)


def _done(ctx: Ctx, value: Any, text: str) -> None:
    ctx.print_json(value) if ctx.json else ctx.out.write(text + "\n")


@contextlib.contextmanager
def _output(ctx: Ctx, name: str) -> Iterator[IO[bytes]]:
    """`-`: our stdout as bytes; else a new file, removed again if the download fails."""
    if name == "-":
        ctx.out.flush()
        yield ctx.out.buffer if hasattr(ctx.out, "buffer") else _TextSink(ctx.out)
        ctx.out.flush()
        return
    path = Path(name)
    try:
        with path.open("wb") as f:
            yield f
    except BaseException:
        path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _input(name: str) -> Iterator[IO[bytes]]:
    if name == "-":
        yield sys.stdin.buffer
        return
    try:
        f = open(name, "rb")  # noqa: SIM115 -- closed below
    except OSError as exc:
        raise AshError(f"cannot read {name}: {exc.strerror}", code="validation_failed") from None
    with f:
        yield f


class _TextSink(io.RawIOBase):
    """Bytes into a text stream that has no binary buffer (decoded as UTF-8, best effort)."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._out.write(bytes(data).decode("utf-8", "replace"))
        return len(data)
