"""The API-call count is exact at every moment: stored plus pending, per tenant and (for an
operator) platform-wide, also while a flush is half done or one tenant's write failed."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from api.core.store_errors import StoreError
from api.database.sqlite import SQLiteStore
from api.services.api_call_counter import ApiCallCounter, today


class SlowStore(SQLiteStore):
    """A real SQLite store whose API-call write of one tenant waits for `release`, or fails."""

    def __init__(self, path: Path) -> None:
        super().__init__(path=path, slow_query_threshold_seconds=1.0)
        self.held_tenant: str | None = None
        self.failing_tenant: str | None = None
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    async def add_api_calls(self, *, tenant_id: str, counts: dict[str, int]) -> None:
        if tenant_id == self.failing_tenant:
            raise StoreError("the store is unavailable")
        if tenant_id == self.held_tenant:
            self.holding.set()
            await self.release.wait()
        await super().add_api_calls(tenant_id=tenant_id, counts=counts)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SlowStore]:
    opened = SlowStore(tmp_path / "nexus-ai.db")
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


async def seen(store: SlowStore, counter: ApiCallCounter, tenant_id: str | None) -> int:
    """What the statistics say: stored, plus pending."""
    day = today()
    stored = await store.get_daily(tenant_id=tenant_id, start=day, end=day)
    return int(stored[0].counts.get("api_calls", 0) if stored else 0) + counter.pending(tenant_id, day)


def count(counter: ApiCallCounter, **calls: int) -> None:
    for tenant_id, n in calls.items():
        for _ in range(n):
            counter.count(tenant_id)


async def figures(store: SlowStore, counter: ApiCallCounter) -> dict[str | None, Any]:
    return {tenant_id: await seen(store, counter, tenant_id) for tenant_id in ("acme", "globex", None)}


async def test_the_platform_count_includes_every_tenant_s_pending_calls(store: SlowStore) -> None:
    counter = ApiCallCounter(store=store, flush_seconds=3600)
    count(counter, acme=2, globex=3)
    assert await figures(store, counter) == {"acme": 2, "globex": 3, None: 5}
    await counter.flush()
    assert counter.pending(None, today()) == 0
    assert await figures(store, counter) == {"acme": 2, "globex": 3, None: 5}


async def test_a_tenant_s_stored_calls_are_not_counted_twice_while_the_next_tenant_s_are_stored(
        store: SlowStore) -> None:
    counter = ApiCallCounter(store=store, flush_seconds=3600)
    count(counter, acme=2, globex=3)
    store.held_tenant = "globex"
    flushing = asyncio.create_task(counter.flush())
    await asyncio.wait_for(store.holding.wait(), timeout=5)
    # acme's calls are stored, globex's are being stored.
    count(counter, acme=1)
    assert await figures(store, counter) == {"acme": 3, "globex": 3, None: 6}
    store.release.set()
    await flushing
    assert await figures(store, counter) == {"acme": 3, "globex": 3, None: 6}


async def test_calls_whose_write_failed_are_counted_once_and_stored_by_the_next_flush(
        store: SlowStore) -> None:
    counter = ApiCallCounter(store=store, flush_seconds=3600)
    count(counter, acme=2, globex=3)
    store.failing_tenant, store.held_tenant = "acme", "globex"
    flushing = asyncio.create_task(counter.flush())
    await asyncio.wait_for(store.holding.wait(), timeout=5)
    assert await figures(store, counter) == {"acme": 2, "globex": 3, None: 5}
    store.release.set()
    await flushing
    assert await figures(store, counter) == {"acme": 2, "globex": 3, None: 5}
    store.failing_tenant = None
    await counter.flush()
    assert counter.pending(None, today()) == 0
    assert await figures(store, counter) == {"acme": 2, "globex": 3, None: 5}


async def test_a_read_under_settled_waits_for_a_flush_in_progress_and_sees_its_calls_once(
        store: SlowStore) -> None:
    """The statistics read the store and add what is pending under `settled`: a flush ending
    between the two would leave its calls in neither."""
    counter = ApiCallCounter(store=store, flush_seconds=3600)
    count(counter, acme=2)
    store.held_tenant = "acme"
    flushing = asyncio.create_task(counter.flush())
    await asyncio.wait_for(store.holding.wait(), timeout=5)

    async def read() -> int:
        async with counter.settled:
            return await seen(store, counter, "acme")

    reading = asyncio.create_task(read())
    await asyncio.sleep(0)
    assert not reading.done() and counter.settled.locked()
    store.release.set()
    await flushing
    assert await asyncio.wait_for(reading, timeout=5) == 2
    assert counter.pending("acme", today()) == 0
