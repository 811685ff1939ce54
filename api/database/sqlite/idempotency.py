"""Idempotency keys on SQLite: one row per (tenant, key), claimed and answered in the writer's
transactions, so that two requests with one key never both hold it."""

import sqlite3

from api.database.sqlite.connection import SQLiteConnection
from api.database.store import IdempotencyKeyState, IdempotentAnswer, check_answer_size


class SQLiteIdempotency(SQLiteConnection):
    """IdempotencyStore on SQLite."""

    async def claim_idempotency_key(
        self, *, tenant_id: str, key: str, fingerprint: str, claim_id: str, now: str,
        expires_at: str, stale_before: str,
    ) -> IdempotencyKeyState | None:
        def work(conn: sqlite3.Connection) -> IdempotencyKeyState | None:
            # Every expired key goes, not just this one: each row is deleted once, by the
            # first claim after it expired.
            conn.execute("DELETE FROM idempotency_keys WHERE expires_at <= ?", (now,))
            row = conn.execute(
                "SELECT fingerprint, claimed_at, status, content_type, body FROM idempotency_keys "
                "WHERE tenant_id = ? AND key = ?", (tenant_id, key)).fetchone()
            if row is not None and (row["status"] is not None or row["claimed_at"] >= stale_before):
                answer = (None if row["status"] is None else
                          IdempotentAnswer(row["status"], row["content_type"], bytes(row["body"])))
                return IdempotencyKeyState(row["fingerprint"], answer)
            conn.execute(
                "INSERT OR REPLACE INTO idempotency_keys (tenant_id, key, fingerprint, claim_id, "
                "claimed_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)",
                (tenant_id, key, fingerprint, claim_id, now, expires_at))
            return None

        return await self._write("claim_idempotency_key", work)

    async def keep_idempotent_answer(self, *, tenant_id: str, key: str, claim_id: str,
                                     answer: IdempotentAnswer) -> bool:
        check_answer_size(key, answer)
        return await self._write("keep_idempotent_answer", lambda conn: conn.execute(
            "UPDATE idempotency_keys SET status = ?, content_type = ?, body = ? "
            "WHERE tenant_id = ? AND key = ? AND claim_id = ? AND status IS NULL",
            (answer.status, answer.content_type, answer.body, tenant_id, key, claim_id),
        ).rowcount == 1)

    async def release_idempotency_key(self, *, tenant_id: str, key: str, claim_id: str) -> None:
        await self._write("release_idempotency_key", lambda conn: conn.execute(
            "DELETE FROM idempotency_keys WHERE tenant_id = ? AND key = ? AND claim_id = ? "
            "AND status IS NULL", (tenant_id, key, claim_id)))
