"""Build workers (`nexus-ai worker`) beside an API that runs none (`RUN_BUILDS=false`), on one
SQLite file and on DynamoDB: the worker serves only its probes and /metrics, runs every build,
a SIGKILLed worker's builds are resumed by another while the API keeps serving, and a stop sent
to the API ends the worker's run within a second."""

import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import moto_server
from tests.conftest import BUILD_WORKER, OTHER_REQUIREMENT, REQUIREMENT, ServerProcess, wait_until

PROJECTS = 6


@pytest.fixture(params=["sqlite", "dynamodb"])
def backend_env(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    if request.param == "sqlite":
        yield {}  # every process of the test shares its DATA_DIR
        return
    prefix = moto_server.new_prefix()
    yield moto_server.server_env(prefix)
    moto_server.delete_tables([prefix])


def _call(server: ServerProcess, method: str, path: str, **kwargs: Any) -> Any:
    response = httpx.request(method, server.base_url + path, timeout=10, **kwargs)
    assert response.status_code < 300, (response.status_code, response.text)
    return response.json()["data"]


def _builds_active(server: ServerProcess) -> float:
    exposition = httpx.get(server.base_url + "/metrics", timeout=10).text
    match = re.search(r"^builds_active (\S+)$", exposition, re.MULTILINE)
    assert match, exposition[:2000]
    return float(match.group(1))


def _project(api: ServerProcess, project_id: str) -> dict[str, Any]:
    return _call(api, "GET", f"/api/v1/projects/{project_id}")


def _running_on(api: ServerProcess, project_id: str) -> str | None:
    build = _project(api, project_id)["latest_build"]
    return build["instance_id"] if build["status"] == "running" else None


def test_workers_run_every_build_and_resume_a_sigkilled_worker_s_builds(
        server_factory: Callable[..., ServerProcess], backend_env: dict[str, str],
        tmp_path: Path) -> None:
    env = {**backend_env, "BUILD_LEASE_SECONDS": "2", "OFFLINE_STAGE_DELAY_SECONDS": "0.3",
           "MAX_CONCURRENT_BUILDS": "3"}
    api = server_factory(**env, RUN_BUILDS="false", LOG_DIR=str(tmp_path / "logs-api"))
    first = _call(api, "POST", "/api/v1/projects", json={"requirement": REQUIREMENT})
    # The API's engine takes nothing: watched over more than two scheduler periods.
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        build = _project(api, first["project_id"])["latest_build"]
        assert (build["status"], build["instance_id"]) == ("queued", None)
        assert _builds_active(api) == 0

    doomed = server_factory(**env, command=BUILD_WORKER, LOG_DIR=str(tmp_path / "logs-doomed"))
    live = httpx.get(doomed.base_url + "/health/live", timeout=5).json()
    assert (live["success"], live["data"]["status"]) == (True, "alive")
    not_here = httpx.get(doomed.base_url + "/api/v1/projects", timeout=5)
    assert (not_here.status_code, not_here.json()["error"]["code"]) == (404, "RESOURCE_NOT_FOUND")
    assert httpx.get(doomed.base_url + "/openapi.json", timeout=5).status_code == 404
    doomed_engine = wait_until(lambda: _running_on(api, first["project_id"]),
                               what="the worker to claim the queued build")
    assert doomed_engine.startswith("engine_")

    project_ids = [first["project_id"]] + [
        _call(api, "POST", "/api/v1/projects",
              json={"requirement": f"{(REQUIREMENT, OTHER_REQUIREMENT)[n % 2]} (#{n})"})["project_id"]
        for n in range(1, PROJECTS)]

    def mid_build() -> dict[str, Any] | None:
        for project_id in project_ids:
            project = _project(api, project_id)
            if (project["latest_build"]["instance_id"] == doomed_engine
                    and 0 < project["progress"] < 60):
                return project
        return None

    victim = wait_until(mid_build, what="a build mid-way on the worker")
    assert _builds_active(doomed) >= 1
    doomed.kill(signal.SIGKILL)
    # The API serves on without any worker.
    ready = httpx.get(api.base_url + "/health/ready", timeout=5).json()
    assert ready["data"]["status"] == "ready"
    assert _project(api, victim["project_id"])["status"] == "building"

    survivor = server_factory(**env, command=BUILD_WORKER, LOG_DIR=str(tmp_path / "logs-survivor"))

    def all_done() -> bool:
        return all(_project(api, p)["status"] in ("completed", "failed") for p in project_ids)

    wait_until(all_done, timeout=120, what="every build to finish on the second worker")
    done = {p: _project(api, p) for p in project_ids}
    assert [p["status"] for p in done.values()] == ["completed"] * PROJECTS
    # Taken over once the dead worker's lease ran out, and resumed from its completed steps.
    assert done[victim["project_id"]]["latest_build"]["recoveries"] == 1
    stages = _call(api, "GET", f"/api/v1/projects/{victim['project_id']}/stages")
    for before, after in zip(victim["stages_snapshot"], stages, strict=True):
        if before["status"] == "completed":
            assert after["completed_at"] == before["completed_at"], before["name"]
    overview = _call(api, "GET", "/api/v1/statistics/overview")
    assert (overview["successful_builds"], overview["active_builds"], overview["total_agents"]) == (
        PROJECTS, 0, PROJECTS)
    # Each worker's /metrics counts the builds it finished; the API's counts none.
    finished = httpx.get(survivor.base_url + "/metrics", timeout=10).text
    assert re.search(r'^builds_total\{status="succeeded"\} [1-9]', finished, re.MULTILINE), finished[:2000]
    assert 'builds_total{status="succeeded"}' not in httpx.get(api.base_url + "/metrics", timeout=10).text


def test_a_stop_sent_to_the_api_ends_the_worker_s_run_within_a_second(
        server_factory: Callable[..., ServerProcess], backend_env: dict[str, str],
        tmp_path: Path) -> None:
    # Each stage's (offline) model call takes 30 s, and the lease 30 s: neither the build's
    # next write nor a lease renewal comes within the second; the worker's control watch does.
    env = {**backend_env, "BUILD_LEASE_SECONDS": "30", "OFFLINE_STAGE_DELAY_SECONDS": "30"}
    api = server_factory(**env, RUN_BUILDS="false", LOG_DIR=str(tmp_path / "logs-api"))
    worker = server_factory(**env, command=BUILD_WORKER, LOG_DIR=str(tmp_path / "logs-worker"))
    project = _call(api, "POST", "/api/v1/projects", json={"requirement": REQUIREMENT})
    wait_until(lambda: _running_on(api, project["project_id"]), what="the worker to claim the build")
    wait_until(lambda: _builds_active(worker) == 1 or None, what="the worker to run the build")

    stopped = _call(api, "PUT", f"/api/v1/projects/{project['project_id']}/control",
                    json={"action": "stop", "reason": "worker test"})
    assert stopped["status"] == "stopped"
    wait_until(lambda: _builds_active(worker) == 0 or None, timeout=1.0,
               what="the worker's run to end")
    build = _project(api, project["project_id"])["latest_build"]
    assert (build["status"], build["instance_id"]) == ("cancelled", None)
    log = (tmp_path / "logs-worker" / "api.log").read_text()
    assert "Build run cancelled" in log
