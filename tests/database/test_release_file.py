"""SQLite files written by earlier releases (fixtures/, written by release_fixture.py) open and
read back through the API, and keep working: the guard for the next schema's migration (issue
11, item 7). The app starts on a copy of each file, migrating it as it would an operator's."""

import json
import shutil
from pathlib import Path

import pytest

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
