"""Log setup shared by the processes: JSON lines or text, with the ids of what is going on.

    setup(level="INFO", fmt="json")        once, by a process's entry point
    with bind(session_id=s, turn_id=t):     ids attached to every record logged inside
        logger.info("...")                 -> {"ts":..., "level":"INFO", ..., "session_id": s}

The ids live in `contextvars`, so they follow the asyncio task that set them (a task copies
its creator's context when it is created) and never leak into other tasks: a handler or a
turn binds its ids once and everything it calls logs them, without passing them around.
`runner_id` is bound once per runner process, before its tasks start.

Standard library only, like the rest of `protocol`.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterator
from typing import Final

FORMATS: Final = ("json", "text")
IDS: Final = ("session_id", "turn_id", "runner_id")

_vars: dict[str, contextvars.ContextVar[str | None]] = {
    name: contextvars.ContextVar(f"ash_log_{name}", default=None) for name in IDS
}


@contextlib.contextmanager
def bind(**ids: str | None) -> Iterator[None]:
    """Attach `ids` (session_id, turn_id, runner_id) to the records logged inside."""
    tokens = []
    for name, value in ids.items():
        if name not in _vars:
            raise ValueError(f"unknown log id {name!r}; expected one of {IDS}")
        tokens.append((_vars[name], _vars[name].set(value)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def set_ids(**ids: str | None) -> None:
    """Bind `ids` for the rest of the current context (a process-wide id such as runner_id,
    set before any task starts; or a whole task's ids, set at its top)."""
    for name, value in ids.items():
        if name not in _vars:
            raise ValueError(f"unknown log id {name!r}; expected one of {IDS}")
        _vars[name].set(value)


def current() -> dict[str, str]:
    """The ids bound now (only those set)."""
    return {name: value for name, var in _vars.items() if (value := var.get()) is not None}


class ContextFilter(logging.Filter):
    """Copies the bound ids onto each record (as attributes), for either formatter."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _vars.items():
            if getattr(record, name, None) is None:
                setattr(record, name, var.get())
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (epoch s), time (UTC ISO), level, logger, msg, the ids
    that are set, and `exc` with the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": round(record.created, 6),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in IDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message [session=... turn=... runner=...]`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        ids = [f"{name.removesuffix('_id')}={value}" for name in IDS
               if (value := getattr(record, name, None)) is not None]
        if not ids:
            return text
        head, sep, tail = text.partition("\n")  # ids on the message line, not after a traceback
        return f"{head} [{' '.join(ids)}]{sep}{tail}"


def setup(level: str = "INFO", fmt: str = "text") -> None:
    """Configure the root logger once for this process: `fmt` json or text, to stderr."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {FORMATS}, not {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
