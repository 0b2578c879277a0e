"""Stored credentials end to end: a credential stored through the API reaches the (scripted)
model API as the real key of the sessions that name it, while their sandboxes only ever hold
a placeholder, and the value is nowhere at rest in clear: not in the database, the logs, the
event history or the sandbox's files.

Real parts throughout (coordinator, runner, NATS, bwrap, the egress proxy, the real Claude Code
CLI); only the model is scripted, and it records the credential header of every request.
"""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ash.bundle import pack
from ash.embedded_nats import start_nats
from tests.e2e.conftest import E2E, HOST_SECRET, MODEL_KEY, ModelApi
from tests.e2e.sse import Frame, read_turn, text_of
from tests.e2e.test_mcp import sandbox_kind, wait_warm
from tests.procs import ROOT, Stack, clean_env, free_port

pytestmark = pytest.mark.e2e


# The sealing key of stored credentials in this module's stack.
CREDENTIALS_KEY = base64.b64encode(secrets.token_bytes(32)).decode()


def start_stack(tmp: Path) -> Iterator[E2E]:
    """A stack of its own, like the package's `e2e` one, whose coordinator also stores
    credentials (ASH_CREDENTIALS_KEY) and takes calls without API keys (ASH_AUTH=off)."""
    nats = start_nats(tmp / "nats", log_path=tmp / "nats.log")
    port = free_port()
    with (tmp / "model.log").open("wb") as out:
        model = subprocess.Popen(
            [sys.executable, "-m", "runner.scripted.model_api", "--port", str(port)],
            cwd=ROOT, env=clean_env(), stdout=out, stderr=subprocess.STDOUT,
        )
    stack = Stack(tmp, nats.url)
    try:
        stack.start_coordinator(ASH_AUTH="off", ASH_CREDENTIALS_KEY=CREDENTIALS_KEY)
        stack.start_runner("runner", ASH_CLI="claude",
                           ASH_MODEL_BASE_URL=f"http://127.0.0.1:{port}",
                           HOST_SECRET_TOKEN=HOST_SECRET, ANTHROPIC_API_KEY=MODEL_KEY)
        stack.wait_ready()
        yield E2E(stack, ModelApi(f"http://127.0.0.1:{port}", model), tmp / "runner")
    finally:
        stack.stop()
        model.terminate()
        model.wait(10)
        nats.stop()


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2E]:
    yield from start_stack(tmp_path_factory.mktemp("credentials"))


async def deploy(http: aiohttp.ClientSession, url: str, name: str, toml: str = "",
                 tmp: Path | None = None) -> None:
    folder = ROOT / "examples" / "hello"
    if toml:
        assert tmp is not None
        folder = tmp / name
        shutil.copytree(ROOT / "examples" / "hello", folder)
        (folder / "ash.toml").write_text(toml)
    async with http.post(f"{url}/api/agents", params={"name": name}, data=pack(folder),
                         headers={"Content-Type": "application/gzip"}) as r:
        assert r.status == 201, await r.text()


async def store(http: aiohttp.ClientSession, url: str, name: str, value: str) -> dict[str, Any]:
    async with http.post(f"{url}/api/credentials",
                         json={"name": name, "kind": "anthropic_api_key", "value": value}) as r:
        assert r.status in (200, 201), await r.text()
        return await r.json()  # type: ignore[no-any-return]


async def create(http: aiohttp.ClientSession, url: str, agent: str, **options: Any) -> str:
    async with http.post(f"{url}/api/sessions", json={"agent": agent, **options}) as r:
        assert r.status == 201, await r.text()
        return str((await r.json())["id"])


async def turn(http: aiohttp.ClientSession, url: str, sid: str, text: str) -> list[Frame]:
    async with http.post(f"{url}/api/sessions/{sid}/messages", json={"content": text}) as r:
        return await read_turn(r)


def keys_seen_for(e2e: E2E, marker: str) -> set[str | None]:
    """The credentials the model API received on the conversation requests naming `marker`."""
    return {r["credential"] for r in e2e.model.requests()
            if r["purpose"] == "conversation" and marker in json.dumps(r["body"]["messages"])}


def tool_output(frames: list[Frame]) -> str:
    results = [f.data for f in frames if f.event == "tool_result"]
    assert results, "the command did not run"
    return json.dumps(results[0]["content"])


def files_holding(root: Path, needle: bytes) -> list[Path]:
    """Files under `root` (links not followed) whose bytes contain `needle`."""
    found = []
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            try:
                if needle in p.read_bytes():
                    found.append(p)
            except OSError:
                continue
    return found


async def test_a_stored_credential_reaches_the_model_and_never_the_sandbox(e2e: E2E) -> None:
    secret = "sk-ant-stored-" + uuid.uuid4().hex
    name = f"team-{uuid.uuid4().hex[:6]}"
    marker = uuid.uuid4().hex[:8]
    async with aiohttp.ClientSession() as http:
        await deploy(http, e2e.url, "hello")
        shown = await store(http, e2e.url, name, secret)
        async with http.get(f"{e2e.url}/api/credentials") as r:
            listed = await r.json()
        sid = await create(http, e2e.url, "hello", credential=name)
        said = await turn(http, e2e.url, sid, f"Remember the word {marker}")
        # What the sandbox holds: its environment, the CLI's files in HOME, the workspace, /tmp.
        grep = f"grep -rl -D skip '{secret[-12:]}' ~ /workspace /tmp 2>/dev/null"
        looked = await turn(http, e2e.url, sid, "run: env; cat ~/.claude.json ~/.claude/*.json "
                            f"2>/dev/null; {grep}; echo looked")
        other = await create(http, e2e.url, "hello")  # no credential: the runner's own key
        other_marker = uuid.uuid4().hex[:8]
        await turn(http, e2e.url, other, f"Remember the word {other_marker}")
        async with http.get(f"{e2e.url}/api/sessions/{sid}/messages") as r:
            history = await r.text()
        disk = (e2e.runner_dir / "sessions" / sid).resolve()
        on_disk = files_holding(disk, secret.encode())  # while the session and its files live

    assert text_of(said) == f"I will remember the word {marker}."
    # The model API received the stored value as the key, for this session only.
    assert keys_seen_for(e2e, marker) == {secret}
    assert keys_seen_for(e2e, other_marker) == {MODEL_KEY}
    # The sandbox saw a placeholder, and the value nowhere: not in env, HOME, workspace, /tmp.
    out = tool_output(looked)
    assert "looked" in out and "ANTHROPIC_API_KEY=ash-placeholder-" in out
    assert secret not in out and secret[-12:] not in out.replace(grep, "")
    assert on_disk == []
    # The API never shows it again; it is not in the history, the logs or the database file.
    assert shown == {"name": name, "kind": "anthropic_api_key", "created_at": shown["created_at"],
                     "updated_at": shown["updated_at"]}
    assert name in [c["name"] for c in listed["credentials"]] and secret not in json.dumps(listed)
    assert secret not in history
    for f in ("coordinator.log", "runner.log", "ash.db", "ash.db-wal"):
        path = e2e.stack.tmp / f
        assert not path.exists() or secret.encode() not in path.read_bytes(), f


async def test_an_agent_names_its_credential_and_a_fork_keeps_it(e2e: E2E, tmp_path: Path) -> None:
    secret = "sk-ant-agent-" + uuid.uuid4().hex
    name = f"agent-key-{uuid.uuid4().hex[:6]}"
    agent = f"keyed-{uuid.uuid4().hex[:6]}"
    first, second, third = (uuid.uuid4().hex[:8] for _ in range(3))
    async with aiohttp.ClientSession() as http:
        await store(http, e2e.url, name, secret)
        await deploy(http, e2e.url, agent, f'[credentials]\nmodel = "{name}"\n', tmp_path)
        sid = await create(http, e2e.url, agent)  # its agent's credential, from ash.toml
        await turn(http, e2e.url, sid, f"Remember the word {first}")
        async with http.post(f"{e2e.url}/api/sessions/{sid}/fork") as r:
            assert r.status == 201, await r.text()
            fork = (await r.json())["id"]
        recalled = await turn(http, e2e.url, fork, f"What was the word? {second}")
        # A warm sandbox (started before any session named the key) takes it when claimed.
        await wait_warm(e2e, agent)
        claimed = await create(http, e2e.url, agent)
        await turn(http, e2e.url, claimed, f"Remember the word {third}")

    assert keys_seen_for(e2e, first) == {secret}
    assert keys_seen_for(e2e, second) == {secret}  # the fork's fresh sandbox uses it too
    assert text_of(recalled) == f"The word was {first}."
    assert sandbox_kind(e2e, claimed) == "warm"
    assert keys_seen_for(e2e, third) == {secret}


async def test_a_session_naming_an_unknown_credential_is_refused_and_leaves_nothing(
    e2e: E2E,
) -> None:
    async with aiohttp.ClientSession() as http:
        await deploy(http, e2e.url, "hello")
        async with http.get(f"{e2e.url}/api/sessions") as r:
            before = len((await r.json())["sessions"])
        async with http.post(f"{e2e.url}/api/sessions",
                             json={"agent": "hello", "credential": "no-such-key"}) as r:
            assert r.status == 404, await r.text()
            assert "no-such-key" in (await r.json())["error"]["message"]
        async with http.get(f"{e2e.url}/api/sessions") as r:
            assert len((await r.json())["sessions"]) == before
        async with http.delete(f"{e2e.url}/api/credentials/no-such-key") as r:
            assert r.status == 404
        # A credential replaced keeps its name; deleted, it is gone from the list.
        await store(http, e2e.url, "short-lived", "sk-ant-one-" + uuid.uuid4().hex)
        async with http.post(f"{e2e.url}/api/credentials", json={
                "name": "short-lived", "kind": "anthropic_api_key", "value": "sk-ant-two-x"}) as r:
            assert r.status == 200
        async with http.delete(f"{e2e.url}/api/credentials/short-lived") as r:
            assert r.status == 204
        async with http.get(f"{e2e.url}/api/credentials") as r:
            assert "short-lived" not in [c["name"] for c in (await r.json())["credentials"]]


def test_the_cli_adds_lists_and_removes_credentials_without_the_value_on_argv(
    e2e: E2E, tmp_path: Path
) -> None:
    secret = "sk-ant-cli-" + uuid.uuid4().hex
    env = clean_env(ASH_URL=e2e.url, ASH_HOME=str(tmp_path), CLI_SECRET=secret)

    def ash(*args: str, stdin: str | None = None) -> str:
        done = subprocess.run([sys.executable, "-m", "ash", *args], input=stdin, env=env,
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "stored from-stdin (anthropic_api_key)" in ash("credentials", "add", "from-stdin",
                                                          stdin=secret + "\n")
    ash("credentials", "add", "from-env", "--kind", "anthropic_auth_token", "--from-env",
        "CLI_SECRET")
    listed = json.loads(ash("credentials", "list", "--json"))
    kinds = {c["name"]: c["kind"] for c in listed}
    assert kinds["from-stdin"] == "anthropic_api_key"
    assert kinds["from-env"] == "anthropic_auth_token"
    assert secret not in json.dumps(listed)
    ash("credentials", "rm", "from-stdin")
    assert "from-stdin" not in ash("credentials", "list")
