"""Counts HTTP API requests per tenant and UTC day without a database write per request.

Counts accumulate in memory and are added to the store's daily aggregate every few seconds
and at shutdown; the statistics add what is still pending, so the figure is exact.
"""

import asyncio
import logging
from collections import Counter
from datetime import datetime, timezone

from api.core.store_errors import StoreError
from api.database.interfaces import StatisticsStore

logger = logging.getLogger("api.services.api_call_counter")


def today() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d")


class ApiCallCounter:
    def __init__(self, *, store: StatisticsStore, flush_seconds: float) -> None:
        self.store = store
        self.flush_seconds = flush_seconds
        # (tenant_id, date) -> requests not yet stored, and those being stored.
        self._pending: Counter[tuple[str, str]] = Counter()
        self._flushing: Counter[tuple[str, str]] = Counter()
        self._task: asyncio.Task[None] | None = None
        # Held by a flush from taking the counts to having stored them, and by a statistics
        # read from its store read to adding what is pending: a flush ending between the two
        # would leave its counts in neither (the two-tenant test once read 8 calls short).
        self.settled = asyncio.Lock()

    def count(self, tenant_id: str) -> None:
        self._pending[(tenant_id, today())] += 1

    def pending(self, tenant_id: str | None, date: str) -> int:
        """Requests of `date` not stored yet: the tenant's, or with None (an operator's
        platform-wide statistics) every tenant's."""
        if tenant_id is None:
            return sum(count for counter in (self._pending, self._flushing)
                       for (_, day), count in counter.items() if day == date)
        return self._pending[(tenant_id, date)] + self._flushing[(tenant_id, date)]

    async def flush(self) -> None:
        async with self.settled:
            await self._flush()

    async def _flush(self) -> None:
        if not self._pending:
            return
        self._flushing, self._pending = self._pending, Counter()
        by_tenant: dict[str, dict[str, int]] = {}
        for (tenant_id, date), count in self._flushing.items():
            by_tenant.setdefault(tenant_id, {})[date] = count
        for tenant_id, counts in by_tenant.items():
            try:
                await self.store.add_api_calls(tenant_id=tenant_id, counts=counts)
            except StoreError:
                logger.warning("Could not store API call counts; keeping them for the next flush")
                self._pending.update({(tenant_id, date): n for date, n in counts.items()})
            # Stored, or back in _pending: a read while the next tenant's write runs must not
            # count these twice.
            for date in counts:
                del self._flushing[(tenant_id, date)]

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self.flush_seconds)
            await self.flush()

    def start(self) -> None:
        self._task = asyncio.create_task(self._flush_forever(), name="api-call-flush")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.flush()
