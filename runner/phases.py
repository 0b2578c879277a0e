"""How long each phase of starting a session's sandbox took, for `Accepted.phases`.

A `Phases` goes along with one `CreateSession`: `Runner.claim` makes it and passes it to the
warm pool in its `Request` (`WarmPool.acquire`, `Runner.start` time their parts), returns it in
the `Claim`, and `SessionManager.create` adds the publisher and the total; each step times its
own work with `span`. What it records (ms, `perf_counter`):

    bundle           the agent's bundle and ash.toml (fetched once per digest, then cached)
    snapshot_fetch   a restore: the snapshot's manifest and tar.gz from the object store
    claim            a warm-pool hit: taking the pre-started sandbox (in memory)
    slot             not a hit: a slot (quota disk) from the pool's queues, or a new one made
    workspace_copy   a fresh start (or a restore with no snapshot): the agent folder copied
    untar            a restore: the snapshot extracted into the slot's disk, transcript checked
    network          slots mode: a network namespace taken and registered with the proxy
    sandbox_prepare  state dir, /etc files, bwrap args file, cgroup
    cli_spawn        bwrap + the CLI's start + the SDK's initialize (with --resume on a
                     restore; a CLI that refused the resume and was started again counts twice)
    snapshot_claim   a restore: the snapshot marked as this sandbox's (object store meta)
    publisher        the session's event publisher (a restore looks up its last seq)
    total            from the command reaching the session manager to the session registered

A phase that did not happen is absent; the gaps between phases (small bookkeeping) are in
`total` only. Warm-ups record into a recorder nobody reads.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator


class Phases:
    """Milliseconds by phase name for one piece of work; a name timed twice adds up."""

    __slots__ = ("started", "_ms")

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self._ms: dict[str, float] = {}

    @contextlib.contextmanager
    def span(self, name: str) -> Iterator[None]:
        """Time the block as phase `name`."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, (time.perf_counter() - t0) * 1000)

    def add(self, name: str, ms: float) -> None:
        self._ms[name] = self._ms.get(name, 0.0) + ms

    def done(self, started: float | None = None) -> dict[str, float]:
        """The phases and their `total`: from `started` (a `perf_counter()`; default: when
        this recorder was made) to now. Rounded to the microsecond."""
        total = (time.perf_counter() - (self.started if started is None else started)) * 1000
        return {**{k: round(v, 3) for k, v in self._ms.items()}, "total": round(total, 3)}
