"""A fake Anthropic Messages API that answers from `brain.decide`, for running the real CLI offline.

Endpoints:

    POST   /v1/messages               the CLI calls `?beta=true` with `"stream": true` (SSE);
                                      non-streaming JSON works too
    POST   /v1/messages/count_tokens  `{"input_tokens": n}`, about 4 characters a token
    HEAD   /api/hello                 200; the CLI's connection warm-up, whose answer it ignores
    GET    /_scripted/requests        every request so far, oldest first (see `RecordedRequest`)
    DELETE /_scripted/requests        forget them
    *      anything else              404 in Anthropic's error shape, logged, recorded as "unknown"

The real CLI offline. Claude Code 2.1.330 (bundled in claude-agent-sdk 0.2.187) runs against this
API with no network when the runner gives it (`cli_env(url)` returns the first five):

    ANTHROPIC_BASE_URL=<this url>         inside a sandbox, the egress proxy's address
    ANTHROPIC_API_KEY=placeholder         any non-empty value; it comes back as `x-api-key`
    DISABLE_TELEMETRY=1
    CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1
    DISABLE_AUTOUPDATER=1
    HOME=<writable, may start empty>      the CLI writes ~/.claude.json and its transcript
                                          ~/.claude/projects/<cwd as a slug>/<session>.jsonl,
                                          which `resume=` reads back

Nothing else: no settings file, no onboarding flags, no login. SDK options are the usual ones:
`cwd` is the workspace, `can_use_tool` approves tools (the CLI asked for `echo hi > out.txt` and
for Write; it ran `ls` without asking), `resume=<session id>` continues a conversation in a new
process with no extra request. The CLI tells the model its working directory as
" - Primary working directory: <cwd>" in a `{"role": "system"}` entry of `messages` (also with
`system_prompt=None`, where the system prompt is only one line); `brain` resolves relative
`write` paths against it.

Side requests, i.e. `/v1/messages` calls that are not the agent's conversation, and our answers:

* with the three switches above: none, in plain, tool, multi-turn, interrupted and resumed turns.
* without them: `HEAD /api/hello` once at start, and a session-title call per user turn (no tools,
  one user message wrapping the prompt in `<session>`, `output_config.format` a JSON schema with
  a `title` string). Purpose "title"; answered `{"title": "<first five words>"}`, which the CLI
  keeps as the session's `aiTitle`.
* read in the CLI binary but not seen here: the quota check (`max_tokens: 1`, "quota", for
  subscription logins) and model validation (`max_tokens: 1`, "Hi"). Purpose "probe"; answered
  "ok". Any other call asking for a JSON schema gets the smallest value that fits the schema.

Every other call is the conversation and gets `brain.decide`. A `sleep:<seconds>` prompt spreads
its reply over that many seconds so a test can interrupt it mid-stream.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import signal
from dataclasses import asdict, dataclass, field
from typing import Any, Self

from aiohttp import web

from runner.scripted import brain, wire

log = logging.getLogger(__name__)

CREDENTIAL_HEADERS = frozenset({"x-api-key", "authorization", "proxy-authorization"})
PLACEHOLDER_KEY = "placeholder"


def cli_env(base_url: str, api_key: str = PLACEHOLDER_KEY) -> dict[str, str]:
    """The environment the real Claude Code CLI needs to talk to this API offline (plus HOME)."""
    return {
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_API_KEY": api_key,
        "DISABLE_TELEMETRY": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
    }


@dataclass(slots=True)
class RecordedRequest:
    """One request as the fake API received it. `headers` never holds a credential; the value of
    `x-api-key` / `authorization` is kept apart in `credential` so tests can check what leaked."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    credential: str | None
    purpose: str  # "conversation"; side requests "title", "probe", "hello", "count_tokens";
    # "invalid" (a /v1/messages body without messages) or "unknown" (any other endpoint)


@dataclass(slots=True)
class _State:
    requests: list[RecordedRequest] = field(default_factory=list)


STATE = web.AppKey("scripted_state", _State)


def make_app() -> web.Application:
    """The fake API as an aiohttp application; its request log lives in `app[STATE]`."""
    app = web.Application(client_max_size=32 * 1024 * 1024)
    app[STATE] = _State()
    app.router.add_post("/v1/messages", _messages)
    app.router.add_post("/v1/messages/count_tokens", _count_tokens)
    app.router.add_get("/api/hello", _hello)
    app.router.add_get("/_scripted/requests", _list_requests)
    app.router.add_delete("/_scripted/requests", _clear_requests)
    app.router.add_route("*", "/{tail:.*}", _unknown)
    return app


class ScriptedModelServer:
    """Runs `make_app()` on a free port in the current event loop.

    `async with ScriptedModelServer() as srv:` then point the CLI at `srv.url` and read
    `srv.requests` (live list, oldest first). `close()` is idempotent.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = make_app()
        self._host, self._port = host, port
        self._runner: web.AppRunner | None = None
        self.url = ""

    @property
    def requests(self) -> list[RecordedRequest]:
        return self.app[STATE].requests

    def conversation(self) -> list[RecordedRequest]:
        """The requests that carried the agent's conversation (side requests left out)."""
        return [r for r in self.requests if r.purpose == "conversation"]

    async def start(self) -> None:
        # A client that hangs up (an interrupted CLI) cancels its handler, so a slow `sleep:` stream
        # never outlives it; the short shutdown timeout bounds close() for any other straggler.
        self._runner = web.AppRunner(
            self.app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# -- handlers ---------------------------------------------------------------------------------


async def _messages(request: web.Request) -> web.StreamResponse:
    body = await _json_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        _record(request, body, "invalid")
        return _error(400, "invalid_request_error", "messages: field required")
    purpose = classify(body)
    _record(request, body, purpose)
    input_tokens = wire.estimate_tokens(body.get("system"), body["messages"], body.get("tools"))
    msg = wire.message(
        answer(body, purpose).block(), str(body.get("model") or "claude"), input_tokens
    )
    if not body.get("stream"):
        return web.json_response(msg, headers=_ids())
    pause = brain.pause(body["messages"]) if purpose == "conversation" else 0.0
    events = list(wire.stream_events(msg))
    deltas = sum(1 for e in events if e["type"] == "content_block_delta")
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **_ids()}
    )
    await resp.prepare(request)
    for event in events:
        await resp.write(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
        if pause and event["type"] == "content_block_delta":
            await asyncio.sleep(pause / deltas)  # `sleep:<s>` prompts stream slowly, to interrupt
    await resp.write_eof()
    return resp


async def _count_tokens(request: web.Request) -> web.Response:
    body = await _json_body(request)
    _record(request, body, "count_tokens")
    if not isinstance(body, dict):
        return _error(400, "invalid_request_error", "body must be a JSON object")
    tokens = wire.estimate_tokens(body.get("system"), body.get("messages"), body.get("tools"))
    return web.json_response({"input_tokens": tokens})


async def _hello(request: web.Request) -> web.Response:
    # The CLI pre-warms its connection with `HEAD <base>/api/hello` and ignores the answer.
    _record(request, None, "hello")
    return web.Response(text="ok")


async def _list_requests(request: web.Request) -> web.Response:
    return web.json_response([asdict(r) for r in request.app[STATE].requests])


async def _clear_requests(request: web.Request) -> web.Response:
    request.app[STATE].requests.clear()
    return web.json_response({"cleared": True})


async def _unknown(request: web.Request) -> web.Response:
    body = await _json_body(request)
    _record(request, body, "unknown")
    log.warning("scripted model API: unknown endpoint %s %s", request.method, request.rel_url)
    return _error(404, "not_found_error", f"{request.method} {request.path} is not served here")


# -- what to say ------------------------------------------------------------------------------


def classify(body: dict[str, Any]) -> str:
    """Name the purpose of a `/v1/messages` call: the agent's conversation or a CLI side request.

    `probe`: `max_tokens: 1` calls (the quota check and model validation). `title`: the session
    title the CLI asks for with a JSON schema `{"title": string}`. Everything else is the
    conversation, including calls that ask for other structured output.
    """
    if body.get("max_tokens") == 1:
        return "probe"
    schema = _output_schema(body)
    if (
        schema is not None
        and "title" in schema.get("properties", {})
        and len(body["messages"]) == 1
    ):
        return "title"
    return "conversation"


def answer(body: dict[str, Any], purpose: str) -> brain.Reply:
    """The reply for one request: the brain for the conversation, fixed answers for side requests."""
    if purpose == "probe":
        return brain.Text("ok")
    schema = _output_schema(body)
    if purpose == "title" or schema is not None:
        hint = _session_words(body["messages"]) if purpose == "title" else "scripted"
        return brain.Text(json.dumps(_instance_of(schema or {}, hint)))
    return brain.decide(body["messages"], body.get("system"))


def _output_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    fmt = (body.get("output_config") or {}).get("format") or {}
    return fmt.get("schema") if fmt.get("type") == "json_schema" else None


def _session_words(messages: list[dict[str, Any]]) -> str:
    """A title for the session: the first words of the text the CLI wrapped in `<session>`."""
    text = brain.user_text(messages[-1].get("content"))
    m = re.search(r"<session>(.*?)</session>", text, re.DOTALL)
    title = " ".join((m.group(1) if m else text).split()[:5])
    return title[:1].upper() + title[1:] if title else "Scripted session"


def _instance_of(schema: dict[str, Any], hint: str) -> Any:
    """The smallest value that satisfies a simple JSON schema; strings are filled with `hint`."""
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        return {
            k: _instance_of(props[k], hint) for k in schema.get("required", props) if k in props
        }
    return {"string": hint, "integer": 0, "number": 0, "boolean": False, "array": []}.get(kind)


# -- plumbing ---------------------------------------------------------------------------------


async def _json_body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


def _record(request: web.Request, body: Any, purpose: str) -> None:
    credential = request.headers.get("x-api-key") or request.headers.get("authorization")
    headers = {k: v for k, v in request.headers.items() if k.lower() not in CREDENTIAL_HEADERS}
    request.app[STATE].requests.append(
        RecordedRequest(request.method, str(request.rel_url), headers, body, credential, purpose)
    )


def _ids() -> dict[str, str]:
    return {"request-id": wire.new_id("req")}


def _error(status: int, kind: str, message: str) -> web.Response:
    """Anthropic's error shape."""
    return web.json_response(
        {"type": "error", "error": {"type": kind, "message": message}},
        status=status,
        headers=_ids(),
    )


async def _serve(host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with ScriptedModelServer(host, port) as srv:
        print(srv.url, flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    """`python -m runner.scripted.model_api --port N`: serve until SIGTERM, print the URL first."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(_serve(args.host, args.port))


if __name__ == "__main__":
    main()
