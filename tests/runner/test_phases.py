"""The phase recorder behind `Accepted.phases`."""

from __future__ import annotations

import pytest

from runner.phases import Phases


def test_a_phase_timed_twice_adds_up_and_the_total_covers_every_phase() -> None:
    phases = Phases()
    phases.add("cli_spawn", 1.5)
    with phases.span("untar"):
        pass
    phases.add("cli_spawn", 2.0)  # a CLI that refused the resume, then a new one
    report = phases.done()
    assert set(report) == {"cli_spawn", "untar", "total"}
    assert report["cli_spawn"] == 3.5
    assert report["untar"] >= 0


def test_a_span_counts_even_when_its_block_fails() -> None:
    phases = Phases()
    with pytest.raises(RuntimeError), phases.span("snapshot_fetch"):
        raise RuntimeError("the object store is gone")
    assert "snapshot_fetch" in phases.done()


def test_the_total_runs_from_the_start_given() -> None:
    phases = Phases()
    earlier = phases.started - 5.0  # a caller that started 5 s before the recorder was made
    assert phases.done(earlier)["total"] >= 5000
    assert phases.done()["total"] < phases.done(earlier)["total"]
