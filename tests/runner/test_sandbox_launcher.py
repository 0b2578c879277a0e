"""Real bwrap, real cgroups: what the agent can and cannot see, touch and use up."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import stat
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from runner.sandbox import CLI_PATH, Limits, Sandbox, SandboxClosed, SandboxSpec, detect
from runner.sandbox.bwrap import ETC_ALLOWLIST
from runner.sandbox.cgroups import CgroupBackend, V1Backend, V2Backend
from runner.sandbox.spec import GENERATED_ETC, allowed_env

pytestmark = pytest.mark.skipif(
    not (os.geteuid() == 0 and shutil.which("bwrap")),
    reason="needs root and bubblewrap",
)

PYTHON = "/usr/bin/python3"  # Debian's, inside the sandbox
ROOT_ENTRIES = {"bin", "dev", "etc", "home", "lib", "lib64", "opt", "proc", "sbin", "tmp", "usr",
                "workspace"}  # fmt: skip


@pytest.fixture
def backend() -> Iterator[CgroupBackend]:
    backend = detect()
    yield backend
    # Remove the shared `ash` parents if no other sandbox (or test run) still uses them.
    owns = []
    if isinstance(backend, V1Backend):
        owns = list(backend.own.values())
    elif isinstance(backend, V2Backend):
        owns = [backend.own]
    for own in owns:
        with contextlib.suppress(OSError):
            (own / "ash").rmdir()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """The runner's data dir: sandboxes live under it, next to runner-private files."""
    path = tmp_path / "runner-data"
    (path / "sandboxes").mkdir(parents=True)
    return path


@pytest.fixture
def cli(tmp_path: Path) -> Path:
    path = tmp_path / "fake-cli"
    path.write_text('#!/bin/sh\necho "cli-ran $*"\n')
    path.chmod(0o755)
    return path


def make_spec(data_dir: Path, cli: Path, **overrides: object) -> SandboxSpec:
    sid = f"sb-{uuid.uuid4().hex[:10]}"
    base = data_dir / "sandboxes" / sid
    fields: dict[str, object] = {
        "sandbox_id": sid,
        "state_dir": str(base),
        "workspace": str(base / "workspace"),
        "home": str(base / "home"),
        "cli": str(cli),
    }
    fields.update(overrides)
    return SandboxSpec(**fields)  # type: ignore[arg-type]


@pytest.fixture
async def sandbox(data_dir: Path, cli: Path, backend: CgroupBackend) -> AsyncIterator[Sandbox]:
    async with Sandbox(make_spec(data_dir, cli), backend) as sb:
        yield sb


async def sh(sb: Sandbox, script: str, timeout_s: float = 10) -> tuple[int, str, str]:
    code, out, err = await sb.run(["/bin/bash", "-c", script], timeout_s)
    return code, out.decode(), err.decode()


# ------------------------------------------------------------------------------ what it sees


async def test_the_cli_runs_at_its_fixed_path(sandbox: Sandbox) -> None:
    assert await sandbox.run([CLI_PATH, "--print", "hi"], 10) == (0, b"cli-ran --print hi\n", b"")


async def test_root_holds_only_the_expected_entries(sandbox: Sandbox) -> None:
    code, out, _ = await sh(sandbox, "ls -A /; echo ---; ls -A /home; echo ---; ls -A /etc")
    assert code == 0
    root, home, etc = (set(part.split()) for part in out.split("---"))
    assert root == ROOT_ENTRIES
    assert home == {"agent"}
    allowed_etc = {p.split("/")[2] for p in ETC_ALLOWLIST} | set(GENERATED_ETC) | {"mtab"}
    assert etc <= allowed_etc
    assert {"passwd", "group", "ld.so.cache", "ssl"} <= etc
    assert not {"shadow", "gitconfig", "machine-id"} & etc


async def test_host_files_cannot_be_read(
    data_dir: Path, cli: Path, backend: CgroupBackend, sandbox: Sandbox
) -> None:
    marker = f"MARKER-{uuid.uuid4().hex}"
    runner_file = data_dir / "runner-secret.txt"  # sibling of the sandboxes' dirs
    runner_file.write_text(marker)
    root_file = Path(f"/root/ash-test-{uuid.uuid4().hex}.txt")
    root_file.write_text(marker)
    try:
        async with Sandbox(make_spec(data_dir, cli), backend) as other:
            other_file = Path(other.spec.workspace) / "theirs.txt"
            other_file.write_text(marker)
            for path in (runner_file, root_file, other_file, sandbox.args_file):
                code, out, _ = await sh(sandbox, f"cat {path}")
                assert code != 0 and marker not in out, path
            # Not under any other name either: search everything but /usr, /proc and /dev.
            code, out, _ = await sh(
                sandbox, f"grep -rl {marker} / --exclude-dir=usr --exclude-dir=proc "
                "--exclude-dir=dev 2>/dev/null; echo done"
            )  # fmt: skip
            assert out == "done\n"
            assert (await sh(other, "cat /workspace/theirs.txt"))[1] == marker  # control
    finally:
        root_file.unlink()


async def test_writes_land_in_the_host_workspace_and_nowhere_else(
    data_dir: Path, sandbox: Sandbox
) -> None:
    code, _, _ = await sh(sandbox, "echo w > /workspace/out.txt && echo h > ~/h.txt && pwd")
    assert code == 0
    assert (Path(sandbox.spec.workspace) / "out.txt").read_text() == "w\n"
    assert (Path(sandbox.spec.home) / "h.txt").read_text() == "h\n"
    found = sorted(str(p.relative_to(data_dir)) for p in data_dir.rglob("*.txt"))
    sid = sandbox.spec.sandbox_id
    assert found == [f"sandboxes/{sid}/home/h.txt", f"sandboxes/{sid}/workspace/out.txt"]
    for target in ("/x", "/usr/x", "/etc/x", "/etc/passwd", CLI_PATH, "/home/x", "/opt/x"):
        code, _, err = await sh(sandbox, f"echo x > {target}")
        assert code != 0, target
        assert "Read-only file system" in err or "Permission denied" in err, err


async def test_cwd_is_workspace_and_identity_is_agent(sandbox: Sandbox) -> None:
    code, out, _ = await sh(sandbox, "pwd; id -un; id -u; id -g; hostname; echo $HOME")
    assert (code, out.split()) == (0, ["/workspace", "agent", "1000", "1000", "ash-sandbox",
                                       "/home/agent"])  # fmt: skip


async def test_tmp_is_private(sandbox: Sandbox) -> None:
    host_marker = Path(f"/tmp/ash-host-{uuid.uuid4().hex}")
    host_marker.write_text("host")
    try:
        inside = f"/tmp/ash-inside-{uuid.uuid4().hex}"
        assert (await sh(sandbox, f"echo i > {inside} && ls -A /tmp"))[1].split() == [
            Path(inside).name
        ]
        assert not Path(inside).exists(), "the sandbox's /tmp is not the host's"
        assert (await sh(sandbox, f"test -e {host_marker}"))[0] != 0
        assert (await sh(sandbox, "ls -A /tmp"))[1] == "", "each launch gets a fresh /tmp"
    finally:
        host_marker.unlink()


async def test_only_its_own_processes_are_visible(
    data_dir: Path, cli: Path, backend: CgroupBackend
) -> None:
    script = (
        "import os, json\n"
        "pids = [int(p) for p in os.listdir('/proc') if p.isdigit()]\n"
        "print(json.dumps({p: open(f'/proc/{p}/comm').read().strip() for p in pids}))\n"
        "try:\n    os.kill(int(os.environ['ASH_AGENT_HOST_PID']), 0); print('visible')\n"
        "except ProcessLookupError:\n    print('gone')\n"
    )
    spec = make_spec(data_dir, cli, env={"ASH_AGENT_HOST_PID": str(os.getpid())})
    async with Sandbox(spec, backend) as sb:
        code, out, _ = await sb.run([PYTHON, "-c", script], 10)
    listing, seen = out.decode().splitlines()
    procs = json.loads(listing)
    assert code == 0
    # pid 1 is bwrap's init, pid 2 our command; the runner (this test) does not exist inside.
    assert procs == {"1": "bwrap", "2": "python3"}
    assert seen == "gone"


# ---------------------------------------------------------------------------- environment


async def test_env_inside_is_exactly_the_allowed_set(
    data_dir: Path, cli: Path, backend: CgroupBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRET_TOKEN", "tok-runner-secret")
    env = {**os.environ, "ANTHROPIC_API_KEY": "sk-placeholder", "ASH_AGENT_NAME": "demo"}
    spec = make_spec(data_dir, cli, env=env)
    async with Sandbox(spec, backend) as sb:
        code, out, _ = await sb.run(["/usr/bin/env", "-0"], 10)
    inside = dict(kv.split("=", 1) for kv in out.decode().split("\0") if kv)
    assert code == 0
    assert inside == allowed_env(env)
    assert "SECRET_TOKEN" not in inside and "tok-runner-secret" not in out.decode()
    assert inside["ANTHROPIC_API_KEY"] == "sk-placeholder"


async def test_the_spawners_environment_does_not_leak_through_bwrap(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The SDK spawns command() with the runner's whole environment; bwrap's own environ is
    # readable inside as /proc/1/environ, so it must be empty.
    monkeypatch.setenv("SECRET_TOKEN", "tok-runner-secret")
    script = "cat /proc/[0-9]*/environ | tr '\\0' '\\n'; echo; cat /proc/[0-9]*/cmdline; echo end"
    proc = await asyncio.create_subprocess_exec(
        *sandbox.command(["/bin/bash", "-c", script]),
        stdout=asyncio.subprocess.PIPE, env=dict(os.environ),
    )  # fmt: skip
    out, _ = await proc.communicate()
    assert proc.returncode == 0 and out.decode().endswith("end\n")
    assert b"tok-runner-secret" not in out
    assert b"HOME=/home/agent" in out  # control: the environs were readable


async def test_args_file_is_private_and_its_secret_never_in_argv(
    data_dir: Path, cli: Path, backend: CgroupBackend
) -> None:
    secret = f"sk-ant-{uuid.uuid4().hex}"
    spec = make_spec(data_dir, cli, env={"ANTHROPIC_API_KEY": secret})
    async with Sandbox(spec, backend) as sb:
        assert stat.S_IMODE(os.stat(sb.args_file).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(spec.state_dir).st_mode) == 0o700
        assert secret.encode() in sb.args_file.read_bytes()
        assert not any(secret in arg for arg in sb.command([CLI_PATH]))

        proc = await asyncio.create_subprocess_exec(
            *sb.command(["/bin/sh", "-c", 'echo "$ANTHROPIC_API_KEY"; ls -l /proc/*/fd; read x']),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None and proc.stdin is not None
        assert (await proc.stdout.readline()).decode().strip() == secret  # it did get in
        try:
            for pid in (p for p in os.listdir("/proc") if p.isdigit()):
                with contextlib.suppress(OSError):
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                    assert secret.encode() not in cmdline, f"secret in argv of pid {pid}"
            # The process is in the sandbox's cgroup, and so is everything it started.
            members = sb.cgroup.pids()
            assert proc.pid in members and len(members) >= 3  # bwrap, its init, the shell
            for pid in members:
                lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
                assert any(line.endswith(f"/ash/{spec.sandbox_id}") for line in lines)
        finally:
            proc.stdin.write(b"\n")
            out, _ = await proc.communicate()
        assert b"bwrap.args" not in out, "bwrap must not leave the args fd open inside"
    assert not sb.args_file.exists(), "close() removes the args file"
    assert proc.returncode == 0


async def test_argv_cannot_smuggle_bwrap_options(sandbox: Sandbox) -> None:
    # A `--` inside the args file does not end option parsing of the outer argv.
    code, out, err = await sandbox.run(["--bind", "/", "/host", "/bin/ls", "/host"], 10)
    assert code != 0 and out == b""
    assert b"execvp --bind" in err


# ------------------------------------------------------------------------------- limits


async def test_memory_limit_oom_kills(data_dir: Path, cli: Path, backend: CgroupBackend) -> None:
    spec = make_spec(data_dir, cli, limits=Limits(memory_mb=100))
    async with Sandbox(spec, backend) as sb:
        if "memory" not in sb.cgroup.enforced:
            pytest.skip("no memory controller on this host")
        small = await sb.run([PYTHON, "-c", "s = b'a' * (20 << 20); print(len(s))"], 20)
        assert small.exit_code == 0 and not sb.cgroup.oom_killed()  # control
        big = await sb.run([PYTHON, "-c", "s = b'a' * (300 << 20); print(len(s))"], 20)
        assert big.exit_code == 128 + 9 and big.stdout == b""  # bwrap reports SIGKILL as 137
        assert sb.cgroup.oom_killed() and sb.cgroup.oom_kills() == 1


async def test_pids_limit_stops_a_fork_flood(
    data_dir: Path, cli: Path, backend: CgroupBackend
) -> None:
    script = (
        "import os, json\n"
        "r, w = os.pipe()\n"
        "started = failed = 0\n"
        "for _ in range(100):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except BlockingIOError:\n"
        "        failed += 1\n"
        "        continue\n"
        "    if pid == 0:\n"
        "        os.close(w); os.read(r, 1); os._exit(0)\n"
        "    started += 1\n"
        "print(json.dumps({'started': started, 'failed': failed}))\n"
    )
    spec = make_spec(data_dir, cli, limits=Limits(pids=20))
    async with Sandbox(spec, backend) as sb:
        if "pids" not in sb.cgroup.enforced:
            pytest.skip("no pids controller on this host")
        result = await sb.run([PYTHON, "-c", script], 20)
        counts = json.loads(result.stdout)
        assert result.exit_code == 0
        # 20 tasks in all: the two bwrap processes and python3 leave at most 17 for children.
        assert counts["started"] <= 17 and counts["failed"] > 0
        assert counts["started"] + counts["failed"] == 100
    host = await asyncio.create_subprocess_exec("/bin/true")
    assert await host.wait() == 0, "the host can still fork"


# ---------------------------------------------------------------------------- lifecycle


async def test_close_kills_everything_and_removes_the_cgroup(
    data_dir: Path, cli: Path, backend: CgroupBackend
) -> None:
    sb = Sandbox(make_spec(data_dir, cli), backend, remove_dirs=True)
    await sb.prepare()
    try:
        proc = await asyncio.create_subprocess_exec(
            *sb.command(["/bin/sh", "-c", "sleep 60 & sleep 60 & echo up; wait"]),
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        assert await proc.stdout.readline() == b"up\n"
        cgroup = sb.cgroup
        assert len(cgroup.pids()) >= 5  # bwrap, its init, sh, two sleeps
        procs_dirs = [p.parent for p in cgroup.procs_files]
    finally:
        await sb.close()
    assert await asyncio.wait_for(proc.wait(), 5) == -9
    assert not any(d.exists() for d in procs_dirs)
    assert not Path(sb.spec.state_dir).exists() and not Path(sb.spec.workspace).exists()
    await sb.close()  # idempotent
    with pytest.raises(SandboxClosed):
        sb.command(["/bin/true"])


async def test_run_timeout_kills_the_launch(sandbox: Sandbox) -> None:
    with pytest.raises(TimeoutError):
        await sandbox.run(["/bin/sleep", "60"], 0.3)
    # bwrap's init dies with its parent; the cgroup empties without anyone else acting.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while sandbox.cgroup.pids():
        assert loop.time() < deadline, sandbox.cgroup.pids()
        await asyncio.sleep(0.001)


async def test_run_feeds_stdin_and_caps_output(sandbox: Sandbox) -> None:
    assert await sandbox.run(["/bin/cat"], 10, stdin=b"hello") == (0, b"hello", b"")
    code, out, _ = await sandbox.run(["/bin/sh", "-c", "head -c 300000 /dev/zero; exit 3"], 10,
                                     max_output=1000)  # fmt: skip
    assert (code, len(out)) == (3, 1000)


async def test_prepare_twice_is_refused(data_dir: Path, cli: Path, backend: CgroupBackend) -> None:
    async with Sandbox(make_spec(data_dir, cli), backend) as sb:
        with pytest.raises(SandboxClosed):
            await sb.prepare()


async def test_extra_ro_binds_are_visible_read_only(
    data_dir: Path, cli: Path, backend: CgroupBackend, tmp_path: Path
) -> None:
    helpers = tmp_path / "scripted"
    helpers.mkdir()
    (helpers / "tool.py").write_text("print('helper ok')\n")
    spec = make_spec(data_dir, cli, extra_ro_binds=((str(helpers), "/opt/ash/scripted"),))
    async with Sandbox(spec, backend) as sb:
        assert await sb.run([PYTHON, "/opt/ash/scripted/tool.py"], 10) == (0, b"helper ok\n", b"")
        code, _, err = await sh(sb, "echo x > /opt/ash/scripted/tool.py")
        assert code != 0 and "Read-only" in err
