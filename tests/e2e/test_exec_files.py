"""Exec and files, end to end: real processes, real sandboxes, a hostile agent.

The stack is the e2e package's (nats-server, a coordinator and a runner process, bwrap,
cgroups, the real CLI). Commands reach the sandbox through `POST .../exec` exactly as a user's
would; what a hostile agent would plant (symlinks to /etc or to another session's workspace as
the host sees it, FIFOs) is planted by exec, from inside its sandbox, and then the files API is
asked to follow it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import tarfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ash.cli import main as ash_main
from ash.client import AsyncClient, Client
from ash.errors import AshError
from protocol.events import ExecExit, ExecStderr, ExecStdout
from protocol.files import MAX_ARCHIVE_BYTES, MAX_FILE_BYTES
from tests.e2e.conftest import E2E
from tests.e2e.sse import Frame, read_turn
from tests.e2e.test_spine import assert_error, deploy, new_session

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024


# -- helpers ----------------------------------------------------------------------------------


async def run(http: aiohttp.ClientSession, url: str, sid: str, command: Any, **kw: Any) -> list[Frame]:
    """All frames of one exec, through exec_exit."""
    async with http.post(f"{url}/api/sessions/{sid}/exec", json={"command": command, **kw}) as r:
        return await read_turn(r)


def output(frames: list[Frame], event: str = "exec_stdout") -> str:
    return "".join(f.data["data"] for f in frames if f.event == event)


def exit_of(frames: list[Frame]) -> dict[str, Any]:
    assert frames and frames[-1].event == "exec_exit", [f.event for f in frames]
    return frames[-1].data


async def call(http: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> tuple[int, Any]:
    async with http.request(method, url, **kw) as r:
        body = await r.read()
        if r.content_type == "application/json":
            return r.status, json.loads(body)
        return r.status, body


def workspace_of(e2e: E2E, sid: str) -> Path:
    """The session's workspace as the host sees it (sessions/<id> may be a link to it)."""
    return (e2e.runner_dir / "sessions" / sid / "workspace").resolve()


def same_cwd(directory: Path) -> list[int]:
    """Pids whose working directory is `directory` (by inode: a sandboxed process sees it as
    /workspace, the host as its own path)."""
    want = directory.stat()
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                st = os.stat(f"/proc/{entry.name}/cwd")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (want.st_dev, want.st_ino):
                pids.append(int(entry.name))
    return pids


def tree(path: Path, skip: str = "\0") -> dict[str, Any]:
    """What lstat and content show under `path` (to prove nothing changed), but for the
    subtree `skip` (where the agent's CLI keeps writing its own state)."""
    found: dict[str, Any] = {}
    for p in sorted(path.rglob("*")):
        rel = str(p.relative_to(path))
        if rel == skip or rel.startswith(skip + "/"):
            continue
        if p.is_symlink():
            found[rel] = ("symlink", os.readlink(p))
        elif p.is_file():
            found[rel] = ("file", hashlib.sha256(p.read_bytes()).hexdigest())
        else:
            found[rel] = ("dir" if p.is_dir() else "other",)
    return found


def host_processes(marker: str) -> list[int]:
    """Pids on this host whose argv[0] starts with `marker` (set by `exec -a` in the sandbox;
    the launchers around it only hold the marker further along their argv)."""
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if Path(entry.path, "cmdline").read_bytes().startswith(marker.encode()):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


async def wait_until(condition: Any, timeout: float, what: str) -> None:
    """Poll `condition()` (a condition of other processes) until true, or fail."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)  # poll interval of the condition above


def targz(members: list[tuple[str, str, bytes | str]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, kind, body in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                assert isinstance(body, bytes)
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
            else:
                info.type = tarfile.SYMTYPE
                assert isinstance(body, str)
                info.linkname = body
                tar.addfile(info)
    return buf.getvalue()


@pytest.fixture
async def sessions(e2e: E2E) -> AsyncIterator[list[str]]:
    """The sessions a test made with `session()`; each is ended after the test."""
    made: list[str] = []
    yield made
    async with aiohttp.ClientSession() as http:
        for sid in made:
            await call(http, "DELETE", f"{e2e.url}/api/sessions/{sid}")


async def session(http: aiohttp.ClientSession, e2e: E2E, made: list[str]) -> str:
    await deploy(http, e2e.url)
    sid = await new_session(http, e2e.url)
    made.append(sid)
    return sid


# -- exec -------------------------------------------------------------------------------------


async def test_exec_streams_both_outputs_and_the_exit_code(e2e: E2E, sessions: list[str]) -> None:
    async with aiohttp.ClientSession() as http:
        sid = await session(http, e2e, sessions)
        frames = await run(http, e2e.url, sid, "echo out; echo err >&2; exit 3")
        argv = await run(http, e2e.url, sid, ["printf", "%s|", "one arg", "two"])
        env = await run(http, e2e.url, sid, 'printf %s "$GREETING"',
                        env={"GREETING": "hello world\nsecond line"})
        binary = await run(http, e2e.url, sid, r"printf '\377\000\001ok'", encoding="base64")
        missing = await run(http, e2e.url, sid, ["no-such-program"])

    assert output(frames) == "out\n" and output(frames, "exec_stderr") == "err\n"
    done = exit_of(frames)
    assert done["exit_code"] == 3 and done["timed_out"] is False and done["truncated"] is False
    assert [f.id for f in frames] == list(range(1, len(frames) + 1))
    assert all(f.id == f.data["seq"] and f.data["session_id"] == sid for f in frames)
    assert len({f.data["exec_id"] for f in frames}) == 1

    assert output(argv) == "one arg|two|" and exit_of(argv)["exit_code"] == 0
    assert output(env) == "hello world\nsecond line"
    raw = b"".join(base64.b64decode(f.data["data"]) for f in binary if f.event == "exec_stdout")
    assert raw == b"\xff\x00\x01ok"
    assert exit_of(missing)["exit_code"] == 127 and "not found" in output(missing, "exec_stderr")


async def test_exec_runs_inside_the_sessions_own_sandbox(e2e: E2E, sessions: list[str]) -> None:
    token = f"secret-{uuid.uuid4().hex}"
    planted = e2e.runner_dir / f"planted-{uuid.uuid4().hex[:8]}.txt"
    planted.write_text(token)
    try:
        async with aiohttp.ClientSession() as http:
            sid = await session(http, e2e, sessions)
            other = await session(http, e2e, sessions)
            (workspace_of(e2e, other) / "other.txt").write_text(token)
            (workspace_of(e2e, sid) / "mine.txt").write_text("mine")
            frames = await run(http, e2e.url, sid, (
                "id -u; pwd; cat mine.txt; echo; ls /workspace; hostname; "
                f"cat {planted} {workspace_of(e2e, other) / 'other.txt'}; "
                "ls / ; test -e /work && echo HOST-VISIBLE; true"))
    finally:
        planted.unlink()
    lines = output(frames).splitlines()
    assert lines[:3] == ["1000", "/workspace", "mine"]
    assert "CLAUDE.md" in lines and "mine.txt" in lines and "ash-sandbox" in lines
    assert "HOST-VISIBLE" not in lines and "work" not in lines
    assert token not in output(frames) + output(frames, "exec_stderr")
    assert "No such file" in output(frames, "exec_stderr")


async def test_exec_shares_the_sessions_cgroup_and_dies_with_its_client(
    e2e: E2E, sessions: list[str]
) -> None:
    marker = f"ash-exec-{uuid.uuid4().hex[:12]}"
    async with aiohttp.ClientSession() as http:
        sid = await session(http, e2e, sessions)
        async with http.post(f"{e2e.url}/api/sessions/{sid}/exec", json={
            "command": f"echo started; exec -a {marker} sleep 300", "timeout_s": 600,
        }) as r:  # fmt: skip
            assert r.status == 200
            async for line in r.content:
                if line.startswith(b"data:") and b"started" in line:
                    break
            await wait_until(lambda: host_processes(marker), 10, "the command to run")
            (pid,) = host_processes(marker)
            cgroup = Path(f"/proc/{pid}/cgroup").read_text()
            assert "/ash/" in cgroup  # a sandbox's cgroup, not the runner's
            # ... the very cgroup of the session's agent (its CLI, started long before).
            agent = [p for p in same_cwd(workspace_of(e2e, sid)) if p not in host_processes(marker)]
            assert agent and all(Path(f"/proc/{p}/cgroup").read_text() == cgroup for p in agent)
        # The client went away: the runner finds no listener at its next heartbeat and kills it.
    await wait_until(lambda: not host_processes(marker), 30, "the command to be killed")


async def test_exec_timeout_kills_the_command_and_everything_it_started(
    e2e: E2E, sessions: list[str]
) -> None:
    marker = f"ash-timeout-{uuid.uuid4().hex[:12]}"
    async with aiohttp.ClientSession() as http:
        sid = await session(http, e2e, sessions)
        frames = await run(http, e2e.url, sid, (
            f"(exec -a {marker}-child sleep 300) & (setsid sh -c 'exec -a {marker}-orphan sleep 300' &) ; "
            f"echo started; exec -a {marker}-main sleep 300"), timeout_s=2)  # fmt: skip
        after = await run(http, e2e.url, sid, "echo still usable")
    done = exit_of(frames)
    assert output(frames) == "started\n"
    assert done["timed_out"] is True and done["exit_code"] == 137
    assert 2000 <= done["duration_ms"] < 30_000
    assert host_processes(marker) == []  # gone by the time exec_exit was sent
    assert output(after) == "still usable\n" and exit_of(after)["exit_code"] == 0


async def test_exec_output_past_the_cap_stops_the_command_with_a_marker(
    e2e: E2E, sessions: list[str]
) -> None:
    async with aiohttp.ClientSession() as http:
        sid = await session(http, e2e, sessions)
        frames = await run(http, e2e.url, sid, "yes", timeout_s=120)
    done = exit_of(frames)
    assert done["truncated"] is True and done["timed_out"] is False and done["exit_code"] == 137
    text = output(frames)
    assert len(text) == 16 * MiB and set(text) == {"y", "\n"}


async def test_exec_requests_are_checked(e2e: E2E, sessions: list[str]) -> None:
    async with aiohttp.ClientSession() as http:
        sid = await session(http, e2e, sessions)
        url = f"{e2e.url}/api/sessions/{sid}/exec"
        assert_error(*await call(http, "POST", f"{e2e.url}/api/sessions/nope/exec",
                                 json={"command": "true"}), 404, "not_found")
        for body in ({"command": "x", "env": {"BAD-KEY": "v"}},
                     {"command": "x", "env": {"K": "nul\u0000"}},
                     {"command": "a\u0000b"}, {"command": []}, {"command": "x", "timeout_s": 3601},
                     {"command": "x", "shell": True}):
            assert_error(*await call(http, "POST", url, json=body), 422, "validation_failed")
        assert_error(*await call(http, "POST", url, data=b"{",
                                 headers={"Content-Type": "application/json"}), 400, "invalid_json")
        # A session with a turn running may still exec.
        async with http.post(f"{e2e.url}/api/sessions/{sid}/messages",
                             json={"content": "run: sleep 2; echo turn-done"}) as turn:
            assert turn.status == 200
            during = await run(http, e2e.url, sid, "echo during")
            turn_frames = await read_turn(turn)
        assert output(during) == "during\n"
        assert turn_frames[-1].event == "done"
        await call(http, "DELETE", f"{e2e.url}/api/sessions/{sid}")
        assert_error(*await call(http, "POST", url, json={"command": "true"}), 410, "gone")


# -- files ------------------------------------------------------------------------------------


async def test_files_round_trip_and_meet_exec(e2e: E2E, sessions: list[str]) -> None:
    blob = os.urandom(3 * MiB + 12345)  # several NATS chunks
    async with aiohttp.ClientSession() as http:
        sid = await session(http, e2e, sessions)
        files = f"{e2e.url}/api/sessions/{sid}/files"
        status, body = await call(http, "PUT", f"{files}/content", params={"path": "dir/sub/blob.bin"},
                                  data=io.BytesIO(blob))  # fmt: skip
        assert (status, body) == (201, {"path": "dir/sub/blob.bin", "size": len(blob), "created": True})
        status, body = await call(http, "PUT", f"{files}/content", params={"path": "./dir//note.txt"},
                                  data=b"v1")  # fmt: skip
        assert status == 201 and body["path"] == "dir/note.txt"
        status, body = await call(http, "PUT", f"{files}/content", params={"path": "dir/note.txt"},
                                  data=b"version 2\n")  # fmt: skip
        assert (status, body["created"]) == (200, False)
        status, body = await call(http, "PUT", f"{files}/content", params={"path": "empty"},
                                  data=b"")  # fmt: skip
        assert (status, body["size"]) == (201, 0)
        assert await call(http, "GET", f"{files}/content", params={"path": "empty"}) == (200, b"")

        async with http.get(f"{files}/content", params={"path": "dir/sub/blob.bin"}) as r:
            assert r.status == 200 and r.headers["Content-Type"] == "application/octet-stream"
            assert int(r.headers["Content-Length"]) == len(blob)
            assert await r.read() == blob
        status, listing = await call(http, "GET", files, params={"path": "dir", "recursive": "true"})
        assert status == 200 and listing["truncated"] is False
        assert [(e["path"], e["type"]) for e in listing["entries"]] == [
            ("dir/note.txt", "file"), ("dir/sub", "dir"), ("dir/sub/blob.bin", "file")]
        status, top = await call(http, "GET", files)
        assert {"CLAUDE.md", "dir"} <= {e["path"] for e in top["entries"]}

        seen = await run(http, e2e.url, sid, "cat dir/note.txt; sha256sum dir/sub/blob.bin; "
                                             "echo from exec > made-by-exec.txt; ls -l dir/note.txt")
        assert output(seen).startswith("version 2\n" + hashlib.sha256(blob).hexdigest())
        assert " agent agent " in output(seen)  # owned by the sandbox's user, as exec sees it

        async with http.get(f"{e2e.url}/api/sessions/{sid}/workspace") as r:
            assert r.status == 200 and r.headers["Content-Type"] == "application/gzip"
            archive = await r.read()
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            names = set(tar.getnames())
            made = tar.extractfile("made-by-exec.txt")
            assert made is not None and made.read() == b"from exec\n"
            got = tar.extractfile("dir/sub/blob.bin")
            assert got is not None and got.read() == blob
        assert {"CLAUDE.md", "dir", "dir/sub", "dir/note.txt"} <= names

        upload = targz([("uploaded/a.txt", "file", b"from a tar\n"), ("uploaded/link", "symlink", "a.txt")])
        status, body = await call(http, "POST", f"{e2e.url}/api/sessions/{sid}/workspace", data=upload,
                                  headers={"Content-Type": "application/gzip"})  # fmt: skip
        assert (status, body) == (200, {"files": 1, "dirs": 0, "symlinks": 1, "size": 11})
        assert output(await run(http, e2e.url, sid, "cat uploaded/a.txt uploaded/link")) == \
            "from a tar\nfrom a tar\n"

        assert (await call(http, "DELETE", f"{files}/content", params={"path": "dir/note.txt"}))[0] == 204
        assert_error(*await call(http, "GET", f"{files}/content", params={"path": "dir/note.txt"}),
                     404, "not_found")
        assert_error(*await call(http, "DELETE", f"{files}/content", params={"path": "dir"}),
                     409, "conflict")
        status, _ = await call(http, "DELETE", f"{files}/content",
                               params={"path": "dir", "recursive": "true"})
        assert status == 204
        assert output(await run(http, e2e.url, sid, "test -e dir || echo gone")) == "gone\n"


async def test_bad_paths_get_4xx_and_change_nothing(e2e: E2E, sessions: list[str]) -> None:
    async with aiohttp.ClientSession() as http:
        sid = await session(http, e2e, sessions)
        files = f"{e2e.url}/api/sessions/{sid}/files"
        ws = workspace_of(e2e, sid)
        before, host_before = tree(ws), tree(ws.parent, skip="home")
        for path in ("../x", "../../etc/passwd", "/etc/passwd", "a/../../x", "a\u0000b", ".."):
            for method, kw in (("GET", {}), ("PUT", {"data": b"owned"}), ("DELETE", {})):
                assert_error(*await call(http, method, f"{files}/content", params={"path": path}, **kw),
                             422, "validation_failed")
            assert_error(*await call(http, "GET", files, params={"path": path}), 422, "validation_failed")
        assert_error(*await call(http, "GET", f"{files}/content"), 400, "bad_request")
        assert_error(*await call(http, "GET", f"{files}/content", params={"path": ""}),
                     422, "validation_failed")
        assert_error(*await call(http, "GET", f"{files}/content", params={"path": "nope"}),
                     404, "not_found")
        assert_error(*await call(http, "GET", f"{e2e.url}/api/sessions/nope/files"), 404, "not_found")
        assert tree(ws) == before
        assert tree(ws.parent, skip="home") == host_before


async def test_symlinks_the_agent_plants_are_never_followed(e2e: E2E, sessions: list[str]) -> None:
    async with aiohttp.ClientSession() as http:
        sid = await session(http, e2e, sessions)
        victim = await session(http, e2e, sessions)
        victim_ws = workspace_of(e2e, victim)
        (victim_ws / "secret.txt").write_text("the victim's secret")
        # From inside its sandbox, the agent points symlinks at host paths it cannot reach, in
        # the hope that the runner (outside, as root) follows them.
        frames = await run(http, e2e.url, sid, (
            f"ln -s /etc etc && ln -s /etc/passwd passwd && ln -s {victim_ws} victim && "
            f"ln -s {victim_ws / 'secret.txt'} victim-secret && mkdir d && ln -s /etc d/up && echo ok"))
        assert output(frames) == "ok\n", output(frames, "exec_stderr")
        files = f"{e2e.url}/api/sessions/{sid}/files"
        passwd = Path("/etc/passwd").read_bytes()
        victim_before, etc_before = tree(victim_ws), sorted(os.listdir("/etc"))

        through = ("etc/passwd", "victim/secret.txt", "d/up/hostname", "victim/new.txt",
                   "etc/ash-owned", "victim/deeper/new.txt")
        links = ("passwd", "victim-secret", "victim", "etc")
        for path in through + links:
            for method, kw in (("GET", {}), ("PUT", {"data": b"owned"})):
                status, body = await call(http, method, f"{files}/content", params={"path": path}, **kw)
                assert_error(status, body, 422, "unprocessable")
                assert "symlink" in body["error"]["message"]
        for path in through:
            for recursive in ("false", "true"):
                assert_error(*await call(http, "DELETE", f"{files}/content",
                                         params={"path": path, "recursive": recursive}),
                             422, "unprocessable")
        for path in ("victim", "etc", "d/up"):  # listing shows the link, never what it names
            status, listing = await call(http, "GET", files, params={"path": path, "recursive": "true"})
            assert status == 200 and [e["type"] for e in listing["entries"]] == ["symlink"]
        async with http.get(f"{e2e.url}/api/sessions/{sid}/workspace") as r:
            archive = await r.read()
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            links = {m.name: m.linkname for m in tar.getmembers() if m.issym()}
        assert links["victim"] == str(victim_ws) and b"victim's secret" not in archive

        assert tree(victim_ws) == victim_before
        assert Path("/etc/passwd").read_bytes() == passwd and sorted(os.listdir("/etc")) == etc_before
        # Deleting a link itself is fine: only the link goes, never what it names.
        for path in links:
            assert (await call(http, "DELETE", f"{files}/content", params={"path": path}))[0] == 204
        assert tree(victim_ws) == victim_before
        assert Path("/etc/passwd").read_bytes() == passwd and sorted(os.listdir("/etc")) == etc_before
        assert output(await run(http, e2e.url, sid, "ls")) == "CLAUDE.md\nd\n"


async def test_a_fifo_is_refused_without_hanging(e2e: E2E, sessions: list[str]) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        sid = await session(http, e2e, sessions)
        assert exit_of(await run(http, e2e.url, sid, "mkfifo pipe"))["exit_code"] == 0
        files = f"{e2e.url}/api/sessions/{sid}/files"
        assert_error(*await call(http, "GET", f"{files}/content", params={"path": "pipe"}),
                     422, "unprocessable")
        assert_error(*await call(http, "PUT", f"{files}/content", params={"path": "pipe"},
                                 data=b"x"), 422, "unprocessable")
        status, listing = await call(http, "GET", files, params={"path": "pipe"})
        assert status == 200 and listing["entries"][0]["type"] == "other"
        async with http.get(f"{e2e.url}/api/sessions/{sid}/workspace") as r:
            with tarfile.open(fileobj=io.BytesIO(await r.read()), mode="r:gz") as tar:
                assert "pipe" not in tar.getnames()
        assert (await call(http, "DELETE", f"{files}/content", params={"path": "pipe"}))[0] == 204


async def test_oversize_writes_get_413_and_write_nothing(e2e: E2E, sessions: list[str]) -> None:
    async with aiohttp.ClientSession() as http:
        sid = await session(http, e2e, sessions)
        files = f"{e2e.url}/api/sessions/{sid}/files"
        before = tree(workspace_of(e2e, sid))
        # Declared too large: refused before a byte is read.
        assert_error(*await call(http, "PUT", f"{files}/content", params={"path": "big.bin"},
                                 data=io.BytesIO(b"x" * (MAX_FILE_BYTES + 1))),
                     413, "payload_too_large")

        async def chunked(total: int) -> AsyncIterator[bytes]:
            piece = b"y" * MiB
            while total > 0:
                yield piece[:total]
                total -= len(piece)

        # Not declared (chunked): refused at the first byte past the cap, then dropped.
        assert_error(*await call(http, "PUT", f"{files}/content", params={"path": "big.bin"},
                                 data=chunked(MAX_FILE_BYTES + 1)), 413, "payload_too_large")
        assert_error(*await call(http, "POST", f"{e2e.url}/api/sessions/{sid}/workspace",
                                 data=io.BytesIO(b"z" * (MAX_ARCHIVE_BYTES + 1))),
                     413, "payload_too_large")
        assert tree(workspace_of(e2e, sid)) == before
        # Exactly at the cap is fine.
        status, body = await call(http, "PUT", f"{files}/content", params={"path": "big.bin"},
                                  data=chunked(MAX_FILE_BYTES))
        assert status == 201 and body["size"] == MAX_FILE_BYTES


async def test_hostile_archives_are_refused_whole(e2e: E2E, sessions: list[str]) -> None:
    async with aiohttp.ClientSession() as http:
        sid = await session(http, e2e, sessions)
        await run(http, e2e.url, sid, "ln -s /etc planted")
        url = f"{e2e.url}/api/sessions/{sid}/workspace"
        ws = workspace_of(e2e, sid)
        before, host_before = tree(ws), tree(ws.parent, skip="home")
        for members in (
            [("ok.txt", "file", b"ok"), ("../escaped.txt", "file", b"x")],
            [("ok.txt", "file", b"ok"), ("/tmp/ash-escaped.txt", "file", b"x")],
            [("ok.txt", "file", b"ok"), ("up", "symlink", "../../..")],
            [("ok.txt", "file", b"ok"), ("abs", "symlink", "/etc/passwd")],
            [("ok.txt", "file", b"ok"), ("planted/ash-owned", "file", b"x")],
            [("l", "symlink", "sub"), ("l/through.txt", "file", b"x")],
        ):
            status, body = await call(http, "POST", url, data=targz(members),
                                      headers={"Content-Type": "application/gzip"})
            assert_error(status, body, 422, "unprocessable")
        assert_error(*await call(http, "POST", url, data=b"not a tarball"), 400, "bad_request")
        assert tree(ws) == before and tree(ws.parent, skip="home") == host_before
        assert not Path("/tmp/ash-escaped.txt").exists() and not Path("/etc/ash-owned").exists()


async def test_files_of_ended_sessions_are_gone(e2e: E2E, sessions: list[str]) -> None:
    async with aiohttp.ClientSession() as http:
        sid = await session(http, e2e, sessions)
        await call(http, "DELETE", f"{e2e.url}/api/sessions/{sid}")
        base = f"{e2e.url}/api/sessions/{sid}"
        assert_error(*await call(http, "GET", f"{base}/files"), 410, "gone")
        assert_error(*await call(http, "PUT", f"{base}/files/content", params={"path": "x"},
                                 data=b"x"), 410, "gone")
        assert_error(*await call(http, "GET", f"{base}/workspace"), 410, "gone")


# -- the client and the CLI -------------------------------------------------------------------


async def test_async_client_exec_and_files(e2e: E2E, sessions: list[str]) -> None:
    async with aiohttp.ClientSession() as http:
        sid = await session(http, e2e, sessions)
    async with AsyncClient(e2e.url) as ash:
        events = [e async for e in ash.exec(sid, "echo a; echo b >&2; exit 5", env={"X": "1"})]
        assert [type(e) for e in events] == [ExecStdout, ExecStderr, ExecExit]
        assert events[-1].exit_code == 5  # type: ignore[union-attr]
        seen: list[tuple[int, int | None]] = []
        written = await ash.files_write(sid, "c/d.txt", io.BytesIO(b"x" * 700_000),
                                        progress=lambda d, t: seen.append((d, t)))
        assert (written.path, written.size, written.created) == ("c/d.txt", 700_000, True)
        assert seen[-1] == (700_000, 700_000)
        assert await ash.files_read(sid, "c/d.txt") == b"x" * 700_000
        assert [e.path for e in (await ash.files_list(sid, "c")).entries] == ["c/d.txt"]
        buf = io.BytesIO()
        size = await ash.workspace_download(sid, buf)
        assert size == len(buf.getvalue()) > 0
        up = await ash.workspace_upload(sid, targz([("e.txt", "file", b"e")]))
        assert (up.files, up.size) == (1, 1)
        await ash.files_delete(sid, "c", recursive=True)
        with pytest.raises(AshError) as err:
            await ash.files_read(sid, "c/d.txt")
        assert err.value.code == "not_found" and err.value.status == 404
        with pytest.raises(AshError) as err:
            await ash.files_read(sid, "../etc/passwd")  # refused before any request
        assert err.value.code == "validation_failed" and err.value.status is None


def test_blocking_client_and_cli(e2e: E2E, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    with Client(e2e.url) as ash:
        ash.deploy(Path(__file__).resolve().parents[2] / "examples" / "hello", "hello")
        sid = ash.create_session("hello").id
        try:
            events = list(ash.exec(sid, ["sh", "-c", "echo hi; exit 2"]))
            assert events[0].data == "hi\n" and events[-1].exit_code == 2  # type: ignore[union-attr]
            ash.files_write(sid, "x.txt", b"x")
            assert ash.files_read(sid, "x.txt") == b"x"

            def cli(*argv: str) -> tuple[int, bytes, bytes]:
                code = ash_main(["--url", e2e.url, *argv])
                out, err = capsysbinary.readouterr()
                return code, out, err

            code, out, err = cli("exec", sid, "--", "echo out; echo err >&2; exit 3")
            assert (code, out, err) == (3, b"out\n", b"err\n")
            code, out, _ = cli("exec", sid, "--env", "A=b c", "--", "printenv", "A")
            assert (code, out) == (0, b"b c\n")
            code, _, err = cli("exec", sid, "--timeout", "1", "--", "sleep 30")
            assert code == 137 and b"timed out" in err
            local = tmp_path / "local.bin"
            local.write_bytes(os.urandom(600_000))
            code, out, err = cli("files", "put", sid, str(local), "up/local.bin", "--progress")
            assert code == 0 and out.startswith(b"created up/local.bin") and b"100%" in err
            code, out, _ = cli("files", "ls", sid, "up")
            assert code == 0 and b"up/local.bin" in out and b"TYPE" in out
            code, out, _ = cli("files", "get", sid, "up/local.bin")
            assert code == 0 and out == local.read_bytes()
            code, _, _ = cli("files", "get", sid, "up/local.bin", "-o", str(tmp_path / "back.bin"))
            assert code == 0 and (tmp_path / "back.bin").read_bytes() == local.read_bytes()
            code, _, err = cli("files", "get", sid, "../etc/passwd")
            assert code == 1 and b"error:" in err and b"root:" not in err
            code, out, _ = cli("workspace", "download", sid, str(tmp_path / "ws.tar.gz"))
            assert code == 0 and tarfile.is_tarfile(tmp_path / "ws.tar.gz")
            code, out, _ = cli("files", "rm", sid, "up", "-r")
            assert code == 0 and out == b"deleted up\n"
            code, out, _ = cli("--json", "workspace", "upload", sid, str(tmp_path / "ws.tar.gz"))
            assert code == 0 and b'"files"' in out
            assert ash.files_read(sid, "up/local.bin") == local.read_bytes()
        finally:
            ash.end_session(sid)
