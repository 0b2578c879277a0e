"""deploy/grafana/ash.json plots metrics the processes really export, by their real labels."""

from __future__ import annotations

import json
import re
from pathlib import Path

from coordinator.metrics import CoordinatorMetrics
from runner.metrics import RunnerMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "ash.json"


def exported() -> dict[str, set[str]]:
    """Sample name -> its label names, over both processes' registries."""
    out: dict[str, set[str]] = {}
    coordinator = CoordinatorMetrics()
    coordinator.runner_sessions.labels("r1").set(1)  # per-runner gauges exist once one is seen
    coordinator.runner_capacity.labels("r1").set(8)
    coordinator.http.labels("GET", "/health", "200").observe(0.001)  # and requests, once made
    for registry in (coordinator.registry, RunnerMetrics().registry):
        for family in registry.collect():
            for sample in family.samples:
                out.setdefault(sample.name, set()).update(sample.labels)
            if family.type == "counter":  # collect() names the samples `<name>_total`
                out.setdefault(family.name + "_total", set())
    return out


def test_every_query_names_exported_metrics_and_their_labels() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    names = exported()
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 12
    for expr in exprs:
        for metric in re.findall(r"\bash_[a-z_]+", expr):
            assert metric in names, f"{metric} in {expr!r} is not exported"
        for grouped in re.findall(r"by \(([^)]*)\)", expr):
            labels = {label.strip() for label in grouped.split(",")} - {"le"}
            metric = re.findall(r"\bash_[a-z_]+", expr)[0]
            assert labels <= names[metric], f"{expr!r}: {metric} has labels {names[metric]}"
    plotted = " ".join(exprs)
    for histogram in ("ash_http_request_duration_seconds", "ash_runner_turn_duration_seconds",
                      "ash_runner_turn_first_event_seconds", "ash_placement_duration_seconds",
                      "ash_runner_sandbox_spawn_seconds", "ash_resume_duration_seconds"):
        assert histogram + "_bucket" in plotted
    for gauge in ("ash_sessions", "ash_runners", "ash_fleet_runner_max_sessions",
                  "ash_runner_pool_sandboxes"):
        assert re.search(rf"\b{gauge}\b", plotted)
