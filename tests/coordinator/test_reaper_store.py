"""What the reaper needs of the store: compare-and-set on status *and* runner, and the
sessions by status. Run against every backend of the shared store suite."""

from __future__ import annotations

import pytest

from coordinator.store import Store
from tests.coordinator.test_store import BACKENDS, T0, make_session, sqlite_url, store, store_url  # noqa: F401

pytestmark = pytest.mark.skipif(not BACKENDS, reason="no store backend")


async def on_runner(store: Store, id: str, runner: str | None, status: str = "active") -> None:
    await make_session(store, id)
    await store.update_session(id, T0, status=status, runner_id=runner)  # type: ignore[arg-type]


async def test_transition_on_a_runner_moves_only_a_session_still_on_that_runner(store: Store) -> None:
    await on_runner(store, "s1", "r1")
    assert await store.transition("s1", ("active",), "paused", T0 + 1, on_runner="r2") is None
    paused = await store.transition("s1", ("active",), "paused", T0 + 2, on_runner="r1",
                                    runner_id=None)
    assert paused is not None
    assert (paused.status, paused.runner_id, paused.updated_at) == ("paused", None, T0 + 2)
    # Compared with "on no runner" now; a second pause of the same runner's loss is refused.
    assert await store.transition("s1", ("active", "paused"), "paused", T0 + 3, on_runner="r1") is None
    again = await store.transition("s1", ("paused",), "active", T0 + 4, on_runner=None,
                                   runner_id="r2")
    assert again is not None and (again.status, again.runner_id) == ("active", "r2")


async def test_transition_without_runner_arguments_leaves_the_runner_alone(store: Store) -> None:
    await on_runner(store, "s1", "r1")
    view = await store.transition("s1", ("active",), "paused", T0 + 1)
    assert view is not None and view.runner_id == "r1"


async def test_sessions_with_status_oldest_first(store: Store) -> None:
    for i, status in enumerate(["active", "ended", "paused", "starting", "error", "active"]):
        await make_session(store, f"s{i}", now=T0 + i)
        await store.update_session(f"s{i}", T0 + i, status=status)  # type: ignore[arg-type]
    got = await store.sessions_with_status(("starting", "active", "paused"))
    assert [(v.id, v.status) for v in got] == [
        ("s0", "active"), ("s2", "paused"), ("s3", "starting"), ("s5", "active")]
    assert [v.id for v in await store.sessions_with_status(["active"], limit=1)] == ["s0"]
    with pytest.raises(ValueError):
        await store.sessions_with_status([])
    with pytest.raises(ValueError):
        await store.sessions_with_status(["sleeping"])  # type: ignore[list-item]
