"""Rows <-> views, shared by every backend: column lists, row mappers and the JSON columns.

Each backend selects the columns in the order given here, so one mapper turns an sqlite3 row or
an asyncpg Record into the `protocol.api` view. JSON columns are TEXT everywhere, readable from
any SQL shell; their codecs are built once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from coordinator.store.base import KeyRow
from protocol.api import AgentView, MessageView, SessionView
from protocol.events import McpServerState

AGENT_COLUMNS = "name, digest, version, files, size, created_at, updated_at"
SESSION_COLUMNS = (
    "id, agent, agent_digest, status, runner_id, claude_session_id, last_seq, turns, model, "
    "created_at, updated_at, mcp_servers, tenant"
)
MESSAGE_COLUMNS = "seq, turn_id, role, content, created_at"
KEY_COLUMNS = "key_id, tenant, name, scopes, key_hash, created_at, revoked_at"

_json_encoder = msgspec.json.Encoder()
_options_decoder = msgspec.json.Decoder(dict[str, Any])
_content_decoder = msgspec.json.Decoder()
_mcp_decoder = msgspec.json.Decoder(list[McpServerState])


def encode_json(value: Any) -> str:
    """A JSON column's text. Raises TypeError for values JSON cannot hold."""
    return _json_encoder.encode(value).decode("utf-8")


def decode_options(text: str) -> dict[str, Any]:
    return _options_decoder.decode(text)


def key_row(row: Sequence[Any]) -> KeyRow:
    key_id, tenant, name, scopes, key_hash, created_at, revoked_at = row
    return KeyRow(key_id, tenant, name, tuple(scopes.split()), key_hash, created_at, revoked_at)


def agent_view(row: Sequence[Any]) -> AgentView:
    name, digest, version, files, size, created_at, updated_at = row
    return AgentView(
        name=name,
        digest=digest,
        version=version,
        files=files,
        size=size,
        created_at=created_at,
        updated_at=updated_at,
    )


def session_view(row: Sequence[Any]) -> SessionView:
    (id, agent, agent_digest, status, runner_id, claude_session_id, last_seq, turns, model,
     created_at, updated_at, mcp_servers, tenant) = row
    return SessionView(
        tenant=tenant,
        mcp_servers=_mcp_decoder.decode(mcp_servers) if mcp_servers else [],
        id=id,
        agent=agent,
        agent_digest=agent_digest,
        status=status,
        runner_id=runner_id,
        claude_session_id=claude_session_id,
        last_seq=last_seq,
        turns=turns,
        model=model,
        created_at=created_at,
        updated_at=updated_at,
    )


def message_view(row: Sequence[Any]) -> MessageView:
    seq, turn_id, role, content, created_at = row
    return MessageView(
        seq=seq,
        turn_id=turn_id,
        role=role,
        content=_content_decoder.decode(content),
        created_at=created_at,
    )
