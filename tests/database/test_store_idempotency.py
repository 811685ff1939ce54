"""The idempotency keys of the Store contract, on every backend: a key is claimed once, its
answer kept for its retries, per tenant, until it expires; an unanswered claim is released or,
once stale, taken over."""

import asyncio
from collections.abc import Callable

import pytest

from api.core.store_errors import RecordTooLarge
from api.database.store import MAX_RECORD_BYTES, IdempotencyKeyState, IdempotentAnswer, Store
from tests.database.test_store_contract import TENANT, ts

OTHER_TENANT = "globex"
ANSWER = IdempotentAnswer(201, "application/json", b'{"success":true,"data":{"id":"x"}}')


async def claim(store: Store, claim_id: str, *, at: int = 0, key: str = "key-1",
                tenant_id: str = TENANT, fingerprint: str = "f1") -> IdempotencyKeyState | None:
    """Claim at second `at`: the key expires 100 s later, a claim older than 10 s is stale."""
    return await store.claim_idempotency_key(
        tenant_id=tenant_id, key=key, fingerprint=fingerprint, claim_id=claim_id, now=ts(at),
        expires_at=ts(at + 100), stale_before=ts(at - 10))


async def test_a_key_is_claimed_once_then_answers_its_retries(store: Store) -> None:
    assert await claim(store, "c1") is None
    assert await claim(store, "c2", at=1) == IdempotencyKeyState("f1", None)
    assert await claim(store, "c2", at=1, fingerprint="f2") == IdempotencyKeyState("f1", None)

    assert await store.keep_idempotent_answer(tenant_id=TENANT, key="key-1", claim_id="c1", answer=ANSWER)
    assert await claim(store, "c3", at=2) == IdempotencyKeyState("f1", ANSWER)
    # An answered key is never stale: it answers until it expires.
    assert await claim(store, "c4", at=60) == IdempotencyKeyState("f1", ANSWER)
    # Answered once: a second answer (of a claim not held) is refused.
    assert not await store.keep_idempotent_answer(tenant_id=TENANT, key="key-1", claim_id="c3",
                                                  answer=IdempotentAnswer(200, "text/plain", b"x"))
    assert await claim(store, "c5", at=3) == IdempotencyKeyState("f1", ANSWER)


async def test_keys_are_per_tenant(store: Store) -> None:
    assert await claim(store, "a1") is None
    assert await claim(store, "b1", tenant_id=OTHER_TENANT, fingerprint="other") is None
    assert await store.keep_idempotent_answer(tenant_id=TENANT, key="key-1", claim_id="a1", answer=ANSWER)
    assert await claim(store, "b2", tenant_id=OTHER_TENANT, at=1) == IdempotencyKeyState("other", None)
    # A tenant cannot release or answer another's claim of the same key.
    await store.release_idempotency_key(tenant_id=TENANT, key="key-1", claim_id="b1")
    assert not await store.keep_idempotent_answer(tenant_id=TENANT, key="key-1", claim_id="b1", answer=ANSWER)
    assert await claim(store, "b3", tenant_id=OTHER_TENANT, at=2) == IdempotencyKeyState("other", None)
    assert await claim(store, "a2", at=2) == IdempotencyKeyState("f1", ANSWER)


async def test_a_released_claim_runs_anew_and_an_answered_one_is_not_released(store: Store) -> None:
    assert await claim(store, "c1") is None
    await store.release_idempotency_key(tenant_id=TENANT, key="key-1", claim_id="c1")
    assert await claim(store, "c2", at=1, fingerprint="f2") is None  # the key is free again
    await store.release_idempotency_key(tenant_id=TENANT, key="key-1", claim_id="c1")  # not held
    assert await claim(store, "c3", at=2) == IdempotencyKeyState("f2", None)
    assert await store.keep_idempotent_answer(tenant_id=TENANT, key="key-1", claim_id="c2", answer=ANSWER)
    await store.release_idempotency_key(tenant_id=TENANT, key="key-1", claim_id="c2")
    assert await claim(store, "c4", at=3) == IdempotencyKeyState("f2", ANSWER)


async def test_a_stale_claim_is_taken_over_and_its_late_answer_refused(store: Store) -> None:
    assert await claim(store, "c1") is None
    assert await claim(store, "c2", at=10) == IdempotencyKeyState("f1", None)  # 10 s: not yet
    assert await claim(store, "c2", at=11) is None  # the first one's process is taken for dead
    assert not await store.keep_idempotent_answer(tenant_id=TENANT, key="key-1", claim_id="c1", answer=ANSWER)
    assert await store.keep_idempotent_answer(tenant_id=TENANT, key="key-1", claim_id="c2", answer=ANSWER)
    assert await claim(store, "c3", at=12, fingerprint="f2") == IdempotencyKeyState("f1", ANSWER)


async def test_an_expired_key_is_a_new_key(store: Store) -> None:
    assert await claim(store, "c1") is None
    assert await store.keep_idempotent_answer(tenant_id=TENANT, key="key-1", claim_id="c1", answer=ANSWER)
    assert await claim(store, "c2", at=99) == IdempotencyKeyState("f1", ANSWER)
    assert await claim(store, "c3", at=100, fingerprint="f2") is None
    assert await claim(store, "c4", at=101) == IdempotencyKeyState("f2", None)


async def test_concurrent_claims_of_one_key_have_one_winner(
        store: Store, make_store: Callable[[], Store]) -> None:
    other = make_store()  # a second instance on the same data
    await other.open()
    try:
        results = await asyncio.gather(*(claim(instance, f"c{n}", at=1)
                                         for n in range(8) for instance in (store, other)))
    finally:
        await other.close()
    assert results.count(None) == 1
    assert all(result == IdempotencyKeyState("f1", None) for result in results if result is not None)


async def test_an_answer_over_the_record_limit_is_refused_and_the_claim_stays(store: Store) -> None:
    assert await claim(store, "c1") is None
    huge = IdempotentAnswer(201, "application/json", b"x" * MAX_RECORD_BYTES)
    with pytest.raises(RecordTooLarge):
        await store.keep_idempotent_answer(tenant_id=TENANT, key="key-1", claim_id="c1", answer=huge)
    assert await claim(store, "c2", at=1) == IdempotencyKeyState("f1", None)
    await store.release_idempotency_key(tenant_id=TENANT, key="key-1", claim_id="c1")
    assert await claim(store, "c2", at=2) is None


async def test_any_visible_key_and_binary_answers_round_trip(store: Store) -> None:
    key = "".join(chr(code) for code in range(0x21, 0x7F)) * 2  # 188 visible ASCII characters
    answer = IdempotentAnswer(200, "text/event-stream; charset=utf-8",
                              bytes(range(256)) + "event: done\ndata: {\"ü\": 1}\n\n".encode())
    assert await claim(store, "c1", key=key) is None
    assert await store.keep_idempotent_answer(tenant_id=TENANT, key=key, claim_id="c1", answer=answer)
    assert await claim(store, "c2", key=key, at=1) == IdempotencyKeyState("f1", answer)
    assert await claim(store, "c3", key="key-2", at=1) is None
