"""Key format, scopes and the per-key limiter (pure parts; the HTTP side is tests/e2e/test_tenants.py)."""

from __future__ import annotations

import asyncio

import pytest

from coordinator import auth
from coordinator.errors import ApiError
from coordinator.ratelimit import Bucket, Limiter


def test_a_minted_key_parses_and_only_its_secret_matches_its_hash() -> None:
    new = auth.mint_key()
    parsed = auth.parse_key(new.token)
    assert parsed is not None and parsed[0] == new.key_id
    assert auth.secret_matches(parsed[1], new.key_hash)
    assert not auth.secret_matches(parsed[1] + "x", new.key_hash)
    assert new.token not in new.key_hash
    for bad in ("", "ash_", "Bearer x", f"ash_{new.key_id}", "ash_XYZ_" + "a" * 40):
        assert auth.parse_key(bad) is None


def test_admin_implies_every_scope_and_operators_are_default_admins() -> None:
    admin = auth.Principal("acme", "k", frozenset({auth.ADMIN}))
    reader = auth.Principal("acme", "k", frozenset({auth.SESSIONS_READ}))
    assert all(admin.allows(s) for s in auth.SCOPES)
    assert reader.allows(auth.SESSIONS_READ) and not reader.allows(auth.SESSIONS_WRITE)
    assert reader.allows(auth.PUBLIC)
    assert not auth.is_operator(admin)
    assert auth.is_operator(auth.Principal("default", "k", frozenset({auth.ADMIN})))


def test_runner_agent_names_never_collide_across_tenants() -> None:
    assert auth.runner_agent_name("default", "hello") == "hello"
    assert auth.runner_agent_name("acme", "hello") == "acme/hello"
    assert auth.runner_agent_name("acme", "hello") != auth.runner_agent_name("default", "acme_hello")


@pytest.mark.parametrize(("tokens", "elapsed", "ok", "wait"), [
    (3.0, 0.0, True, 0.0),      # a token left
    (0.0, 0.0, False, 10.0),    # empty: one token in 10 s at 0.1/s
    (0.0, 5.0, False, 5.0),     # half refilled
    (0.0, 10.0, True, 0.0),     # refilled one
    (0.0, 1e6, True, 0.0),      # refills up to the burst only
])
def test_bucket_take(tokens: float, elapsed: float, ok: bool, wait: float) -> None:
    after, w = Bucket(tokens, 100.0).take(100.0 + elapsed, rate=0.1, burst=3.0)
    assert (w == 0.0) == ok and w == pytest.approx(wait)
    assert after.tokens <= 3.0


def test_session_creates_per_key_with_retry_after() -> None:
    now = [0.0]
    limiter = Limiter(creates_per_min=6, creates_burst=2, max_turns=0, clock=lambda: now[0])
    limiter.session_create("a")
    limiter.session_create("a")
    with pytest.raises(ApiError) as e:
        limiter.session_create("a")
    assert e.value.status == 429 and e.value.info.retryable
    assert e.value.headers["Retry-After"] == "10"
    limiter.session_create("b")  # its own bucket
    limiter.session_create("")  # no key (auth off): no limit
    now[0] = 10.0
    limiter.session_create("a")


async def test_turn_slots_come_back_at_release_or_when_the_watched_turn_ends() -> None:
    async with Limiter(0, 1, max_turns=1) as limiter:
        slot = limiter.acquire_turn("a")
        with pytest.raises(ApiError) as e:
            limiter.acquire_turn("a")
        assert e.value.status == 429 and e.value.headers["Retry-After"] == "1"
        slot.release()
        slot.release()  # idempotent
        assert limiter.turns("a") == 0
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        limiter.hold_until(limiter.acquire_turn("a"), done, timeout_s=60)
        await asyncio.sleep(0)
        assert limiter.turns("a") == 1
        done.set_result(None)
        async with asyncio.timeout(5):
            while limiter.turns("a"):
                await asyncio.sleep(0)
        limiter.acquire_turn("a").release()
