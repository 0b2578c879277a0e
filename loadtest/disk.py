"""What a sandbox's quota disk costs: make, wipe (recycle) and destroy a loop-mounted ext4
(`runner/sandbox/disk.py`), beside a size-capped tmpfs mount for comparison.

    sudo .venv/bin/python -m loadtest.disk -n 30 --mb 1024

Needs root and loop devices. Each iteration works on its own temp directory; the wipe is
measured after writing a small workspace (an agent folder's worth: 20 files, 1 MB).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from runner.sandbox import disk


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


async def timed(out: list[float], step: Callable[[], Awaitable[object]]) -> object:
    t0 = time.perf_counter()
    result = await step()
    out.append((time.perf_counter() - t0) * 1000)
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("-n", type=int, default=30)
    parser.add_argument("--mb", type=int, default=1024, help="disk size")
    args = parser.parse_args()
    backend = disk.detect()
    if not isinstance(backend, disk.LoopDisks):
        raise SystemExit(f"no loop disks here: {backend.reason}")  # type: ignore[attr-defined]
    rows: dict[str, list[float]] = {k: [] for k in (
        "make (mkfs+mount)", "wipe (rm+fstrim)", "destroy (umount)", "tmpfs mount+umount")}
    with tempfile.TemporaryDirectory(prefix="ash-disk-") as tmp:
        for i in range(args.n):
            root = os.path.join(tmp, f"s{i}")
            d = await timed(rows["make (mkfs+mount)"], lambda: backend.make(root, args.mb))
            assert isinstance(d, disk.LoopDisk)
            ws = Path(d.path, "workspace")
            ws.mkdir()
            for j in range(20):
                (ws / f"f{j}").write_bytes(os.urandom(50_000))
            await timed(rows["wipe (rm+fstrim)"], d.wipe)
            await timed(rows["destroy (umount)"], d.destroy)
            mnt = Path(tmp, f"t{i}")
            mnt.mkdir()

            async def tmpfs(mnt: Path = mnt) -> None:
                for argv in (["mount", "-t", "tmpfs", "-o", f"size={args.mb}m,nosuid,nodev",
                              "tmpfs", str(mnt)], ["umount", str(mnt)]):
                    await asyncio.to_thread(subprocess.run, argv, check=True)

            await timed(rows["tmpfs mount+umount"], tmpfs)
    print(f"\nsandbox disk of {args.mb} MB, n={args.n} (ms)")
    print(f"{'step':<22}{'p50':>8}{'p99':>8}{'mean':>8}")
    for name, values in rows.items():
        print(f"{name:<22}{pct(values, 50):>8.1f}{pct(values, 99):>8.1f}{statistics.mean(values):>8.1f}")


if __name__ == "__main__":
    asyncio.run(main())
