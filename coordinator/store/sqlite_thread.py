"""A sqlite3 connection confined to a thread of its own: each call is one trip to it.

`coordinator.store.sqlite` runs every store method as one function on this thread (a read, or
a whole BEGIN IMMEDIATE ... COMMIT transaction), so a method costs one cross-thread hop instead
of one per statement.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from coordinator.store.base import StoreError

T = TypeVar("T")
Db = sqlite3.Connection


class SQLiteThread:
    """A sqlite3 connection confined to a thread of its own; each `run` is one trip to it.

        new --open()--> open --close()--> closed
             (the thread starts; it connects)   (queued work runs, the connection closes,
                                                 the thread ends)

    The thread takes functions from a queue one at a time, in order, runs `fn(db, *args)` and
    hands the result or exception back to the awaiting coroutine with one
    `call_soon_threadsafe`. A function whose caller was cancelled before the thread reached it
    is skipped; one already running runs to its end.
    """

    def __init__(self) -> None:
        self._db: Db | None = None  # set, used and closed on the thread only
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="ash-sqlite", daemon=True)
        self._closing: asyncio.Future[None] | None = None

    async def open(self, connect: Callable[[], tuple[Db, T]]) -> T:
        """Start the thread and run `connect` there; it returns the connection and a result."""
        self._thread.start()
        return await self._submit(self._adopt, connect)

    def run(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run `fn(db, *args)` on the thread; await the returned future for its result."""
        return self._submit(self._with_db, fn, args)

    async def execute_fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """One statement in autocommit, all its rows (for looking at the connection itself)."""
        return await self.run(lambda db: db.execute(sql, params).fetchall())

    async def close(self) -> None:
        """Let the work already submitted finish, close the connection, end the thread.

        Idempotent. Cancelling the wait does not stop the closing.
        """
        if self._thread.ident is None:
            return  # never started
        if self._closing is None:
            self._closing = self._submit(self._shutdown)
        await asyncio.shield(self._closing)
        self._thread.join()  # quick: the thread ends right after reporting the close

    # -- on the thread --------------------------------------------------------------------

    def _adopt(self, connect: Callable[[], tuple[Db, T]]) -> T:
        self._db, result = connect()
        return result

    def _with_db(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        if self._db is None:
            raise StoreError("the SQLite connection is closed")
        return fn(self._db, *args)

    def _shutdown(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()

    def _serve(self) -> None:
        while True:
            future, fn, args = self._jobs.get()
            if not future.cancelled():  # a racy peek; at worst a cancelled job still runs
                try:
                    result = fn(*args)
                except BaseException as e:
                    _report(future, None, e)
                else:
                    _report(future, result, None)
            if fn == self._shutdown:
                return

    # -- on the loop ----------------------------------------------------------------------

    def _submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._jobs.put((future, fn, args))
        return future


_Job = tuple["asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]


def _report(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    try:
        future.get_loop().call_soon_threadsafe(_settle, future, result, error)
    except RuntimeError:
        pass  # the loop is closed: nobody is waiting any more


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)
