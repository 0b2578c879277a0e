"""Auth, tenants and per-key limits on a real stack (ASH_AUTH=required).

Real nats-server, coordinator and runner processes, real bwrap sandboxes with the stand-in
CLI. The coordinator stores a bootstrap admin key of the default tenant (the operator), which
mints keys of two tenants, `acme` and `globex`. The cross-tenant test walks the whole route
table (`coordinator.api.routes.ROUTES`): every route called with globex's admin key on acme's
resources answers 404 or 403 and never acme's data, so a new route cannot escape it.
"""

from __future__ import annotations

import asyncio
import io
import re
import tarfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from ash.embedded_nats import start_nats
from ash.stack import mint_api_key
from coordinator.api.routes import ROUTES
from protocol import api
from tests.procs import Stack

pytestmark = pytest.mark.e2e

ADMIN_KEY = mint_api_key()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("tenants")
    server = start_nats(tmp / "nats", log_path=tmp / "nats.log")
    stack = Stack(tmp, server.url)
    try:
        stack.start_coordinator(ASH_AUTH="required", ASH_BOOTSTRAP_ADMIN_KEY=ADMIN_KEY,
                                ASH_RATE_SESSION_CREATES_PER_MIN="6",
                                ASH_RATE_SESSION_CREATES_BURST="3",
                                ASH_MAX_CONCURRENT_TURNS_PER_KEY="1")
        stack.start_runner("runner", ASH_CLI="standin", ASH_POOL_GENERIC="0", ASH_TMP_MB="16")
        stack.wait_ready()
        yield stack
    finally:
        stack.stop()
        server.stop()


def bundle(text: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = text.encode()
        info = tarfile.TarInfo("CLAUDE.md")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclass
class Caller:
    url: str
    http: aiohttp.ClientSession
    key: str | None

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        h = dict(extra or {})
        if self.key:
            h["Authorization"] = f"Bearer {self.key}"
        return h

    async def call(self, method: str, path: str, **kw: Any) -> tuple[int, Any, aiohttp.ClientResponse]:
        headers = self.headers(kw.pop("headers", None))
        async with self.http.request(method, self.url + path, headers=headers, **kw) as r:
            raw = await r.read()
            try:
                body: Any = await r.json(content_type=None) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            return r.status, body, r

    async def new_key(self, name: str, scopes: list[str], tenant: str | None = None) -> str:
        status, body, _ = await self.call("POST", "/api/keys", json={
            "name": name, "scopes": scopes, **({"tenant": tenant} if tenant else {})})
        assert status == 201, body
        assert body["key"].startswith(f"ash_{body['info']['id']}_")
        return str(body["key"])

    async def deploy(self, name: str, text: str) -> dict[str, Any]:
        status, body, _ = await self.call("POST", "/api/agents", params={"name": name},
                                          data=bundle(text),
                                          headers={"Content-Type": "application/gzip"})
        assert status == 201, body
        return body  # type: ignore[no-any-return]

    async def session(self, agent: str) -> dict[str, Any]:
        status, body, _ = await self.call("POST", "/api/sessions", json={"agent": agent})
        assert status == 201, body
        return body  # type: ignore[no-any-return]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        yield s


def error_of(body: Any) -> dict[str, Any]:
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "retryable"}, body
    return body["error"]  # type: ignore[no-any-return]


async def test_a_request_without_a_valid_key_is_401_and_health_is_public(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    anon = Caller(stack.url, http, None)
    for path in ("/api/agents", "/api/sessions", "/api/keys"):
        status, body, _ = await anon.call("GET", path)
        assert status == 401 and error_of(body)["code"] == "unauthorized"
    for bad in ("nonsense", ADMIN_KEY[:-1] + ("x" if ADMIN_KEY[-1] != "x" else "y"),
                mint_api_key()):
        status, body, _ = await Caller(stack.url, http, bad).call("GET", "/api/agents")
        assert status == 401 and error_of(body)["code"] == "unauthorized"
    # X-Ash-Key works as well as the bearer header.
    status, _, _ = await anon.call("GET", "/api/agents", headers={"X-Ash-Key": ADMIN_KEY})
    assert status == 200
    for path in ("/health", "/ready", "/openapi.json", "/docs"):  # load balancers, docs
        status, _, _ = await anon.call("GET", path)
        assert status == 200, path
    status, body, _ = await anon.call("GET", "/metrics")  # needs metrics:read
    assert status == 401 and error_of(body)["code"] == "unauthorized"


async def test_keys_are_shown_once_scoped_and_revocable(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    admin = Caller(stack.url, http, ADMIN_KEY)
    reader = Caller(stack.url, http, await admin.new_key("reader", ["sessions:read"], "keys1"))
    status, body, _ = await reader.call("GET", "/api/sessions")
    assert status == 200 and body == {"sessions": []}
    for method, path in (("POST", "/api/agents?name=x"), ("GET", "/api/keys"),
                         ("POST", "/api/sessions")):
        status, body, _ = await reader.call(method, path, json={"agent": "x"})
        assert status == 403 and error_of(body)["code"] == "forbidden", (method, path)

    status, body, _ = await admin.call("GET", "/api/keys", params={"tenant": "keys1"})
    assert status == 200 and [k["name"] for k in body["keys"]] == ["reader"]
    assert reader.key is not None and reader.key not in str(body)  # never the secret
    key_id = body["keys"][0]["id"]

    # A tenant admin manages its own tenant's keys only.
    tadmin = Caller(stack.url, http, await admin.new_key("t-admin", ["admin"], "keys1"))
    status, body, _ = await tadmin.call("POST", "/api/keys", json={
        "name": "x", "scopes": ["admin"], "tenant": "default"})
    assert status == 403 and error_of(body)["code"] == "forbidden"
    status, body, _ = await tadmin.call("GET", "/api/keys")
    assert status == 200 and {k["tenant"] for k in body["keys"]} == {"keys1"}

    status, body, _ = await tadmin.call("DELETE", f"/api/keys/{key_id}")
    assert status == 200 and body["revoked_at"] is not None
    status, body, _ = await reader.call("GET", "/api/sessions")
    assert status == 401 and error_of(body)["code"] == "unauthorized"


async def test_agent_names_are_per_tenant(stack: Stack, http: aiohttp.ClientSession) -> None:
    admin = Caller(stack.url, http, ADMIN_KEY)
    one = Caller(stack.url, http, await admin.new_key("one", ["admin"], "names1"))
    two = Caller(stack.url, http, await admin.new_key("two", ["admin"], "names2"))
    a = await one.deploy("hello", "You are tenant one's agent.\n")
    b = await two.deploy("hello", "You are tenant two's agent.\n")
    assert a["digest"] != b["digest"] and a["version"] == b["version"] == 1
    for caller, view in ((one, a), (two, b)):
        status, body, _ = await caller.call("GET", "/api/agents")
        assert status == 200 and body["agents"] == [view]
    s1, s2 = await one.session("hello"), await two.session("hello")
    assert (s1["agent_digest"], s2["agent_digest"]) == (a["digest"], b["digest"])
    assert (s1["tenant"], s2["tenant"]) == ("names1", "names2")
    status, _, _ = await two.call("DELETE", "/api/agents/hello")
    assert status == 204
    status, body, _ = await one.call("GET", "/api/agents/hello")
    assert status == 200 and body == a
    for caller, s in ((one, s1), (two, s2)):
        await caller.call("DELETE", f"/api/sessions/{s['id']}")


# Sample values for path parameters and bodies: a route whose parameter or body is not known
# here fails the test, so whoever adds it says what "another tenant's" means for it.
SAMPLE_BODIES: dict[Any, Any] = {
    api.CreateSessionRequest: {"agent": "hello"},
    api.SendMessageRequest: {"content": "hi"},
    api.ExecRequest: {"command": ["true"]},
    api.CreateKeyRequest: {"name": "stolen", "scopes": ["admin"], "tenant": "acme"},
    api.CredentialCreate: {"name": "hello", "value": "sk-ant-not-a-real-key"},
}


async def test_no_route_gives_another_tenants_data(stack: Stack, http: aiohttp.ClientSession) -> None:
    admin = Caller(stack.url, http, ADMIN_KEY)
    acme = Caller(stack.url, http, await admin.new_key("acme-admin", ["admin"], "acme"))
    globex = Caller(stack.url, http, await admin.new_key("globex-admin", ["admin"], "globex"))
    agent = await acme.deploy("hello", "You are acme's agent.\n")
    session = await acme.session("hello")
    sid = session["id"]
    status, _, _ = await acme.call("POST", f"/api/sessions/{sid}/messages", json={"content": "hi"})
    assert status == 200
    status, keys, _ = await acme.call("GET", "/api/keys")
    acme_key_id = keys["keys"][0]["id"]
    params = {"id": sid, "name": "hello"}
    secrets = [sid, agent["digest"], acme_key_id]

    for route in ROUTES:
        names = re.findall(r"{(\w+)}", route.path)
        unknown = [n for n in names if n not in params]
        assert not unknown, f"{route.method} {route.path}: add a sample for {unknown}"
        path = route.path
        for n in names:
            value = acme_key_id if (n == "id" and route.path.startswith("/api/keys")) else params[n]
            path = path.replace("{" + n + "}", value)
        kw: dict[str, Any] = {"params": {}}
        for qname, _, _ in route.query:
            kw["params"][qname] = {"tenant": "acme", "agent": "hello", "session": sid,
                                   "path": "CLAUDE.md", "name": "hello"}.get(qname, "")
            if not kw["params"][qname]:
                del kw["params"][qname]
        if isinstance(route.body, type):
            assert route.body in SAMPLE_BODIES, f"{route.method} {route.path}: add a sample body"
            kw["json"] = SAMPLE_BODIES[route.body]
        elif isinstance(route.body, str):
            kw["data"] = b"x"
            kw["headers"] = {"Content-Type": route.body}
        status, body, _ = await globex.call(route.method, path, **kw)
        text = str(body)
        if names:  # acme's resource by name: refused, with only an error (it may echo the id)
            assert status in (403, 404), f"{route.method} {route.path}: {status} {text[:300]}"
            error_of(body)
        else:  # globex's own view: none of acme's things in it
            leaked = [s for s in secrets if s in text]
            assert not leaked, f"{route.method} {route.path} gave acme's {leaked}: {text[:300]}"
    # Nothing globex did touched acme's things.
    status, body, _ = await acme.call("GET", f"/api/sessions/{sid}")
    assert status == 200 and body["status"] == "active"
    status, body, _ = await acme.call("GET", "/api/agents/hello")
    assert status == 200 and body["digest"] == agent["digest"]
    status, body, _ = await acme.call("GET", "/api/keys")
    assert [k["name"] for k in body["keys"]] == ["acme-admin"]
    await acme.call("DELETE", f"/api/sessions/{sid}")


async def test_session_creates_are_rate_limited_per_key(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    admin = Caller(stack.url, http, ADMIN_KEY)
    one = Caller(stack.url, http, await admin.new_key("one", ["sessions:write"], "rate1"))
    other = Caller(stack.url, http, await admin.new_key("other", ["sessions:write"], "rate1"))
    # The limit comes before the agent lookup: a burst of 3, then 429 (6 a minute: 10 s a token).
    for _ in range(3):
        status, body, _ = await one.call("POST", "/api/sessions", json={"agent": "none"})
        assert status == 404, body
    status, body, resp = await one.call("POST", "/api/sessions", json={"agent": "none"})
    err = error_of(body)
    assert status == 429 and err["code"] == "rate_limited" and err["retryable"] is True
    assert 1 <= int(resp.headers["Retry-After"]) <= 10
    status, _, _ = await other.call("POST", "/api/sessions", json={"agent": "none"})
    assert status == 404  # another key has its own bucket


async def test_concurrent_turns_are_capped_per_key_until_done(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    admin = Caller(stack.url, http, ADMIN_KEY)
    dev = Caller(stack.url, http, await admin.new_key("dev", ["deploy", "sessions:write"], "turns1"))
    await dev.deploy("slow", "You are slow.\n")
    s1, s2 = await dev.session("slow"), await dev.session("slow")

    # A long turn whose client leaves at its first event: it still runs, and still counts.
    async with http.post(f"{stack.url}/api/sessions/{s1['id']}/messages",
                         json={"content": "sleep:60 long"}, headers=dev.headers()) as r:
        assert r.status == 200
        await r.content.readline()
    status, body, resp = await dev.call("POST", f"/api/sessions/{s2['id']}/messages",
                                        json={"content": "hi"})
    assert status == 429 and error_of(body)["code"] == "rate_limited", body
    assert int(resp.headers["Retry-After"]) >= 1

    status, _, _ = await dev.call("POST", f"/api/sessions/{s1['id']}/interrupt")
    assert status == 200
    # The slot comes back once the coordinator sees the turn's done in the log.
    async with asyncio.timeout(30):
        while True:
            status, body, _ = await dev.call("POST", f"/api/sessions/{s2['id']}/messages",
                                              json={"content": "hi"})
            if status != 429:
                break
            await asyncio.sleep(0.1)  # poll interval while the watcher sees the done
    assert status == 200
    for s in (s1, s2):
        await dev.call("DELETE", f"/api/sessions/{s['id']}")
