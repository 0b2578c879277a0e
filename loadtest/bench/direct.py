"""The SDK without the platform: the stand-in CLI in a bwrap sandbox, driven in this process.

The same code the runner runs for one session (`runner.bridge.Conversation` over the SDK,
`runner.sandbox.launcher.Sandbox` for bwrap + cgroup), with nothing around it: no HTTP, no
coordinator, no NATS, no JetStream, no pool. Two uses:

* the per-message floor: a turn driven here, from `query` to the `result` message, is what a
  turn through the whole platform would cost if the platform cost nothing;
* the CLI spawn: `connect()` of a new conversation here (bwrap, the stand-in's start, the
  SDK's `initialize` round trip) is the part of a sandbox start that is the CLI's, which the
  "without the CLI spawn" cold-resume figure takes out.

No network slot and no new network namespace (the sandbox shares the benchmark's): the runner
takes slots from a pool and joins one with nsenter, so building a namespace is never on a
session's path either.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import time
from pathlib import Path

from runner import bridge
from runner.sandbox import cgroups
from runner.sandbox.launcher import Sandbox
from runner.sandbox.spec import CLI_PATH, SandboxSpec

SCRIPTED_INSIDE = "/opt/ash/scripted"


class DirectStandin:
    """One sandbox with a connected stand-in CLI. `async with` it; `turn()` drives one turn."""

    def __init__(self, root: Path) -> None:
        self._root = Path(tempfile.mkdtemp(prefix="direct-", dir=root))
        self._backend = cgroups.detect()
        self.sandbox: Sandbox | None = None
        self.conversation: bridge.Conversation | None = None

    async def __aenter__(self) -> DirectStandin:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _spec(self) -> SandboxSpec:
        sid = "bench-" + secrets.token_hex(4)
        base = self._root / sid
        return SandboxSpec(
            sandbox_id=sid, state_dir=str(base / "state"), workspace=str(base / "workspace"),
            home=str(base / "home"),
            cli=os.path.join(bridge.scripted_dir(), "standin_cli.py"),
            extra_ro_binds=((bridge.scripted_dir(), SCRIPTED_INSIDE),),
            env={"ASH_SCRIPTED_DIR": SCRIPTED_INSIDE}, extra_env_keys=("ASH_SCRIPTED_DIR",),
            share_net=True,  # the runner's sandboxes join a pooled netns: no new one either
        )

    async def open(self) -> float:
        """Prepare a sandbox and connect a CLI in it; returns the connect time in ms."""
        spec = self._spec()
        self.sandbox = Sandbox(spec, self._backend)
        await self.sandbox.prepare()
        options = bridge.AgentOptions(host_cli=spec.cli or "", cli_inside=CLI_PATH,
                                      workspace=self.sandbox.workspace)
        self.conversation = bridge.Conversation(options, self.sandbox)
        t0 = time.perf_counter()
        await self.conversation.connect()
        return (time.perf_counter() - t0) * 1000

    async def turn(self, content: str = "Hello") -> tuple[float, int]:
        """One turn, `query` to the result's drafts: (ms, event drafts)."""
        assert self.conversation is not None
        n = 0
        t0 = time.perf_counter()
        async for _ in self.conversation.turn(content):
            n += 1
        return (time.perf_counter() - t0) * 1000, n

    async def close(self) -> None:
        if self.conversation is not None:
            await self.conversation.close()
            self.conversation = None
        if self.sandbox is not None:
            await self.sandbox.close()
            self.sandbox = None


async def spawn_times(root: Path, n: int) -> list[float]:
    """`connect()` of n fresh sandboxed stand-in CLIs, one at a time (ms each)."""
    out = []
    for _ in range(n):
        d = DirectStandin(root)
        try:
            out.append(await d.open())
        finally:
            await d.close()
    return out
