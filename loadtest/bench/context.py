"""What every section of the benchmark works with: the stack, clients, n, floors, the rows."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import nats

from loadtest.bench.probe import Http
from loadtest.bench.report import Row
from loadtest.bench.stack import Stack

_T0 = time.monotonic()


def log(msg: str) -> None:
    """Progress, on stderr (the table goes to stdout)."""
    print(f"[{time.monotonic() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


@dataclass
class Ctx:
    stack: Stack
    http: Http
    nc: nats.NATS
    n: int
    quick: bool
    tmp: Path
    runners: list[str]
    floors: dict[str, float] = field(default_factory=dict)  # name -> p50 ms
    rows: list[Row] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)  # agent -> digest

    def floor(self, *names: str) -> tuple[str, float]:
        """A floor made of named floors added up (NaN when one was not measured)."""
        total = 0.0
        for name in names:
            total += self.floors.get(name, float("nan"))
        return " + ".join(names), total

    def add(self, row: Row, *floor: str) -> Row:
        if floor:
            row.floor_name, row.floor_ms = self.floor(*floor)
        self.rows.append(row)
        return row
