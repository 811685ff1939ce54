"""The statistics on DynamoDB: reading the sharded counter and daily items that the other
domains' transactions update (DynamoDBClient._bump_counters and _bump_daily), and counting
API calls."""

import asyncio
from datetime import date, timedelta

from api.core.store_errors import RecordConflict, StoreError
from api.database.dynamodb.client import (
    CONTENTION_ATTEMPTS, MAX_BATCH_GET, MAX_TRANSACTION_ITEMS, DynamoDBClient, _back_off, _chunks,
    _Refused)
from api.database.dynamodb.codec import _count
from api.database.dynamodb.keys import (
    COUNTER_SHARDS, DAILY_SHARDS, FAILED_STAGE_PREFIX, _platform_scope, _scope)
from api.database.interfaces import StatisticsStore
from api.database.store import COUNTER_NAMES, DAILY_FIELDS, Daily


class DynamoDBStatistics(DynamoDBClient, StatisticsStore):
    """StatisticsStore on DynamoDB."""

    async def get_counters(self, *, tenant_id: str | None) -> dict[str, float]:
        """Every counter shard in one BatchGetItem: a constant cost whatever the data size."""
        scope = _platform_scope() if tenant_id is None else _scope(tenant_id)
        items = await self._batch_get("get_counters", [(f"{scope}COUNTERS#{shard}", "#COUNTERS")
                                                       for shard in range(COUNTER_SHARDS)])
        return {name: sum(_count(item, name) for item in items.values()) for name in COUNTER_NAMES}

    async def get_daily(self, *, tenant_id: str | None, start: str, end: str) -> list[Daily]:
        """Daily shards: one BatchGetItem for a short range (the overview's today), one Query
        per shard for a longer one; the cost depends on the range, never on the data."""
        operation = "get_daily"
        if end < start:
            return []
        scope = _platform_scope() if tenant_id is None else _scope(tenant_id)
        try:
            first, last = date.fromisoformat(start), date.fromisoformat(end)
            dates = [(first + timedelta(days=n)).isoformat() for n in range((last - first).days + 1)]
        except ValueError:
            dates = None
        if dates is not None and len(dates) * DAILY_SHARDS <= MAX_BATCH_GET:
            found = await self._batch_get(operation, [(f"{scope}DAILY#{shard}", day) for day in dates
                                                      for shard in range(DAILY_SHARDS)])
            items = list(found.values())
        else:
            shards = await asyncio.gather(*(self._query_all(
                operation, partition=f"{scope}DAILY#{shard}", sk_between=(start, end))
                for shard in range(DAILY_SHARDS)))
            items = [item for shard in shards for item in shard]
        days: dict[str, Daily] = {}
        for item in items:
            day = days.setdefault(item["sk"]["S"], Daily(date=item["sk"]["S"]))
            for name, value in item.items():
                if name in DAILY_FIELDS:
                    day.counts[name] = day.counts.get(name, 0.0) + float(value["N"])
                elif name.startswith(FAILED_STAGE_PREFIX):
                    stage = name[len(FAILED_STAGE_PREFIX):]
                    day.failed_stages[stage] = day.failed_stages.get(stage, 0) + int(value["N"])
        return [days[day] for day in sorted(days)]

    async def add_api_calls(self, *, tenant_id: str, counts: dict[str, int]) -> None:
        """One transaction (idempotent under retries, unlike a bare ADD) on a random shard
        of each day, the tenant's and the platform's: API calls are the hottest aggregate."""
        scope = _scope(tenant_id)
        actions = [action for day, count in counts.items()
                   for action in self._bump_daily(scope, day, {"api_calls": count})]
        for chunk in _chunks(actions, MAX_TRANSACTION_ITEMS):
            for attempt in range(CONTENTION_ATTEMPTS):
                try:
                    await self._transact("add_api_calls", chunk)
                    break
                except _Refused as refused:
                    if not refused.contended:
                        raise StoreError(f"DynamoDB refused API call counts: {refused}") from refused
                    await _back_off(attempt)
            else:
                raise RecordConflict("API call counts stayed contended")
