"""Coordinator errors.

    ApiError                    an HTTP error answered as ErrorBody {code, message, retryable}
      (raised by handlers with the status and code to answer)

Anything else a handler raises becomes a 500 `internal` with a generic message; the details go
to the log, never to the client.
"""

from __future__ import annotations

from protocol.errors import ErrorCode, ErrorInfo


class ApiError(Exception):
    """An error to answer with `status` and the JSON error body."""

    def __init__(
        self, status: int, code: ErrorCode | str, message: str, *, retryable: bool = False
    ) -> None:
        super().__init__(message)
        self.status = status
        self.info = ErrorInfo(code=str(code), message=message, retryable=retryable)
        self.headers: dict[str, str] = {}  # extra response headers (Retry-After on a 429)

    @classmethod
    def from_info(cls, status: int, info: ErrorInfo) -> ApiError:
        return cls(status, info.code, info.message, retryable=info.retryable)


def not_found(what: str, name: str) -> ApiError:
    return ApiError(404, ErrorCode.not_found, f"{what} {name!r} not found")


def reply_status(code: str) -> int:
    """The HTTP status that passes a runner's refusal on to the client."""
    return {
        ErrorCode.conflict: 409,
        ErrorCode.not_found: 409,
        ErrorCode.validation_failed: 422,
        ErrorCode.sandbox_failed: 500,
        ErrorCode.agent_failed: 502,
    }.get(code, 503)
