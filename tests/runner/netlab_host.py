"""A test host for the network escape suite: HTTP (and HTTPS) inside its own namespace.

    nsenter --net=<its netns> python netlab_host.py NAME LOG PORT [TLS_PORT CERT KEY]

Logs every accepted connection and every request as a JSON line to LOG before answering, so a
test can tell both "the request arrived" and "nothing ever connected". Prints "ready" once it
listens. Standard library only.
"""

from __future__ import annotations

import json
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    name, log_path, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    lock = threading.Lock()
    log = open(log_path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process

    def record(**event: object) -> None:
        with lock:
            log.write(json.dumps(event) + "\n")
            log.flush()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            record(event="connect", peer=self.client_address[0], port=self.server.server_port)

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            record(event="request", method=self.command, path=self.path,
                   headers=dict(self.headers), body=body.decode(errors="replace"),
                   port=self.server.server_port)  # fmt: skip
            data = f"hello from {name} {self.command} {self.path}\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_HEAD = _answer  # noqa: N815

        def log_message(self, *args: object) -> None:
            pass

    servers = [ThreadingHTTPServer(("0.0.0.0", port), Handler)]
    if len(sys.argv) > 4:
        tls = ThreadingHTTPServer(("0.0.0.0", int(sys.argv[4])), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(sys.argv[5], sys.argv[6])
        tls.socket = ctx.wrap_socket(tls.socket, server_side=True)
        servers.append(tls)
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()  # until the test closes our stdin (or kills us)


if __name__ == "__main__":
    main()
