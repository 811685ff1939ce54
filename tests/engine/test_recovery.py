"""Builds survive their process: SIGKILL, SIGTERM, and a build that keeps killing it."""

import signal
from pathlib import Path
from typing import Any

import httpx

from api.core.records import Build, Project
from api.database.store import DEFAULT_TENANT as TENANT
from api.engine.stages import initial_stages
from api.main import create_app
from tests.conftest import REQUIREMENT, Api, ServerProcess, make_settings, wait_until


def _get(server: ServerProcess, path: str) -> Any:
    response = httpx.get(server.base_url + path, timeout=5)
    assert response.status_code == 200, response.text
    return response.json()["data"]




def test_sigkill_mid_build_then_restart_resumes_from_last_completed_stage(server_factory: Any) -> None:
    env = {"OFFLINE_STAGE_DELAY_SECONDS": "0.3", "BUILD_LEASE_SECONDS": "2"}
    server = server_factory(**env)
    created = httpx.post(f"{server.base_url}/api/v1/projects", json={"requirement": REQUIREMENT}, timeout=5)
    project_id = created.json()["data"]["project_id"]
    before = wait_until(lambda: (p := _get(server, f"/api/v1/projects/{project_id}"))["progress"] >= 30 and p,
                   what="three stages done")
    server.kill(signal.SIGKILL)

    restarted = server_factory(**env)
    done = wait_until(lambda: (p := _get(restarted, f"/api/v1/projects/{project_id}"))["status"]
                 in ("completed", "failed") and p, what="the build to finish after restart")
    assert done["status"] == "completed" and done["progress"] == 100
    assert done["latest_build"]["recoveries"] == 1
    # Stages finished before the kill were not run again.
    for old, new in zip(before["stages_snapshot"], done["stages_snapshot"]):
        if old["status"] == "completed":
            assert new["completed_at"] == old["completed_at"], old["name"]
    overview = _get(restarted, "/api/v1/statistics/overview")
    assert (overview["active_builds"], overview["successful_builds"], overview["running_agents"]) == (0, 1, 1)


def test_sigterm_hands_running_builds_back_for_the_next_start(server_factory: Any) -> None:
    # A lease far longer than the test: only a hand-back lets the next start resume at once.
    env = {"OFFLINE_STAGE_DELAY_SECONDS": "0.3", "BUILD_LEASE_SECONDS": "600"}
    server = server_factory(**env)
    created = httpx.post(f"{server.base_url}/api/v1/projects", json={"requirement": REQUIREMENT}, timeout=5)
    project_id = created.json()["data"]["project_id"]
    wait_until(lambda: _get(server, f"/api/v1/projects/{project_id}")["progress"] >= 15, what="progress")
    # uvicorn re-raises SIGTERM once its graceful shutdown is done, so the exit status says so.
    assert server.kill(signal.SIGTERM) == -signal.SIGTERM

    restarted = server_factory(**env)
    done = wait_until(lambda: (p := _get(restarted, f"/api/v1/projects/{project_id}"))["status"]
                 == "completed" and p, timeout=30, what="the handed-back build to finish")
    assert done["latest_build"]["recoveries"] == 0


async def test_a_build_whose_process_keeps_dying_fails_as_interrupted(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        store = app.state.store
        await app.state.engine.shutdown()  # place the build ourselves, as a dead process left it
        now = "2026-01-01T00:00:00.000000Z"
        stages = initial_stages()
        stages[0].status = "running"
        await store.create_project(tenant_id=TENANT,
            project=Project(tenant_id=TENANT, project_id="proj_0123456789ab", user_id="default",
                            project_name="p", requirement=REQUIREMENT, priority=3, tags=[],
                            status="building", progress=2.5, current_stage="orchestrator",
                            latest_build_id="build_0123456789ab", created_at=now, updated_at=now),
            build=Build(tenant_id=TENANT, build_id="build_0123456789ab", project_id="proj_0123456789ab",
                        status="running", progress=2.5, current_stage="orchestrator",
                        stages=stages, context={}, owner="engine_dead", lease_until=now,
                        recoveries=3, created_at=now, started_at=now, updated_at=now))

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            api = Api(client)
            failed = await api.wait_status("proj_0123456789ab", "failed")
            assert failed["latest_build"]["error"]["code"] == "interrupted"
            assert failed["latest_build"]["recoveries"] == 4
            orchestrator = next(s for s in failed["stages_snapshot"] if s["name"] == "orchestrator")
            assert orchestrator["status"] == "failed"
            overview = await api.call("GET", "/api/v1/statistics/overview")
            assert (overview["failed_builds"], overview["active_builds"]) == (1, 0)
