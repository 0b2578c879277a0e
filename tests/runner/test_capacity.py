"""What a runner advertises for placement: its machine's capacity (parsed from /proc and
cgroup files) and what its sandboxes commit (summed by the warm pool)."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol.runners import Resources
from runner.capacity import (
    HostCapacity,
    parse_cfs,
    parse_cpu_max,
    parse_memory_limit,
    parse_meminfo,
)
from tests.runner.test_pool import claim, make_agent, new_rig

MEMINFO = "MemTotal:       16384000 kB\nMemFree:         1024000 kB\nMemAvailable:    8192000 kB\n"


def test_meminfo_gives_total_and_available_memory() -> None:
    assert parse_meminfo(MEMINFO) == (16000, 8000)
    assert parse_meminfo("MemTotal: 2048000 kB\nMemFree: 1024000 kB\n") == (2000, 1000)


@pytest.mark.parametrize(("text", "limit"), [
    ("max\n", None),  # v2, no limit
    ("1073741824\n", 1 << 30),
    ("9223372036854771712\n", None),  # v1 writes "no limit" as a huge number
])
def test_memory_limits(text: str, limit: int | None) -> None:
    assert parse_memory_limit(text) == limit


@pytest.mark.parametrize(("text", "cpus"), [
    ("max 100000\n", None),
    ("150000 100000\n", 1.5),
    ("garbage", None),
])
def test_cpu_max(text: str, cpus: float | None) -> None:
    assert parse_cpu_max(text) == cpus


def test_cfs_quota() -> None:
    assert parse_cfs("-1\n", "100000\n") is None
    assert parse_cfs("200000\n", "100000\n") == 2.0


def test_a_cgroup_limit_below_the_machines_memory_is_the_total(tmp_path: Path) -> None:
    # A /proc of a process in v1 cgroups /jobs/runner, whose parent /jobs is limited to 4 GB.
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text(MEMINFO)
    cg = tmp_path / "cg"
    (proc / "self" / "mountinfo").write_text(
        f"35 31 0:32 / {cg}/memory rw,relatime - cgroup cgroup rw,memory\n"
        f"32 31 0:29 / {cg}/cpu rw,relatime - cgroup cgroup rw,cpu\n")
    (proc / "self" / "cgroup").write_text("4:memory:/jobs/runner\n1:cpu:/jobs/runner\n")
    runner_dir, jobs = cg / "memory" / "jobs" / "runner", cg / "memory" / "jobs"
    runner_dir.mkdir(parents=True)
    (runner_dir / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (jobs / "memory.limit_in_bytes").write_text(f"{4 << 30}\n")
    (jobs / "memory.usage_in_bytes").write_text(f"{3 << 30}\n")
    cpu = cg / "cpu" / "jobs" / "runner"
    cpu.mkdir(parents=True)
    (cpu / "cpu.cfs_quota_us").write_text("50000\n")
    (cpu / "cpu.cfs_period_us").write_text("100000\n")

    total, free = HostCapacity(proc).sample()
    assert total.memory_mb == 4096 and free.memory_mb == 1024  # not the machine's 16000 / 8000
    assert total.cpu_percent == 50
    assert 0 <= free.cpu_percent <= 50


def test_this_machine_reads_sensibly() -> None:
    total, free = HostCapacity().sample()
    assert total.memory_mb >= free.memory_mb > 0
    assert total.cpu_percent >= 1 and 0 <= free.cpu_percent <= total.cpu_percent


async def test_the_pool_commits_the_limits_of_every_sandbox_it_holds() -> None:
    r = new_rig()
    a, b = make_agent("a", "d1", warm=2), make_agent("b", "d2", warm=0)  # 256 MB, 100% each
    assert r.pool.committed() == Resources()
    lease = await claim(r, b)  # a session, no pool
    r.pool.want(a)
    await r.pool.refill()  # two warm ones of a
    assert r.pool.committed() == Resources(memory_mb=3 * 256, cpu_percent=300)
    hit = await claim(r, a)  # a warm one becomes a session's: still held
    assert hit.warm and r.pool.committed() == Resources(memory_mb=3 * 256, cpu_percent=300)
    await r.pool.refill()
    assert r.pool.committed() == Resources(memory_mb=4 * 256, cpu_percent=400)
    await r.pool.release(lease)
    await r.pool.release(hit)
    assert r.pool.committed() == Resources(memory_mb=2 * 256, cpu_percent=200)
    await r.pool.close()
    assert r.pool.committed() == Resources()
