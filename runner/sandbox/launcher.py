r"""Sandbox: a prepared bubblewrap sandbox (directories, cgroup, args file) that launches commands.

    new --prepare() / __aenter__--> ready --close()--> closed
     \______________________close()____________________/

While ready, `command()` and `run()` may launch any number of processes. Each launch is its own
bwrap instance (fresh pid, ipc and uts namespaces, fresh /tmp) over the same workspace, home and
cgroup, so limits and `close()` cover all of them together.

How a launch works (`command()` returns this argv; the caller spawns it however it likes):

    /bin/sh -c 'echo $$ > <cg>/cgroup.procs ...           join every hierarchy first,
                exec [nsenter --net=<slot> --] env -i bwrap --args 3 -- "$@" 3< <state_dir>/bwrap.args'
            ash-sandbox <argv_inside...>                   then (into the network slot, if the
                                                           spec names one) become bwrap

* The shell joins the cgroup before it execs bwrap, so bwrap and everything it forks are
  inside from the first instruction. If joining fails the shell exits 125 and nothing runs.
* The bwrap options, including `--setenv` values such as API keys, are read from the args file
  on fd 3 (NUL-separated; bwrap closes the fd). They never appear in any process's argv.
* `env -i`: bwrap's own environment stays readable from inside the sandbox as
  /proc/1/environ, so bwrap must start with none; otherwise whatever environment the spawner
  passed (for the SDK, the runner's whole os.environ) would leak to the agent.
* With `spec.netns`, nsenter (which execs, it does not fork for a network namespace) puts
  bwrap in the slot's network namespace, and bwrap keeps it (no --unshare-net): the sandbox
  sees lo and the slot's eth0, nothing else. nsenter runs as the runner (root), before bwrap
  drops into its user namespace, which does not own the slot's netns, so the agent cannot
  change the slot's addresses, routes or firewall.
* The `--` after `--args 3` matters: a `--` inside the args file does not end option parsing
  of the outer argv, so without it an argv_inside starting with `--bind / /x` would be taken
  as bwrap options.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import shlex
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple, Self

from runner.sandbox.bwrap import bwrap_args, etc_host_dir, generated_etc
from runner.sandbox.cgroups import Cgroup, CgroupBackend
from runner.sandbox.errors import SandboxClosed, SandboxError
from runner.sandbox.spec import SandboxSpec

log = logging.getLogger(__name__)

BWRAP = "/usr/bin/bwrap"
NSENTER = "/usr/bin/nsenter"
ARGS_FILE = "bwrap.args"
JOIN_FAILED_EXIT = 125  # the wrapper's exit status when it cannot join the cgroup
MAX_OUTPUT = 1 << 20  # per stream, for run(); the rest is read and dropped


class RunResult(NamedTuple):
    """Outcome of `Sandbox.run`: exit status and captured (possibly truncated) output."""

    exit_code: int
    stdout: bytes
    stderr: bytes


class _State(enum.Enum):
    NEW = "new"
    READY = "ready"
    CLOSED = "closed"


class Sandbox:
    """One sandbox: prepare it, launch commands in it, close it (kills everything inside)."""

    def __init__(
        self,
        spec: SandboxSpec,
        cgroups: CgroupBackend,
        *,
        bwrap: str = BWRAP,
        nsenter: str = NSENTER,
        remove_dirs: bool = False,
    ) -> None:
        """`remove_dirs`: on close, also delete state_dir, workspace and home from the host."""
        self._spec = spec
        self._backend = cgroups
        self._bwrap = bwrap
        self._nsenter = nsenter
        self._remove_dirs = remove_dirs
        self._state = _State.NEW
        self._cgroup: Cgroup | None = None
        self._args_file = Path(spec.state_dir) / ARGS_FILE

    @property
    def spec(self) -> SandboxSpec:
        """The validated spec this sandbox was built from."""
        return self._spec

    @property
    def workspace(self) -> str:
        """Host path of the workspace (seen as /workspace inside)."""
        return self._spec.workspace

    @property
    def args_file(self) -> Path:
        """Host path of the NUL-separated bwrap options (mode 0600, never bound inside)."""
        return self._args_file

    @property
    def cgroup(self) -> Cgroup:
        """The sandbox's cgroup; for limits in force, pids, oom_killed(), freeze()."""
        if self._cgroup is None:
            raise SandboxClosed(f"sandbox {self._spec.sandbox_id} is not prepared")
        return self._cgroup

    async def __aenter__(self) -> Self:
        await self.prepare()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def prepare(self) -> None:
        """Create the directories, the generated /etc files, the args file and the cgroup.

        All of it is small synchronous file work (well under a millisecond). The cgroup comes
        last so that a failure before it leaves nothing to tear down but files.
        """
        if self._state is not _State.NEW:
            raise SandboxClosed(f"sandbox {self._spec.sandbox_id} is {self._state.value}")
        spec = self._spec
        state_dir = Path(spec.state_dir)
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        state_dir.chmod(0o700)  # mkdir's mode is subject to umask and ignored if it existed
        for d in (spec.workspace, spec.home):
            Path(d).mkdir(mode=0o700, parents=True, exist_ok=True)
        etc = Path(etc_host_dir(spec))
        etc.mkdir(mode=0o755, exist_ok=True)
        for name, text in generated_etc().items():
            (etc / name).write_text(text)
        self._write_args_file(bwrap_args(spec))
        try:
            self._cgroup = self._backend.create(spec.sandbox_id, spec.limits)
        except BaseException:
            self._args_file.unlink(missing_ok=True)
            raise
        self._state = _State.READY
        log.debug("sandbox %s ready (cgroup %s)", spec.sandbox_id, self._backend.name)

    def _write_args_file(self, args: list[str]) -> None:
        if any("\0" in a for a in args):  # the spec rejects NULs; this guards the builder
            raise SandboxError("a bwrap option contains a NUL byte")
        data = b"".join(a.encode() + b"\0" for a in args)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self._args_file, flags, 0o600)
        try:
            os.fchmod(fd, 0o600)  # in case an older file with other modes was there
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)

    def command(self, argv_inside: Sequence[str]) -> list[str]:
        """The host argv that runs `argv_inside` in this sandbox (see the module docstring).

        Spawn it with any stdio you like; the process's exit status is the command's.
        """
        if self._state is not _State.READY:
            raise SandboxClosed(f"sandbox {self._spec.sandbox_id} is {self._state.value}")
        if not argv_inside:
            raise ValueError("argv_inside is empty")
        lines = [
            f"echo $$ >{shlex.quote(str(p))} || exit {JOIN_FAILED_EXIT}"
            for p in self.cgroup.procs_files
        ]
        enter = ""
        if self._spec.netns is not None:
            net = shlex.quote(f"--net={self._spec.netns}")
            enter = f"{shlex.quote(self._nsenter)} {net} -- "
        lines.append(
            f'exec {enter}/usr/bin/env -i {shlex.quote(self._bwrap)} --args 3 -- "$@"'
            f" 3<{shlex.quote(str(self._args_file))}"
        )
        return ["/bin/sh", "-c", "\n".join(lines), "ash-sandbox", *argv_inside]

    async def run(
        self,
        argv_inside: Sequence[str],
        timeout_s: float,
        *,
        stdin: bytes | None = None,
        max_output: int = MAX_OUTPUT,
    ) -> RunResult:
        """Run a one-off command to completion and capture its output (each stream capped).

        On timeout the launch is SIGKILLed (bwrap's --die-with-parent takes its whole pid
        namespace with it) and TimeoutError is raised. Other launches in the sandbox live on.
        """
        proc = await asyncio.create_subprocess_exec(
            *self.command(argv_inside),
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(timeout_s), asyncio.TaskGroup() as tg:
                out = tg.create_task(_read_capped(proc.stdout, max_output))
                err = tg.create_task(_read_capped(proc.stderr, max_output))
                if stdin is not None:
                    tg.create_task(_feed(proc.stdin, stdin))
                code = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        return RunResult(code, out.result(), err.result())

    async def close(self) -> None:
        """Kill everything in the sandbox, remove its cgroup and args file. Idempotent.

        With `remove_dirs`, the state dir, workspace and home are deleted too (in a thread:
        a workspace can be large).
        """
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        try:
            if self._cgroup is not None:
                self._cgroup.kill()  # at once, before any await
                # Must finish even if our caller is cancelled; destroy() bounds its own wait.
                await asyncio.shield(self._cgroup.destroy())
        finally:
            self._args_file.unlink(missing_ok=True)
            if self._remove_dirs:
                spec = self._spec
                paths = (spec.state_dir, spec.workspace, spec.home)
                await asyncio.to_thread(_remove_trees, paths)
        log.debug("sandbox %s closed", self._spec.sandbox_id)


async def _read_capped(stream: asyncio.StreamReader | None, limit: int) -> bytes:
    # Keep reading past the cap so the child never blocks on a full pipe.
    buf = bytearray()
    if stream is None:
        return b""
    while chunk := await stream.read(65536):
        if len(buf) < limit:
            buf += chunk[: limit - len(buf)]
    return bytes(buf)


async def _feed(stream: asyncio.StreamWriter | None, data: bytes) -> None:
    if stream is None:
        return
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        stream.write(data)
        await stream.drain()
    stream.close()


def _remove_trees(paths: Sequence[str]) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
