"""The coordinator's key cache: a key's row is read from the store once per KEY_CACHE_S, a revoke
through this coordinator is seen at once, and unknown keys are never remembered."""

from __future__ import annotations

import dataclasses

from coordinator.auth import CachedKeys
from coordinator.store.base import KeyRow


class Keys:
    """A store of key rows that counts its reads."""

    def __init__(self, *rows: KeyRow) -> None:
        self.rows = {r.key_id: r for r in rows}
        self.reads = 0

    async def get_key(self, key_id: str) -> KeyRow | None:
        self.reads += 1
        return self.rows.get(key_id)


def row(key_id: str) -> KeyRow:
    return KeyRow(key_id=key_id, tenant="default", name=key_id, key_hash="h",
                  scopes=("admin",), created_at=0.0, revoked_at=None)


async def test_a_key_is_read_once_per_period_and_a_forgotten_one_at_once() -> None:
    now = [100.0]
    store = Keys(row("k1"))
    keys = CachedKeys(store, 2.0, clock=lambda: now[0])
    assert (await keys.get_key("k1")) == row("k1")
    assert (await keys.get_key("k1")) == row("k1") and store.reads == 1
    now[0] += 1.9
    await keys.get_key("k1")
    assert store.reads == 1
    now[0] += 0.2  # past the period: read again
    await keys.get_key("k1")
    assert store.reads == 2
    # Revoked here: the next request sees the revoked row, not the cached one.
    store.rows["k1"] = dataclasses.replace(row("k1"), revoked_at=now[0])
    keys.forget("k1")
    got = await keys.get_key("k1")
    assert got is not None and got.revoked_at == now[0] and store.reads == 3


async def test_unknown_keys_are_not_remembered_and_the_cache_is_bounded() -> None:
    store = Keys(*(row(f"k{i}") for i in range(3)))
    keys = CachedKeys(store, 60.0, max_keys=2, clock=lambda: 0.0)
    assert await keys.get_key("nope") is None
    assert await keys.get_key("nope") is None and store.reads == 2
    for i in range(3):
        await keys.get_key(f"k{i}")
    assert store.reads == 5
    await keys.get_key("k0")  # the oldest was let go: read again
    await keys.get_key("k2")  # the newest is kept
    assert store.reads == 6
