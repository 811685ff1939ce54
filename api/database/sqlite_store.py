"""The embedded store: one SQLite file in WAL mode.

sqlite3 blocks, so nothing here runs on the event loop: every write is one transaction run
by a single writer thread (SQLite has one writer anyway, and a single thread makes each
write function atomic without locks), and reads run on a small pool of reader threads, each
with its own connection (WAL lets them read while the writer writes).
"""

import asyncio
import fcntl
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from api.core.store_errors import StoreError
from api.database import cursor
from api.database.store import (
    ACTIVE_BUILD_STATUSES,
    CLAIMABLE_UNOWNED_STATUSES,
    COUNTER_NAMES,
    FINAL_BUILD_STATUSES,
    HELD_BUILD_STATUSES,
    PROJECT_STATUS_FOR_BUILD,
    Daily,
    Page,
    Record,
    Store,
    build_token_deltas,
    check_record_size,
    invocation_deltas,
)

T = TypeVar("T")

JSON_COLUMNS = {"tags", "stages", "context", "error", "capabilities", "tools", "trace", "metadata",
                "usage"}
# SQLite has no boolean type: these integer columns read back as bool.
BOOL_COLUMNS = {"tokens_estimated"}
BUSY_TIMEOUT_SECONDS = 5.0
READER_THREADS = 2


def _row(row: sqlite3.Row | None) -> Record | None:
    if row is None:
        return None
    record = dict(row)
    for column in JSON_COLUMNS.intersection(record):
        if record[column] is not None:
            record[column] = json.loads(record[column])
    for column in BOOL_COLUMNS.intersection(record):
        record[column] = bool(record[column])
    return record


def _rows(rows: list[sqlite3.Row]) -> list[Record]:
    return [_row(row) for row in rows]  # type: ignore[misc]


def _column_value(column: str, value: Any) -> Any:
    return json.dumps(value) if column in JSON_COLUMNS and value is not None else value


def _insert(conn: sqlite3.Connection, table: str, record: Record) -> None:
    check_record_size(record)
    columns = list(record)
    conn.execute(
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
        [_column_value(column, record[column]) for column in columns],
    )


def _bump(conn: sqlite3.Connection, name: str, delta: float) -> None:
    conn.execute(
        "INSERT INTO counters (name, value) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
        (name, delta),
    )


def _bump_daily(conn: sqlite3.Connection, timestamp: str, name: str, delta: float) -> None:
    conn.execute(
        "INSERT INTO daily_stats (date, name, value) VALUES (?, ?, ?) "
        "ON CONFLICT (date, name) DO UPDATE SET value = value + excluded.value",
        (timestamp[:10], name, delta),
    )


def _keyset_page(
    conn: sqlite3.Connection,
    *,
    select: str,
    where: list[str],
    params: list[Any],
    keys: tuple[str, str],
    descending: bool,
    limit: int,
    last_key: str | None,
) -> Page:
    """One page ordered by the two `keys` columns, starting after the cursor `last_key`."""
    where = list(where)
    params = list(params)
    if last_key is not None:
        where.append(f"({keys[0]}, {keys[1]}) {'<' if descending else '>'} (?, ?)")
        params.extend(cursor.decode(last_key, size=2))
    direction = "DESC" if descending else "ASC"
    sql = select + (f" WHERE {' AND '.join(where)}" if where else "")
    sql += f" ORDER BY {keys[0]} {direction}, {keys[1]} {direction} LIMIT ?"
    rows = conn.execute(sql, [*params, limit + 1]).fetchall()
    items = _rows(rows[:limit])
    more = len(rows) > limit
    next_key = cursor.encode([items[-1][keys[0]], items[-1][keys[1]]]) if more else None
    return Page(items=items, last_key=next_key)


def _adjust_agent_count(conn: sqlite3.Connection, status: str | None, delta: int) -> None:
    if status in ("running", "offline"):
        _bump(conn, f"agents_{status}", delta)


def _delete_agents(conn: sqlite3.Connection, where: str, params: tuple[Any, ...]) -> None:
    agents = conn.execute(f"SELECT agent_id, status FROM agents WHERE {where}", params).fetchall()
    for agent in agents:
        _adjust_agent_count(conn, agent["status"], -1)
        agent_id = agent["agent_id"]
        conn.execute(
            "DELETE FROM messages WHERE session_id IN "
            "(SELECT session_id FROM sessions WHERE agent_id = ?)", (agent_id,))
        conn.execute("DELETE FROM sessions WHERE agent_id = ?", (agent_id,))
        conn.execute("DELETE FROM invocations WHERE agent_id = ?", (agent_id,))
        conn.execute("DELETE FROM agent_capabilities WHERE agent_id = ?", (agent_id,))
        conn.execute("DELETE FROM agents WHERE agent_id = ?", (agent_id,))


def _count_finished_build(conn: sqlite3.Connection, build: Record) -> None:
    """Aggregates for a build that reached a final status (in the same transaction)."""
    status = build["status"]
    _bump(conn, "builds_active", -1)
    _bump(conn, f"builds_{status}", 1)
    finished_at = build["finished_at"]
    for name, tokens in build_token_deltas(build).items():
        if tokens:
            _bump(conn, name, tokens)
            _bump_daily(conn, finished_at, name, tokens)
    if status == "succeeded":
        _bump(conn, "build_seconds_succeeded", build["duration_seconds"] or 0.0)
        _bump_daily(conn, finished_at, "builds_succeeded", 1)
        _bump_daily(conn, finished_at, "build_seconds_succeeded", build["duration_seconds"] or 0.0)
    elif status == "failed":
        _bump_daily(conn, finished_at, "builds_failed", 1)
        stage = (build.get("error") or {}).get("stage") or "unknown"
        conn.execute(
            "INSERT INTO daily_failed_stages (date, stage, count) VALUES (?, ?, 1) "
            "ON CONFLICT (date, stage) DO UPDATE SET count = count + 1",
            (finished_at[:10], stage),
        )


def _mirror_on_project(conn: sqlite3.Connection, build: Record) -> None:
    """A project's status, progress and stage follow its latest build."""
    conn.execute(
        "UPDATE projects SET status = ?, progress = ?, current_stage = ?, updated_at = ? "
        "WHERE project_id = ? AND latest_build_id = ?",
        (PROJECT_STATUS_FOR_BUILD[build["status"]], build["progress"], build["current_stage"],
         build["updated_at"], build["project_id"], build["build_id"]),
    )


def _append_build_logs(conn: sqlite3.Connection, build_id: str, entries: Sequence[Record]) -> None:
    seq = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM build_logs WHERE build_id = ?",
                       (build_id,)).fetchone()[0]
    conn.executemany(
        "INSERT INTO build_logs (build_id, seq, stage, timestamp, level, message) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [(build_id, seq + offset, entry["stage"], entry["timestamp"], entry["level"],
          entry["message"]) for offset, entry in enumerate(entries, start=1)])


def _put_artifacts(conn: sqlite3.Connection, artifacts: Sequence[Record]) -> None:
    for artifact in artifacts:
        check_record_size(artifact)
    conn.executemany(
        "INSERT INTO artifacts (project_id, path, build_id, stage, content, size, created_at) "
        "VALUES (:project_id, :path, :build_id, :stage, :content, :size, :created_at) "
        "ON CONFLICT (project_id, path) DO UPDATE SET build_id = excluded.build_id, "
        "stage = excluded.stage, content = excluded.content, size = excluded.size, "
        "created_at = excluded.created_at", artifacts)


def _claimable_condition() -> str:
    return (f"((status IN {CLAIMABLE_UNOWNED_STATUSES} AND owner IS NULL) OR "
            f"(status IN {ACTIVE_BUILD_STATUSES} AND owner IS NOT NULL AND lease_until < ?))")


class SQLiteStore(Store):
    backend_name = "sqlite"

    def __init__(self, *, path: Path, slow_query_threshold_seconds: float) -> None:
        super().__init__(slow_query_threshold_seconds=slow_query_threshold_seconds)
        self.path = path
        self._writer: ThreadPoolExecutor | None = None
        self._readers: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._reader_connections: list[sqlite3.Connection] = []
        self._writer_connection: sqlite3.Connection | None = None
        self._inode: int | None = None

    # -- plumbing --------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
        )
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
            self._reader_connections.append(conn)
        return conn

    def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._writer_connection
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = work(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    async def _run(self, operation: str, executor: ThreadPoolExecutor | None,
                   call: Callable[[], T]) -> T:
        if executor is None:
            raise StoreError("the store is not open")

        async def in_thread() -> T:
            try:
                return await asyncio.get_running_loop().run_in_executor(executor, call)
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite {operation} failed: {exc}") from exc

        return await self.timed(operation, in_thread)

    async def _write(self, operation: str, work: Callable[[sqlite3.Connection], T]) -> T:
        return await self._run(operation, self._writer, lambda: self._transaction(work))

    async def _read(self, operation: str, work: Callable[[sqlite3.Connection], T]) -> T:
        return await self._run(operation, self._readers, lambda: work(self._reader()))

    # -- lifecycle -------------------------------------------------------------------------
    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._readers = ThreadPoolExecutor(READER_THREADS, thread_name_prefix="sqlite-reader")
        await self._run("migrate", self._writer, self._open_writer)

    def _open_writer(self) -> None:
        conn = self._writer_connection = self._connect()
        conn.execute("PRAGMA journal_mode = WAL")
        migrations = sorted(
            (entry for entry in resources.files("api.database.migrations.sqlite").iterdir()
             if entry.name.endswith(".sql")),
            key=lambda entry: entry.name,
        )
        # Several worker processes open the same file at once: one migrates, the others wait
        # on the lock and then find the schema current. (The version must be read under the
        # lock; executescript cannot run inside a transaction we opened to guard it.)
        with open(self.path.with_name(self.path.name + ".migrate.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            for number, migration in enumerate(migrations, start=1):
                if number > version:
                    conn.executescript(
                        f"BEGIN IMMEDIATE; {migration.read_text()}; PRAGMA user_version = {number}; COMMIT;"
                    )
        self._inode = os.stat(self.path).st_ino

    async def close(self) -> None:
        for executor in (self._readers, self._writer):
            if executor is not None:
                executor.shutdown(wait=True)
        for conn in self._reader_connections:
            conn.close()
        if self._writer_connection is not None:
            self._writer_connection.close()
        self._readers = self._writer = self._writer_connection = None
        self._reader_connections = []

    async def ping(self) -> None:
        def check() -> None:
            # A fresh connection without create: an open connection would keep answering
            # from a file that was deleted or replaced under it.
            if os.stat(self.path).st_ino != self._inode:
                raise sqlite3.OperationalError("database file was replaced")
            conn = sqlite3.connect(f"file:{self.path}?mode=rw", uri=True, timeout=1.0)
            try:
                conn.execute("SELECT count(*) FROM counters").fetchone()
            finally:
                conn.close()

        def check_or_fail() -> None:
            try:
                check()
            except OSError as exc:
                raise sqlite3.OperationalError(str(exc)) from exc

        await self._run("ping", self._readers, check_or_fail)

    # -- projects and builds ---------------------------------------------------------------
    async def create_project(self, *, project: Record, build: Record) -> None:
        def work(conn: sqlite3.Connection) -> None:
            _insert(conn, "projects", project)
            _insert(conn, "builds", build)
            _bump(conn, "builds_total", 1)
            _bump(conn, "builds_active", 1)
            _bump_daily(conn, build["created_at"], "builds_total", 1)

        await self._write("create_project", work)

    async def get_project(self, *, project_id: str) -> Record | None:
        return await self._read("get_project", lambda conn: _row(conn.execute(
            "SELECT * FROM projects WHERE project_id = ?", (project_id,)).fetchone()))

    async def list_projects(self, *, limit: int, last_key: str | None, status: str | None = None,
                            user_id: str | None = None) -> Page:
        where, params = [], []
        for column, value in (("user_id", user_id), ("status", status)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        return await self._read("list_projects", lambda conn: _keyset_page(
            conn, select="SELECT * FROM projects", where=where, params=params,
            keys=("created_at", "project_id"), descending=True, limit=limit, last_key=last_key))

    async def delete_project(self, *, project_id: str) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            if conn.execute("DELETE FROM projects WHERE project_id = ?", (project_id,)).rowcount == 0:
                return False
            active = conn.execute(
                f"SELECT count(*) FROM builds WHERE project_id = ? AND status IN "
                f"{ACTIVE_BUILD_STATUSES}", (project_id,)).fetchone()[0]
            if active:
                _bump(conn, "builds_active", -active)
                _bump(conn, "builds_cancelled", active)
            conn.execute(
                "DELETE FROM build_logs WHERE build_id IN "
                "(SELECT build_id FROM builds WHERE project_id = ?)", (project_id,))
            conn.execute("DELETE FROM builds WHERE project_id = ?", (project_id,))
            conn.execute("DELETE FROM artifacts WHERE project_id = ?", (project_id,))
            _delete_agents(conn, "project_id = ?", (project_id,))
            return True

        return await self._write("delete_project", work)

    async def add_build(self, *, build: Record) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            latest = conn.execute(
                "SELECT b.status FROM projects p LEFT JOIN builds b ON b.build_id = p.latest_build_id "
                "WHERE p.project_id = ?", (build["project_id"],)).fetchone()
            if latest is None or latest["status"] in ACTIVE_BUILD_STATUSES:
                return False
            _insert(conn, "builds", build)
            conn.execute(
                "UPDATE projects SET latest_build_id = ?, status = ?, progress = ?, "
                "current_stage = ?, updated_at = ? WHERE project_id = ?",
                (build["build_id"], PROJECT_STATUS_FOR_BUILD[build["status"]], build["progress"],
                 build["current_stage"], build["created_at"], build["project_id"]))
            _bump(conn, "builds_total", 1)
            _bump(conn, "builds_active", 1)
            _bump_daily(conn, build["created_at"], "builds_total", 1)
            return True

        return await self._write("add_build", work)

    async def get_build(self, *, build_id: str) -> Record | None:
        return await self._read("get_build", lambda conn: _row(conn.execute(
            "SELECT * FROM builds WHERE build_id = ?", (build_id,)).fetchone()))

    async def list_builds(self, *, project_id: str, limit: int, last_key: str | None) -> Page:
        return await self._read("list_builds", lambda conn: _keyset_page(
            conn, select="SELECT * FROM builds", where=["project_id = ?"], params=[project_id],
            keys=("created_at", "build_id"), descending=True, limit=limit, last_key=last_key))

    async def list_claimable_builds(self, *, now: str, limit: int) -> list[Record]:
        return await self._read("list_claimable_builds", lambda conn: _rows(conn.execute(
            f"SELECT * FROM builds WHERE status IN {ACTIVE_BUILD_STATUSES} AND "
            f"{_claimable_condition()} ORDER BY created_at LIMIT ?", (now, limit)).fetchall()))

    async def claim_build(self, *, build_id: str, owner: str, lease_until: str, now: str) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            claimed = conn.execute(
                # Only a takeover of an expired lease counts as a recovery (SET reads the old owner).
                "UPDATE builds SET owner = ?, lease_until = ?, recoveries = recoveries + (owner IS NOT NULL), "
                "status = CASE status WHEN 'queued' THEN 'running' ELSE status END, "
                "started_at = COALESCE(started_at, ?), updated_at = ? "
                f"WHERE build_id = ? AND {_claimable_condition()}",
                (owner, lease_until, now, now, build_id, now)).rowcount
            if claimed:
                build = _row(conn.execute("SELECT * FROM builds WHERE build_id = ?",
                                          (build_id,)).fetchone())
                _mirror_on_project(conn, build)  # type: ignore[arg-type]
            return bool(claimed)

        return await self._write("claim_build", work)

    async def renew_leases(self, *, owner: str, lease_until: str) -> list[Record]:
        def work(conn: sqlite3.Connection) -> list[Record]:
            conn.execute(
                f"UPDATE builds SET lease_until = ? WHERE owner = ? AND status IN {ACTIVE_BUILD_STATUSES}",
                (lease_until, owner))
            return _rows(conn.execute(
                "SELECT build_id, status FROM builds WHERE owner = ?", (owner,)).fetchall())

        return await self._write("renew_leases", work)

    async def update_build(self, *, build_id: str, changes: Record, expect_status: tuple[str, ...],
                           expect_owner: str | None = None, logs: Sequence[Record] = (),
                           artifacts: Sequence[Record] = ()) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            current = _row(conn.execute("SELECT * FROM builds WHERE build_id = ?",
                                        (build_id,)).fetchone())
            if current is None or current["status"] not in expect_status:
                return False
            if expect_owner is not None and current["owner"] != expect_owner:
                return False
            updated = {**current, **changes}
            check_record_size(updated)
            columns = list(changes)
            conn.execute(
                f"UPDATE builds SET {', '.join(f'{column} = ?' for column in columns)} "
                "WHERE build_id = ?",
                [*(_column_value(column, changes[column]) for column in columns), build_id])
            if updated["status"] != current["status"] and updated["status"] in FINAL_BUILD_STATUSES:
                _count_finished_build(conn, updated)
            _mirror_on_project(conn, updated)
            if logs:
                _append_build_logs(conn, build_id, logs)
            if artifacts:
                _put_artifacts(conn, artifacts)
            return True

        return await self._write("update_build", work)

    async def list_build_logs(self, *, build_id: str, stage: str) -> list[Record]:
        return await self._read("list_build_logs", lambda conn: _rows(conn.execute(
            "SELECT stage, timestamp, level, message FROM build_logs "
            "WHERE build_id = ? AND stage = ? ORDER BY seq", (build_id, stage)).fetchall()))

    async def list_artifacts(self, *, project_id: str) -> list[Record]:
        return await self._read("list_artifacts", lambda conn: _rows(conn.execute(
            "SELECT project_id, path, build_id, stage, size, created_at FROM artifacts "
            "WHERE project_id = ? ORDER BY path", (project_id,)).fetchall()))

    async def get_artifact(self, *, project_id: str, path: str) -> Record | None:
        return await self._read("get_artifact", lambda conn: _row(conn.execute(
            "SELECT * FROM artifacts WHERE project_id = ? AND path = ?",
            (project_id, path)).fetchone()))

    # -- agents ----------------------------------------------------------------------------
    async def put_agent(self, *, agent: Record, expect_owner: str | None = None) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            if expect_owner is not None and conn.execute(
                    f"SELECT 1 FROM builds WHERE build_id = ? AND owner = ? AND status IN {HELD_BUILD_STATUSES}",
                    (agent["build_id"], expect_owner)).fetchone() is None:
                return False
            existing = conn.execute("SELECT status, created_at FROM agents WHERE agent_id = ?",
                                    (agent["agent_id"],)).fetchone()
            if existing is None:
                _insert(conn, "agents", agent)
                created_at = agent["created_at"]
            else:
                check_record_size(agent)
                _adjust_agent_count(conn, existing["status"], -1)
                changes = {k: v for k, v in agent.items() if k not in ("agent_id", "created_at")}
                conn.execute(
                    f"UPDATE agents SET {', '.join(f'{column} = ?' for column in changes)} "
                    "WHERE agent_id = ?",
                    [*(_column_value(c, v) for c, v in changes.items()), agent["agent_id"]])
                created_at = existing["created_at"]
            _adjust_agent_count(conn, agent["status"], 1)
            self._index_capabilities(conn, agent["agent_id"], created_at, agent["capabilities"])
            return True

        return await self._write("put_agent", work)

    @staticmethod
    def _index_capabilities(conn: sqlite3.Connection, agent_id: str, created_at: str,
                            capabilities: list[str]) -> None:
        conn.execute("DELETE FROM agent_capabilities WHERE agent_id = ?", (agent_id,))
        conn.executemany(
            "INSERT INTO agent_capabilities (capability, created_at, agent_id) VALUES (?, ?, ?)",
            [(capability, created_at, agent_id) for capability in dict.fromkeys(capabilities)])

    async def get_agent(self, *, agent_id: str) -> Record | None:
        return await self._read("get_agent", lambda conn: _row(conn.execute(
            "SELECT * FROM agents WHERE agent_id = ?", (agent_id,)).fetchone()))

    async def list_agents(self, *, limit: int, last_key: str | None, project_id: str | None = None,
                          status: str | None = None, category: str | None = None,
                          capabilities: list[str] | None = None) -> Page:
        where, params = [], []
        for column, value in (("project_id", project_id), ("status", status), ("category", category)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if capabilities:
            where.append(
                "agent_id IN (SELECT agent_id FROM agent_capabilities WHERE capability IN "
                f"({', '.join('?' * len(capabilities))}))")
            params.extend(capabilities)
        return await self._read("list_agents", lambda conn: _keyset_page(
            conn, select="SELECT * FROM agents", where=where, params=params,
            keys=("created_at", "agent_id"), descending=True, limit=limit, last_key=last_key))

    async def update_agent(self, *, agent_id: str, changes: Record) -> Record | None:
        def work(conn: sqlite3.Connection) -> Record | None:
            current = _row(conn.execute("SELECT * FROM agents WHERE agent_id = ?",
                                        (agent_id,)).fetchone())
            if current is None:
                return None
            check_record_size({**current, **changes})
            conn.execute(
                f"UPDATE agents SET {', '.join(f'{column} = ?' for column in changes)} "
                "WHERE agent_id = ?",
                [*(_column_value(c, v) for c, v in changes.items()), agent_id])
            if "status" in changes and changes["status"] != current["status"]:
                _adjust_agent_count(conn, current["status"], -1)
                _adjust_agent_count(conn, changes["status"], 1)
            if "capabilities" in changes:
                self._index_capabilities(conn, agent_id, current["created_at"],
                                         changes["capabilities"])
            return _row(conn.execute("SELECT * FROM agents WHERE agent_id = ?",
                                     (agent_id,)).fetchone())

        return await self._write("update_agent", work)

    async def delete_agent(self, *, agent_id: str) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            exists = conn.execute("SELECT 1 FROM agents WHERE agent_id = ?", (agent_id,)).fetchone()
            _delete_agents(conn, "agent_id = ?", (agent_id,))
            return exists is not None

        return await self._write("delete_agent", work)

    async def record_invocation(self, *, invocation: Record, messages: list[Record]) -> None:
        def work(conn: sqlite3.Connection) -> None:
            stats, totals = invocation_deltas(invocation)
            updated = conn.execute(
                f"UPDATE agents SET {''.join(f'{column} = {column} + ?, ' for column in stats)}"
                "last_invoked_at = ? WHERE agent_id = ?",
                (*stats.values(), invocation["created_at"], invocation["agent_id"])).rowcount
            if not updated:
                raise LookupError(f"agent {invocation['agent_id']} no longer exists")
            _insert(conn, "invocations", invocation)
            for name, delta in totals.items():
                if delta:
                    _bump(conn, name, delta)
                    _bump_daily(conn, invocation["created_at"], name, delta)
            if messages:
                session_id = messages[0]["session_id"]
                seq = conn.execute("SELECT message_count FROM sessions WHERE session_id = ?",
                                   (session_id,)).fetchone()
                if seq is None:
                    raise LookupError(f"session {session_id} no longer exists")
                for offset, message in enumerate(messages, start=1):
                    _insert(conn, "messages", {**message, "seq": seq[0] + offset})
                conn.execute(
                    "UPDATE sessions SET message_count = message_count + ?, last_active_at = ? "
                    "WHERE session_id = ?", (len(messages), messages[-1]["created_at"], session_id))

        await self._write("record_invocation", work)

    async def list_invocations(self, *, agent_id: str, limit: int, last_key: str | None) -> Page:
        return await self._read("list_invocations", lambda conn: _keyset_page(
            conn, select="SELECT * FROM invocations", where=["agent_id = ?"], params=[agent_id],
            keys=("created_at", "invocation_id"), descending=True, limit=limit, last_key=last_key))

    # -- sessions --------------------------------------------------------------------------
    async def create_session(self, *, session: Record) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            if conn.execute("SELECT 1 FROM agents WHERE agent_id = ?",
                            (session["agent_id"],)).fetchone() is None:
                return False
            _insert(conn, "sessions", session)
            return True

        return await self._write("create_session", work)

    async def get_session(self, *, session_id: str) -> Record | None:
        return await self._read("get_session", lambda conn: _row(conn.execute(
            "SELECT * FROM sessions WHERE session_id = ?", (session_id,)).fetchone()))

    async def list_sessions(self, *, agent_id: str, limit: int, last_key: str | None) -> Page:
        return await self._read("list_sessions", lambda conn: _keyset_page(
            conn, select="SELECT * FROM sessions", where=["agent_id = ?"], params=[agent_id],
            keys=("last_active_at", "session_id"), descending=True, limit=limit, last_key=last_key))

    async def list_messages(self, *, session_id: str, limit: int, last_key: str | None) -> Page:
        return await self._read("list_messages", lambda conn: _keyset_page(
            conn, select="SELECT * FROM messages", where=["session_id = ?"], params=[session_id],
            keys=("seq", "message_id"), descending=False, limit=limit, last_key=last_key))

    async def recent_messages(self, *, session_id: str, limit: int) -> list[Record]:
        rows = await self._read("recent_messages", lambda conn: _rows(conn.execute(
            "SELECT * FROM messages WHERE session_id = ? ORDER BY seq DESC LIMIT ?",
            (session_id, limit)).fetchall()))
        return rows[::-1]

    async def delete_session(self, *, session_id: str) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            conn.execute("DELETE FROM messages WHERE session_id = ?", (session_id,))
            return conn.execute("DELETE FROM sessions WHERE session_id = ?",
                                (session_id,)).rowcount > 0

        return await self._write("delete_session", work)

    # -- statistics ------------------------------------------------------------------------
    async def get_counters(self) -> dict[str, float]:
        stored = await self._read("get_counters", lambda conn: dict(conn.execute(
            "SELECT name, value FROM counters").fetchall()))
        return {name: stored.get(name, 0) for name in COUNTER_NAMES}

    async def get_daily(self, *, start: str, end: str) -> list[Daily]:
        def work(conn: sqlite3.Connection) -> list[Daily]:
            days: dict[str, Daily] = {}
            for date, name, value in conn.execute(
                    "SELECT date, name, value FROM daily_stats WHERE date BETWEEN ? AND ?",
                    (start, end)):
                days.setdefault(date, Daily(date=date)).counts[name] = value
            for date, stage, count in conn.execute(
                    "SELECT date, stage, count FROM daily_failed_stages WHERE date BETWEEN ? AND ?",
                    (start, end)):
                days.setdefault(date, Daily(date=date)).failed_stages[stage] = count
            return [days[date] for date in sorted(days)]

        return await self._read("get_daily", work)

    async def add_api_calls(self, *, counts: dict[str, int]) -> None:
        def work(conn: sqlite3.Connection) -> None:
            for date, count in counts.items():
                _bump_daily(conn, date, "api_calls", count)

        await self._write("add_api_calls", work)
