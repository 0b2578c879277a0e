"""The runner's Prometheus metrics, one `RunnerMetrics` per runner process.

Each instance registers on its own `CollectorRegistry` (the composition root makes one), so
tests can build many pools in one process without colliding on the global default registry.

    ash_runner_pool_sandboxes{state}          warming | warm | claimed   (gauge)
    ash_runner_pool_slots{queue}              fresh | recycled           (gauge: ready generic disks)
    ash_runner_pool_hits_total                sessions that claimed a warm sandbox
    ash_runner_pool_misses_total{reason}      options | empty | disabled
    ash_runner_pool_evictions_total{reason}   lru | idle | redeploy | capacity | dead | closing
    ash_runner_pool_warm_failures_total       warm-ups that failed (CLI did not start, ...)
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

SANDBOX_STATES = ("warming", "warm", "claimed")
SLOT_QUEUES = ("fresh", "recycled")
MISS_REASONS = ("options", "empty", "disabled")
EVICTION_REASONS = ("lru", "idle", "redeploy", "capacity", "dead", "closing")


class RunnerMetrics:
    """The metric objects of one runner; `registry` is what an exporter would serve."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.pool_sandboxes = Gauge(
            "ash_runner_pool_sandboxes", "Sandboxes of the warm pools by state", ["state"], registry=r)
        self.pool_slots = Gauge(
            "ash_runner_pool_slots", "Ready generic sandbox disks by queue", ["queue"], registry=r)
        self.pool_hits = Counter(
            "ash_runner_pool_hits", "Sessions that claimed a warm sandbox", registry=r)
        self.pool_misses = Counter(
            "ash_runner_pool_misses", "Sessions that got a freshly started sandbox", ["reason"],
            registry=r)
        self.pool_evictions = Counter(
            "ash_runner_pool_evictions", "Warm sandboxes stopped unclaimed", ["reason"], registry=r)
        self.pool_warm_failures = Counter(
            "ash_runner_pool_warm_failures", "Warm-ups that failed", registry=r)
        # Label sets exist from the start, so a scrape shows zeros rather than nothing.
        for state in SANDBOX_STATES:
            self.pool_sandboxes.labels(state)
        for queue in SLOT_QUEUES:
            self.pool_slots.labels(queue)
        for reason in MISS_REASONS:
            self.pool_misses.labels(reason)
        for reason in EVICTION_REASONS:
            self.pool_evictions.labels(reason)

    def value(self, name: str, **labels: str) -> float:
        """The current value of one sample (tests, logs), 0.0 if absent."""
        got = self.registry.get_sample_value(name, labels)
        return 0.0 if got is None else got
