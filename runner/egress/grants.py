"""What the proxy knows about one sandbox, and what the sandbox is told about the proxy.

`Grant` is registered with the proxy under the sandbox's slot address: its network rule and
its model credentials. The sandbox itself only ever holds `Credentials.placeholder`; the proxy
checks that the placeholder came back and swaps in the real key on the way to the model API.

`sandbox_env(proxy_url, placeholder)` is the environment the sandbox needs for all of this.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from runner.egress.policy import Rule

PLACEHOLDER_PREFIX = "ash-placeholder-"
# Hosts clients inside the sandbox reach without the proxy: the sandbox's own loopback.
LOCAL_NO_PROXY = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True, slots=True)
class Credentials:
    """The placeholder a sandbox holds and the real credential the proxy sends instead.

    `api_key` goes upstream as `x-api-key`, `auth_token` as `authorization: Bearer ...`; at
    least one is needed. The sandbox may present the placeholder either way.
    """

    placeholder: str
    api_key: str = ""
    auth_token: str = ""

    def __post_init__(self) -> None:
        if len(self.placeholder) < 8:
            raise ValueError("the placeholder must be at least 8 characters")
        if not (self.api_key or self.auth_token):
            raise ValueError("credentials need an api_key or an auth_token")
        if self.placeholder in (self.api_key, self.auth_token):
            raise ValueError("the placeholder may not be the real credential")
        for value in (self.placeholder, self.api_key, self.auth_token):
            if any(c in value for c in "\r\n\0"):
                raise ValueError("credentials may not contain CR, LF or NUL")

    def __repr__(self) -> str:  # never print the real values
        return f"Credentials(placeholder={self.placeholder!r}, api_key=***, auth_token=***)"

    def upstream_headers(self) -> list[tuple[str, str]]:
        """The real credential headers, to add after the sandbox's ones are removed."""
        out: list[tuple[str, str]] = []
        if self.api_key:
            out.append(("x-api-key", self.api_key))
        if self.auth_token:
            out.append(("authorization", f"Bearer {self.auth_token}"))
        return out


@dataclass(frozen=True, slots=True)
class Grant:
    """One registered sandbox: where it may go, and its model credentials (None: no model)."""

    rule: Rule
    credentials: Credentials | None = None
    label: str = ""  # for logs: the session or sandbox id


def new_placeholder() -> str:
    """A fresh random placeholder; one per sandbox, so one sandbox's is useless in another."""
    return PLACEHOLDER_PREFIX + secrets.token_hex(16)


def sandbox_env(
    proxy_url: str, placeholder: str, *, no_proxy: tuple[str, ...] = ()
) -> Mapping[str, str]:
    """The variables a sandboxed CLI and its tools need to go out through the proxy.

    `ANTHROPIC_BASE_URL` is the proxy itself (the model endpoint), so the CLI sends model
    requests there directly; the proxy's own host is in NO_PROXY for that reason. Other tools
    honour HTTP(S)_PROXY in one case or the other (curl reads only lower-case http_proxy).
    """
    host = proxy_url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
    skip = ",".join(dict.fromkeys((*LOCAL_NO_PROXY, host, *no_proxy)))
    return {
        "ANTHROPIC_BASE_URL": proxy_url,
        "ANTHROPIC_API_KEY": placeholder,
        "HTTPS_PROXY": proxy_url,
        "HTTP_PROXY": proxy_url,
        "https_proxy": proxy_url,
        "http_proxy": proxy_url,
        "NO_PROXY": skip,
        "no_proxy": skip,
    }
