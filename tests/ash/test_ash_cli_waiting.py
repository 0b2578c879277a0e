"""A slow create, resume or fork says what the CLI waits for, on a terminal only."""

from __future__ import annotations

import argparse
import asyncio
import io

from ash import cli


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def ctx(err: io.StringIO, json: bool = False) -> cli._Ctx:
    return cli._Ctx(argparse.Namespace(json=json), {}, io.StringIO(), err)


async def slow_until_noticed(err: io.StringIO, what: str, notice: bool) -> str:
    """A call that ends once `what` is on stderr (or, when no notice is expected, after the
    waiter has passed its notice deadline twice)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 2 * cli.WAIT_NOTICE_S
    while (what not in err.getvalue()) if notice else loop.time() < deadline:
        await asyncio.sleep(0.05)  # poll the other task's output
    return "done"


async def test_a_slow_call_shows_what_it_waits_for_and_clears_the_line() -> None:
    err = Terminal()
    result = await cli.waiting(ctx(err), "resuming", slow_until_noticed(err, "resuming", True))
    assert result == "done"
    assert "\rresuming... 1 s" in err.getvalue()
    assert err.getvalue().endswith("\r\x1b[K")  # the notice does not stay on the screen


async def test_no_notice_when_stderr_is_not_a_terminal_or_output_is_json() -> None:
    for err, json in ((io.StringIO(), False), (Terminal(), True)):
        assert await cli.waiting(ctx(err, json), "resuming",
                                 slow_until_noticed(err, "resuming", False)) == "done"
        assert err.getvalue() == ""


async def test_a_fast_call_says_nothing_and_errors_pass_through() -> None:
    err = Terminal()

    async def fast() -> int:
        return 7

    async def broken() -> int:
        raise ValueError("no runner")

    assert await cli.waiting(ctx(err), "starting", fast()) == 7
    try:
        await cli.waiting(ctx(err), "starting", broken())
    except ValueError as e:
        assert str(e) == "no runner"
    else:
        raise AssertionError("the error was swallowed")
    assert err.getvalue() == ""
