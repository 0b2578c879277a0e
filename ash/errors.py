"""Every failure the `ash` package reports, as one shallow tree.

    AshError                   .status .code .message .retryable; an HTTP error body becomes one
     +-- AshConnectionError    the server could not be reached, or the connection broke mid-way
     |    +-- AshTimeoutError  the server did not answer in time
     +-- BundleError           the agent folder cannot be packed (found locally, before any request)
     +-- StackError            the local stack (`ash start` / `ash stop`) failed

`code` is the server's stable `protocol.errors.ErrorCode` when the server answered, else one of the
client-side codes below; branch on `code`, show `message` to people.
"""

from __future__ import annotations

from protocol.errors import ErrorInfo

# Client-side codes, for failures the server never saw.
CONNECTION_FAILED = "connection_failed"
TIMEOUT = "timeout"
STREAM_CLOSED = "stream_closed"
INVALID_RESPONSE = "invalid_response"
HTTP_ERROR = "http_error"
BAD_BUNDLE = "bad_bundle"
STACK_FAILED = "stack_failed"


class AshError(Exception):
    """A failure with a stable `code`, a readable `message` and whether retrying may help.

    `status` is the HTTP status when the server answered, else None.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str = HTTP_ERROR,
        status: int | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.retryable = retryable

    @classmethod
    def from_info(cls, info: ErrorInfo, status: int | None = None) -> AshError:
        """The error a server's `ErrorBody` describes."""
        return cls(info.message, code=info.code, status=status, retryable=info.retryable)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code!r}, status={self.status!r}, "
            f"message={self.message!r}, retryable={self.retryable!r})"
        )


class AshConnectionError(AshError):
    """The server is not reachable, or the connection to it broke."""

    def __init__(self, message: str, *, code: str = CONNECTION_FAILED) -> None:
        super().__init__(message, code=code, retryable=True)


class AshTimeoutError(AshConnectionError):
    """The server did not answer within the client's timeout."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code=TIMEOUT)


class BundleError(AshError):
    """The agent folder cannot be packed; the message says what to change."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code=BAD_BUNDLE)


class StackError(AshError):
    """The local stack could not be started, stopped or inspected."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code=STACK_FAILED)
