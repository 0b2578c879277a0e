"""The egress proxy: a sandbox's only way out of its network slot.

policy.py    Policy, Rule and the pure address/host checks (table-tested)
http1.py     strict HTTP/1.1 heads and framing-preserving body relays
upstream.py  Resolver and Connector seams, with the system defaults and a static resolver
grants.py    Grant, Credentials, new_placeholder(), sandbox_env(): what a sandbox is given
model.py     ModelUpstream and the placeholder -> real credential swap
proxy.py     EgressProxy: listen, register/unregister, CONNECT, forward, model endpoint
"""

from runner.egress.grants import Credentials, Grant, new_placeholder, sandbox_env
from runner.egress.model import ModelUpstream
from runner.egress.policy import Policy, Refused, Rule, check_host, pick_address, refusal
from runner.egress.proxy import EgressProxy
from runner.egress.upstream import (
    Connector,
    Resolver,
    StaticResolver,
    SystemResolver,
    TcpConnector,
)

__all__ = [
    "Connector",
    "Credentials",
    "EgressProxy",
    "Grant",
    "ModelUpstream",
    "Policy",
    "Refused",
    "Resolver",
    "Rule",
    "StaticResolver",
    "SystemResolver",
    "TcpConnector",
    "check_host",
    "new_placeholder",
    "pick_address",
    "refusal",
    "sandbox_env",
]
