"""Build claims and leases on SQLite: how engines share builds."""

import sqlite3

from api.database.sqlite.connection import SQLiteConnection, to_record, to_records
from api.database.sqlite.projects import mirror_on_project
from api.core.records import Build
from api.database.store import (
    ACTIVE_BUILD_STATUSES, CLAIMABLE_UNOWNED_STATUSES, HELD_BUILD_STATUSES, LeasedBuild)


def _claimable_condition() -> str:
    return (f"((status IN {CLAIMABLE_UNOWNED_STATUSES} AND owner IS NULL) OR "
            f"(status IN {ACTIVE_BUILD_STATUSES} AND owner IS NOT NULL AND lease_until < ?))")


class SQLiteLeases(SQLiteConnection):
    """LeaseStore on SQLite."""

    async def list_claimable_builds(self, *, now: str, limit: int) -> list[Build]:
        return await self._read("list_claimable_builds", lambda conn: to_records(Build, conn.execute(
            f"SELECT * FROM builds WHERE status IN {ACTIVE_BUILD_STATUSES} AND "
            f"{_claimable_condition()} ORDER BY created_at LIMIT ?", (now, limit)).fetchall()))

    async def claim_build(self, *, tenant_id: str, build_id: str, owner: str, lease_until: str,
                          now: str) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            claimed = conn.execute(
                # Only a takeover of an expired lease counts as a recovery (SET reads the old owner).
                "UPDATE builds SET owner = ?, lease_until = ?, recoveries = recoveries + (owner IS NOT NULL), "
                "status = CASE status WHEN 'queued' THEN 'running' ELSE status END, "
                "started_at = COALESCE(started_at, ?), updated_at = ? "
                f"WHERE build_id = ? AND tenant_id = ? AND {_claimable_condition()}",
                (owner, lease_until, now, now, build_id, tenant_id, now)).rowcount
            if claimed:
                build = to_record(Build, conn.execute("SELECT * FROM builds WHERE build_id = ?",
                                                      (build_id,)).fetchone())
                mirror_on_project(conn, build)  # type: ignore[arg-type]
            return bool(claimed)

        return await self._write("claim_build", work)

    async def renew_leases(self, *, owner: str, lease_until: str) -> list[LeasedBuild]:
        def work(conn: sqlite3.Connection) -> list[LeasedBuild]:
            conn.execute(
                f"UPDATE builds SET lease_until = ? WHERE owner = ? AND status IN {ACTIVE_BUILD_STATUSES}",
                (lease_until, owner))
            return [LeasedBuild(*row) for row in conn.execute(
                "SELECT tenant_id, build_id, status FROM builds WHERE owner = ?", (owner,)).fetchall()]

        return await self._write("renew_leases", work)

    async def list_held_build_ids(self, *, owner: str) -> list[str]:
        return await self._read("list_held_build_ids", lambda conn: [row[0] for row in conn.execute(
            f"SELECT build_id FROM builds WHERE owner = ? AND status IN {HELD_BUILD_STATUSES}",
            (owner,)).fetchall()])
