"""Builds the OpenAPI 3.1 document from the route table and the msgspec types it names.

Everything in it comes from `coordinator.api.routes.ROUTES` and `protocol`: each route's
summary, its handler's docstring (the description), path and query parameters, the request
and response headers it reads and writes, its body and response types, and its error
statuses, each answered with the one error shape (`ErrorBody`). `/docs` renders this same
document as HTML (`coordinator.api.docs`), and a test fuzzes the live API against it.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import msgspec

from protocol.api import ErrorBody
from protocol.events import Event

_PARAM = re.compile(r"{(\w+)}")

# Paths answered without an API key (the rest need `Authorization: Bearer <key>`).
PUBLIC_PATHS = frozenset({"/health", "/ready", "/openapi.json", "/docs"})

_PATH_PARAMS = {
    "id": "The session's id",
    "name": "The agent's name",
}

_STATUS_TEXT = {
    200: "OK", 201: "Created", 204: "No Content", 400: "Bad request (malformed input)",
    401: "No valid API key", 403: "The API key lacks the scope this needs",
    404: "Not found", 405: "Method not allowed", 409: "Conflict with the session's state",
    410: "Gone: the session has ended", 413: "The body is too large",
    422: "The input does not validate", 429: "Too many requests",
    500: "Internal error", 503: "Unavailable for now (retryable)",
}

_TAGS = (
    ("system", "Liveness, readiness and this document"),
    ("agents", "Deploy, list and delete agent folders"),
    ("sessions", "Sessions and their lifecycle: create, list, end, pause, resume, fork"),
    ("turns", "Messages, streamed events, re-attach, interrupt and history"),
    ("sandbox", "Exec, files and the workspace inside a session's sandbox"),
    ("fleet", "The runners of the fleet"),
)


def _tag(path: str) -> str:
    parts = path.strip("/").split("/")
    if parts[0] != "api" or len(parts) < 2:
        return "system"
    if parts[1] == "sessions" and len(parts) >= 4:
        if parts[3] in ("messages", "events", "interrupt"):
            return "turns"
        if parts[3] in ("exec", "files", "workspace"):
            return "sandbox"
    return {"agents": "agents", "sessions": "sessions", "runners": "fleet"}.get(parts[1], parts[1])


def _is_public(route: Any) -> bool:
    scope = getattr(route, "scope", None)
    if isinstance(scope, str):
        return scope == ""
    return route.path in PUBLIC_PATHS


# What the common query parameters mean, and narrower schemas where the handler checks more.
_QUERY_DOCS: dict[str, tuple[str, dict[str, Any]]] = {
    "after": ("Only items with seq greater than this", {"minimum": 0}),
    "limit": ("At most this many items", {"minimum": 1}),
    "follow": ("`turn` (default): end after the first `done`; `session`: go on across turns",
               {"enum": ["turn", "session"]}),
    "agent": ("Only this agent's", {}),
    "name": ("The agent's name", {"pattern": r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"}),
    "path": ("A path relative to the workspace", {}),
    "recursive": ("Everything below the directory too", {}),
}


def _query(entry: tuple[Any, ...]) -> dict[str, Any]:
    name, type_, required = entry[:3]
    text, extra = _QUERY_DOCS.get(name, ("", {}))
    param: dict[str, Any] = {"name": name, "in": "query", "required": required,
                             "schema": {"type": type_, **extra}}  # fmt: skip
    if len(entry) > 3 and entry[3]:
        text = entry[3]
    if text:
        param["description"] = text
    return param


def _sse_schema(union: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    """One SSE event of a stream of the tagged `union`: `event` is its tag, `id` its seq and
    `data` its JSON (OpenAPI 3.1 reads a text/event-stream schema as one event's)."""
    variants = []
    for ref in union.get("anyOf", [union]):
        name = ref["$ref"].rsplit("/", 1)[-1]
        tag = components[name]["properties"]["type"]["enum"][0]
        variants.append({
            "type": "object",
            "properties": {
                "event": {"const": tag},
                "id": {"type": "string", "pattern": "^[0-9]+$"},
                "data": {"type": "string", "contentMediaType": "application/json",
                         "contentSchema": ref},
            },
            "required": ["event", "id", "data"],
        })  # fmt: skip
    return {"oneOf": variants}


def build(routes: tuple[Any, ...], version: str) -> dict[str, Any]:
    types: list[Any] = [ErrorBody, Event]
    for r in routes:
        for t in (r.body, r.response):
            if isinstance(t, type) and t not in types:
                types.append(t)
        if r.events is not None and r.events not in types:
            types.append(r.events)
    schemas, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    refs = dict(zip(types, schemas, strict=True))
    error = {"application/json": {"schema": refs[ErrorBody]}}
    paths: dict[str, dict[str, Any]] = {}
    used_tags: set[str] = set()
    for r in routes:
        tag = _tag(r.path)
        used_tags.add(tag)
        op: dict[str, Any] = {"tags": [tag], "summary": r.summary,
                              "operationId": r.handler.__name__}  # fmt: skip
        doc = inspect.getdoc(r.handler)
        if doc:
            op["description"] = doc
        params: list[dict[str, Any]] = [
            {"name": n, "in": "path", "required": True, "schema": {"type": "string"},
             "description": _PATH_PARAMS.get(n, n)}
            for n in _PARAM.findall(r.path)
        ]  # fmt: skip
        params += [_query(q) for q in r.query]
        response_headers: dict[str, Any] = {}
        for where, name, text in getattr(r, "headers", ()):
            if where == "request":
                params.append({"name": name, "in": "header", "required": False,
                               "schema": {"type": "string"}, "description": text})  # fmt: skip
            else:
                response_headers[name] = {"description": text, "schema": {"type": "string"}}
        if params:
            op["parameters"] = params
        if isinstance(r.body, type):
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": refs[r.body]}},
            }
        elif isinstance(r.body, str):
            op["requestBody"] = {
                "required": True,
                "content": {r.body: {"schema": {"type": "string", "format": "binary"}}},
            }
        ok: dict[str, Any] = {"description": _STATUS_TEXT.get(r.status, "OK")}
        if isinstance(r.response, type):
            ok["content"] = {"application/json": {"schema": refs[r.response]}}
        elif r.response == "text/event-stream":
            ok["description"] = (
                "A stream of Server-Sent Events: `event` is the type, `id` the seq, `data` "
                "the event as JSON (one of the schema's variants); `:` comments keep it alive"
            )
            union = refs[r.events or Event]
            ok["content"] = {"text/event-stream": {"schema": _sse_schema(union, components)}}
        elif r.response == "application/json":
            ok["content"] = {r.response: {"schema": {"type": "object"}}}
        elif r.response == "text/html":
            ok["content"] = {r.response: {"schema": {"type": "string"}}}
        elif isinstance(r.response, str):
            ok["content"] = {r.response: {"schema": {"type": "string", "format": "binary"}}}
        if response_headers:
            ok["headers"] = response_headers
        responses: dict[str, Any] = {str(r.status): ok}
        for status in getattr(r, "also", ()):
            responses[str(status)] = {**ok, "description": _STATUS_TEXT.get(status, "OK")}
        # Any request may be refused before its handler runs: a wrong key, a body over the
        # server's size limit, a method the path does not take. Any may also fail inside.
        statuses = set(r.errors) | {405, 500}
        if r.body is not None:
            statuses |= {400, 413}
        if isinstance(r.body, type):
            statuses.add(422)
        if not _is_public(r):
            statuses |= {401, 403}
            op["security"] = [{"bearerAuth": []}]
        else:
            op["security"] = []
        for status in sorted(statuses):
            responses[str(status)] = {"description": _STATUS_TEXT.get(status, "Error"),
                                      "content": error}  # fmt: skip
        op["responses"] = responses
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Ash",
            "version": version,
            "description": (
                "Claude agents as HTTP APIs: deploy an agent folder, open sessions, send "
                "messages and stream the turn's typed events (SSE, resumable by "
                "`Last-Event-ID`), and work in each session's sandbox. Every error is "
                '`{"error": {"code", "message", "retryable"}}`.'
            ),
        },
        "tags": [{"name": n, "description": d} for n, d in _TAGS if n in used_tags],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer",
                               "description": "An Ash API key: `Authorization: Bearer ash_...`"},
            },  # fmt: skip
        },
    }
