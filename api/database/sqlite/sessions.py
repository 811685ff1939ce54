"""Sessions and their messages on SQLite."""

import sqlite3

from api.database.sqlite.connection import (
    SQLiteConnection,
    insert,
    keyset_page,
    to_record,
    to_records,
)
from api.core.records import Message, Session
from api.database.store import Page


class SQLiteSessions(SQLiteConnection):
    """SessionStore on SQLite."""

    async def create_session(self, *, tenant_id: str, session: Session) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            if conn.execute("SELECT 1 FROM agents WHERE agent_id = ? AND tenant_id = ?",
                            (session.agent_id, tenant_id)).fetchone() is None:
                return False
            insert(conn, "sessions", session, tenant_id=tenant_id)
            return True

        return await self._write("create_session", work)

    async def get_session(self, *, tenant_id: str, session_id: str) -> Session | None:
        return await self._read("get_session", lambda conn: to_record(Session, conn.execute(
            "SELECT * FROM sessions WHERE session_id = ? AND tenant_id = ?",
            (session_id, tenant_id)).fetchone()))

    async def list_sessions(self, *, tenant_id: str, agent_id: str, limit: int,
                            last_key: str | None) -> Page[Session]:
        return await self._read("list_sessions", lambda conn: keyset_page(
            conn, Session, tenant_id=tenant_id, select="SELECT * FROM sessions", where=["agent_id = ?"], params=[agent_id],
            keys=("last_active_at", "session_id"), descending=True, limit=limit, last_key=last_key))

    async def list_messages(self, *, tenant_id: str, session_id: str, limit: int,
                            last_key: str | None) -> Page[Message]:
        return await self._read("list_messages", lambda conn: keyset_page(
            conn, Message, tenant_id=tenant_id, select="SELECT * FROM messages", where=["session_id = ?"], params=[session_id],
            keys=("seq", "message_id"), descending=False, limit=limit, last_key=last_key))

    async def recent_messages(self, *, tenant_id: str, session_id: str,
                              limit: int) -> list[Message]:
        rows = await self._read("recent_messages", lambda conn: to_records(Message, conn.execute(
            "SELECT * FROM messages WHERE tenant_id = ? AND session_id = ? ORDER BY seq DESC "
            "LIMIT ?", (tenant_id, session_id, limit)).fetchall()))
        return rows[::-1]

    async def delete_session(self, *, tenant_id: str, session_id: str) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            if conn.execute("DELETE FROM sessions WHERE session_id = ? AND tenant_id = ?",
                            (session_id, tenant_id)).rowcount == 0:
                return False
            conn.execute("DELETE FROM messages WHERE session_id = ?", (session_id,))
            return True

        return await self._write("delete_session", work)
