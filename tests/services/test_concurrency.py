"""Concurrent work through the API keeps every count exact and the build engine within its
MAX_CONCURRENT_BUILDS."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from api.config import Settings
from api.main import create_app
from api.providers.base import ModelProvider, ModelReply, ModelRequest
from api.providers.offline import OfflineProvider
from tests.conftest import REQUIREMENT, Api, make_settings, wait_for


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"offline_stage_delay_seconds": 0.0}


def _at(timestamp: str) -> datetime:
    return datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%S.%fZ")


async def _today(api: Api, path: str, **params: Any) -> dict[str, Any]:
    return (await api.call("GET", path, params=params))[-1]


async def test_fifty_concurrent_invocations_count_exactly_fifty(api: Api) -> None:
    agent = await api.built_agent()
    agent_id = agent["agent_id"]

    answers = await asyncio.gather(*(
        api.call("POST", f"/api/v1/agents/{agent_id}/invoke", json={"input_text": f"order {n}?"})
        for n in range(50)))

    assert len({a["invocation_id"] for a in answers}) == 50
    assert all(a["status"] == "success" for a in answers)
    stats = (await api.call("GET", f"/api/v1/agents/{agent_id}"))["runtime_stats"]
    assert {key: stats[key] for key in ("total_invocations", "successful_invocations",
                                        "failed_invocations")} == {
        "total_invocations": 50, "successful_invocations": 50, "failed_invocations": 0}
    assert stats["avg_duration_ms"] == round(sum(a["duration_ms"] for a in answers) / 50, 3)
    overview = await api.call("GET", "/api/v1/statistics/overview")
    assert (overview["total_invocations"], overview["today_calls"]) == (50, 50)
    today = await _today(api, "/api/v1/statistics/invocations")
    assert (today["total_invocations"], today["successful_invocations"], today["failed_invocations"]) == (
        50, 50, 0)
    listed = await api.call("GET", f"/api/v1/agents/{agent_id}/invocations", params={"limit": 100})
    assert {i["invocation_id"] for i in listed["items"]} == {a["invocation_id"] for a in answers}


async def test_concurrent_turns_in_one_session_keep_every_message_in_pairs(api: Api) -> None:
    agent = await api.built_agent()
    session = await api.call("POST", f"/api/v1/agents/{agent['agent_id']}/sessions", expect=201,
                             json={"display_name": "busy"})
    session_id = session["session_id"]

    turns = await asyncio.gather(*(
        api.call("POST", f"/api/v1/sessions/{session_id}/messages", expect=201,
                 json={"content": f"message {n}"})
        for n in range(20)))

    assert (await api.call("GET", f"/api/v1/sessions/{session_id}"))["message_count"] == 40
    messages = (await api.call("GET", f"/api/v1/sessions/{session_id}/messages",
                               params={"limit": 100}))["items"]
    assert len({m["message_id"] for m in messages}) == 40
    for user, assistant in zip(messages[::2], messages[1::2]):
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        assert user["invocation_id"] == assistant["invocation_id"]
    assert sorted(m["content"] for m in messages[::2]) == sorted(f"message {n}" for n in range(20))
    assert {t["invocation"]["invocation_id"] for t in turns} == {m["invocation_id"] for m in messages}
    stats = (await api.call("GET", f"/api/v1/agents/{agent['agent_id']}"))["runtime_stats"]
    assert stats["total_invocations"] == 20


# Each build takes eight provider steps of 30 ms, long enough for two to overlap every time.
@pytest.mark.parametrize("settings_overrides",
                         [{"max_concurrent_builds": 2, "offline_stage_delay_seconds": 0.03}],
                         ids=["two_slots"])
async def test_builds_beyond_the_limit_queue_and_start_in_creation_order(api: Api) -> None:
    projects = [await api.create_project(f"{REQUIREMENT} number {n}") for n in range(6)]
    project_ids = [p["project_id"] for p in projects]
    most_building = 0

    async def all_completed() -> bool:
        nonlocal most_building
        listed = (await api.call("GET", "/api/v1/projects", params={"limit": 100}))["items"]
        statuses = [p["status"] for p in listed]
        building = statuses.count("building")
        assert building <= 2, statuses
        most_building = max(most_building, building)
        assert not {"failed", "stopped"} & set(statuses), statuses
        return statuses == ["completed"] * 6

    await wait_for(all_completed, timeout=60, interval=0.01, what="every build to complete")
    assert most_building == 2

    builds = []
    for project_id in project_ids:
        [build] = (await api.call("GET", f"/api/v1/projects/{project_id}/builds"))["items"]
        builds.append(build)
    started = [b["started_at"] for b in builds]
    assert started == sorted(started) and len(set(started)) == 6, "not started in creation order"
    # Replayed from the recorded times: never more than two builds between start and finish.
    events = sorted([(_at(b["started_at"]), 1) for b in builds]
                    + [(_at(b["finished_at"]), -1) for b in builds], key=lambda e: (e[0], e[1]))
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    assert peak == 2
    # A queued build starts only once an earlier one has finished.
    for n, build in enumerate(builds[2:], start=2):
        assert any(earlier["finished_at"] <= build["started_at"] for earlier in builds[:n])

    overview = await api.call("GET", "/api/v1/statistics/overview")
    durations = [b["duration_seconds"] for b in builds]
    assert {key: overview[key] for key in (
        "total_builds", "successful_builds", "failed_builds", "active_builds", "building_agents",
        "success_rate", "total_agents", "running_agents", "offline_agents")} == {
        "total_builds": 6, "successful_builds": 6, "failed_builds": 0, "active_builds": 0,
        "building_agents": 0, "success_rate": 100.0, "total_agents": 6, "running_agents": 6,
        "offline_agents": 0}
    assert overview["avg_build_time_minutes"] == round(sum(durations) / 6 / 60, 3)
    today = await _today(api, "/api/v1/statistics/builds")
    assert (today["total_builds"], today["successful_builds"], today["failed_builds"],
            today["avg_duration_minutes"], today["builds_by_stage"]) == (
        6, 6, 0, round(sum(durations) / 6 / 60, 3), {})


class CountingModel(OfflineProvider):
    """Stands in for a hosted model that takes 50 ms a call; keeps the most calls in flight."""

    def __init__(self) -> None:
        super().__init__(stage_delay_seconds=0.05)
        self.in_flight = self.most_in_flight = 0

    async def complete(self, request: ModelRequest) -> ModelReply:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return await super().complete(request)
        finally:
            self.in_flight -= 1


@pytest.mark.parametrize("settings_overrides", [{"max_concurrent_builds": 3}], ids=["three_slots"])
@pytest.mark.parametrize("provider", [CountingModel()], ids=["counting_model"])
async def test_builds_wait_on_the_model_together(api: Api, provider: CountingModel) -> None:
    """The engine runs one build's bookkeeping at a time, never one model call at a time."""
    project_ids = [(await api.create_project(f"{REQUIREMENT} number {n}"))["project_id"]
                   for n in range(3)]
    for project_id in project_ids:
        await api.wait_status(project_id, "completed")
    assert provider.most_in_flight == 3


@pytest.mark.parametrize("settings_overrides",
                         [{"max_concurrent_builds": 3, "offline_stage_delay_seconds": 0.0}],
                         ids=["three_slots"])
async def test_projects_created_concurrently_all_build_and_count_exactly(api: Api) -> None:
    created = await asyncio.gather(*(api.create_project(f"{REQUIREMENT} batch {n}") for n in range(20)))
    assert len({p["project_id"] for p in created}) == 20

    for project in created:
        await api.wait_status(project["project_id"], "completed")
    overview = await api.call("GET", "/api/v1/statistics/overview")
    assert {key: overview[key] for key in (
        "total_builds", "successful_builds", "failed_builds", "active_builds", "total_agents",
        "running_agents", "success_rate", "today_api_calls")} == {
        "total_builds": 20, "successful_builds": 20, "failed_builds": 0, "active_builds": 0,
        "total_agents": 20, "running_agents": 20, "success_rate": 100.0,
        "today_api_calls": api.api_requests}
    trend = await api.call("GET", "/api/v1/statistics/trends", params={"metric": "builds"})
    assert trend["data_points"][-1]["value"] == 20


async def test_concurrent_restarts_start_exactly_one_build(api: Api) -> None:
    project = await api.create_project()
    project_id = project["project_id"]
    await api.wait_status(project_id, "completed")

    responses = await asyncio.gather(*(
        api.client.put(f"/api/v1/projects/{project_id}/control", json={"action": "restart"})
        for _ in range(5)))

    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 409, 409, 409, 409], [r.json() for r in responses]
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 409} == {"INVALID_STATE"}
    await api.wait_status(project_id, "completed")
    builds = (await api.call("GET", f"/api/v1/projects/{project_id}/builds"))["items"]
    assert [b["status"] for b in builds] == ["succeeded", "succeeded"]
    overview = await api.call("GET", "/api/v1/statistics/overview")
    assert (overview["total_builds"], overview["successful_builds"], overview["active_builds"]) == (2, 2, 0)


async def test_invocations_during_a_rebuild_are_all_counted(api: Api) -> None:
    agent = await api.built_agent()
    agent_id, project_id = agent["agent_id"], agent["project_id"]

    async def rebuild() -> None:
        await api.call("PUT", f"/api/v1/projects/{project_id}/control", json={"action": "restart"})
        await api.wait_status(project_id, "completed")

    answers = await asyncio.gather(rebuild(), *(
        api.call("POST", f"/api/v1/agents/{agent_id}/invoke", json={"input_text": f"refund {n}"})
        for n in range(30)))

    assert all(a["status"] == "success" for a in answers[1:])
    rebuilt = await api.call("GET", f"/api/v1/agents/{agent_id}")
    builds = (await api.call("GET", f"/api/v1/projects/{project_id}/builds"))["items"]
    assert rebuilt["build_id"] == builds[0]["build_id"] != agent["build_id"]
    assert rebuilt["created_at"] == agent["created_at"]
    assert rebuilt["runtime_stats"]["total_invocations"] == 30
    overview = await api.call("GET", "/api/v1/statistics/overview")
    assert (overview["total_agents"], overview["running_agents"], overview["total_invocations"]) == (1, 1, 30)


class SlowDeployModel(OfflineProvider):
    """Stands in for a hosted model that takes its time over the last stage."""

    name = "slow-deploy"

    def __init__(self) -> None:
        super().__init__(stage_delay_seconds=0)
        self.deploying = asyncio.Event()
        self.release = asyncio.Event()

    async def complete(self, request: ModelRequest) -> ModelReply:
        if request.purpose == "agent_deployer":
            self.deploying.set()
            await self.release.wait()
        return await super().complete(request)


@asynccontextmanager
async def instance(settings: Settings, provider: ModelProvider,
                   name: str) -> AsyncIterator[tuple[Api, FastAPI]]:
    """One API process of several on the same data, as WORKERS > 1 runs them."""
    app = create_app(settings, provider=provider)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url=f"http://{name}") as client:
        yield Api(client), app


@pytest.mark.parametrize("action", ["delete", "stop"])
async def test_a_build_ended_through_another_instance_registers_no_agent(
        tmp_path: Path, action: str) -> None:
    settings = make_settings(tmp_path, offline_stage_delay_seconds=0.0)
    models = (SlowDeployModel(), SlowDeployModel())
    async with instance(settings, models[0], "worker-1") as first, \
            instance(settings, models[1], "worker-2") as second:
        project = await first[0].create_project()
        project_id = project["project_id"]
        # Either instance's engine may claim the queued build; the other one ends it.
        deploying = [asyncio.ensure_future(model.deploying.wait()) for model in models]
        done, pending = await asyncio.wait(deploying, timeout=20, return_when=asyncio.FIRST_COMPLETED)
        for waiter in pending:
            waiter.cancel()
        assert done, "no instance reached the deploy stage"
        building = 0 if models[0].deploying.is_set() else 1
        (_, builder_app), (other, _) = (first, second)[building], (first, second)[1 - building]

        if action == "delete":
            await other.call("DELETE", f"/api/v1/projects/{project_id}")
        else:
            await other.call("PUT", f"/api/v1/projects/{project_id}/control", json={"action": "stop"})
        for model in models:
            model.release.set()

        # The run has no API of its own: wait until the building instance's engine holds no run.
        engine = builder_app.state.engine

        async def run_ended() -> bool:
            return not engine._runs

        await wait_for(run_ended, what="the building instance's build run to end")

        agents = await other.call("GET", "/api/v1/agents", params={"project_id": project_id})
        assert agents["items"] == [], "an agent was registered for a build that was ended"
        overview = await other.call("GET", "/api/v1/statistics/overview")
        assert (overview["total_agents"], overview["running_agents"], overview["active_builds"]) == (0, 0, 0)
        if action == "stop":
            stopped = await other.project(project_id)
            assert (stopped["status"], stopped["latest_build"]["status"]) == ("stopped", "cancelled")
