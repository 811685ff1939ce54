"""SQLite files written by earlier releases (fixtures/, written by release_fixture.py) open and
read back through the API, and keep working: the guard for the next schema's migration (issue
11, item 7). The app starts on a copy of each file, migrating it as it would an operator's."""

import json
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from api.core.records import Agent, Project, Session
from api.database.sqlite import SQLiteStore
from api.database.store import DEFAULT_TENANT
from tests.conftest import make_settings, serving

RELEASE_FILES = sorted((Path(__file__).resolve().parent / "fixtures").glob("release-*.db"))


@pytest.mark.parametrize("database", RELEASE_FILES, ids=lambda path: path.stem)
async def test_a_release_file_reads_back_and_keeps_working(database: Path, tmp_path: Path) -> None:
    ids = json.loads(database.with_suffix(".json").read_text())
    (tmp_path / "data").mkdir()
    shutil.copyfile(database, tmp_path / "data" / "nexus-ai.db")
    async with serving(make_settings(tmp_path, offline_stage_delay_seconds=0)) as (_, api):
        project = await api.project(ids["project_id"])
        assert (project["status"], project["progress"], project["user_id"]) == (
            "completed", 100, "release_user")
        assert [stage["status"] for stage in project["stages_snapshot"]] == ["completed"] * 6
        agent = await api.call("GET", f"/api/v1/agents/{ids['agent_id']}")
        assert (agent["project_id"], agent["build_id"]) == (ids["project_id"], project["latest_build_id"])
        invocations = await api.call("GET", f"/api/v1/agents/{ids['agent_id']}/invocations")
        assert ids["invocation_id"] in {item["invocation_id"] for item in invocations["items"]}
        assert invocations["count"] == 2 and all(item["input_tokens"] > 0 for item in invocations["items"])
        messages = await api.call("GET", f"/api/v1/sessions/{ids['session_id']}/messages")
        assert [message["role"] for message in messages["items"]] == ["user", "assistant"]
        overview = await api.call("GET", "/api/v1/statistics/overview")
        assert (overview["total_builds"], overview["successful_builds"], overview["total_invocations"],
                overview["total_agents"]) == (1, 1, 2, 1)

        # And the file keeps working: a new build of the old project runs to its end.
        await api.call("PUT", f"/api/v1/projects/{ids['project_id']}/control", json={"action": "restart"})
        rebuilt = await api.wait_status(ids["project_id"], "completed")
        assert rebuilt["latest_build_id"] != project["latest_build_id"]
        overview = await api.call("GET", "/api/v1/statistics/overview")
        assert (overview["total_builds"], overview["successful_builds"]) == (2, 2)


@pytest.mark.parametrize("database", RELEASE_FILES, ids=lambda path: path.stem)
async def test_a_release_file_migrates_to_the_default_tenant(database: Path, tmp_path: Path) -> None:
    """Its rows become the default tenant's, whose aggregates, and the platform's, are the
    file's; any other tenant finds nothing."""
    ids = json.loads(database.with_suffix(".json").read_text())
    path = tmp_path / "nexus-ai.db"
    shutil.copyfile(database, path)
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3  # before tenants
        before = dict(conn.execute("SELECT name, value FROM counters").fetchall())
        before_days = sorted(conn.execute("SELECT date, name, value FROM daily_stats").fetchall())
    store = SQLiteStore(path=path, slow_query_threshold_seconds=1.0)
    await store.open()
    try:
        async def records(tenant: str) -> list[Project | Agent | Session | None]:
            return [await store.get_project(tenant_id=tenant, project_id=ids["project_id"]),
                    await store.get_agent(tenant_id=tenant, agent_id=ids["agent_id"]),
                    await store.get_session(tenant_id=tenant, session_id=ids["session_id"])]

        assert [record and record.tenant_id for record in await records(DEFAULT_TENANT)] == [
            DEFAULT_TENANT] * 3
        assert await records("globex") == [None] * 3
        for tenant, listed in ((DEFAULT_TENANT, [ids["project_id"]]), ("globex", [])):
            page = await store.list_projects(tenant_id=tenant, limit=10, last_key=None)
            assert [project.project_id for project in page.items] == listed
        for scope in (DEFAULT_TENANT, None):
            counters = await store.get_counters(tenant_id=scope)
            assert {name: value for name, value in counters.items() if value} == {
                name: value for name, value in before.items() if value}
            days = await store.get_daily(tenant_id=scope, start="2000-01-01", end="2100-12-31")
            assert sorted((day.date, name, value) for day in days
                          for name, value in day.counts.items()) == before_days
        assert not any((await store.get_counters(tenant_id="globex")).values())
    finally:
        await store.close()
