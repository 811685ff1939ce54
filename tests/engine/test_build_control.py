"""Control actions act on the running build, not only on a stored field."""

import asyncio
import json
import re
from datetime import datetime
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests import conftest
from tests.conftest import REQUIREMENT, Api, make_settings, wait_for

STAGE_DELAY = 0.15
PROGRESS_LITERAL = re.compile(rb'"progress":([^,}]+)')


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"offline_stage_delay_seconds": STAGE_DELAY}


@asynccontextmanager
async def serving(tmp_path: Path, **settings: Any) -> AsyncIterator[tuple[Any, Api]]:
    async with conftest.serving(make_settings(tmp_path, **settings)) as started:
        yield started


async def _stage_of(api: Api, project_id: str, name: str) -> dict[str, Any]:
    return await api.call("GET", f"/api/v1/projects/{project_id}/stages/{name}")


async def test_pause_holds_at_a_boundary_and_resume_finishes(api: Api, app: Any) -> None:
    project_id = (await api.create_project())["project_id"]
    await wait_for(lambda: _progress_at_least(api, project_id, 15), what="stage 2 done")

    pausing = await api.call("PUT", f"/api/v1/projects/{project_id}/control",
                             json={"action": "pause", "reason": "maintenance"})
    # A stage is running: the pause waits for it to end, and says so.
    assert pausing["status"] == "pausing"
    assert pausing["latest_build"]["status"] == "pausing"
    assert pausing["latest_build"]["instance_id"] == app.state.engine.instance_id
    assert "running" in [stage["status"] for stage in pausing["stages_snapshot"]]

    async def held() -> dict[str, Any] | None:
        project = await api.project(project_id)
        return project if project["status"] == "paused" else None

    held_project = await wait_for(held, what="the engine to settle the pause at a boundary")
    assert held_project["latest_build"]["status"] == "paused"
    assert held_project["latest_build"]["instance_id"] is None
    # Settled at a boundary: the step that was running finished, none is running now (a
    # stage whose sub-stages are under way stays running between them).
    assert "running" not in [step["status"] for stage in held_project["stages_snapshot"]
                             for step in (stage["sub_stages"] or [stage])]
    assert held_project["progress"] > pausing["progress"]
    assert not app.state.engine.is_running(held_project["latest_build_id"])
    # Held: several stage durations later nothing has moved.
    await asyncio.sleep(STAGE_DELAY * 5)
    still = await api.project(project_id)
    assert still["progress"] == held_project["progress"] < 100
    assert still["stages_snapshot"] == held_project["stages_snapshot"]
    stage_logs = [line["message"] for stage in ("system_architecture", "agent_design",
                                                "agent_developer_manager", "agent_deployer")
                  for line in (await _stage_of(api, project_id, stage))["logs"]]
    assert any(message.startswith("Build paused before") for message in stage_logs)

    resumed = await api.call("PUT", f"/api/v1/projects/{project_id}/control", json={"action": "resume"})
    assert resumed["status"] == "building"
    done = await api.wait_status(project_id, "completed")
    assert done["progress"] == 100
    assert all(stage["status"] == "completed" for stage in done["stages_snapshot"])


async def _progress_at_least(api: Api, project_id: str, value: float) -> bool:
    return (await api.project(project_id))["progress"] >= value


async def test_progress_never_decreases_and_is_100_only_on_success(api: Api) -> None:
    project_id = (await api.create_project())["project_id"]
    seen: list[float] = []

    async def finished() -> bool:
        project = await api.project(project_id)
        seen.append(project["progress"])
        if project["status"] != "completed":
            assert project["progress"] < 100
        return project["status"] == "completed"

    await wait_for(finished, interval=0.01, what="the build to finish")
    assert seen == sorted(seen)
    assert seen[-1] == 100
    assert len(set(seen)) > 5, "progress should be observed moving through the stages"


async def test_progress_is_written_as_a_float_in_every_response(api: Api) -> None:
    """Progress read `0.0` in one place and `54` in another (issue 13): it is a float in every
    body that carries it, from the create answer to the finished build (jq 1.6 prints 54.0 as
    54: README)."""
    created = await api.client.post("/api/v1/projects", json={"requirement": REQUIREMENT})
    project_id = created.json()["data"]["project_id"]
    bodies = [created.content]

    async def finished() -> bool:
        for path in (f"/api/v1/projects/{project_id}/builds", "/api/v1/projects",
                     f"/api/v1/projects/{project_id}"):
            bodies.append((await api.client.get(path)).content)
        return json.loads(bodies[-1])["data"]["status"] == "completed"

    await wait_for(finished, interval=0.02, what="the build to finish")
    literals = [literal for body in bodies for literal in PROGRESS_LITERAL.findall(body)]
    assert {b"0.0", b"100.0"} <= set(literals) and len(set(literals)) > 4, set(literals)
    assert [literal for literal in literals if not re.fullmatch(rb"\d+\.\d+", literal)] == []


async def test_stop_cancels_mid_stage(tmp_path: Path) -> None:
    # Long stages, so that the stop certainly lands in the middle of one.
    async with serving(tmp_path, offline_stage_delay_seconds=30) as (app, api):
        project_id = (await api.create_project())["project_id"]

        async def orchestrating() -> bool:
            stage = await _stage_of(api, project_id, "orchestrator")
            return stage["status"] == "running"

        await wait_for(orchestrating, what="the first stage to run")
        cancelled_before = await _cancelled_builds_counted(api)
        stopped = await api.call("PUT", f"/api/v1/projects/{project_id}/control",
                                 json={"action": "stop"})
        assert stopped["status"] == "stopped"
        assert stopped["latest_build"]["status"] == "cancelled"
        build_id = stopped["latest_build_id"]
        # The stage's 30 s of work is abandoned, not waited for.
        await wait_for(lambda: _not_running(app, build_id), timeout=5, what="the run to end")
        orchestrator = await _stage_of(api, project_id, "orchestrator")
        assert orchestrator["status"] == "skipped"
        assert not any("completed" in line["message"] for line in orchestrator["logs"])
        assert {s["status"] for s in stopped["stages_snapshot"]} == {"skipped"}
        # Sub-stages go with their stage; the build ran from its start until the stop.
        assert {sub["status"] for s in stopped["stages_snapshot"] for sub in s["sub_stages"]} == {"skipped"}
        build = stopped["latest_build"]
        assert build["duration_seconds"] == pytest.approx(
            (datetime.fromisoformat(build["finished_at"]) - datetime.fromisoformat(build["started_at"]))
            .total_seconds(), abs=1e-3)
        assert build["duration_seconds"] > 0
        assert await _cancelled_builds_counted(api) == cancelled_before + 1

        again = await api.call("PUT", f"/api/v1/projects/{project_id}/control",
                               json={"action": "stop"}, expect=409)
        assert again["code"] == "INVALID_STATE"
        overview = await api.call("GET", "/api/v1/statistics/overview")
        assert (overview["active_builds"], overview["total_builds"], overview["failed_builds"]) == (0, 1, 0)


async def _cancelled_builds_counted(api: Api) -> float:
    """builds_total{status="cancelled"} in /metrics (the registry is the test process's)."""
    found = re.search(r'^builds_total\{status="cancelled"\} (\S+)$',
                      (await api.client.get("/metrics")).text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def _not_running(app: Any, build_id: str) -> bool:
    return not app.state.engine.is_running(build_id)


async def test_restart_runs_a_new_build_of_the_same_project(api: Api) -> None:
    project_id = (await api.create_project())["project_id"]
    first = await api.wait_status(project_id, "completed")
    restart_early = await api.call("PUT", f"/api/v1/projects/{project_id}/control",
                                   json={"action": "pause"}, expect=409)
    assert restart_early["details"]["status"] == "completed"

    restarted = await api.call("PUT", f"/api/v1/projects/{project_id}/control", json={"action": "restart"})
    assert restarted["latest_build_id"] != first["latest_build_id"]
    assert restarted["status"] in ("pending", "building")
    assert restarted["progress"] < 100
    done = await api.wait_status(project_id, "completed")
    assert done["latest_build_id"] == restarted["latest_build_id"]
    builds = await api.call("GET", f"/api/v1/projects/{project_id}/builds")
    assert [b["build_id"] for b in builds["items"]] == [restarted["latest_build_id"], first["latest_build_id"]]
    assert all(b["status"] == "succeeded" for b in builds["items"])
    # The same agent is registered again, not twice.
    agents = await api.call("GET", "/api/v1/agents", params={"project_id": project_id})
    assert agents["count"] == 1
    assert agents["items"][0]["build_id"] == restarted["latest_build_id"]


async def test_pause_of_a_queued_build_and_resume_requeues_it(tmp_path: Path) -> None:
    async with serving(tmp_path, offline_stage_delay_seconds=0.05, max_concurrent_builds=1) as (_, api):
        first = (await api.create_project())["project_id"]
        second = (await api.create_project())["project_id"]
        paused = await api.call("PUT", f"/api/v1/projects/{second}/control", json={"action": "pause"})
        assert paused["status"] == "paused"
        await api.wait_status(first, "completed")
        held = await api.project(second)
        assert held["status"] == "paused" and held["latest_build"]["started_at"] is None
        resumed = await api.call("PUT", f"/api/v1/projects/{second}/control", json={"action": "resume"})
        # Queued again (it never started); the engine, woken by the resume, may already have
        # claimed it by the time the response reads the project back.
        assert resumed["status"] in ("pending", "building"), resumed["status"]
        await api.wait_status(second, "completed")


async def test_delete_cancels_the_running_build_and_removes_everything(api: Api, app: Any) -> None:
    done_id = (await api.create_project())["project_id"]
    agent = await api.built_agent()
    await api.call("POST", f"/api/v1/agents/{agent['agent_id']}/invoke", json={"input_text": "hello"})
    running = await api.create_project()
    await api.wait_status(running["project_id"], "building")

    for project_id in (agent["project_id"], running["project_id"]):
        deleted = await api.call("DELETE", f"/api/v1/projects/{project_id}")
        assert deleted == {"project_id": project_id, "deleted": True}
        missing = await api.call("GET", f"/api/v1/projects/{project_id}", expect=404)
        assert missing["code"] == "RESOURCE_NOT_FOUND"
    await wait_for(lambda: _not_running(app, running["latest_build_id"]), what="the run to end")
    gone = await api.call("GET", f"/api/v1/agents/{agent['agent_id']}", expect=404)
    assert gone["code"] == "RESOURCE_NOT_FOUND"
    assert (await api.call("GET", "/api/v1/agents", params={"project_id": agent["project_id"]}))["count"] == 0
    await api.wait_status(done_id, "completed")
    overview = await api.call("GET", "/api/v1/statistics/overview")
    assert overview["total_agents"] == 1  # only done_id's agent remains
    assert overview["active_builds"] == 0
    assert overview["total_invocations"] == 1  # history stays counted


async def test_resume_while_pausing_calls_the_pause_off(tmp_path: Path) -> None:
    async with serving(tmp_path, offline_stage_delay_seconds=1.0) as (app, api):
        project_id = await _pausing_in_the_first_stage(api)
        again = await api.call("PUT", f"/api/v1/projects/{project_id}/control",
                               json={"action": "pause"}, expect=409)
        assert again["code"] == "INVALID_STATE" and again["details"]["status"] == "pausing"

        resumed = await api.call("PUT", f"/api/v1/projects/{project_id}/control",
                                 json={"action": "resume"})
        # The step in progress never stopped: the same engine carries on with it.
        assert resumed["status"] == "building"
        assert resumed["latest_build"]["status"] == "running"
        assert resumed["latest_build"]["instance_id"] == app.state.engine.instance_id
        done = await api.wait_status(project_id, "completed", timeout=60)
        assert done["progress"] == 100
        logs = [line["message"] for stage in done["stages_snapshot"]
                for line in (await _stage_of(api, project_id, stage["name"]))["logs"]]
        assert not any(message.startswith("Build paused") for message in logs)


async def _stage_running(api: Api, project_id: str, name: str) -> bool:
    return (await _stage_of(api, project_id, name))["status"] == "running"


async def _pausing_in_the_first_stage(api: Api) -> str:
    """A new project, paused while its first stage runs: it reads `pausing`."""
    project_id = (await api.create_project())["project_id"]
    await wait_for(lambda: _stage_running(api, project_id, "orchestrator"),
                   what="the first stage to run")
    pausing = await api.call("PUT", f"/api/v1/projects/{project_id}/control", json={"action": "pause"})
    assert pausing["status"] == "pausing" and pausing["latest_build"]["status"] == "pausing"
    return project_id


async def test_a_pausing_build_cut_off_by_a_shutdown_is_settled_paused_by_the_next_start(
        tmp_path: Path) -> None:
    """A restart leaves nothing stuck in `pausing`: the build handed back unowned is claimed
    by the next start only to be settled `paused`, with no step run and no recovery counted."""
    async with serving(tmp_path, offline_stage_delay_seconds=30.0) as (_, api):
        project_id = await _pausing_in_the_first_stage(api)
    # The first process is gone mid-step; the build was handed back, unowned, still pausing.

    async with serving(tmp_path, offline_stage_delay_seconds=0.01) as (_, api):
        async def settled() -> dict[str, Any] | None:
            project = await api.project(project_id)
            return project if project["status"] == "paused" else None

        held = await wait_for(settled, what="the next start to settle the pause")
        assert held["latest_build"]["instance_id"] is None
        assert held["latest_build"]["recoveries"] == 0
        orchestrator = await _stage_of(api, project_id, "orchestrator")
        assert not any("completed" in line["message"] for line in orchestrator["logs"])
        assert any(line["message"] == "Build paused before orchestrator" for line in orchestrator["logs"])
        assert (await api.call("PUT", f"/api/v1/projects/{project_id}/control",
                               json={"action": "resume"}))["status"] == "building"
        done = await api.wait_status(project_id, "completed")
        assert done["progress"] == 100
