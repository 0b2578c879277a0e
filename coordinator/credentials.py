"""Stored credentials: secrets sealed at rest, opened only to hand one session its model key.

    POST /api/credentials {name, kind, value} --seal (AES-256-GCM)--> credentials row (tenant, name)
    session create / cold resume / fork      --open--> CreateSession.credential --NATS--> runner
                                                                                  egress proxy

A value is sealed with AES-256-GCM under the coordinator's key (`ASH_CREDENTIALS_KEY`, 32 bytes
base64, or the file `ASH_CREDENTIALS_KEY_FILE` holding it), a fresh 96-bit nonce each time, and
the tenant, name and kind as associated data, so a sealed value copied to another row (another
tenant's, or another kind) does not open. The store only ever holds `v1.<nonce+ciphertext,
base64>`; the key is never stored, logged or shown. Without a key, storing a credential is
refused with a clear error (503 `credentials_unavailable`), and so is a session naming one.

Which credential a session uses: its own `credential` (create option), else its agent's
(`ash.toml` `[credentials] model = "NAME"`), else none (the runner's own key). The name is kept in
the session's options, so a cold resume or a fork opens the same credential again (a credential
replaced meanwhile: the new value; deleted: the resume fails with 404, saying which).

In transit the secret rides inside the `CreateSession` command over NATS: deploy NATS with TLS
(`ASH_NATS_TLS_CA`, `tls://`) and per-runner users (`python -m deploy.nats_auth`), under which
only the chosen runner may read its command subject. On the runner it lives only in the egress
proxy's grant for the session's sandbox; the sandbox holds a random placeholder.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
import secrets
import stat
import time
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from coordinator import bundles
from coordinator.errors import ApiError
from coordinator.memo import Memo
from coordinator.store.base import CredentialRow, Store
from protocol.api import CredentialView
from protocol.commands import ModelCredential
from protocol.errors import ErrorCode

logger = logging.getLogger(__name__)

KEY_BYTES = 32
NONCE_BYTES = 12
VERSION = "v1"
KINDS = ("anthropic_api_key", "anthropic_auth_token")
OPTION = "credential"  # the key of the credential's name in a session's stored options
AGENT_CACHE = 256


class CredentialsError(Exception):
    """The credentials key is missing or malformed, or a sealed value does not open."""


def load_key(key_b64: str = "", key_file: str = "") -> bytes | None:
    """The sealing key from the config (the value wins over the file), or None without one.

    Raises:
        CredentialsError: the value or the file's content is not 32 bytes of base64, or the
            file cannot be read. The message never includes the key.
    """
    where = "ASH_CREDENTIALS_KEY"
    text = key_b64.strip()
    if not text and key_file:
        where = f"ASH_CREDENTIALS_KEY_FILE ({key_file})"
        try:
            with open(key_file, "rb") as f:
                mode = os.fstat(f.fileno()).st_mode
                text = f.read(4096).decode("ascii", "replace").strip()
        except OSError as e:
            raise CredentialsError(f"cannot read {where}: {e.strerror or e}") from e
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            logger.warning("%s is readable by others than its owner; chmod 600 it", where)
    if not text:
        return None
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise CredentialsError(f"{where} is not base64") from None
    if len(key) != KEY_BYTES:
        raise CredentialsError(f"{where} must be {KEY_BYTES} bytes once base64-decoded, "
                               f"not {len(key)}")
    return key


def new_key() -> str:
    """A fresh key, base64 (what `ash start` writes to its key file)."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()


class Sealer:
    """AES-256-GCM over credential values, bound to (tenant, name, kind)."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise CredentialsError(f"the credentials key must be {KEY_BYTES} bytes")
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "Sealer(key=***)"

    @staticmethod
    def _aad(tenant: str, name: str, kind: str) -> bytes:
        return f"ash-credential\0{tenant}\0{name}\0{kind}".encode()

    def seal(self, tenant: str, name: str, kind: str, value: str) -> str:
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, value.encode(), self._aad(tenant, name, kind))
        return f"{VERSION}.{base64.b64encode(nonce + sealed).decode()}"

    def open(self, tenant: str, name: str, kind: str, sealed: str) -> str:
        version, _, body = sealed.partition(".")
        try:
            if version != VERSION:
                raise ValueError(version)
            raw = base64.b64decode(body, validate=True)
            value = self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:],
                                       self._aad(tenant, name, kind))
        except (InvalidTag, ValueError, binascii.Error):
            raise CredentialsError(f"credential {name!r} does not open with this coordinator's "
                                   "key (was ASH_CREDENTIALS_KEY changed?)") from None
        return value.decode()


def view(row: CredentialRow) -> CredentialView:
    return CredentialView(name=row.name, kind=row.kind, created_at=row.created_at,
                          updated_at=row.updated_at)


def unavailable() -> ApiError:
    return ApiError(503, ErrorCode.credentials_unavailable,
                    "credentials are not configured on this coordinator: set ASH_CREDENTIALS_KEY "
                    "(32 bytes, base64) or ASH_CREDENTIALS_KEY_FILE (`ash start` makes one)")


class Vault:
    """The credentials of every tenant: seal on the way in, open for a session. Every call
    names the tenant; nothing crosses tenants. `bundle_store`: the JetStream object store of
    agent bundles, to read an agent's `ash.toml` `[credentials]`."""

    def __init__(self, store: Store, sealer: Sealer | None, bundle_store: Any = None) -> None:
        self.store = store
        self.sealer = sealer
        self.bundle_store = bundle_store
        self._agent_credentials: Memo[str, str | None] = Memo(AGENT_CACHE)

    def _require(self) -> Sealer:
        if self.sealer is None:
            raise unavailable()
        return self.sealer

    async def put(
        self, tenant: str, name: str, kind: str, value: str
    ) -> tuple[CredentialView, bool]:
        sealed = self._require().seal(tenant, name, kind, value)
        row, created = await self.store.put_credential(tenant, name, kind, sealed, time.time())
        logger.info("credential %s of tenant %s %s", name, tenant,
                    "stored" if created else "replaced")
        return view(row), created

    async def list(self, tenant: str) -> list[CredentialView]:
        return [view(r) for r in await self.store.list_credentials(tenant)]

    async def delete(self, tenant: str, name: str) -> bool:
        return await self.store.delete_credential(tenant, name)

    async def model_credential(self, tenant: str, name: str) -> ModelCredential:
        """The opened credential, as the runner's egress proxy needs it.

        Raises ApiError: 404 when the tenant has no such credential, 503 without a key,
        422 for a credential that is not a model key.
        """
        sealer = self._require()
        row = await self.store.get_credential(tenant, name)
        if row is None:
            raise ApiError(404, ErrorCode.not_found, f"credential {name!r} not found")
        try:
            value = sealer.open(row.tenant, row.name, row.kind, row.sealed)
        except CredentialsError as e:
            raise ApiError(503, ErrorCode.credentials_unavailable, str(e)) from None
        if row.kind == "anthropic_api_key":
            return ModelCredential(name=name, api_key=value)
        if row.kind == "anthropic_auth_token":
            return ModelCredential(name=name, auth_token=value)
        raise ApiError(422, ErrorCode.validation_failed,
                       f"credential {name!r} is a {row.kind}, not a model key")

    async def agent_credential(self, digest: str) -> str | None:
        """The credential an agent's `ash.toml` names (`[credentials] model`), cached by digest."""
        async def load() -> tuple[str | None, bool]:
            if self.bundle_store is None:
                return None, True
            try:
                result = await self.bundle_store.get(digest)
                config = await asyncio.to_thread(bundles.agent_config, result.data or b"")
            except Exception as e:  # placement reads it too, and the runner says what is wrong
                logger.warning("agent bundle %s: cannot read its ash.toml (%s)", digest[:12], e)
                return None, False
            return getattr(getattr(config, "credentials", None), "model", None), True

        return await self._agent_credentials.get(digest, load)

    async def for_session(
        self, tenant: str, options: dict[str, Any]
    ) -> ModelCredential | None:
        """The model credential a session's stored options name, opened; None for none."""
        name = options.get(OPTION)
        return None if not name else await self.model_credential(tenant, str(name))


async def resolve_for_create(
    vault: Vault | None, tenant: str, asked: str | None, agent_digest: str
) -> tuple[str | None, ModelCredential | None]:
    """At session create: the credential's name (the session's own, else its agent's) and
    the opened credential, or (None, None). Raises ApiError as `Vault.model_credential`."""
    if vault is None:
        if asked:
            raise unavailable()
        return None, None
    name = asked or await vault.agent_credential(agent_digest)
    if not name:
        return None, None
    return name, await vault.model_credential(tenant, name)


async def for_stored_session(
    vault: Vault | None, store: Store, session_id: str
) -> ModelCredential | None:
    """At cold resume or fork: the credential a session was created with, opened again (its
    current value). None when it names none."""
    options = await store.get_session_options(session_id)
    if not options.get(OPTION):
        return None
    if vault is None:
        raise unavailable()
    tenant = await store.session_tenant(session_id) or "default"
    return await vault.model_credential(tenant, str(options[OPTION]))


def stored_options(options: dict[str, Any], credential: str | None) -> dict[str, Any]:
    """A session's options as stored: the runner's options plus the credential's name."""
    return {**options, OPTION: credential} if credential else options
