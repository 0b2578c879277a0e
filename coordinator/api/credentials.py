"""`/api/credentials`: store, list and delete the caller's tenant's credentials.

A value goes in once (`POST`) and never comes out: the list shows names, kinds and times. Every
call is scoped by the caller's tenant (another tenant's credential answers 404 like a missing
one) and needs the `admin` scope when keys are on.
"""

from __future__ import annotations

from aiohttp import web

from coordinator import auth
from coordinator.api.common import json_response, read_body, services
from coordinator.credentials import Vault, unavailable
from coordinator.errors import not_found
from protocol.api import CredentialCreate, CredentialList


def _admin(request: web.Request) -> str:
    """The caller's tenant, if its key may manage credentials (`admin`; the route table asks
    for it too)."""
    return auth.require(request, auth.ADMIN).tenant


def _vault(request: web.Request) -> Vault:
    vault = services(request).credentials
    if vault is None:
        raise unavailable()
    return vault


async def put_credential(request: web.Request) -> web.Response:
    """Store a credential (sealed), or replace one of the same name: 201 new, 200 replaced."""
    tenant = _admin(request)
    body = await read_body(request, CredentialCreate)
    view, created = await _vault(request).put(tenant, body.name, body.kind, body.value)
    return json_response(view, 201 if created else 200)


async def list_credentials(request: web.Request) -> web.Response:
    tenant = _admin(request)
    return json_response(CredentialList(credentials=await _vault(request).list(tenant)))


async def delete_credential(request: web.Request) -> web.Response:
    tenant = _admin(request)
    name = request.match_info["name"]
    if not await _vault(request).delete(tenant, name):
        raise not_found("credential", name)
    return web.Response(status=204)
