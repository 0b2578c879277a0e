"""A tiny MCP server over stdio (JSON-RPC 2.0, one message a line), standard library only.

It answers `initialize`, `tools/list` and `tools/call` for two tools, `echo` and `add`, and
ignores notifications. Ash runs it inside the session's sandbox (`.mcp.json` next to it).
"""

import json
import sys

TOOLS = [
    {
        "name": "echo",
        "description": "Say the given text back.",
        "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}},
                        "required": ["text"]},
    },
    {
        "name": "add",
        "description": "Add two numbers.",
        "inputSchema": {"type": "object", "properties": {"a": {"type": "number"},
                                                          "b": {"type": "number"}},
                        "required": ["a", "b"]},
    },
]


def call(name, args):
    if name == "echo":
        return str(args.get("text", ""))
    if name == "add":
        return str(args.get("a", 0) + args.get("b", 0))
    raise KeyError(name)


def handle(msg):
    method, params = msg.get("method"), msg.get("params") or {}
    if method == "initialize":
        return {
            "protocolVersion": params.get("protocolVersion", "2024-11-05"),
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "notes", "version": "1.0.0"},
        }
    if method == "tools/list":
        return {"tools": TOOLS}
    if method == "tools/call":
        try:
            text = call(params.get("name"), params.get("arguments") or {})
        except KeyError:
            return {"content": [{"type": "text", "text": "no such tool"}], "isError": True}
        return {"content": [{"type": "text", "text": text}]}
    if method == "ping":
        return {}
    raise LookupError(method)


def main():
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        msg = json.loads(line)
        if "id" not in msg:
            continue  # a notification (notifications/initialized, cancelled, ...)
        try:
            reply = {"jsonrpc": "2.0", "id": msg["id"], "result": handle(msg)}
        except LookupError as e:
            reply = {"jsonrpc": "2.0", "id": msg["id"],
                     "error": {"code": -32601, "message": f"method not found: {e}"}}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
