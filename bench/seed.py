"""Fill a SQLite store fast: the store's own schema (created by the store), rows written in
bulk in one transaction, and the aggregates (counters, daily_stats, daily_failed_stages)
computed from the very rows written, then checked against them with SQL.

Historical builds carry empty stage snapshots and contexts: the items that use a seeded store
read projects, aggregates and pages, never a seeded build's stages, and a million full
snapshots would only make the file (and the seeding) ten times larger.
"""

import asyncio
import json
import sqlite3
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from api.database.sqlite import SQLiteStore
from api.database.store import COUNTER_NAMES, DEFAULT_TENANT, PLATFORM_SCOPE

HISTORY_DAYS = 365
FAILED_STAGES = ("requirements_analysis", "system_architecture", "agent_design", "agent_deployer")
REQUIREMENT = "Build an agent that triages customer support tickets and answers refund questions"


@dataclass
class Seeded:
    projects: int
    builds: int
    agents: int
    invocations: int
    seconds: float
    file_bytes: int


def _timestamps(count: int, *, start: datetime, end: datetime) -> list[str]:
    """`count` increasing, distinct ISO timestamps spread evenly from start to end (integer
    arithmetic: a million datetime operations would cost seconds)."""
    first = int(start.timestamp() * 1_000_000)
    step = max(1, (int(end.timestamp() * 1_000_000) - first) // max(count, 1))
    stamps: list[str] = []
    day, prefix = -1, ""
    for index in range(count):
        micros = first + step * index
        if micros // 86_400_000_000 != day:
            day = micros // 86_400_000_000
            prefix = datetime.fromtimestamp(day * 86_400, timezone.utc).strftime("%Y-%m-%dT")
        seconds, fraction = divmod(micros % 86_400_000_000, 1_000_000)
        stamps.append(f"{prefix}{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
                      f".{fraction:06d}Z")
    return stamps


def _create_schema(path: Path) -> None:
    async def open_and_close() -> None:
        store = SQLiteStore(path=path, slow_query_threshold_seconds=60.0)
        await store.open()
        await store.close()

    asyncio.run(open_and_close())


def seed(path: Path, *, projects: int, builds_per_project: int, invocations: int,
         agents: int) -> Seeded:
    """A store with `projects` projects of `builds_per_project` finished builds each (a
    project is created with its first build; its last is its latest), `agents` agents and
    `invocations` invocations spread over them, all spread over the last year up to now."""
    began = time.perf_counter()
    _create_schema(path)
    now = datetime.now(timezone.utc)
    start = now - timedelta(days=HISTORY_DAYS - 1, hours=now.hour, minutes=now.minute)
    counters: dict[str, float] = defaultdict(float)
    daily: dict[tuple[str, str], float] = defaultdict(float)
    failed_stages: dict[tuple[str, str], int] = defaultdict(int)

    conn = sqlite3.connect(path, isolation_level=None)
    # One writer, a file nobody else has open yet: no journal and no fsync while filling,
    # WAL again (as the store wants it) at the end.
    conn.execute("PRAGMA journal_mode = OFF")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -262144")
    conn.execute("BEGIN")

    build_count = projects * builds_per_project
    build_times = _timestamps(build_count, start=start, end=now - timedelta(seconds=1))
    latest: dict[int, tuple[str, str, str]] = {}

    def build_rows() -> Any:
        # Project by project, so that every index of the table is filled in key order (the
        # fast way into a B-tree); the builds of one project are spread over the whole time.
        index = 0
        for project in range(projects):
            for number in range(builds_per_project):
                created_at = build_times[number * projects + project]
                build_id = f"build_{index:012x}"
                # Mostly successes, some failures, a few cancellations: every kind of aggregate.
                kind = index % 50
                status = "failed" if kind < 4 else "cancelled" if kind == 4 else "succeeded"
                duration = 30.0 + index % 270
                error = None
                day = created_at[:10]
                counters["builds_total"] += 1
                daily[(day, "builds_total")] += 1
                counters[f"builds_{status}"] += 1
                if status == "succeeded":
                    counters["build_seconds_succeeded"] += duration
                    daily[(day, "builds_succeeded")] += 1
                    daily[(day, "build_seconds_succeeded")] += duration
                elif status == "failed":
                    stage = FAILED_STAGES[index % len(FAILED_STAGES)]
                    error = json.dumps({"stage": stage, "code": "PROVIDER_ERROR", "message": "seeded"})
                    daily[(day, "builds_failed")] += 1
                    failed_stages[(day, stage)] += 1
                latest[project] = (build_id, status, created_at)
                index += 1
                yield (build_id, f"proj_{project:012x}", status,
                       100.0 if status == "succeeded" else 50.0, None, "[]", "{}", error, None,
                       None, None, 0, duration if status != "cancelled" else None, created_at,
                       created_at, created_at, created_at)

    conn.executemany(
        "INSERT INTO builds (build_id, project_id, status, progress, current_stage, stages, context, "
        "error, request_id, owner, lease_until, recoveries, duration_seconds, created_at, "
        "started_at, finished_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        build_rows())

    project_status = {"succeeded": "completed", "failed": "failed", "cancelled": "stopped"}
    conn.executemany(
        "INSERT INTO projects (project_id, user_id, project_name, requirement, priority, tags, "
        "status, progress, current_stage, latest_build_id, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        ((f"proj_{project:012x}", f"user_{project % 100}", f"Support triage agent {project}",
          REQUIREMENT, 1 + project % 5, '["bench"]', project_status[latest[project][1]],
          100.0 if latest[project][1] == "succeeded" else 50.0, None, latest[project][0],
          build_times[project], latest[project][2])
         for project in range(projects)))

    # Agents belong to the first projects; invocations go round the agents.
    agent_ids = [f"proj_{agent % projects:012x}:support_agent_{agent}" for agent in range(agents)]
    totals = {agent_id: [0, 0, 0, 0.0, None] for agent_id in agent_ids}
    invocation_times = _timestamps(invocations, start=start, end=now - timedelta(seconds=1))

    def invocation_rows() -> Any:
        # Agent by agent (index order again), each agent's invocations spread over the year.
        index = 0
        for agent, agent_id in enumerate(agent_ids):
            total = totals[agent_id]
            for number in range(invocations // agents + (agent < invocations % agents)):
                created_at = invocation_times[number * agents + agent]
                succeeded = index % 40 != 0
                duration_ms = 100.0 + index % 1900
                day = created_at[:10]
                outcome = "invocations_succeeded" if succeeded else "invocations_failed"
                for name, delta in (("invocations_total", 1), (outcome, 1),
                                    ("invocation_ms_total", duration_ms)):
                    counters[name] += delta
                    daily[(day, name)] += delta
                total[0] += 1
                total[1 if succeeded else 2] += 1
                total[3] += duration_ms
                total[4] = created_at
                index += 1
                yield (f"inv_{index:016x}", agent_id, agent_id.split(":")[0], None,
                       "Summarize what you can do for me",
                       "[offline provider] I triage support tickets." if succeeded else None,
                       "success" if succeeded else "failed",
                       None if succeeded else "seeded failure", duration_ms, None, created_at)

    conn.executemany(
        "INSERT INTO invocations (invocation_id, agent_id, project_id, session_id, input_text, "
        "output, status, error, duration_ms, trace, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        invocation_rows())
    created = start.strftime("%Y-%m-%dT%H:%M:%S.000000Z")
    conn.executemany(
        "INSERT INTO agents (agent_id, project_id, agent_name, description, category, capabilities, "
        "tools, system_prompt, status, error_message, build_id, total_invocations, "
        "successful_invocations, failed_invocations, total_duration_ms, last_invoked_at, "
        "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        ((agent_id, agent_id.split(":")[0], agent_id.split(":")[1], "Triages support tickets",
          "customer_support", '["ticket_triage"]', "[]", "You triage support tickets.", "running",
          None, None, *totals[agent_id], created, created) for agent_id in agent_ids))
    conn.executemany(
        "INSERT INTO agent_capabilities (capability, created_at, agent_id) VALUES (?, ?, ?)",
        (("ticket_triage", created, agent_id) for agent_id in agent_ids))
    counters["agents_running"] = agents
    # Every row is the default tenant's (the tables' default); its aggregates are the platform's.
    scopes = (DEFAULT_TENANT, PLATFORM_SCOPE)
    conn.executemany("INSERT INTO counters (tenant_id, name, value) VALUES (?, ?, ?)",
                     [(scope, name, counters.get(name, 0.0)) for scope in scopes
                      for name in COUNTER_NAMES])
    conn.executemany("INSERT INTO daily_stats (tenant_id, date, name, value) VALUES (?, ?, ?, ?)",
                     [(scope, day, name, value) for scope in scopes
                      for (day, name), value in daily.items()])
    conn.executemany(
        "INSERT INTO daily_failed_stages (tenant_id, date, stage, count) VALUES (?, ?, ?, ?)",
        [(scope, day, stage, count) for scope in scopes
         for (day, stage), count in failed_stages.items()])
    conn.execute("COMMIT")
    conn.execute("PRAGMA journal_mode = WAL")
    check_aggregates(conn)
    conn.execute("ANALYZE")
    conn.close()
    return Seeded(projects=projects, builds=build_count, agents=agents, invocations=invocations,
                  seconds=time.perf_counter() - began, file_bytes=path.stat().st_size)


def check_aggregates(conn: sqlite3.Connection) -> None:
    """The aggregates must say what the rows say, or the statistics item measures a lie."""
    stored = dict(conn.execute("SELECT name, value FROM counters WHERE tenant_id = ?",
                               (DEFAULT_TENANT,)).fetchall())
    builds = dict(conn.execute("SELECT status, count(*) FROM builds GROUP BY status").fetchall())
    invocations = dict(conn.execute(
        "SELECT status, count(*) FROM invocations GROUP BY status").fetchall())
    expected = {
        "builds_total": sum(builds.values()),
        "builds_succeeded": builds.get("succeeded", 0),
        "builds_failed": builds.get("failed", 0),
        "builds_cancelled": builds.get("cancelled", 0),
        "builds_active": sum(builds.get(status, 0) for status in ("queued", "running", "paused")),
        "build_seconds_succeeded": conn.execute(
            "SELECT COALESCE(SUM(duration_seconds), 0) FROM builds WHERE status = 'succeeded'").fetchone()[0],
        "agents_running": conn.execute("SELECT count(*) FROM agents WHERE status = 'running'").fetchone()[0],
        "invocations_total": sum(invocations.values()),
        "invocations_succeeded": invocations.get("success", 0),
        "invocations_failed": invocations.get("failed", 0),
        "invocation_ms_total": conn.execute(
            "SELECT COALESCE(SUM(duration_ms), 0) FROM invocations").fetchone()[0],
    }
    for name, value in expected.items():
        if abs(stored.get(name, 0) - value) > 1e-6 * max(1.0, abs(value)):
            raise AssertionError(f"seeded counter {name} = {stored.get(name)}, rows say {value}")
    daily_builds = conn.execute(
        "SELECT COALESCE(SUM(value), 0) FROM daily_stats WHERE tenant_id = 'default' "
        "AND name = 'builds_total'").fetchone()[0]
    daily_invocations = conn.execute(
        "SELECT COALESCE(SUM(value), 0) FROM daily_stats WHERE tenant_id = 'default' "
        "AND name = 'invocations_total'").fetchone()[0]
    per_day = conn.execute(
        "SELECT count(*) FROM (SELECT substr(created_at, 1, 10) AS day, count(*) AS n FROM invocations "
        "GROUP BY day) AS rows LEFT JOIN daily_stats AS d ON d.date = rows.day "
        "AND d.name = 'invocations_total' AND d.tenant_id = 'default' WHERE d.value IS NOT rows.n").fetchone()[0]
    agents_sum = conn.execute("SELECT COALESCE(SUM(total_invocations), 0) FROM agents").fetchone()[0]
    if (daily_builds, daily_invocations, agents_sum) != (expected["builds_total"],
                                                         expected["invocations_total"],
                                                         expected["invocations_total"]) or per_day:
        raise AssertionError("seeded daily aggregates or agent totals disagree with the rows")
