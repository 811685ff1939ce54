"""The embedded store's plumbing: one SQLite file in WAL mode, and row helpers.

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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from pydantic_core import to_json

from api.core.store_errors import StoreError
from api.database import cursor
from api.core.records import BOOL_FIELDS, JSON_FIELDS, StoredRecord
from api.database.interfaces import R, Changes
from api.database.store import PLATFORM_SCOPE, Page, Store, check_record_size

T = TypeVar("T")

BUSY_TIMEOUT_SECONDS = 5.0
READER_THREADS = 2


def to_record(model: type[R], row: sqlite3.Row | None) -> R | None:
    """The record a row holds: its JSON columns parsed, its integer booleans made bool."""
    if row is None:
        return None
    fields = dict(row)
    for column in JSON_FIELDS.intersection(fields):
        if fields[column] is not None:
            fields[column] = json.loads(fields[column])
    for column in BOOL_FIELDS.intersection(fields):
        fields[column] = bool(fields[column])
    return model.model_validate(fields)


def to_records(model: type[R], rows: list[sqlite3.Row]) -> list[R]:
    return [to_record(model, row) for row in rows]  # type: ignore[misc]


def _column_value(column: str, value: Any) -> Any:
    if column in JSON_FIELDS and value is not None:
        return to_json(value).decode()
    return value


def insert(conn: sqlite3.Connection, table: str, record: StoredRecord, *, tenant_id: str) -> None:
    """Insert `record` as a row of `tenant_id` (its `tenant_id` column set from the argument)."""
    # Sized as stored: a JSON column's text is what check_record_size would count for it.
    stored = {column: _column_value(column, value) for column, value in record}
    stored["tenant_id"] = tenant_id
    check_record_size(stored)
    conn.execute(
        f"INSERT INTO {table} ({', '.join(stored)}) VALUES ({', '.join('?' * len(stored))})",
        list(stored.values()),
    )


def update(conn: sqlite3.Connection, table: str, key: tuple[str, Any], row: sqlite3.Row,
           changes: Changes) -> None:
    """Apply `changes` to the stored `row` whose key column and value are `key`, sized as
    stored: the row's own text and the changes serialized once (a build's every step writes its
    stages and context: serializing them again to size the record cost item 6 of the benchmark
    6 %, docs/PERFORMANCE.md)."""
    written = {column: _column_value(column, value) for column, value in changes.items()}
    check_record_size({**dict(row), **written})
    conn.execute(f"UPDATE {table} SET {', '.join(f'{column} = ?' for column in written)} "
                 f"WHERE {key[0]} = ?", [*written.values(), key[1]])


def bump(conn: sqlite3.Connection, tenant_id: str, name: str, delta: float) -> None:
    """Add `delta` to an aggregate of the tenant and of the platform."""
    conn.executemany(
        "INSERT INTO counters (tenant_id, name, value) VALUES (?, ?, ?) "
        "ON CONFLICT (tenant_id, name) DO UPDATE SET value = value + excluded.value",
        [(tenant_id, name, delta), (PLATFORM_SCOPE, name, delta)],
    )


def bump_daily(conn: sqlite3.Connection, tenant_id: str, timestamp: str, name: str,
               delta: float) -> None:
    """Add `delta` to the tenant's and the platform's aggregate of the day of `timestamp`."""
    conn.executemany(
        "INSERT INTO daily_stats (tenant_id, date, name, value) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (tenant_id, date, name) DO UPDATE SET value = value + excluded.value",
        [(scope, timestamp[:10], name, delta) for scope in (tenant_id, PLATFORM_SCOPE)],
    )


def keyset_page(
    conn: sqlite3.Connection,
    model: type[R],
    *,
    tenant_id: str,
    select: str,
    where: list[str],
    params: list[Any],
    keys: tuple[str, str],
    descending: bool,
    limit: int,
    last_key: str | None,
) -> Page:
    """One page of the tenant's rows ordered by the two `keys` columns, starting after the
    cursor `last_key` (every listing's index leads with tenant_id)."""
    where = ["tenant_id = ?", *where]
    params = [tenant_id, *params]
    if last_key is not None:
        where.append(f"({keys[0]}, {keys[1]}) {'<' if descending else '>'} (?, ?)")
        params.extend(cursor.decode(last_key, size=2))
    direction = "DESC" if descending else "ASC"
    sql = f"{select} WHERE {' AND '.join(where)}"
    sql += f" ORDER BY {keys[0]} {direction}, {keys[1]} {direction} LIMIT ?"
    rows = conn.execute(sql, [*params, limit + 1]).fetchall()
    items = to_records(model, rows[:limit])
    more = len(rows) > limit
    next_key = cursor.encode([rows[limit - 1][keys[0]], rows[limit - 1][keys[1]]]) if more else None
    return Page(items=items, last_key=next_key)


class SQLiteConnection(Store):
    """The file, its writer thread and reader pool, the schema migrations; the domain
    classes of this package run their statements through `_read` and `_write`."""

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
