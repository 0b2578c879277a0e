"""Memo: a key is loaded once however many ask for it at once; a fallback value is not kept;
a caller that gives up does not cancel the load for the others; the least recently used go."""

from __future__ import annotations

import asyncio

import pytest

from coordinator.memo import Memo


async def test_a_burst_of_asks_for_one_key_loads_it_once() -> None:
    memo: Memo[str, int] = Memo(8)
    loads = 0
    gate = asyncio.Event()

    async def load() -> tuple[int, bool]:
        nonlocal loads
        loads += 1
        await gate.wait()
        return 42, True

    asks = [asyncio.create_task(memo.get("k", load)) for _ in range(100)]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*asks) == [42] * 100
    assert loads == 1
    assert await memo.get("k", load) == 42 and loads == 1  # kept


async def test_a_value_not_kept_is_loaded_again_and_an_error_reaches_every_caller() -> None:
    memo: Memo[str, str] = Memo(8)
    calls = 0

    async def fallback() -> tuple[str, bool]:
        nonlocal calls
        calls += 1
        return "default", False

    assert await memo.get("k", fallback) == "default"
    assert await memo.get("k", fallback) == "default" and calls == 2

    async def broken() -> tuple[str, bool]:
        raise RuntimeError("no bundle")

    with pytest.raises(RuntimeError, match="no bundle"):
        await memo.get("x", broken)
    assert len(memo) == 0


async def test_a_caller_that_gives_up_does_not_cancel_the_load() -> None:
    memo: Memo[str, int] = Memo(8)
    gate = asyncio.Event()

    async def load() -> tuple[int, bool]:
        await gate.wait()
        return 7, True

    first = asyncio.create_task(memo.get("k", load))
    second = asyncio.create_task(memo.get("k", load))
    await asyncio.sleep(0)
    first.cancel()
    gate.set()
    assert await second == 7
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_the_least_recently_used_are_let_go() -> None:
    memo: Memo[int, int] = Memo(2)
    loads: list[int] = []

    def loader(k: int):  # type: ignore[no-untyped-def]
        async def load() -> tuple[int, bool]:
            loads.append(k)
            return k, True
        return load

    for k in (1, 2, 1, 3):  # 2 is the least recently used when 3 comes
        await memo.get(k, loader(k))
    await memo.get(1, loader(1))
    await memo.get(2, loader(2))
    assert loads == [1, 2, 3, 2]
