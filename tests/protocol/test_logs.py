"""Log records carry the ids bound where they were logged, in JSON or text, per asyncio task."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from protocol import logs


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO, logging.Handler]]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(logs.ContextFilter())
    logger = logging.getLogger(f"test-logs-{id(out)}")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, out, handler
    logger.removeHandler(handler)


async def test_json_lines_carry_the_ids_of_their_own_task(
    captured: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    logger, out, handler = captured
    handler.setFormatter(logs.JsonFormatter())

    async def turn(session: str, turn_id: str, go: asyncio.Event) -> None:
        logs.set_ids(session_id=session, turn_id=turn_id)  # this task's only
        await go.wait()
        logger.info("turn %s ended", turn_id)

    go = asyncio.Event()
    with logs.bind(runner_id="r1"):
        tasks = [asyncio.create_task(turn(f"s{i}", f"t{i}", go)) for i in range(2)]
        go.set()
        await asyncio.gather(*tasks)
    logger.info("outside")

    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    by_msg = {line["msg"]: line for line in lines}
    for i in range(2):
        line = by_msg[f"turn t{i} ended"]
        assert (line["session_id"], line["turn_id"], line["runner_id"]) == (f"s{i}", f"t{i}", "r1")
        assert line["level"] == "INFO" and line["logger"] == logger.name and line["ts"] > 0
    assert "session_id" not in by_msg["outside"] and "runner_id" not in by_msg["outside"]
    assert logs.current() == {}


def test_text_puts_the_ids_on_the_message_line_and_json_keeps_tracebacks(
    captured: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    logger, out, handler = captured
    handler.setFormatter(logs.TextFormatter())
    with logs.bind(session_id="s9", turn_id="t9"):
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    first, *rest = out.getvalue().splitlines()
    assert first.endswith("failed [session=s9 turn=t9]")
    assert any("ValueError: boom" in line for line in rest)

    out.truncate(0)
    out.seek(0)
    handler.setFormatter(logs.JsonFormatter())
    with logs.bind(session_id="s9"):
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    [line] = out.getvalue().splitlines()  # one line, whatever the traceback holds
    record = json.loads(line)
    assert record["session_id"] == "s9" and "ValueError: boom" in record["exc"]


def test_unknown_ids_and_formats_are_refused() -> None:
    with pytest.raises(ValueError), logs.bind(tenant="x"):
        pass
    with pytest.raises(ValueError):
        logs.setup("INFO", "yaml")
