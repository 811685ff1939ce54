"""Agents and their invocations on SQLite."""

import sqlite3
from typing import Any

from api.core.records import AGENT_STAT_FIELDS, Agent, Invocation, Message
from api.database.sqlite.connection import (
    SQLiteConnection,
    bump,
    bump_daily,
    insert,
    keyset_page,
    to_record,
    update,
)
from api.database.store import (
    HELD_BUILD_STATUSES,
    Changes,
    Page,
    invocation_deltas,
)


def adjust_agent_count(conn: sqlite3.Connection, tenant_id: str, status: str | None,
                       delta: int) -> None:
    if status in ("running", "offline"):
        bump(conn, tenant_id, f"agents_{status}", delta)


def delete_agents(conn: sqlite3.Connection, tenant_id: str, where: str,
                  params: tuple[Any, ...]) -> None:
    """Delete the tenant's agents matching `where`, with their invocations and sessions."""
    agents = conn.execute(f"SELECT agent_id, status FROM agents WHERE tenant_id = ? AND {where}",
                          (tenant_id, *params)).fetchall()
    for agent in agents:
        adjust_agent_count(conn, tenant_id, agent["status"], -1)
        agent_id = agent["agent_id"]
        conn.execute(
            "DELETE FROM messages WHERE session_id IN "
            "(SELECT session_id FROM sessions WHERE agent_id = ?)", (agent_id,))
        conn.execute("DELETE FROM sessions WHERE agent_id = ?", (agent_id,))
        conn.execute("DELETE FROM invocations WHERE agent_id = ?", (agent_id,))
        conn.execute("DELETE FROM agent_capabilities WHERE agent_id = ?", (agent_id,))
        conn.execute("DELETE FROM agents WHERE agent_id = ?", (agent_id,))


class SQLiteAgents(SQLiteConnection):
    """AgentStore on SQLite."""

    async def put_agent(self, *, tenant_id: str, agent: Agent,
                        expect_owner: str | None = None) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            if expect_owner is not None and conn.execute(
                    "SELECT 1 FROM builds WHERE build_id = ? AND tenant_id = ? AND owner = ? AND "
                    f"status IN {HELD_BUILD_STATUSES}",
                    (agent.build_id, tenant_id, expect_owner)).fetchone() is None:
                return False
            existing = conn.execute("SELECT * FROM agents WHERE agent_id = ?",
                                    (agent.agent_id,)).fetchone()
            if existing is None:
                insert(conn, "agents", agent, tenant_id=tenant_id)
                created_at = agent.created_at
            elif existing["tenant_id"] != tenant_id:
                return False  # the id (its project's) is another tenant's
            else:
                adjust_agent_count(conn, tenant_id, existing["status"], -1)
                changes = agent.model_dump(exclude={"agent_id", "created_at", "tenant_id",
                                                    *AGENT_STAT_FIELDS})
                update(conn, "agents", ("agent_id", agent.agent_id), existing, changes)
                created_at = existing["created_at"]
            adjust_agent_count(conn, tenant_id, agent.status, 1)
            self._index_capabilities(conn, tenant_id, agent.agent_id, created_at,
                                     agent.capabilities)
            return True

        return await self._write("put_agent", work)

    @staticmethod
    def _index_capabilities(conn: sqlite3.Connection, tenant_id: str, agent_id: str,
                            created_at: str, capabilities: list[str]) -> None:
        conn.execute("DELETE FROM agent_capabilities WHERE agent_id = ?", (agent_id,))
        conn.executemany(
            "INSERT INTO agent_capabilities (tenant_id, capability, created_at, agent_id) "
            "VALUES (?, ?, ?, ?)", [(tenant_id, capability, created_at, agent_id)
                                    for capability in dict.fromkeys(capabilities)])

    async def get_agent(self, *, tenant_id: str, agent_id: str) -> Agent | None:
        return await self._read("get_agent", lambda conn: to_record(Agent, conn.execute(
            "SELECT * FROM agents WHERE agent_id = ? AND tenant_id = ?",
            (agent_id, tenant_id)).fetchone()))

    async def list_agents(self, *, tenant_id: str, limit: int, last_key: str | None,
                          project_id: str | None = None, status: str | None = None,
                          category: str | None = None,
                          capabilities: list[str] | None = None) -> Page[Agent]:
        where, params = [], []
        for column, value in (("project_id", project_id), ("status", status), ("category", category)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if capabilities:
            where.append(
                "agent_id IN (SELECT agent_id FROM agent_capabilities WHERE tenant_id = ? AND "
                f"capability IN ({', '.join('?' * len(capabilities))}))")
            params.extend([tenant_id, *capabilities])
        return await self._read("list_agents", lambda conn: keyset_page(
            conn, Agent, tenant_id=tenant_id, select="SELECT * FROM agents", where=where, params=params,
            keys=("created_at", "agent_id"), descending=True, limit=limit, last_key=last_key))

    async def update_agent(self, *, tenant_id: str, agent_id: str,
                           changes: Changes) -> Agent | None:
        def work(conn: sqlite3.Connection) -> Agent | None:
            row = conn.execute("SELECT * FROM agents WHERE agent_id = ? AND tenant_id = ?",
                               (agent_id, tenant_id)).fetchone()
            if row is None:
                return None
            update(conn, "agents", ("agent_id", agent_id), row, changes)
            if "status" in changes and changes["status"] != row["status"]:
                adjust_agent_count(conn, tenant_id, row["status"], -1)
                adjust_agent_count(conn, tenant_id, changes["status"], 1)
            if "capabilities" in changes:
                self._index_capabilities(conn, tenant_id, agent_id, row["created_at"],
                                         changes["capabilities"])
            return to_record(Agent, conn.execute("SELECT * FROM agents WHERE agent_id = ?",
                                          (agent_id,)).fetchone())

        return await self._write("update_agent", work)

    async def delete_agent(self, *, tenant_id: str, agent_id: str) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            exists = conn.execute("SELECT 1 FROM agents WHERE agent_id = ? AND tenant_id = ?",
                                  (agent_id, tenant_id)).fetchone()
            delete_agents(conn, tenant_id, "agent_id = ?", (agent_id,))
            return exists is not None

        return await self._write("delete_agent", work)

    async def record_invocation(self, *, tenant_id: str, invocation: Invocation,
                                messages: list[Message]) -> None:
        def work(conn: sqlite3.Connection) -> None:
            stats, totals = invocation_deltas(invocation)
            updated = conn.execute(
                f"UPDATE agents SET {''.join(f'{column} = {column} + ?, ' for column in stats)}"
                "last_invoked_at = ? WHERE agent_id = ? AND tenant_id = ?",
                (*stats.values(), invocation.created_at, invocation.agent_id,
                 tenant_id)).rowcount
            if not updated:
                raise LookupError(f"agent {invocation.agent_id} no longer exists")
            insert(conn, "invocations", invocation, tenant_id=tenant_id)
            for name, delta in totals.items():
                if delta:
                    bump(conn, tenant_id, name, delta)
                    bump_daily(conn, tenant_id, invocation.created_at, name, delta)
            if messages:
                session_id = messages[0].session_id
                seq = conn.execute(
                    "SELECT message_count FROM sessions WHERE session_id = ? AND tenant_id = ?",
                    (session_id, tenant_id)).fetchone()
                if seq is None:
                    raise LookupError(f"session {session_id} no longer exists")
                for offset, message in enumerate(messages, start=1):
                    insert(conn, "messages", message.changed({"seq": seq[0] + offset}),
                           tenant_id=tenant_id)
                conn.execute(
                    "UPDATE sessions SET message_count = message_count + ?, last_active_at = ? "
                    "WHERE session_id = ?", (len(messages), messages[-1].created_at, session_id))

        await self._write("record_invocation", work)

    async def list_invocations(self, *, tenant_id: str, agent_id: str, limit: int,
                               last_key: str | None) -> Page[Invocation]:
        return await self._read("list_invocations", lambda conn: keyset_page(
            conn, Invocation, tenant_id=tenant_id, select="SELECT * FROM invocations", where=["agent_id = ?"], params=[agent_id],
            keys=("created_at", "invocation_id"), descending=True, limit=limit, last_key=last_key))
