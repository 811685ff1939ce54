"""Rate limits' counters and slots on SQLite: each take and acquire is one of the writer's
transactions, so two processes sharing the file never both get the last unit."""

import sqlite3

from api.database.sqlite.connection import SQLiteConnection


class SQLiteLimits(SQLiteConnection):
    """LimitStore on SQLite."""

    async def take_allowance(self, *, tenant_id: str, counter: str, amount: int,
                             limit: int | None, now: float, expires_at: float) -> tuple[int, int]:
        def work(conn: sqlite3.Connection) -> tuple[int, int]:
            conn.execute("DELETE FROM limit_counters WHERE expires_at <= ?", (now,))
            row = conn.execute("SELECT total FROM limit_counters WHERE tenant_id = ? AND counter = ?",
                               (tenant_id, counter)).fetchone()
            total = 0 if row is None else row["total"]
            taken = amount if limit is None else max(0, min(amount, limit - total))
            if taken:
                conn.execute(
                    "INSERT INTO limit_counters (tenant_id, counter, total, expires_at) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (tenant_id, counter) DO UPDATE SET "
                    "total = total + excluded.total", (tenant_id, counter, taken, expires_at))
            return taken, total + taken

        return await self._write("take_allowance", work)

    async def acquire_slot(self, *, tenant_id: str, pool: str, slot_id: str, limit: int,
                           now: float, expires_at: float) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            conn.execute("DELETE FROM limit_slots WHERE expires_at <= ?", (now,))
            held = conn.execute("SELECT COUNT(*) FROM limit_slots WHERE tenant_id = ? AND pool = ?",
                                (tenant_id, pool)).fetchone()[0]
            if held >= limit:
                return False
            conn.execute("INSERT OR REPLACE INTO limit_slots (tenant_id, pool, slot_id, expires_at) "
                         "VALUES (?, ?, ?, ?)", (tenant_id, pool, slot_id, expires_at))
            return True

        return await self._write("acquire_slot", work)

    async def release_slot(self, *, tenant_id: str, pool: str, slot_id: str) -> None:
        await self._write("release_slot", lambda conn: conn.execute(
            "DELETE FROM limit_slots WHERE tenant_id = ? AND pool = ? AND slot_id = ?",
            (tenant_id, pool, slot_id)))
