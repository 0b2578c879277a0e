"""`/api/keys`: create (the key is shown once), list and revoke API keys.

Admin keys manage their own tenant's keys. Admins of the `default` tenant are the operators
(`ash start` mints one): they also create and revoke keys of any tenant, and list them with
`?tenant=`. A tenant has no row of its own: it exists while it has keys.
"""

from __future__ import annotations

import time

from aiohttp import web

from coordinator import auth
from coordinator.api.common import json_response, read_body, services
from coordinator.errors import ApiError, not_found
from coordinator.store.base import KeyRow
from protocol.api import CreateKeyRequest, KeyCreated, KeyList, KeyView
from protocol.errors import ErrorCode


def key_view(row: KeyRow) -> KeyView:
    return KeyView(id=row.key_id, tenant=row.tenant, name=row.name, scopes=list(row.scopes),
                   created_at=row.created_at, revoked_at=row.revoked_at)


def _tenant(caller: auth.Principal, asked: str | None) -> str:
    """The tenant an admin call acts on: its own, or any for an operator (else 403)."""
    if asked is None or asked == caller.tenant:
        return caller.tenant
    if not auth.is_operator(caller):
        raise ApiError(403, ErrorCode.forbidden,
                       "only admins of the default tenant manage other tenants' keys")
    if not auth.TENANT_RE.match(asked):
        raise ApiError(422, ErrorCode.validation_failed,
                       "a tenant id is 1-32 lower-case letters, digits and '-'")
    return asked


async def create_key(request: web.Request) -> web.Response:
    """Mint a key; its secret is in this answer only."""
    caller = auth.require(request, auth.ADMIN)
    req = await read_body(request, CreateKeyRequest)
    tenant = _tenant(caller, req.tenant)
    new = auth.mint_key()
    row = await services(request).store.create_key(
        new.key_id, tenant, req.name, sorted(set(req.scopes)), new.key_hash, time.time())
    return json_response(KeyCreated(key=new.token, info=key_view(row)), 201)


async def list_keys(request: web.Request) -> web.Response:
    caller = auth.require(request, auth.ADMIN)
    tenant = _tenant(caller, request.query.get("tenant") or None)
    rows = await services(request).store.list_keys(tenant)
    return json_response(KeyList(keys=[key_view(r) for r in rows]))


async def revoke_key(request: web.Request) -> web.Response:
    """Revoke a key: every later request with it is 401. Revoking twice is fine."""
    caller = auth.require(request, auth.ADMIN)
    key_id = request.match_info["id"]
    scope = None if auth.is_operator(caller) else caller.tenant
    row = await services(request).store.revoke_key(key_id, time.time(), tenant=scope)
    if row is None:
        raise not_found("key", key_id)
    if (cache := request.app.get(auth.KEY_CACHE)) is not None:
        cache.forget(key_id)  # at once here; other coordinators within auth.KEY_CACHE_S
    return json_response(key_view(row))
