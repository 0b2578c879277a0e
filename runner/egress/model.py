"""The model endpoint: where model requests go upstream, and the credential swap on the way.

A sandbox's `ANTHROPIC_BASE_URL` is the proxy itself. Requests in origin form (`POST
/v1/messages`), or in absolute form addressed to the proxy's own address, are model requests:
the proxy checks that they carry the sandbox's placeholder (as `x-api-key` or as a bearer
token), removes every credential header, adds the real one, and relays the request to the
configured upstream (the real API, or the offline scripted model on loopback). The upstream is
the runner's own configuration, so the address policy does not apply to it.
"""

from __future__ import annotations

import hmac
import ssl
import urllib.parse
from dataclasses import dataclass

from runner.egress.grants import Credentials
from runner.egress.http1 import Head
from runner.egress.policy import Refused

# Headers that carry a credential; none of the sandbox's own values is ever forwarded.
CREDENTIAL_HEADERS = frozenset({"x-api-key", "authorization", "proxy-authorization"})


@dataclass(frozen=True, slots=True)
class ModelUpstream:
    """The model API the proxy forwards to, from a base URL such as https://api.anthropic.com."""

    scheme: str
    host: str
    port: int
    base_path: str = ""
    tls: ssl.SSLContext | None = None

    @classmethod
    def from_url(cls, url: str, tls: ssl.SSLContext | None = None) -> ModelUpstream:
        """Parse `url`; https gets `tls` or the system's default verifying context."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"model URL must be http(s)://host[:port][/path], got {url!r}")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError(f"model URL may not have a query, fragment or user info: {url!r}")
        https = parts.scheme == "https"
        return cls(
            scheme=parts.scheme,
            host=parts.hostname,
            port=parts.port or (443 if https else 80),
            base_path=parts.path.rstrip("/"),
            tls=(tls or ssl.create_default_context()) if https else None,
        )

    @property
    def authority(self) -> str:
        """The Host header value."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    def target(self, path: str) -> str:
        """The upstream request target for a sandbox's origin-form `path` (query included)."""
        return self.base_path + path


def swap_credentials(head: Head, credentials: Credentials) -> list[tuple[str, str]]:
    """The request's end-to-end headers with the placeholder replaced by the real credential.

    Raises Refused if the request carries no credential, or any credential header whose value
    is not this sandbox's placeholder. The Host header is dropped too (the caller sets it).
    """
    presented: list[str] = []
    for name, value in head.headers:
        lname = name.lower()
        if lname == "x-api-key":
            presented.append(value)
        elif lname == "authorization":
            scheme, _, token = value.partition(" ")
            presented.append(token.strip() if scheme.lower() == "bearer" else value)
    if not presented:
        raise Refused("the model request carries no credential")
    want = credentials.placeholder.encode()
    if not all(hmac.compare_digest(p.encode(), want) for p in presented):
        raise Refused("the model request carries a credential that is not this sandbox's")
    kept = head.end_to_end(drop=CREDENTIAL_HEADERS | {"host", "expect"})
    return [*kept, *credentials.upstream_headers()]
