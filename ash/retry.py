"""When the client tries a request again, and how long it waits first: pure decisions.

A request fails in one of these ways (`Failure`):

    unsent     the connection was never made (refused, no route, DNS, connect timeout):
               the server never saw the request
    throttled  429: refused before anything was done (the server's rate limit)
    unavailable 503: the server, or the runner behind it, cannot serve it now
    gateway    502 / 504 from a proxy in front of the server: it may or may not have acted
    broken     the connection broke, or went silent past the read timeout, after the request
               was sent: the server may have acted

Whether to try again depends on what a repeat could do twice:

    failure       idempotent (GET, PUT, DELETE)   safe POST   other POST
    unsent        yes                             yes         yes
    throttled     yes                             yes         yes
    unavailable   yes                             yes         no
    gateway       yes                             no          no
    broken        yes                             no          no

A *safe POST* is one whose 503 means it did nothing that a repeat would duplicate: create a
session (a failed placement leaves at most a session in `error`), send a message (the turn
did not start), exec (the command did not run), pause, resume and interrupt (the same state
twice). Deploy, fork and workspace upload are other POSTs.

The wait before try n+1 (n counted from 0) doubles from `base_s` up to `cap_s`, with "equal
jitter" (half fixed, half random) so that clients refused together do not return together; a
`Retry-After` the server sent wins when it is longer, up to `max_retry_after_s`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Failure(enum.Enum):
    unsent = "unsent"
    throttled = "throttled"
    unavailable = "unavailable"
    gateway = "gateway"
    broken = "broken"


_BY_STATUS = {429: Failure.throttled, 503: Failure.unavailable, 502: Failure.gateway,
              504: Failure.gateway}  # fmt: skip


def failure_of_status(status: int) -> Failure | None:
    """The failure an HTTP status is, or None for a status never retried."""
    return _BY_STATUS.get(status)


@dataclass(slots=True, frozen=True)
class RetryPolicy:
    """`attempts`: tries in all, the first included (1 turns retrying off)."""

    attempts: int = 4
    base_s: float = 0.25
    cap_s: float = 4.0
    max_retry_after_s: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")

    def allows(self, failure: Failure, *, idempotent: bool, safe: bool = False) -> bool:
        """Whether a request of this kind may be tried again after `failure`."""
        if failure in (Failure.unsent, Failure.throttled):
            return True
        if failure is Failure.unavailable:
            return idempotent or safe
        return idempotent

    def delay(self, attempt: int, rand: float, retry_after: float | None = None) -> float | None:
        """Seconds to wait after failed try `attempt` (0 for the first), or None when no try
        is left. `rand` is uniform in [0, 1); `retry_after` is the server's hint, if any."""
        if attempt + 1 >= self.attempts:
            return None
        step = min(self.cap_s, self.base_s * 2**attempt)
        wait = step / 2 + rand * step / 2
        if retry_after is not None and retry_after > wait:
            if retry_after > self.max_retry_after_s:
                return None  # longer than a client should sit in a call: let the caller decide
            wait = retry_after
        return wait


def parse_retry_after(value: str | None) -> float | None:
    """A `Retry-After` header in seconds (the HTTP-date form is not used by Ash)."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
