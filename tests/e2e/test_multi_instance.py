"""Two API processes on one DynamoDB behave as one service: builds spread over both, a build
survives the SIGKILL of the instance running it, control actions reach a build through the
other instance, and statistics and pagination see every write of both."""

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests import moto_server
from tests.conftest import OTHER_REQUIREMENT, REQUIREMENT, ServerProcess, wait_until

PROJECTS = 20
LEASE_SECONDS = "2"


def _call(server: ServerProcess, method: str, path: str, **kwargs: Any) -> Any:
    response = httpx.request(method, server.base_url + path, timeout=10, **kwargs)
    assert response.status_code < 300, (response.status_code, response.text)
    return response.json()["data"]




def _all(server: ServerProcess, path: str, **params: Any) -> list[dict[str, Any]]:
    """Every item of a listing, page by page (small pages: many cursors)."""
    items: list[dict[str, Any]] = []
    last_key = None
    while True:
        page = _call(server, "GET", path, params={**params, "limit": 3,
                                                  **({"last_key": last_key} if last_key else {})})
        items += page["items"]
        last_key = page["last_key"]
        if last_key is None:
            return items


def test_two_instances_share_builds_survive_a_sigkill_and_count_exactly(
        server_factory: Callable[..., ServerProcess], tmp_path: Path) -> None:
    prefix = moto_server.new_prefix()
    env = moto_server.server_env(prefix, BUILD_LEASE_SECONDS=LEASE_SECONDS,
                                 OFFLINE_STAGE_DELAY_SECONDS="0.1", MAX_CONCURRENT_BUILDS="6")
    try:
        doomed = server_factory(**env, LOG_DIR=str(tmp_path / "logs-doomed"))
        # The first build can only be claimed by the first instance: that names its engine.
        first = _call(doomed, "POST", "/api/v1/projects", json={"requirement": REQUIREMENT})
        running = wait_until(lambda: (p := _call(doomed, "GET", f"/api/v1/projects/{first['project_id']}"))
                        ["latest_build"]["instance_id"] and p, what="the first build to be claimed")
        doomed_engine = running["latest_build"]["instance_id"]
        survivor = server_factory(**env, LOG_DIR=str(tmp_path / "logs-survivor"))

        project_ids = [first["project_id"]]
        for n in range(1, PROJECTS):
            server = (survivor, doomed)[n % 2]
            requirement = (REQUIREMENT, OTHER_REQUIREMENT)[n % 2]
            project_ids.append(_call(server, "POST", "/api/v1/projects",
                                     json={"requirement": f"{requirement} (#{n})"})["project_id"])

        def on_doomed_mid_build() -> dict[str, Any] | None:
            for listed in _call(survivor, "GET", "/api/v1/projects", params={"limit": 100})["items"]:
                if listed["status"] == "building" and 0 < listed["progress"] < 60:
                    project = _call(survivor, "GET", f"/api/v1/projects/{listed['project_id']}")
                    if project["latest_build"]["instance_id"] == doomed_engine:
                        return project
            return None

        # Pause, sent to the instance that is not running the build, stops it at the next
        # boundary; resume, sent there too, lets either instance finish it.
        target = wait_until(on_doomed_mid_build, what="a build running on the first instance")
        _call(survivor, "PUT", f"/api/v1/projects/{target['project_id']}/control",
              json={"action": "pause", "reason": "multi-instance test"})
        paused = wait_until(lambda: (p := _call(doomed, "GET", f"/api/v1/projects/{target['project_id']}"))
                       ["latest_build"]["instance_id"] is None and p, what="the pause to take hold")
        assert paused["status"] == "paused"
        time.sleep(0.5)
        held = _call(survivor, "GET", f"/api/v1/projects/{target['project_id']}")
        assert (held["status"], held["progress"]) == ("paused", paused["progress"])
        _call(survivor, "PUT", f"/api/v1/projects/{target['project_id']}/control",
              json={"action": "resume"})

        victim = wait_until(on_doomed_mid_build, what="a build mid-way on the first instance")
        doomed.kill(signal.SIGKILL)

        def all_done() -> bool:
            listed = _call(survivor, "GET", "/api/v1/projects", params={"limit": 100})["items"]
            return all(p["status"] in ("completed", "failed") for p in listed)

        wait_until(all_done, timeout=120, what="every build to finish on the survivor")
        done = [_call(survivor, "GET", f"/api/v1/projects/{p}") for p in project_ids]
        assert [p["status"] for p in done] == ["completed"] * PROJECTS
        by_id = {p["project_id"]: p for p in done}
        # Taken over once its lease ran out, and resumed, not restarted.
        assert by_id[victim["project_id"]]["latest_build"]["recoveries"] == 1
        assert {p["latest_build"]["recoveries"] for p in done} <= {0, 1}
        stages = _call(survivor, "GET", f"/api/v1/projects/{victim['project_id']}/stages")
        for before, after in zip(victim["stages_snapshot"], stages):
            if before["status"] == "completed":
                assert after["completed_at"] == before["completed_at"], before["name"]

        overview = _call(survivor, "GET", "/api/v1/statistics/overview")
        assert {key: overview[key] for key in (
            "total_builds", "successful_builds", "failed_builds", "active_builds", "success_rate",
            "total_agents", "running_agents", "offline_agents")} == {
            "total_builds": PROJECTS, "successful_builds": PROJECTS, "failed_builds": 0,
            "active_builds": 0, "success_rate": 100.0, "total_agents": PROJECTS,
            "running_agents": PROJECTS, "offline_agents": 0}

        listed = _all(survivor, "/api/v1/projects")
        assert sorted(p["project_id"] for p in listed) == sorted(project_ids)
        assert [p["created_at"] for p in listed] == sorted((p["created_at"] for p in listed), reverse=True)
        agents = _all(survivor, "/api/v1/agents")
        assert sorted(a["project_id"] for a in agents) == sorted(project_ids)
        support = _all(survivor, "/api/v1/agents", category="customer_support")
        assert len(support) == PROJECTS // 2
    finally:
        moto_server.delete_tables([prefix])
