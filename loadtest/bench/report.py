"""Rows of the benchmark table: percentiles, floors, the original Ash's figures, rendering.

A `Row` is one line of the table. Latency rows carry samples in ms and are summarised as
n / p50 / p99 (nearest rank, as the original Ash's benchmarks and `ash-measured.md` did);
other rows (a success rate, events per second, MB per sandbox) carry a `value` text. Every
row has a note saying what it times, from where to where; the notes print under the table.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

# The original Ash's published p50s (ash-reference.md §6) and peers' published figures.
ASH_CREATE = "44 (create)"
ASH_WARM = "1.7 (warm resume)"
ASH_COLD = "32 (cold resume)"
ASH_MESSAGE = "0.41 (per message)"
ASH_POOL = "0.03 (pool ops)"
BLAXEL_RESUME = "Blaxel 25 (resume)"
TTI_PEERS = "Daytona 186, E2B 491 (TTI)"


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


@dataclass(slots=True)
class Row:
    """One line of the table."""

    section: str
    name: str
    note: str  # what it times: start and stop points
    samples: list[float] = field(default_factory=list)  # ms
    value: str = ""  # for rows that are not latencies, or why a row has no figure
    floor_name: str = ""
    floor_ms: float = math.nan
    ash: str = ""  # the original Ash's published figure for the same thing
    peers: str = ""
    goal: str = ""  # our goal for it, when one is set

    @property
    def n(self) -> int:
        return len(self.samples)

    @property
    def p50(self) -> float:
        return pct(self.samples, 50)

    @property
    def p99(self) -> float:
        return pct(self.samples, 99)

    @property
    def multiple(self) -> float:
        if not self.samples or not self.floor_ms or math.isnan(self.floor_ms):
            return math.nan
        return self.p50 / self.floor_ms

    def as_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("samples")
        d.update(n=self.n, p50=_num(self.p50), p99=_num(self.p99), multiple=_num(self.multiple),
                 floor_ms=_num(self.floor_ms))
        return d


def _num(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 4)


def _fmt(x: float) -> str:
    if math.isnan(x):
        return "-"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def render(rows: list[Row], header: str) -> str:
    """The table (fixed-width text, Markdown-compatible) and its numbered notes."""
    cols = ["#", "what", "n", "p50 ms", "p99 ms", "x floor (floor)", "original Ash p50",
            "peers", "goal"]
    lines: list[list[str]] = []
    notes: list[str] = []
    section = None
    for i, r in enumerate(rows, 1):
        if r.section != section:
            section = r.section
            lines.append(["", f"**{section}**", "", "", "", "", "", "", ""])
        value, note = " ".join(r.value.split()), r.note
        if len(value) > 64:  # long texts (errors, sweep details) go to the notes
            value, note = value[:61] + "...", f"{note} [{value}]".lstrip()
        if r.samples:
            p50, p99, n = _fmt(r.p50), _fmt(r.p99), str(r.n)
        else:
            p50, p99, n = value or "-", "", ""
        if r.samples and value:
            p99 = f"{p99} ({value})"
        mult = ""
        if not math.isnan(r.multiple):
            mult = f"{r.multiple:.1f}x ({r.floor_name} {_fmt(r.floor_ms)})"
        lines.append([str(i), r.name, n, p50, p99, mult, r.ash, r.peers, r.goal])
        notes.append(f"{i}. {r.name}: {note}")
    widths = [max(len(c), *(len(line[k]) for line in lines)) for k, c in enumerate(cols)]

    def fmt(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    out = [header, "", fmt(cols), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [fmt(line) for line in lines]
    out += ["", "What each row times (start -> stop):", "", *notes]
    return "\n".join(out)


def write_json(path: str, rows: list[Row], meta: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump({"meta": meta, "rows": [r.as_json() for r in rows]}, f, indent=1)
