"""Stored credentials: sealing (AES-256-GCM bound to tenant, name and kind), the key from the
config, the store's tenant-scoped rows on SQLite and Postgres, and the vault that opens one for
a session. The database only ever holds ciphertext."""

from __future__ import annotations

import base64
import os
import secrets
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from coordinator.config import from_env
from coordinator.credentials import (
    CredentialsError,
    Sealer,
    Vault,
    for_stored_session,
    load_key,
    new_key,
    resolve_for_create,
    stored_options,
)
from coordinator.errors import ApiError
from coordinator.store import open_store
from coordinator.store.base import Store
from protocol.commands import ModelCredential
from protocol.config import describe

KEY = secrets.token_bytes(32)
SECRET = "sk-ant-unit-" + secrets.token_hex(16)


def test_a_sealed_value_opens_only_with_its_key_tenant_name_and_kind() -> None:
    sealer = Sealer(KEY)
    sealed = sealer.seal("acme", "team", "anthropic_api_key", SECRET)
    assert SECRET not in sealed and sealed.startswith("v1.")
    assert sealer.open("acme", "team", "anthropic_api_key", sealed) == SECRET
    assert sealed != sealer.seal("acme", "team", "anthropic_api_key", SECRET)  # fresh nonce
    for tenant, name, kind in (("other", "team", "anthropic_api_key"),
                               ("acme", "copied", "anthropic_api_key"),
                               ("acme", "team", "anthropic_auth_token")):
        with pytest.raises(CredentialsError, match="does not open"):
            sealer.open(tenant, name, kind, sealed)
    with pytest.raises(CredentialsError, match="does not open"):
        Sealer(secrets.token_bytes(32)).open("acme", "team", "anthropic_api_key", sealed)
    tampered = sealed[:-4] + ("AAAA" if not sealed.endswith("AAAA") else "BBBB")
    with pytest.raises(CredentialsError):
        sealer.open("acme", "team", "anthropic_api_key", tampered)
    assert "Sealer(key=***)" == repr(sealer)


def test_the_key_comes_from_the_value_or_a_file_and_a_bad_one_is_refused(tmp_path: Path) -> None:
    b64 = base64.b64encode(KEY).decode()
    assert load_key() is None
    assert load_key(b64) == KEY
    path = tmp_path / "credentials.key"
    path.write_text(new_key() + "\n")
    os.chmod(path, 0o600)
    assert len(load_key(key_file=str(path)) or b"") == 32
    assert load_key(b64, str(path)) == KEY  # the value wins
    with pytest.raises(CredentialsError, match="must be 32 bytes") as short:
        load_key(base64.b64encode(b"x" * 16).decode())
    with pytest.raises(CredentialsError, match="not base64"):
        load_key("not base64 at all!")
    with pytest.raises(CredentialsError, match="cannot read"):
        load_key(key_file=str(tmp_path / "missing"))
    assert b64 not in str(short.value)
    # The config knows both settings and never prints the key.
    config = from_env({"ASH_CREDENTIALS_KEY": b64, "ASH_CREDENTIALS_KEY_FILE": str(path)})
    assert config.credentials_key == b64 and b64 not in describe(config)


def test_a_credential_on_a_command_never_shows_in_its_repr() -> None:
    cred = ModelCredential(name="team", api_key=SECRET)
    assert SECRET not in repr(cred) and "team" in repr(cred)
    from protocol.api import CredentialCreate

    assert SECRET not in repr(CredentialCreate(name="team", value=SECRET))


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ash.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    async with open_store(store_url) as s:
        yield s


async def test_credentials_are_scoped_by_tenant_and_stored_sealed(store: Store) -> None:
    vault = Vault(store, Sealer(KEY))
    view, created = await vault.put("acme", "team", "anthropic_api_key", SECRET)
    assert created and view.name == "team" and view.kind == "anthropic_api_key"
    again, created = await vault.put("acme", "team", "anthropic_api_key", SECRET + "2")
    assert not created and again.created_at == view.created_at
    await vault.put("globex", "team", "anthropic_auth_token", "globex-token-" + SECRET)

    assert [c.name for c in await vault.list("acme")] == ["team"]
    assert (await vault.model_credential("acme", "team")).api_key == SECRET + "2"
    assert (await vault.model_credential("globex", "team")).auth_token == "globex-token-" + SECRET
    with pytest.raises(ApiError) as missing:
        await vault.model_credential("initech", "team")  # another tenant's is not found
    assert missing.value.status == 404
    assert await vault.list("initech") == []
    assert not await vault.delete("initech", "team")
    assert await vault.delete("acme", "team")
    assert [c.name for c in await vault.list("globex")] == ["team"]

    row = await store.get_credential("globex", "team")
    assert row is not None and SECRET not in row.sealed and SECRET not in repr(row)


async def test_the_sqlite_file_never_holds_the_value(tmp_path: Path) -> None:
    path = tmp_path / "ash.db"
    async with open_store(f"sqlite:///{path}") as s:
        await Vault(s, Sealer(KEY)).put("default", "team", "anthropic_api_key", SECRET)
        db = sqlite3.connect(path)
        rows = db.execute("SELECT tenant, name, sealed FROM credentials").fetchall()
        db.close()
    assert rows and rows[0][:2] == ("default", "team") and SECRET not in rows[0][2]
    for f in tmp_path.iterdir():
        assert SECRET.encode() not in f.read_bytes()


async def test_without_a_key_nothing_is_stored_and_sessions_naming_one_are_refused(
    tmp_path: Path,
) -> None:
    async with open_store(f"sqlite:///{tmp_path / 'ash.db'}") as s:
        vault = Vault(s, None)
        with pytest.raises(ApiError) as refused:
            await vault.put("default", "team", "anthropic_api_key", SECRET)
        assert refused.value.status == 503 and "ASH_CREDENTIALS_KEY" in refused.value.info.message
        assert await s.list_credentials("default") == []
        with pytest.raises(ApiError) as asked:
            await resolve_for_create(vault, "default", "team", "digest")
        assert asked.value.status == 503
        assert await resolve_for_create(vault, "default", None, "digest") == (None, None)


async def test_a_session_keeps_the_name_and_reopens_the_current_value(tmp_path: Path) -> None:
    async with open_store(f"sqlite:///{tmp_path / 'ash.db'}") as s:
        vault = Vault(s, Sealer(KEY))
        await vault.put("default", "team", "anthropic_api_key", SECRET)
        name, cred = await resolve_for_create(vault, "default", "team", "digest")
        assert name == "team" and cred == ModelCredential(name="team", api_key=SECRET)
        options = stored_options({"model": None, "env": {}}, name)
        await s.create_session("s1", "hello", "digest", None, options, 1.0)
        await vault.put("default", "team", "anthropic_api_key", SECRET + "-rotated")
        again = await for_stored_session(vault, s, "s1")
        assert again is not None and again.api_key == SECRET + "-rotated"
        await s.create_session("s2", "hello", "digest", None, stored_options({}, None), 1.0)
        assert await for_stored_session(vault, s, "s2") is None
        await vault.delete("default", "team")
        with pytest.raises(ApiError) as gone:
            await for_stored_session(vault, s, "s1")
        assert gone.value.status == 404


async def test_the_store_keeps_each_sessions_latest_mcp_statuses(store: Store) -> None:
    # Not a credential, but the same migration (3): the session view's `mcp_servers` column.
    from protocol.events import McpServerState

    await store.create_session("s1", "hello", "digest", None, {}, 1.0)
    assert (await store.get_session("s1")).mcp_servers == []  # type: ignore[union-attr]
    first = [{"name": "notes", "status": "pending"}]
    latest = [{"name": "notes", "status": "connected", "transport": "stdio"},
              {"name": "broken", "status": "failed", "error": "Connection closed"}]
    assert await store.set_mcp_servers("s1", first, 2.0)
    assert await store.set_mcp_servers("s1", latest, 3.0)
    assert not await store.set_mcp_servers("nope", latest, 3.0)
    view = await store.get_session("s1")
    assert view is not None and view.updated_at == 3.0
    assert view.mcp_servers == [
        McpServerState(name="notes", status="connected", transport="stdio"),
        McpServerState(name="broken", status="failed", error="Connection closed")]
    assert [v.mcp_servers for v in await store.list_sessions()] == [view.mcp_servers]
