"""Where a sandbox may go through the egress proxy: pure decisions, table-tested.

A destination is checked twice, around name resolution:

    check_host(host, port, policy, allowlist)   before resolving: is this name (or literal) one
                                                the sandbox may ask for at all? Refusing here
                                                also means an agent cannot leak data through
                                                DNS queries for names it makes up.
    resolve(host) -> addresses                  (the proxy's injectable resolver)
    pick_address(addresses)                     after resolving: every address must be public;
                                                the proxy connects to the one returned, so the
                                                name is never resolved a second time (no DNS
                                                rebinding between check and connect).

Policies (per sandbox; the network slot is the same for all three):

    none        no destination at all (the model endpoint still works: the CLI needs it)
    allowlist   only hosts on the session's allowlist (default: the model API host)
    open        any host whose addresses are public

Whatever the policy, addresses that are not public are refused: loopback, RFC 1918, CGNAT,
link-local (169.254.169.254, the cloud metadata service, among them), multicast, reserved,
documentation and benchmarking ranges, and the IPv6 equivalents, including the forms that embed
an IPv4 address (mapped, compatible, NAT64, 6to4, Teredo), which could otherwise smuggle a
private IPv4 address past a check that only looks at the IPv6 prefix.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

METADATA_V4 = ipaddress.IPv4Address("169.254.169.254")


class Policy(enum.StrEnum):
    """How much of the internet a sandbox may reach (the model endpoint is always reachable)."""

    NONE = "none"
    ALLOWLIST = "allowlist"
    OPEN = "open"


# Checked in order; the first match names the reason. Anything else that `ipaddress` does not
# call global is refused as "not a public address" (the catch-all below the table).
_REFUSED_V4: tuple[tuple[str, str], ...] = (
    ("169.254.169.254/32", "the cloud metadata address"),
    ("0.0.0.0/8", "an unspecified address"),
    ("127.0.0.0/8", "a loopback address"),
    ("10.0.0.0/8", "a private address"),
    ("172.16.0.0/12", "a private address"),
    ("192.168.0.0/16", "a private address"),
    ("100.64.0.0/10", "a shared (CGNAT) address"),
    ("169.254.0.0/16", "a link-local address"),
    ("192.0.0.0/24", "an IETF protocol address"),
    ("192.0.2.0/24", "a documentation address"),
    ("198.51.100.0/24", "a documentation address"),
    ("203.0.113.0/24", "a documentation address"),
    ("198.18.0.0/15", "a benchmarking address"),
    ("192.88.99.0/24", "a 6to4 relay address"),
    ("224.0.0.0/4", "a multicast address"),
    ("240.0.0.0/4", "a reserved address"),  # includes 255.255.255.255
)
_REFUSED_V6: tuple[tuple[str, str], ...] = (
    ("::/128", "an unspecified address"),
    ("::1/128", "a loopback address"),
    ("::ffff:0:0/96", "an IPv4-mapped address"),
    ("::/96", "an IPv4-compatible address"),
    ("64:ff9b::/96", "a NAT64 address"),
    ("64:ff9b:1::/48", "a NAT64 address"),
    ("2002::/16", "a 6to4 address"),
    ("2001::/32", "a Teredo address"),
    ("2001:db8::/32", "a documentation address"),
    ("100::/64", "a discard address"),
    ("fc00::/7", "a unique-local address"),  # includes fd00:ec2::254, the AWS metadata address
    ("fe80::/10", "a link-local address"),
    ("fec0::/10", "a site-local address"),
    ("ff00::/8", "a multicast address"),
)
_V4 = tuple((ipaddress.IPv4Network(n), why) for n, why in _REFUSED_V4)
_V6 = tuple((ipaddress.IPv6Network(n), why) for n, why in _REFUSED_V6)

# A DNS name: labels of letters, digits, '-' and '_' (the last is common in real names).
_LABEL = r"(?!-)[a-z0-9_-]{1,63}(?<!-)"
_NAME_RE = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")


class Refused(Exception):
    """A destination the policy does not allow; `reason` is the line the sandbox gets back."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Rule:
    """What one sandbox may reach: a policy and, for `allowlist`, its host patterns."""

    policy: Policy = Policy.ALLOWLIST
    allowlist: frozenset[str] = frozenset()

    @classmethod
    def make(cls, policy: Policy | str, allowlist: Iterable[str] = ()) -> Rule:
        """A rule with validated, normalised allowlist entries (raises ValueError on a bad one).

        Entries are host names (`api.example.com`), wildcards for subdomains only
        (`*.example.com`), or IP literals.
        """
        return cls(Policy(policy), frozenset(normalise_pattern(p) for p in allowlist))


def normalise_host(host: str) -> str:
    """The canonical form of a requested host: lower case, no trailing dot, IPv6 unbracketed.

    Raises Refused for anything that is neither an IP literal nor a well-formed DNS name; in
    particular odd numeric forms such as `2130706433` or `0x7f.1` are refused here rather than
    handed to a resolver that would read them as 127.0.0.1.
    """
    h = host.strip().lower()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    h = h.removesuffix(".")
    try:
        return str(ipaddress.ip_address(h))
    except ValueError:
        pass
    if len(h) > 253 or not _NAME_RE.match(h) or h.replace(".", "").isdigit():
        raise Refused(f"{host!r} is not a valid host name")
    if re.fullmatch(r"[0-9a-fx.]+", h) and any(c.isdigit() for c in h.split(".")[-1]):
        # All-numeric-ish last label (e.g. 0x7f.0.0.1): a resolver may parse it as an address.
        raise Refused(f"{host!r} is not a valid host name")
    return h


def normalise_pattern(pattern: str) -> str:
    """An allowlist entry in canonical form; raises ValueError if it is not a host or `*.host`."""
    p = pattern.strip().lower()
    wildcard = p.startswith("*.")
    try:
        host = normalise_host(p[2:] if wildcard else p)
    except Refused as e:
        raise ValueError(f"bad allowlist entry {pattern!r}") from e
    if wildcard and _is_ip(host):
        raise ValueError(f"bad allowlist entry {pattern!r}: a wildcard needs a name")
    return f"*.{host}" if wildcard else host


def check_host(host: str, port: int, rule: Rule) -> str:
    """Before resolving: return the normalised host if `rule` lets the sandbox ask for it.

    Raises Refused with the reason otherwise. Addresses are checked separately, after
    resolution (an IP literal is checked there too), so allowlisting cannot open a private one.
    """
    if not 0 < port < 65536:
        raise Refused(f"port {port} is not allowed")
    name = normalise_host(host)
    if rule.policy is Policy.NONE:
        raise Refused("this sandbox's network policy is 'none'")
    if rule.policy is Policy.ALLOWLIST and not matches(name, rule.allowlist):
        raise Refused(f"{name} is not on this sandbox's allowlist")
    return name


def matches(host: str, allowlist: Iterable[str]) -> bool:
    """True if normalised `host` equals an entry or is a subdomain of a `*.` entry."""
    for entry in allowlist:
        if entry.startswith("*."):
            if host.endswith(entry[1:]) and not _is_ip(host):
                return True
        elif host == entry:
            return True
    return False


def refusal(address: str | IPAddress) -> str | None:
    """Why `address` may not be connected to, or None if it is a public unicast address."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        return "a scoped IPv6 address"
    table = _V4 if isinstance(ip, ipaddress.IPv4Address) else _V6
    for net, why in table:
        if ip in net:
            return why
    if not ip.is_global:
        return "not a public address"
    return None


def pick_address(host: str, addresses: Sequence[str]) -> list[str]:
    """After resolving: the addresses to try, in order, if every one of them is public.

    A name that resolves to any non-public address is refused outright rather than filtered:
    such a name is either misconfigured or an attempt to reach inside, and filtering would make
    the outcome depend on which address the resolver happened to list first.
    """
    if not addresses:
        raise Refused(f"{host} does not resolve")
    picked: list[str] = []
    for a in addresses:
        why = refusal(a)
        if why is not None:
            shown = host if host == a else f"{host} resolves to {a}, which"
            raise Refused(f"{shown} is {why}")
        if a not in picked:
            picked.append(a)
    return picked


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
