"""The runner's shutdown steps: each close ends within its budget and the log says what it
waited for; past the last step, the process exits even if a thread would hold it."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap

import pytest

from runner.shutdown import EXIT_STUCK, Step
from tests.procs import ROOT

DEADLINE_S = 30.0


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "runner.shutdown"]


async def test_a_close_that_ends_is_logged_by_name(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    closed = asyncio.Event()

    async def close() -> None:
        closed.set()

    assert await Step("warm pool", close, budget_s=DEADLINE_S)() is True
    assert closed.is_set()
    [line] = messages(caplog)
    assert line.startswith("shutdown: closed warm pool in ")


async def test_a_close_past_its_budget_is_cancelled_and_the_log_says_what_it_waited_for(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cancelled = asyncio.Event()

    async def close() -> None:
        try:
            await asyncio.Event().wait()  # never set: a close that hangs
        except asyncio.CancelledError:
            cancelled.set()
            raise

    step = Step("heartbeat", close, budget_s=0.2, slow_s=0.05)
    assert await step() is False
    assert cancelled.is_set()
    lines = messages(caplog)
    assert lines[0] == "shutdown: still closing heartbeat after 0.05 s (gives up at 0.2 s)"
    assert lines[1].startswith("shutdown: gave up on closing heartbeat after ")
    assert len(lines) == 2


async def test_a_close_that_ignores_its_cancellation_is_left_behind(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = asyncio.Event()

    async def close() -> None:
        while not release.is_set():  # swallows every cancel, like a defective close
            try:
                await release.wait()
            except asyncio.CancelledError:
                pass

    assert await Step("sessions", close, budget_s=0.05, abandon_s=0.05)() is False
    assert messages(caplog)[-1] == "shutdown: sessions ignored its cancellation; exiting without it"
    [left] = [t for t in asyncio.all_tasks() if t.get_name() == "close sessions"]
    release.set()
    await asyncio.wait_for(left, DEADLINE_S)


async def test_a_close_that_fails_is_logged_and_the_shutdown_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def close() -> None:
        raise OSError("umount: target is busy")

    assert await Step("disk reaper", close, budget_s=DEADLINE_S)() is True
    [record] = [r for r in caplog.records if r.name == "runner.shutdown"]
    assert record.levelno == logging.ERROR
    assert record.getMessage().startswith("shutdown: closing disk reaper failed after ")
    assert isinstance(record.exc_info[1], OSError)  # type: ignore[index]


def test_the_process_exits_after_its_last_step_even_if_a_thread_would_hold_it() -> None:
    # A real process whose exit would wait forever: a task that ignores its cancellation (the
    # event loop's teardown awaits it) and a non-daemon thread (the interpreter joins it).
    script = textwrap.dedent("""
        import asyncio, logging, sys, threading
        from runner.shutdown import exit_within

        async def stubborn():
            while True:
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    pass

        async def main():
            asyncio.create_task(stubborn(), name="stubborn")
            threading.Thread(target=threading.Event().wait, name="stuck-worker").start()
            await asyncio.sleep(0)
            exit_within(0.5, "test process")

        logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
        asyncio.run(main())
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=DEADLINE_S)
    assert done.returncode == EXIT_STUCK, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert "shutdown: test process stops with 1 tasks still running (cancelled now): " \
        "stubborn" in lines
    assert any(line.startswith("shutdown: test process did not exit within 0.5 s") and
               "stuck-worker" in line for line in lines), lines
