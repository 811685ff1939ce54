"""The statistics aggregates on SQLite: per tenant, and platform-wide under PLATFORM_SCOPE."""

import sqlite3

from api.database.sqlite.connection import SQLiteConnection, bump_daily
from api.database.store import COUNTER_NAMES, PLATFORM_SCOPE, Daily


class SQLiteStatistics(SQLiteConnection):
    """StatisticsStore on SQLite."""

    async def get_counters(self, *, tenant_id: str | None) -> dict[str, float]:
        scope = PLATFORM_SCOPE if tenant_id is None else tenant_id
        stored = await self._read("get_counters", lambda conn: dict(conn.execute(
            "SELECT name, value FROM counters WHERE tenant_id = ?", (scope,)).fetchall()))
        return {name: stored.get(name, 0) for name in COUNTER_NAMES}

    async def get_daily(self, *, tenant_id: str | None, start: str, end: str) -> list[Daily]:
        scope = PLATFORM_SCOPE if tenant_id is None else tenant_id

        def work(conn: sqlite3.Connection) -> list[Daily]:
            days: dict[str, Daily] = {}
            for date, name, value in conn.execute(
                    "SELECT date, name, value FROM daily_stats "
                    "WHERE tenant_id = ? AND date BETWEEN ? AND ?", (scope, start, end)):
                days.setdefault(date, Daily(date=date)).counts[name] = value
            for date, stage, count in conn.execute(
                    "SELECT date, stage, count FROM daily_failed_stages "
                    "WHERE tenant_id = ? AND date BETWEEN ? AND ?", (scope, start, end)):
                days.setdefault(date, Daily(date=date)).failed_stages[stage] = count
            return [days[date] for date in sorted(days)]

        return await self._read("get_daily", work)

    async def add_api_calls(self, *, tenant_id: str, counts: dict[str, int]) -> None:
        def work(conn: sqlite3.Connection) -> None:
            for date, count in counts.items():
                bump_daily(conn, tenant_id, date, "api_calls", count)

        await self._write("add_api_calls", work)
