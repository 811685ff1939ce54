"""API keys on SQLite: a row per key, by its id."""

import sqlite3
from dataclasses import astuple, fields

from api.database.sqlite.connection import SQLiteConnection
from api.database.store import ApiKey

# The table's columns are the record's fields (migration 0007).
_FIELDS = tuple(field.name for field in fields(ApiKey))
_COLUMNS = ", ".join(_FIELDS)


def _key(row: sqlite3.Row) -> ApiKey:
    return ApiKey(**dict(row))


class SQLiteApiKeys(SQLiteConnection):
    """KeyStore on SQLite."""

    async def put_api_key(self, *, key: ApiKey) -> None:
        await self._write("put_api_key", lambda conn: conn.execute(
            f"INSERT INTO api_keys ({_COLUMNS}) VALUES ({', '.join('?' * len(_FIELDS))})",
            astuple(key)))

    async def get_api_key(self, *, key_id: str) -> ApiKey | None:
        def read(conn: sqlite3.Connection) -> ApiKey | None:
            row = conn.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,)).fetchone()
            return None if row is None else _key(row)

        return await self._read("get_api_key", read)

    async def list_api_keys(self, *, tenant_id: str | None) -> list[ApiKey]:
        def read(conn: sqlite3.Connection) -> list[ApiKey]:
            if tenant_id is None:
                rows = conn.execute(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at, key_id")
            else:
                rows = conn.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE tenant_id = ? "
                                    "ORDER BY created_at, key_id", (tenant_id,))
            return [_key(row) for row in rows.fetchall()]

        return await self._read("list_api_keys", read)

    async def revoke_api_key(self, *, key_id: str, tenant_id: str | None,
                             revoked_at: str) -> ApiKey | None:
        def work(conn: sqlite3.Connection) -> ApiKey | None:
            scope, args = ("", ()) if tenant_id is None else (" AND tenant_id = ?", (tenant_id,))
            conn.execute(f"UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) "
                         f"WHERE key_id = ?{scope}", (revoked_at, key_id, *args))
            row = conn.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE key_id = ?{scope}",
                               (key_id, *args)).fetchone()
            return None if row is None else _key(row)

        return await self._write("revoke_api_key", work)
