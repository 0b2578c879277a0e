"""Who is calling: API keys, scopes and tenants.

A key is `ash_<key id>_<secret>`: the id (12 hex digits) names the row, the secret (32 random
bytes) is shown once at creation and only its sha256 is stored, compared in constant time. A
request presents it as `Authorization: Bearer <key>` (or `X-Ash-Key: <key>`).

    request --auth_middleware--> public path?  yes -> handler (no principal)
                                      | no
                                      v
                          key present, well-formed, known, not revoked?  no -> 401 unauthorized
                                      | yes
                                      v
                          route's scope in the key's scopes?             no -> 403 forbidden
                                      | yes
                                      v
                          request[PRINCIPAL] = Principal(tenant, key_id, scopes) -> handler

Scopes: `admin` implies every other scope; `deploy` manages agents; `sessions:write` creates,
drives and ends sessions (turns, exec, files, fork, pause, resume); `sessions:read` reads them
(get, list, history, event streams, file reads). Every resource belongs to the caller's tenant;
another tenant's resource answers 404, exactly as a missing one would.

With `ASH_AUTH=off` (development only) every request is the `default` tenant with all scopes.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from coordinator.errors import ApiError
from coordinator.memo import remember
from coordinator.store.base import DEFAULT_TENANT, KeyRow
from protocol.errors import ErrorCode

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]

ADMIN = "admin"
DEPLOY = "deploy"
SESSIONS_READ = "sessions:read"
SESSIONS_WRITE = "sessions:write"
METRICS_READ = "metrics:read"
SCOPES: frozenset[str] = frozenset({ADMIN, DEPLOY, SESSIONS_READ, SESSIONS_WRITE, METRICS_READ})
PUBLIC = ""  # the scope of a route that needs no key

# DEFAULT_TENANT ("default") owns everything made before auth, and `ash start`'s admin key;
# its admins are the operators: they may create keys of any tenant. Tenant ids never hold "_"
# or "/", so `runner_agent_name` cannot be confused with another tenant's agent name.
TENANT_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")

# Paths answered without a key whatever the route table says (routes outside it included).
PUBLIC_PATHS: frozenset[str] = frozenset({"/health", "/ready", "/openapi.json", "/docs"})

_KEY_RE = re.compile(r"^ash_([0-9a-f]{12})_([A-Za-z0-9_-]{20,128})$")


@dataclass(slots=True, frozen=True)
class Principal:
    """The authenticated caller: the tenant it acts in, its key id and its scopes."""

    tenant: str
    key_id: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return scope == PUBLIC or ADMIN in self.scopes or scope in self.scopes


# The caller with auth off: the default tenant, every scope.
ANONYMOUS = Principal(tenant=DEFAULT_TENANT, key_id="", scopes=SCOPES)

PRINCIPAL = "ash.principal"  # request key (aiohttp requests are MutableMappings)


@dataclass(slots=True, frozen=True)
class NewKey:
    """A freshly minted key: the full `token` is shown once; only `key_hash` is stored."""

    key_id: str
    token: str
    key_hash: str


def mint_key() -> NewKey:
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return NewKey(key_id=key_id, token=f"ash_{key_id}_{secret}", key_hash=hash_secret(secret))


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_key(token: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key, else None."""
    m = _KEY_RE.match(token.strip())
    return (m.group(1), m.group(2)) if m else None


def secret_matches(secret: str, key_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), key_hash)


def key_of(request: web.Request) -> str | None:
    """The key a request presents, if any (never logged)."""
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return request.headers.get("X-Ash-Key") or None


def principal(request: web.Request) -> Principal:
    """The authenticated caller (set by `auth_middleware`); 401 if there is none."""
    p = request.get(PRINCIPAL)
    if p is None:
        raise unauthorized("an API key is required")
    return p


def tenant_of(request: web.Request) -> str:
    """The caller's tenant (401 if unauthenticated)."""
    return principal(request).tenant


def require(request: web.Request, scope: str) -> Principal:
    """The caller, if its key has `scope` (or `admin`); 403 otherwise."""
    p = principal(request)
    if not p.allows(scope):
        raise ApiError(403, ErrorCode.forbidden, f"this key lacks the {scope!r} scope")
    return p


def unauthorized(message: str) -> ApiError:
    return ApiError(401, ErrorCode.unauthorized, message)


def is_operator(p: Principal) -> bool:
    """An admin of the default tenant: may manage the keys of every tenant."""
    return p.tenant == DEFAULT_TENANT and ADMIN in p.scopes


def runner_agent_name(tenant: str, name: str) -> str:
    """The agent name runners see (warm pools are per name): tenant-qualified, except for the
    default tenant, whose names stay as they were. Never equal for two (tenant, name)s: agent
    names have no "/"."""
    return name if tenant == DEFAULT_TENANT else f"{tenant}/{name}"


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith("/docs/")


class KeyStore(Protocol):
    """What authentication needs of the store (coordinator/store/base.py `Store`)."""

    async def get_key(self, key_id: str) -> KeyRow | None: ...


KEY_CACHE_S = 2.0  # how long a key's row is used without reading it again


class CachedKeys:
    """The keys a request presents, read from the store at most once per KEY_CACHE_S each.

    Every authenticated request needs its key's row; reading it each time is a store trip on
    the path of every call. A revoke through this coordinator takes effect at once (`forget`);
    through another coordinator, here within KEY_CACHE_S. Unknown keys are not remembered
    (each try reads the store), and at most `max_keys` rows are kept.
    """

    def __init__(self, keys: KeyStore, ttl_s: float = KEY_CACHE_S, *, max_keys: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._keys = keys
        self._ttl_s = ttl_s
        self._max = max_keys
        self._clock = clock
        self._rows: collections.OrderedDict[str, tuple[float, KeyRow]] = collections.OrderedDict()

    async def get_key(self, key_id: str) -> KeyRow | None:
        now = self._clock()
        cached = self._rows.get(key_id)
        if cached is not None and now - cached[0] < self._ttl_s:
            return cached[1]
        row = await self._keys.get_key(key_id)
        if row is None:
            self._rows.pop(key_id, None)
        else:
            remember(self._rows, key_id, (now, row), self._max)
        return row

    def forget(self, key_id: str) -> None:
        """Read the key from the store next time (it was revoked)."""
        self._rows.pop(key_id, None)


# (method, canonical path) -> the scope the route needs (PUBLIC: none); set by add_routes.
ROUTE_SCOPES = web.AppKey("route_scopes", dict)
KEY_CACHE = web.AppKey("key_cache", CachedKeys)


def middleware(keys: KeyStore, required: bool) -> Middleware:
    """Authenticate every request that is not public, then check its route's scope.

    `required=False` (ASH_AUTH=off, development only) makes every caller `ANONYMOUS`. A route
    missing from ROUTE_SCOPES (added outside the route table) only needs a valid key; its
    handler checks its own scope with `require`.
    """

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route
        scope = request.app.get(ROUTE_SCOPES, {}).get(
            (request.method, route.resource.canonical if route.resource else ""))
        if scope == PUBLIC or is_public(request.path):
            return await handler(request)
        if not required:
            request[PRINCIPAL] = ANONYMOUS
            return await handler(request)
        token = key_of(request)
        if not token:
            raise unauthorized("an API key is required: send `Authorization: Bearer <key>`")
        parsed = parse_key(token)
        row = await keys.get_key(parsed[0]) if parsed else None
        if (parsed is None or row is None or row.revoked_at is not None
                or not secret_matches(parsed[1], row.key_hash)):
            raise unauthorized("the API key is not valid (unknown, malformed or revoked)")
        who = Principal(tenant=row.tenant, key_id=row.key_id, scopes=frozenset(row.scopes))
        request[PRINCIPAL] = who
        if scope is not None:
            require(request, scope)
        return await handler(request)

    return authenticate
