"""`/docs`: the OpenAPI document rendered as one self-contained HTML page, on the server.

No script, no CDN, no font or image is fetched: the page is HTML and an inline stylesheet, so
it reads the same on an air-gapped machine. It lists every operation (method, path, summary,
description, parameters, request body, responses with their schemas and headers), then every
schema of `components` with its fields, types, defaults and constraints. Everything comes
from the spec `coordinator.api.openapi.build` returns; nothing here knows about routes.
"""

from __future__ import annotations

import inspect
import json
from html import escape
from typing import Any

_REF = "#/components/schemas/"
_CONSTRAINTS = (
    ("pattern", "pattern"), ("minLength", "min length"), ("maxLength", "max length"),
    ("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<"),
    ("minItems", "min items"), ("maxItems", "max items"), ("format", "format"),
)  # fmt: skip

_STYLE = """
body{font:15px/1.5 system-ui,-apple-system,Segoe UI,sans-serif;margin:0;color:#1d1d1f;background:#fafafa}
main{max-width:1100px;margin:0 auto;padding:24px}
nav{background:#fff;border:1px solid #ddd;border-radius:6px;padding:12px 18px;margin:16px 0}
nav ul{margin:4px 0;padding-left:18px} a{color:#0b5cad;text-decoration:none} a:hover{text-decoration:underline}
section.op{background:#fff;border:1px solid #ddd;border-radius:6px;padding:4px 18px 12px;margin:18px 0}
h2{margin-top:36px;border-bottom:2px solid #ddd} h3{font-family:ui-monospace,Menlo,monospace;font-size:16px}
.m{display:inline-block;min-width:64px;padding:1px 8px;border-radius:4px;color:#fff;font-size:13px;text-align:center}
.GET{background:#2f7d32}.POST{background:#0b5cad}.PUT{background:#a05a00}.DELETE{background:#b3261e}.PATCH{background:#6a3fb5}
table{border-collapse:collapse;width:100%;margin:6px 0 12px;font-size:14px}
th,td{border-bottom:1px solid #eee;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3;font-weight:600} code{font-family:ui-monospace,Menlo,monospace;font-size:13px}
.desc{white-space:pre-wrap} .muted{color:#666} .lock{font-size:12px;color:#a05a00}
"""


def render(spec: dict[str, Any]) -> str:
    """The whole page for `spec`, an OpenAPI 3.1 document as `openapi.build` makes it."""
    info = spec.get("info", {})
    title = f"{info.get('title', 'API')} {info.get('version', '')}".strip()
    paths: dict[str, dict[str, Any]] = spec.get("paths", {})
    schemas: dict[str, Any] = spec.get("components", {}).get("schemas", {})
    ops = [(path, method.upper(), op) for path, item in paths.items() for method, op in item.items()]
    tags = [t["name"] for t in spec.get("tags", [])]
    tags += sorted({t for _, _, op in ops for t in op.get("tags", ["other"])} - set(tags))
    out = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        '<meta name=viewport content="width=device-width,initial-scale=1">',
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body><main>",
        f"<h1>{escape(title)}</h1>",
        f"<p class=desc>{escape(info.get('description', ''))}</p>",
        "<p class=muted>The machine-readable document is <a href=\"/openapi.json\">"
        "/openapi.json</a>. Operations marked 🔒 need <code>Authorization: Bearer "
        "&lt;API key&gt;</code>.</p>",
        "<nav><strong>Operations</strong><ul>",
    ]
    for tag in tags:
        tagged = [o for o in ops if tag in o[2].get("tags", ["other"])]
        if not tagged:
            continue
        out.append(f"<li>{escape(tag)}<ul>")
        for path, method, op in tagged:
            out.append(f'<li><a href="#{_anchor(method, path)}"><code>{method} {escape(path)}'
                       f"</code></a> {escape(op.get('summary', ''))}</li>")  # fmt: skip
        out.append("</ul></li>")
    out.append('<li><a href="#schemas">Schemas</a></li></ul></nav>')
    for tag in tags:
        tagged = [o for o in ops if tag in o[2].get("tags", ["other"])]
        if not tagged:
            continue
        out.append(f"<h2>{escape(tag)}</h2>")
        out.extend(_operation(path, method, op) for path, method, op in tagged)
    out.append('<h2 id="schemas">Schemas</h2>')
    out.extend(_schema_section(name, schema) for name, schema in sorted(schemas.items()))
    out.append("</main></body></html>")
    return "\n".join(out)


def _anchor(method: str, path: str) -> str:
    return "op-" + method.lower() + "".join(c if c.isalnum() else "-" for c in path)


def _operation(path: str, method: str, op: dict[str, Any]) -> str:
    lock = "" if op.get("security") == [] else ' <span class=lock title="needs an API key">🔒</span>'
    out = [
        f'<section class=op id="{_anchor(method, path)}">',
        f"<h3><span class='m {method}'>{method}</span> {escape(path)}{lock}</h3>",
        f"<p><strong>{escape(op.get('summary', ''))}</strong></p>",
    ]
    if op.get("description"):
        out.append(f"<p class=desc>{escape(op['description'])}</p>")
    params = op.get("parameters", [])
    if params:
        out.append("<h4>Parameters</h4><table><tr><th>name</th><th>in</th><th>type</th>"
                   "<th>required</th><th>description</th></tr>")  # fmt: skip
        for p in params:
            out.append(
                f"<tr><td><code>{escape(p['name'])}</code></td><td>{escape(p['in'])}</td>"
                f"<td>{_type(p.get('schema', {}))}</td><td>{'yes' if p.get('required') else 'no'}"
                f"</td><td>{escape(p.get('description', ''))}</td></tr>"
            )
        out.append("</table>")
    body = op.get("requestBody")
    if body:
        out.append("<h4>Request body</h4><table><tr><th>content type</th><th>schema</th></tr>")
        for ctype, media in body.get("content", {}).items():
            out.append(f"<tr><td><code>{escape(ctype)}</code></td>"
                       f"<td>{_type(media.get('schema', {}))}</td></tr>")  # fmt: skip
        out.append("</table>")
    out.append("<h4>Responses</h4><table><tr><th>status</th><th>meaning</th>"
               "<th>content</th><th>headers</th></tr>")  # fmt: skip
    for status, resp in op.get("responses", {}).items():
        content = "<br>".join(
            f"<code>{escape(ctype)}</code>: {_type(media.get('schema', {}))}"
            for ctype, media in resp.get("content", {}).items()
        ) or "<span class=muted>no body</span>"
        headers = "<br>".join(
            f"<code>{escape(name)}</code>: {escape(h.get('description', ''))}"
            for name, h in resp.get("headers", {}).items()
        )
        out.append(f"<tr><td><code>{escape(status)}</code></td>"
                   f"<td>{escape(resp.get('description', ''))}</td><td>{content}</td>"
                   f"<td>{headers}</td></tr>")  # fmt: skip
    out.append("</table></section>")
    return "\n".join(out)


def _schema_section(name: str, schema: dict[str, Any]) -> str:
    out = [f'<section class=op id="schema-{escape(name)}"><h3>{escape(name)}</h3>']
    if schema.get("description"):
        out.append(f"<p class=desc>{escape(inspect.cleandoc(schema['description']))}</p>")
    props: dict[str, Any] = schema.get("properties", {})
    if props:
        required = set(schema.get("required", []))
        out.append("<table><tr><th>field</th><th>type</th><th>required</th><th>default</th>"
                   "<th>constraints</th></tr>")  # fmt: skip
        for field, sub in props.items():
            default = (f"<code>{escape(json.dumps(sub['default']))}</code>"
                       if "default" in sub else "")  # fmt: skip
            out.append(
                f"<tr><td><code>{escape(field)}</code></td><td>{_type(sub)}</td>"
                f"<td>{'yes' if field in required else 'no'}</td><td>{default}</td>"
                f"<td>{_constraints(sub)}</td></tr>"
            )
        out.append("</table>")
        if schema.get("additionalProperties") is False:
            out.append("<p class=muted>Unknown fields are refused (422).</p>")
    elif "properties" not in schema:
        out.append(f"<p>{_type(schema)}</p>")
    out.append("</section>")
    return "\n".join(out)


def _sse(schema: dict[str, Any]) -> str | None:
    """`event: text_delta → TextDelta, ...` for the schema of one SSE event, else None."""
    pairs = []
    for variant in schema.get("oneOf", []):
        props = variant.get("properties", {})
        tag = props.get("event", {}).get("const")
        data = props.get("data", {}).get("contentSchema")
        if tag is None or data is None:
            return None
        pairs.append(f"<code>{escape(tag)}</code>&nbsp;→&nbsp;{_type(data)}")
    return ("events (<code>event</code>: type, <code>id</code>: seq, <code>data</code>: "
            "JSON): " + ", ".join(pairs)) if pairs else None  # fmt: skip


def _type(schema: dict[str, Any]) -> str:
    """A short, linked description of a schema's type, e.g. `list of SessionView`."""
    sse = _sse(schema)
    if sse is not None:
        return sse
    if "$ref" in schema:
        name = schema["$ref"].removeprefix(_REF)
        return f'<a href="#schema-{escape(name)}">{escape(name)}</a>'
    for key in ("anyOf", "oneOf"):
        if key in schema:
            inner = " | ".join(_type(s) for s in schema[key])
            disc = schema.get("discriminator", {}).get("propertyName")
            return inner + (f" <span class=muted>(by <code>{escape(disc)}</code>)</span>"
                            if disc else "")  # fmt: skip
    if "enum" in schema:
        return "one of " + ", ".join(f"<code>{escape(json.dumps(v))}</code>" for v in schema["enum"])
    if "const" in schema:
        return f"<code>{escape(json.dumps(schema['const']))}</code>"
    kind = schema.get("type")
    if kind == "array":
        return "list of " + _type(schema.get("items", {}))
    if kind == "object" and "additionalProperties" in schema and not schema.get("properties"):
        extra = schema["additionalProperties"]
        value = _type(extra) if isinstance(extra, dict) else "any"
        return f"map of string to {value}"
    if kind is None:
        return "any"
    text = escape(kind if isinstance(kind, str) else " | ".join(kind))
    if schema.get("format"):
        text += f" <span class=muted>({escape(schema['format'])})</span>"
    return text


def _constraints(schema: dict[str, Any]) -> str:
    parts = []
    subs = [schema, *schema.get("anyOf", [])]
    for sub in subs:
        for key, label in _CONSTRAINTS:
            if key in sub and key != "format":
                parts.append(f"{label} <code>{escape(str(sub[key]))}</code>")
    return ", ".join(parts)
