"""Every Python example of docs/sdk.md runs against a real stack, so the docs cannot rot."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.ash.conftest import LiveAsh
from tests.procs import ROOT

pytestmark = pytest.mark.e2e
DOC = ROOT / "docs" / "sdk.md"
EXAMPLES = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_page_has_examples() -> None:
    assert len(EXAMPLES) >= 5


@pytest.mark.parametrize("n", range(len(EXAMPLES)))
def test_example_runs(live_ash: LiveAsh, n: int) -> None:
    run = subprocess.run([sys.executable, "-c", EXAMPLES[n]], env=live_ash.env(PYTHONPATH=str(ROOT)),
                         cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, f"example {n + 1}:\n{EXAMPLES[n]}\n{run.stdout}\n{run.stderr}"
    assert run.stdout.strip(), "an example prints what it shows"
