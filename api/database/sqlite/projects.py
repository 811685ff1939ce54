"""Projects, their builds, build logs and artifacts on SQLite."""

import sqlite3
from collections.abc import Sequence

from api.core.records import Artifact, Build, BuildLogLine, Project

from api.database.sqlite.agents import delete_agents
from api.database.sqlite.connection import (
    SQLiteConnection,
    bump,
    bump_daily,
    insert,
    keyset_page,
    to_record,
    to_records,
    update,
)
from api.database.store import (
    ACTIVE_BUILD_STATUSES,
    FINAL_BUILD_STATUSES,
    PLATFORM_SCOPE,
    PROJECT_STATUS_FOR_BUILD,
    Changes,
    Page,
    build_token_deltas,
    check_record_size,
)


def _count_finished_build(conn: sqlite3.Connection, build: Build) -> None:
    """Aggregates for a build that reached a final status (in the same transaction)."""
    status, tenant_id = build.status, build.tenant_id
    bump(conn, tenant_id, "builds_active", -1)
    bump(conn, tenant_id, f"builds_{status}", 1)
    finished_at = build.finished_at or build.updated_at
    for name, tokens in build_token_deltas(build).items():
        if tokens:
            bump(conn, tenant_id, name, tokens)
            bump_daily(conn, tenant_id, finished_at, name, tokens)
    if status == "succeeded":
        seconds = build.duration_seconds or 0.0
        bump(conn, tenant_id, "build_seconds_succeeded", seconds)
        bump_daily(conn, tenant_id, finished_at, "builds_succeeded", 1)
        bump_daily(conn, tenant_id, finished_at, "build_seconds_succeeded", seconds)
    elif status == "failed":
        bump_daily(conn, tenant_id, finished_at, "builds_failed", 1)
        stage = (build.error and build.error.stage) or "unknown"
        conn.executemany(
            "INSERT INTO daily_failed_stages (tenant_id, date, stage, count) VALUES (?, ?, ?, 1) "
            "ON CONFLICT (tenant_id, date, stage) DO UPDATE SET count = count + 1",
            [(scope, finished_at[:10], stage) for scope in (tenant_id, PLATFORM_SCOPE)],
        )


def _count_new_build(conn: sqlite3.Connection, build: Build, tenant_id: str) -> None:
    bump(conn, tenant_id, "builds_total", 1)
    bump(conn, tenant_id, "builds_active", 1)
    bump_daily(conn, tenant_id, build.created_at, "builds_total", 1)


def mirror_on_project(conn: sqlite3.Connection, build: Build) -> None:
    """A project's status, progress and stage follow its latest build."""
    conn.execute(
        "UPDATE projects SET status = ?, progress = ?, current_stage = ?, updated_at = ? "
        "WHERE project_id = ? AND latest_build_id = ?",
        (PROJECT_STATUS_FOR_BUILD[build.status], build.progress, build.current_stage,
         build.updated_at, build.project_id, build.build_id),
    )


def _append_build_logs(conn: sqlite3.Connection, build_id: str, entries: Sequence[BuildLogLine]) -> None:
    seq = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM build_logs WHERE build_id = ?",
                       (build_id,)).fetchone()[0]
    conn.executemany(
        "INSERT INTO build_logs (build_id, seq, stage, timestamp, level, message) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [(build_id, seq + offset, entry.stage, entry.timestamp, entry.level,
          entry.message) for offset, entry in enumerate(entries, start=1)])


def _put_artifacts(conn: sqlite3.Connection, tenant_id: str, artifacts: Sequence[Artifact]) -> None:
    rows = [{**dict(artifact), "tenant_id": tenant_id} for artifact in artifacts]
    for row in rows:
        check_record_size(row)
    conn.executemany(
        "INSERT INTO artifacts (tenant_id, project_id, path, build_id, stage, content, size, "
        "created_at) VALUES (:tenant_id, :project_id, :path, :build_id, :stage, :content, :size, "
        ":created_at) "
        "ON CONFLICT (project_id, path) DO UPDATE SET build_id = excluded.build_id, "
        "stage = excluded.stage, content = excluded.content, size = excluded.size, "
        "created_at = excluded.created_at", rows)


class SQLiteProjects(SQLiteConnection):
    """ProjectStore on SQLite."""

    async def create_project(self, *, tenant_id: str, project: Project, build: Build) -> None:
        def work(conn: sqlite3.Connection) -> None:
            insert(conn, "projects", project, tenant_id=tenant_id)
            insert(conn, "builds", build, tenant_id=tenant_id)
            _count_new_build(conn, build, tenant_id)

        await self._write("create_project", work)

    async def get_project(self, *, tenant_id: str, project_id: str) -> Project | None:
        return await self._read("get_project", lambda conn: to_record(Project, conn.execute(
            "SELECT * FROM projects WHERE project_id = ? AND tenant_id = ?",
            (project_id, tenant_id)).fetchone()))

    async def list_projects(self, *, tenant_id: str, limit: int, last_key: str | None,
                            status: str | None = None, user_id: str | None = None) -> Page[Project]:
        where, params = [], []
        for column, value in (("user_id", user_id), ("status", status)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        return await self._read("list_projects", lambda conn: keyset_page(
            conn, Project, tenant_id=tenant_id, select="SELECT * FROM projects", where=where, params=params,
            keys=("created_at", "project_id"), descending=True, limit=limit, last_key=last_key))

    async def delete_project(self, *, tenant_id: str, project_id: str) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            # Only a project of the tenant is deleted; what is under it is then its own.
            if conn.execute("DELETE FROM projects WHERE project_id = ? AND tenant_id = ?",
                            (project_id, tenant_id)).rowcount == 0:
                return False
            active = conn.execute(
                f"SELECT count(*) FROM builds WHERE project_id = ? AND status IN "
                f"{ACTIVE_BUILD_STATUSES}", (project_id,)).fetchone()[0]
            if active:
                bump(conn, tenant_id, "builds_active", -active)
                bump(conn, tenant_id, "builds_cancelled", active)
            conn.execute(
                "DELETE FROM build_logs WHERE build_id IN "
                "(SELECT build_id FROM builds WHERE project_id = ?)", (project_id,))
            conn.execute("DELETE FROM builds WHERE project_id = ?", (project_id,))
            conn.execute("DELETE FROM artifacts WHERE project_id = ?", (project_id,))
            delete_agents(conn, tenant_id, "project_id = ?", (project_id,))
            return True

        return await self._write("delete_project", work)

    async def add_build(self, *, tenant_id: str, build: Build) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            latest = conn.execute(
                "SELECT b.status FROM projects p LEFT JOIN builds b ON b.build_id = p.latest_build_id "
                "WHERE p.project_id = ? AND p.tenant_id = ?",
                (build.project_id, tenant_id)).fetchone()
            if latest is None or latest["status"] in ACTIVE_BUILD_STATUSES:
                return False
            insert(conn, "builds", build, tenant_id=tenant_id)
            conn.execute(
                "UPDATE projects SET latest_build_id = ?, status = ?, progress = ?, "
                "current_stage = ?, updated_at = ? WHERE project_id = ?",
                (build.build_id, PROJECT_STATUS_FOR_BUILD[build.status], build.progress,
                 build.current_stage, build.created_at, build.project_id))
            _count_new_build(conn, build, tenant_id)
            return True

        return await self._write("add_build", work)

    async def get_build(self, *, tenant_id: str, build_id: str) -> Build | None:
        return await self._read("get_build", lambda conn: to_record(Build, conn.execute(
            "SELECT * FROM builds WHERE build_id = ? AND tenant_id = ?",
            (build_id, tenant_id)).fetchone()))

    async def get_project_with_latest_build(self, *, tenant_id: str,
                                            project_id: str) -> tuple[Project, Build] | None:
        def read(conn: sqlite3.Connection) -> tuple[Project, Build] | None:
            # One read transaction: both rows from the same snapshot, in one thread hop (the
            # project GET's two hops were a tenth of its time, docs/PERFORMANCE.md F4).
            conn.execute("BEGIN")
            try:
                project = to_record(Project, conn.execute(
                    "SELECT * FROM projects WHERE project_id = ? AND tenant_id = ?",
                    (project_id, tenant_id)).fetchone())
                build = project and to_record(Build, conn.execute(
                    "SELECT * FROM builds WHERE build_id = ?", (project.latest_build_id,)).fetchone())
            finally:
                conn.execute("COMMIT")
            return (project, build) if project and build else None

        return await self._read("get_project_with_latest_build", read)

    async def list_builds(self, *, tenant_id: str, project_id: str, limit: int,
                          last_key: str | None) -> Page[Build]:
        return await self._read("list_builds", lambda conn: keyset_page(
            conn, Build, tenant_id=tenant_id, select="SELECT * FROM builds", where=["project_id = ?"], params=[project_id],
            keys=("created_at", "build_id"), descending=True, limit=limit, last_key=last_key))

    async def update_build(self, *, tenant_id: str, build_id: str, changes: Changes,
                           expect_status: tuple[str, ...], expect_owner: str | None = None,
                           logs: Sequence[BuildLogLine] = (),
                           artifacts: Sequence[Artifact] = ()) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT * FROM builds WHERE build_id = ? AND tenant_id = ?",
                               (build_id, tenant_id)).fetchone()
            current = to_record(Build, row)
            if current is None or current.status not in expect_status:
                return False
            if expect_owner is not None and current.owner != expect_owner:
                return False
            updated = current.changed(changes)
            # Stored as checked: a value given as what validates into its field is written as the field.
            update(conn, "builds", ("build_id", build_id), row,
                   {name: getattr(updated, name) for name in changes})
            if updated.status != current.status and updated.status in FINAL_BUILD_STATUSES:
                _count_finished_build(conn, updated)
            mirror_on_project(conn, updated)
            if logs:
                _append_build_logs(conn, build_id, logs)
            if artifacts:
                _put_artifacts(conn, tenant_id, artifacts)
            return True

        return await self._write("update_build", work)

    async def list_build_logs(self, *, tenant_id: str, build_id: str, stage: str) -> list[BuildLogLine]:
        # A build's lines are its own: the tenant is the build's (found by its key).
        return await self._read("list_build_logs", lambda conn: to_records(BuildLogLine, conn.execute(
            "SELECT stage, timestamp, level, message FROM build_logs WHERE build_id = ? AND "
            "stage = ? AND EXISTS (SELECT 1 FROM builds WHERE build_id = ? AND tenant_id = ?) "
            "ORDER BY seq", (build_id, stage, build_id, tenant_id)).fetchall()))

    async def list_artifacts(self, *, tenant_id: str, project_id: str) -> list[Artifact]:
        return await self._read("list_artifacts", lambda conn: to_records(Artifact, conn.execute(
            "SELECT tenant_id, project_id, path, build_id, stage, size, created_at FROM artifacts "
            "WHERE project_id = ? AND tenant_id = ? ORDER BY path",
            (project_id, tenant_id)).fetchall()))

    async def get_artifact(self, *, tenant_id: str, project_id: str, path: str) -> Artifact | None:
        return await self._read("get_artifact", lambda conn: to_record(Artifact, conn.execute(
            "SELECT * FROM artifacts WHERE project_id = ? AND path = ? AND tenant_id = ?",
            (project_id, path, tenant_id)).fetchone()))
