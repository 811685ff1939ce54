"""The rate limits' store, on every backend: allowances never past a limit, even when several
processes (stores on the same data) take at once; slots bounded, freed by release or expiry;
both per tenant."""

import asyncio
from collections.abc import Callable

from api.database.store import Store

NOW, LATER = 1_000_000.0, 1_000_060.0


async def take(store: Store, amount: int, limit: int | None, *, tenant: str = "acme",
               counter: str = "requests:key:k1:1000000") -> tuple[int, int]:
    return await store.take_allowance(tenant_id=tenant, counter=counter, amount=amount,
                                      limit=limit, now=NOW, expires_at=LATER)


async def test_an_allowance_is_taken_whole_then_in_part_then_not_at_all(store: Store) -> None:
    assert await take(store, 4, 10) == (4, 4)
    assert await take(store, 4, 10) == (4, 8)
    assert await take(store, 4, 10) == (2, 10)
    assert await take(store, 1, 10) == (0, 10)
    assert await take(store, 0, None) == (0, 10)  # a read
    assert await take(store, -3, None) == (-3, 7)  # given back
    assert await take(store, 5, 10) == (3, 10)
    assert await take(store, 50, None) == (50, 60)  # no limit: spent tokens, say


async def test_an_allowance_larger_than_the_limit_takes_the_limit(store: Store) -> None:
    assert await take(store, 25, 10) == (10, 10)


async def test_counters_are_per_tenant_and_per_name(store: Store) -> None:
    assert await take(store, 10, 10, tenant="acme") == (10, 10)
    assert await take(store, 3, 10, tenant="globex") == (3, 3)
    assert await take(store, 3, 10, counter="requests:key:k1:1000060") == (3, 3)
    assert await take(store, 1, 10, tenant="acme") == (0, 10)


async def test_concurrent_takes_of_several_processes_never_pass_the_limit(
        store: Store, make_store: Callable[[], Store]) -> None:
    other = make_store()
    await other.open()
    try:
        results = await asyncio.gather(*(take(s, 3, 20) for s in [store, other] * 10))
    finally:
        await other.close()
    assert sum(taken for taken, _ in results) == 20
    assert max(total for _, total in results) == 20


async def test_slots_are_bounded_and_freed_by_release(store: Store) -> None:
    async def acquire(slot: str, tenant: str = "acme", now: float = NOW) -> bool:
        return await store.acquire_slot(tenant_id=tenant, pool="invocations:tenant", slot_id=slot,
                                        limit=2, now=now, expires_at=now + 60)

    assert await acquire("a") and await acquire("b")
    assert not await acquire("c")
    assert await acquire("c", tenant="globex")  # another tenant's pool
    await store.release_slot(tenant_id="acme", pool="invocations:tenant", slot_id="a")
    assert await acquire("c")
    assert not await acquire("d")
    # A process that died holding its slots: they count until they expire, then not.
    assert await acquire("d", now=NOW + 61) and await acquire("e", now=NOW + 61)
    assert not await acquire("f", now=NOW + 61)
    await store.release_slot(tenant_id="acme", pool="nothing-held", slot_id="x")


async def test_concurrent_acquires_of_several_processes_fill_the_pool_exactly(
        store: Store, make_store: Callable[[], Store]) -> None:
    other = make_store()
    await other.open()
    try:
        results = await asyncio.gather(*(
            s.acquire_slot(tenant_id="acme", pool="p", slot_id=f"slot-{i}", limit=5, now=NOW,
                           expires_at=LATER) for i, s in enumerate([store, other] * 6)))
    finally:
        await other.close()
    assert results.count(True) == 5
