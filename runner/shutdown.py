"""Bounded, logged steps of the runner's shutdown.

The composition root closes what it opened in reverse on an `AsyncExitStack`; each close runs
as a `Step` with a budget, so that a drained runner always exits and its log says what it was
waiting for:

    closing --done within SLOW_S-------------------------------> closed: "closed <name> in <s> s"
       |  \\--SLOW_S passes--> slow: "still closing <name>" --done--> closed: "took <s> s"
       |                           \\
       +---------------------------+--budget passes--> cancelled: "gave up on <name>"
                                                          \\--ignores the cancel for
                                                             ABANDON_S--> abandoned: the
                                                             exit goes on without it

What a step gives up on is left for the next start (`Runner.clean_up_after_crash`, the disk
reaper) or dies with the process (sandboxes die with their bwrap parent).

After the last step, `exit_within` bounds the rest: the event loop's teardown cancels the tasks
left and waits for them, then joins the default executor's threads, and the interpreter joins
every other thread, all without a deadline (a thread still packing a snapshot whose task gave
up holds the exit as long as it runs). Past `EXIT_GRACE_S` the process logs what still runs and
exits anyway.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any
from dataclasses import dataclass

logger = logging.getLogger(__name__)

SLOW_S = 2.0  # a step taking longer says so while it runs
ABANDON_S = 2.0  # how long a cancelled step gets to unwind before the exit goes on without it
EXIT_GRACE_S = 10.0  # from the last step to the process's exit
EXIT_STUCK = 3  # the exit code when the grace ran out: stopped, but not cleanly


@dataclass(slots=True)
class Step:
    """One close of the shutdown: `name` for the log, `close` to await, at most `budget_s`."""

    name: str
    close: Callable[[], Coroutine[Any, Any, object]]
    budget_s: float
    slow_s: float = SLOW_S
    abandon_s: float = ABANDON_S

    async def __call__(self) -> bool:
        """Run the close within its budget; True when it finished (well or with an error)."""
        started = time.monotonic()
        slow = asyncio.get_running_loop().call_later(self.slow_s, lambda: logger.warning(
            "shutdown: still closing %s after %g s (gives up at %g s)", self.name, self.slow_s,
            self.budget_s))
        task = asyncio.create_task(self.close(), name=f"close {self.name}")
        try:
            done, _ = await asyncio.wait({task}, timeout=self.budget_s)
        finally:
            slow.cancel()
        took = time.monotonic() - started
        if not done:
            logger.warning("shutdown: gave up on closing %s after %.1f s", self.name, took)
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=self.abandon_s)
            if not done:
                logger.warning("shutdown: %s ignored its cancellation; exiting without it",
                               self.name)
            elif not task.cancelled() and (e := task.exception()) is not None:
                logger.warning("shutdown: closing %s failed as it was given up on: %r",
                               self.name, e)
            return False
        if not task.cancelled() and (e := task.exception()) is not None:
            logger.error("shutdown: closing %s failed after %.1f s", self.name, took, exc_info=e)
        elif took > self.slow_s:
            logger.warning("shutdown: closing %s took %.1f s", self.name, took)
        else:
            logger.info("shutdown: closed %s in %.3f s", self.name, took)
        return True


def exit_within(grace_s: float, what: str) -> None:
    """Make sure this process exits within `grace_s` from now; call it in the event loop, after
    the last close step. Logs the tasks still running (the loop's teardown cancels and awaits
    them) and, at the deadline, the threads the exit waits for; `what` names the process."""
    left = sorted(t.get_name() for t in asyncio.all_tasks() if t is not asyncio.current_task())
    if left:
        logger.warning("shutdown: %s stops with %d tasks still running (cancelled now): %s",
                       what, len(left), ", ".join(left))

    def expire() -> None:
        here, main = threading.current_thread(), threading.main_thread()
        threads = sorted(t.name for t in threading.enumerate() if t not in (here, main))
        logger.warning("shutdown: %s did not exit within %g s of its last close step; exiting "
                       "without waiting further (threads still running: %s)", what, grace_s,
                       ", ".join(threads) or "none")
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(EXIT_STUCK)

    timer = threading.Timer(grace_s, expire)
    timer.name = "ash-exit-watchdog"
    timer.daemon = True  # never itself a reason to wait
    timer.start()
