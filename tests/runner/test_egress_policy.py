"""The egress proxy's destination checks, as pure functions: every row is a decision."""

from __future__ import annotations

import pytest

from runner.egress.grants import Credentials, new_placeholder, sandbox_env
from runner.egress.http1 import Head
from runner.egress.model import ModelUpstream, swap_credentials
from runner.egress.policy import (
    Policy,
    Refused,
    Rule,
    check_host,
    normalise_host,
    pick_address,
    refusal,
)


@pytest.mark.parametrize(
    ("address", "why"),
    [
        # IPv4
        ("169.254.169.254", "the cloud metadata address"),
        ("169.254.170.2", "a link-local address"),  # ECS task metadata
        ("0.0.0.0", "an unspecified address"),
        ("0.1.2.3", "an unspecified address"),
        ("127.0.0.1", "a loopback address"),
        ("127.255.255.254", "a loopback address"),
        ("10.0.0.1", "a private address"),
        ("10.231.0.1", "a private address"),  # a slot gateway: the runner itself
        ("172.16.0.1", "a private address"),
        ("172.31.255.255", "a private address"),
        ("192.168.1.1", "a private address"),
        ("100.64.0.1", "a shared (CGNAT) address"),
        ("100.100.100.200", "a shared (CGNAT) address"),  # Alibaba's metadata address
        ("192.0.0.192", "an IETF protocol address"),  # Oracle's metadata address
        ("192.0.2.1", "a documentation address"),
        ("198.51.100.7", "a documentation address"),
        ("203.0.113.9", "a documentation address"),
        ("198.18.0.1", "a benchmarking address"),
        ("192.88.99.1", "a 6to4 relay address"),
        ("224.0.0.251", "a multicast address"),
        ("239.255.255.250", "a multicast address"),
        ("240.0.0.1", "a reserved address"),
        ("255.255.255.255", "a reserved address"),
        # IPv6
        ("::", "an unspecified address"),
        ("::1", "a loopback address"),
        ("::ffff:127.0.0.1", "an IPv4-mapped address"),
        ("::ffff:8.8.8.8", "an IPv4-mapped address"),  # mapped forms are refused outright
        ("::ffff:169.254.169.254", "an IPv4-mapped address"),
        ("::127.0.0.1", "an IPv4-compatible address"),
        ("64:ff9b::a00:1", "a NAT64 address"),
        ("64:ff9b:1::1", "a NAT64 address"),
        ("2002:a00:1::1", "a 6to4 address"),
        ("2001:0:4136:e378::1", "a Teredo address"),
        ("2001:db8::1", "a documentation address"),
        ("100::1", "a discard address"),
        ("fc00::1", "a unique-local address"),
        ("fd00:ec2::254", "a unique-local address"),  # AWS's IPv6 metadata address
        ("fe80::1", "a link-local address"),
        ("fe80::1%eth0", "a scoped IPv6 address"),
        ("fec0::1", "a site-local address"),
        ("ff02::1", "a multicast address"),
        ("2001:2::1", "not a public address"),  # caught by the catch-all (benchmarking)
        # public
        ("8.8.8.8", None),
        ("1.1.1.1", None),
        ("11.231.0.10", None),
        ("172.32.0.1", None),  # just outside 172.16/12
        ("100.128.0.1", None),  # just outside 100.64/10
        ("2606:4700:4700::1111", None),
    ],
)
def test_address_refusals(address: str, why: str | None) -> None:
    assert refusal(address) == why


ALLOW = Rule.make("allowlist", ["api.anthropic.com", "*.pypi.org", "github.com", "1.1.1.1"])


@pytest.mark.parametrize(
    ("host", "port", "rule", "outcome"),
    [
        ("api.anthropic.com", 443, ALLOW, "api.anthropic.com"),
        ("API.Anthropic.COM.", 443, ALLOW, "api.anthropic.com"),
        ("files.pypi.org", 443, ALLOW, "files.pypi.org"),
        ("a.b.pypi.org", 443, ALLOW, "a.b.pypi.org"),
        ("pypi.org", 443, ALLOW, "pypi.org is not on this sandbox's allowlist"),  # apex
        ("evilpypi.org", 443, ALLOW, "evilpypi.org is not on this sandbox's allowlist"),
        ("github.com.evil.com", 443, ALLOW, "github.com.evil.com is not on this sandbox's allowlist"),
        ("1.1.1.1", 443, ALLOW, "1.1.1.1"),
        ("[::1]", 443, ALLOW, "::1 is not on this sandbox's allowlist"),
        ("example.com", 443, ALLOW, "example.com is not on this sandbox's allowlist"),
        ("example.com", 443, Rule.make("open"), "example.com"),
        ("10.0.0.1", 80, Rule.make("open"), "10.0.0.1"),  # allowed by name; addresses come next
        ("api.anthropic.com", 443, Rule.make("none"), "this sandbox's network policy is 'none'"),
        ("api.anthropic.com", 0, ALLOW, "port 0 is not allowed"),
        ("api.anthropic.com", 70000, ALLOW, "port 70000 is not allowed"),
        ("2130706433", 80, Rule.make("open"), "'2130706433' is not a valid host name"),
        ("0x7f.1", 80, Rule.make("open"), "'0x7f.1' is not a valid host name"),
        ("127.1", 80, Rule.make("open"), "'127.1' is not a valid host name"),
        ("a..b", 80, Rule.make("open"), "'a..b' is not a valid host name"),
        ("-bad.com", 80, Rule.make("open"), "'-bad.com' is not a valid host name"),
        ("bad host", 80, Rule.make("open"), "'bad host' is not a valid host name"),
        ("", 80, Rule.make("open"), "'' is not a valid host name"),
    ],
)
def test_check_host(host: str, port: int, rule: Rule, outcome: str) -> None:
    try:
        assert check_host(host, port, rule) == outcome
    except Refused as e:
        assert e.reason == outcome


@pytest.mark.parametrize(
    ("addresses", "outcome"),
    [
        (["11.231.0.10"], ["11.231.0.10"]),
        (["11.231.0.10", "11.231.0.10", "2606:4700::1"], ["11.231.0.10", "2606:4700::1"]),
        (["11.231.0.10", "127.0.0.1"], "h.test resolves to 127.0.0.1, which is a loopback address"),
        (["169.254.169.254"], "h.test resolves to 169.254.169.254, which is the cloud metadata address"),
        (["::ffff:10.0.0.1"], "h.test resolves to ::ffff:10.0.0.1, which is an IPv4-mapped address"),
        ([], "h.test does not resolve"),
    ],
)  # fmt: skip
def test_every_resolved_address_must_be_public(
    addresses: list[str], outcome: list[str] | str
) -> None:
    try:
        assert pick_address("h.test", addresses) == outcome
    except Refused as e:
        assert e.reason == outcome


def test_an_ip_literal_is_checked_as_an_address() -> None:
    with pytest.raises(Refused, match="^10.0.0.1 is a private address$"):
        pick_address("10.0.0.1", ["10.0.0.1"])


@pytest.mark.parametrize(
    "entry", ["", "*", "*.", "*.1.2.3.4", "a b", "http://x.com", "x.com/path", "2130706433"]
)
def test_bad_allowlist_entries_are_rejected(entry: str) -> None:
    with pytest.raises(ValueError, match="bad allowlist entry"):
        Rule.make("allowlist", [entry])


def test_unknown_policy_is_rejected() -> None:
    with pytest.raises(ValueError):
        Rule.make("everything")
    assert Rule.make("open").policy is Policy.OPEN


def test_normalise_host() -> None:
    assert normalise_host("[2001:DB8::1]") == "2001:db8::1"
    assert normalise_host("Example.COM.") == "example.com"


# ----------------------------------------------------------------------- credentials, model


CREDS = Credentials(placeholder="ash-placeholder-abc", api_key="sk-real-key")


def head(*headers: tuple[str, str]) -> Head:
    return Head(version="HTTP/1.1", headers=list(headers), method="POST", target="/v1/messages")


@pytest.mark.parametrize(
    ("headers", "outcome"),
    [
        ([("x-api-key", "ash-placeholder-abc")], [("x-api-key", "sk-real-key")]),
        ([("Authorization", "Bearer ash-placeholder-abc")], [("x-api-key", "sk-real-key")]),
        ([("X-Api-Key", "ash-placeholder-abc"), ("Authorization", "Bearer ash-placeholder-abc"),
          ("Content-Type", "application/json"), ("Host", "10.231.0.1:3128"),
          ("Proxy-Authorization", "Basic eA=="), ("Connection", "keep-alive, x-drop"),
          ("X-Drop", "1")],
         [("Content-Type", "application/json"), ("x-api-key", "sk-real-key")]),
        ([("x-api-key", "ash-placeholder-abc"), ("Content-Type", "application/json"),
          ("Host", "10.231.0.1:3128"), ("Connection", "keep-alive, x-drop"), ("X-Drop", "1"),
          ("anthropic-version", "2023-06-01")],
         [("Content-Type", "application/json"), ("anthropic-version", "2023-06-01"),
          ("x-api-key", "sk-real-key")]),
        ([], "the model request carries no credential"),
        ([("x-api-key", "sk-real-key")],
         "the model request carries a credential that is not this sandbox's"),
        ([("x-api-key", "ash-placeholder-abc"), ("authorization", "Bearer other")],
         "the model request carries a credential that is not this sandbox's"),
        ([("authorization", "Basic ash-placeholder-abc")],
         "the model request carries a credential that is not this sandbox's"),
    ],
)  # fmt: skip
def test_swap_credentials(headers: list[tuple[str, str]], outcome: object) -> None:
    try:
        assert swap_credentials(head(*headers), CREDS) == outcome
    except Refused as e:
        assert e.reason == outcome


def test_swap_to_a_bearer_token() -> None:
    creds = Credentials(placeholder="ash-placeholder-abc", auth_token="oauth-real")
    assert swap_credentials(head(("x-api-key", "ash-placeholder-abc")), creds) == [
        ("authorization", "Bearer oauth-real")
    ]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"placeholder": "short", "api_key": "k"},
        {"placeholder": "ash-placeholder-x"},
        {"placeholder": "same-as-key", "api_key": "same-as-key"},
        {"placeholder": "ash-placeholder-x", "api_key": "k\r\nx-evil: 1"},
    ],
)
def test_bad_credentials_are_rejected(kwargs: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        Credentials(**kwargs)


def test_credentials_repr_hides_the_real_key() -> None:
    assert "sk-real-key" not in repr(CREDS) and "sk-real-key" not in str(CREDS)


@pytest.mark.parametrize(
    ("url", "authority", "target"),
    [
        ("https://api.anthropic.com", "api.anthropic.com", "/v1/messages"),
        ("http://127.0.0.1:8080", "127.0.0.1:8080", "/v1/messages"),
        ("https://gw.example.com:8443/anthropic/", "gw.example.com:8443", "/anthropic/v1/messages"),
        ("http://[::1]:9000", "[::1]:9000", "/v1/messages"),
    ],
)
def test_model_upstream(url: str, authority: str, target: str) -> None:
    up = ModelUpstream.from_url(url)
    assert (up.authority, up.target("/v1/messages")) == (authority, target)
    assert (up.tls is not None) == url.startswith("https")


@pytest.mark.parametrize("url", ["ftp://x", "http://", "https://u:p@x.com", "http://x.com/?q=1"])
def test_bad_model_urls(url: str) -> None:
    with pytest.raises(ValueError):
        ModelUpstream.from_url(url)


def test_sandbox_env_points_everything_at_the_proxy() -> None:
    placeholder = new_placeholder()
    env = sandbox_env("http://10.231.0.1:3128", placeholder)
    assert env["ANTHROPIC_BASE_URL"] == env["HTTPS_PROXY"] == env["http_proxy"] == (
        "http://10.231.0.1:3128"
    )
    assert env["ANTHROPIC_API_KEY"] == placeholder and placeholder != new_placeholder()
    assert env["NO_PROXY"] == "localhost,127.0.0.1,::1,10.231.0.1" == env["no_proxy"]
