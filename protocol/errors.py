"""Errors as data: the one error shape that travels on NATS, in SSE and in HTTP bodies.

    ErrorInfo(code, message, retryable)

`code` is a stable snake_case string from `ErrorCode`; clients branch on it, people read
`message`; `retryable` says whether the same request may succeed later unchanged.
"""

from __future__ import annotations

import enum

import msgspec


class ErrorCode(enum.StrEnum):
    """Stable error codes. Add new ones at the end; never rename."""

    bad_request = "bad_request"
    invalid_json = "invalid_json"
    validation_failed = "validation_failed"
    not_found = "not_found"
    conflict = "conflict"
    gone = "gone"
    payload_too_large = "payload_too_large"
    unprocessable = "unprocessable"
    no_runner = "no_runner"
    runner_busy = "runner_busy"
    runner_unreachable = "runner_unreachable"
    sandbox_failed = "sandbox_failed"
    agent_failed = "agent_failed"
    turn_timeout = "turn_timeout"
    interrupted = "interrupted"
    internal = "internal"
    unauthorized = "unauthorized"
    forbidden = "forbidden"
    method_not_allowed = "method_not_allowed"
    out_of_memory = "out_of_memory"
    conversation_not_restored = "conversation_not_restored"
    runner_lost = "runner_lost"
    rate_limited = "rate_limited"
    not_ready = "not_ready"
    credentials_unavailable = "credentials_unavailable"


class ErrorInfo(msgspec.Struct, kw_only=True, frozen=True):
    """An error as data: a code to branch on, a message to read, and whether to retry."""

    code: str
    message: str
    retryable: bool = False
