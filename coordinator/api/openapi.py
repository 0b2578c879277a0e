"""Builds the OpenAPI 3.1 document from the route table and the msgspec types it names."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from protocol.api import ErrorBody
from protocol.events import Event

_PARAM = re.compile(r"{(\w+)}")


def build(routes: tuple[Any, ...], version: str) -> dict[str, Any]:
    types: list[Any] = [ErrorBody, Event]
    for r in routes:
        for t in (r.body, r.response):
            if isinstance(t, type):
                types.append(t)
        if r.events is not None and r.events not in types:
            types.append(r.events)
    schemas, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    refs = dict(zip(types, schemas, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        op: dict[str, Any] = {"summary": r.summary, "operationId": r.handler.__name__}
        params = [
            {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
            for n in _PARAM.findall(r.path)
        ]
        params += [
            {"name": n, "in": "query", "required": req, "schema": {"type": t}}
            for n, t, req in r.query
        ]
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
        ok: dict[str, Any] = {"description": "OK"}
        if isinstance(r.response, type):
            ok["content"] = {"application/json": {"schema": refs[r.response]}}
        elif r.response == "text/event-stream":
            ok["description"] = "A stream of events; `id` is the event's seq, `event` its type"
            ok["content"] = {"text/event-stream": {"schema": refs[r.events or Event]}}
        elif r.response == "application/json":
            ok["content"] = {r.response: {"schema": {"type": "object"}}}
        elif isinstance(r.response, str):
            ok["content"] = {r.response: {"schema": {"type": "string", "format": "binary"}}}
        responses: dict[str, Any] = {str(r.status): ok}
        for status in r.errors:
            responses[str(status)] = {
                "description": "Error",
                "content": {"application/json": {"schema": refs[ErrorBody]}},
            }
        op["responses"] = responses
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "Ash", "version": version},
        "paths": paths,
        "components": {"schemas": components},
    }
