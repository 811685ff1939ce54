"""Every figure of the statistics endpoints, exact after a known mix of succeeded, failed and
stopped builds, successful and failed invocations, and a deleted project."""

import asyncio
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from collections.abc import AsyncIterator

from api.providers.base import ModelError, ModelReply, ModelRequest, TextDelta
from api.providers.offline import OfflineProvider
from tests.conftest import OTHER_REQUIREMENT, REQUIREMENT, Api, wait_for

BAD_CODE = "[bad-code]"
PROVIDER_DOWN = "[provider-down]"
HOLD = "[hold]"
FAIL = "FAIL"


class ScriptedModel(OfflineProvider):
    """Stands in for a hosted model: answers as the offline provider does, except where the
    requirement or the question asks it to misbehave the way a real model or endpoint can."""

    name = "scripted"

    def __init__(self) -> None:
        super().__init__(stage_delay_seconds=0)
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    async def complete(self, request: ModelRequest) -> ModelReply:
        requirement, stage = request.inputs["requirement"], request.purpose
        if HOLD in requirement and stage == "requirements_analysis":
            self.holding.set()  # a slow model: the build waits here until stopped
            await self.release.wait()
        if PROVIDER_DOWN in requirement and stage == "system_architecture":
            raise ModelError("model endpoint answered 503")
        if BAD_CODE in requirement and stage == "tool_developer":
            return ModelReply(text="def broken(:\n    pass\n", finish_reason="stop", model=self.name,
                              usage=None)
        return await super().complete(request)

    async def stream(self, request: ModelRequest) -> AsyncIterator[TextDelta | ModelReply]:
        if request.inputs["input_text"].startswith(FAIL):
            raise ModelError("model timed out")
        async for event in super().stream(request):
            yield event


@pytest.fixture
def provider() -> ScriptedModel:
    return ScriptedModel()


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"offline_stage_delay_seconds": 0.0}


NO_TOKENS = {"input_total": 0, "output_total": 0, "input_today": 0, "output_today": 0}


def mean(values: list[float], count: int) -> Any:
    """An average as the statistics give it (3 decimals). They divide the aggregate's sum of the
    unrounded values, added in the store's order: at half a unit of the last decimal the two
    roundings may differ by one unit (CI saw 0.145 where the records gave 0.146)."""
    return pytest.approx(round(sum(values) / count, 3), abs=0.0011)


def utc_today() -> str:
    return datetime.now(UTC).date().isoformat()


async def overview(api: Api) -> dict[str, Any]:
    return await api.call("GET", "/api/v1/statistics/overview")


async def invoke(api: Api, agent_id: str, text: str) -> dict[str, Any]:
    """One invocation; a failed one answers 502 and is still recorded."""
    if text.startswith(FAIL):
        error = await api.call("POST", f"/api/v1/agents/{agent_id}/invoke", expect=502,
                               json={"input_text": text})
        assert error["code"] == "AGENT_INVOCATION_FAILED"
        assert "model timed out" in error["message"]
        return {"invocation_id": error["details"]["invocation_id"], "status": "failed"}
    return await api.call("POST", f"/api/v1/agents/{agent_id}/invoke", json={"input_text": text})


async def test_a_fresh_platform_reports_zeros(api: Api) -> None:
    figures = await overview(api)
    assert figures == {
        "total_agents": 0, "running_agents": 0, "building_agents": 0, "offline_agents": 0,
        "total_builds": 0, "successful_builds": 0, "failed_builds": 0, "active_builds": 0,
        "success_rate": 0.0, "avg_build_time_minutes": 0.0, "today_calls": 0,
        "today_api_calls": 1, "total_invocations": 0, "avg_time_to_first_token_ms": 0.0,
        "tokens": {**NO_TOKENS, "builds": NO_TOKENS, "invocations": NO_TOKENS}}
    days = await api.call("GET", "/api/v1/statistics/builds")
    assert len(days) == 7 and all(day["total_builds"] == 0 for day in days)


async def test_every_figure_is_exact_after_a_known_mix(api: Api, provider: ScriptedModel) -> None:
    # -- builds: two succeed, one fails compiling (twice), one loses its provider, one is stopped
    good = await api.create_project(REQUIREMENT)
    other = await api.create_project(OTHER_REQUIREMENT)
    bad_code = await api.create_project(f"{BAD_CODE} Answer support tickets about refunds")
    provider_down = await api.create_project(f"{PROVIDER_DOWN} Write weekly sales reports from CSV data")
    held = await api.create_project(f"{HOLD} Schedule meetings and send calendar reminders")

    await api.wait_status(good["project_id"], "completed")
    await api.wait_status(other["project_id"], "completed")
    failed = await api.wait_status(bad_code["project_id"], "failed")
    assert failed["latest_build"]["error"]["stage"] == "agent_developer_manager"
    assert failed["latest_build"]["error"]["code"] == "GENERATED_CODE_INVALID"
    assert "tools/" in failed["latest_build"]["error"]["message"]
    assert [s["status"] for s in failed["stages_snapshot"]] == [
        "completed", "completed", "completed", "completed", "failed", "pending"]
    down = await api.wait_status(provider_down["project_id"], "failed")
    assert down["latest_build"]["error"] == {"stage": "system_architecture", "code": "MODEL_ERROR",
                                             "message": "system_architecture: model endpoint answered 503"}

    await asyncio.wait_for(provider.holding.wait(), timeout=20)
    await api.wait_status(held["project_id"], "building")
    figures = await overview(api)
    assert (figures["active_builds"], figures["building_agents"], figures["total_builds"]) == (1, 1, 5)
    await api.call("PUT", f"/api/v1/projects/{held['project_id']}/control", json={"action": "stop"})
    stopped = await api.project(held["project_id"])
    assert (stopped["status"], stopped["latest_build"]["status"]) == ("stopped", "cancelled")

    await api.call("PUT", f"/api/v1/projects/{bad_code['project_id']}/control",
                   json={"action": "restart"})

    async def failed_again() -> bool:
        builds = (await api.call("GET", f"/api/v1/projects/{bad_code['project_id']}/builds"))["items"]
        return [b["status"] for b in builds] == ["failed", "failed"]

    await wait_for(failed_again, what="the restarted build to fail again")

    succeeded_builds = [
        (await api.call("GET", f"/api/v1/projects/{p['project_id']}/builds"))["items"][0]
        for p in (good, other)]
    assert all(b["status"] == "succeeded" for b in succeeded_builds)
    assert all(b["duration_seconds"] > 0 for b in succeeded_builds)
    avg_build_minutes = mean([b["duration_seconds"] / 60 for b in succeeded_builds], 2)

    # -- invocations: the good agent answers three and fails two; the other agent answers one
    # session turn and fails one.
    [good_agent] = (await api.call("GET", "/api/v1/agents",
                                   params={"project_id": good["project_id"]}))["items"]
    [other_agent] = (await api.call("GET", "/api/v1/agents",
                                    params={"project_id": other["project_id"]}))["items"]
    results = [await invoke(api, good_agent["agent_id"], text)
               for text in ("Where is my refund?", f"{FAIL} please", "Open a ticket",
                            f"{FAIL} again", "Search the knowledge base")]
    failed_ids = {r["invocation_id"] for r in results if r["status"] == "failed"}
    assert len(failed_ids) == 2 and all(i.startswith("inv_") for i in failed_ids)
    session = await api.call("POST", f"/api/v1/agents/{other_agent['agent_id']}/sessions",
                             expect=201, json={"display_name": "numbers"})
    await api.call("POST", f"/api/v1/sessions/{session['session_id']}/messages", expect=201,
                   json={"content": "Forecast revenue for March"})
    error = await api.call("POST", f"/api/v1/sessions/{session['session_id']}/messages", expect=502,
                           json={"content": f"{FAIL} forecast April"})
    assert error["code"] == "AGENT_INVOCATION_FAILED"
    failed_ids.add(error["details"]["invocation_id"])
    assert (await api.call("GET", f"/api/v1/sessions/{session['session_id']}"))["message_count"] == 2

    good_invocations = (await api.call("GET", f"/api/v1/agents/{good_agent['agent_id']}/invocations"))["items"]
    other_invocations = (await api.call("GET", f"/api/v1/agents/{other_agent['agent_id']}/invocations"))["items"]
    invocations = good_invocations + other_invocations
    assert len(invocations) == 7
    assert {i["invocation_id"] for i in invocations if i["status"] == "failed"} == failed_ids
    assert all(i["error"] == "model timed out" for i in invocations if i["status"] == "failed")
    avg_invocation_ms = mean([i["duration_ms"] for i in invocations], 7)
    # Tokens: every invocation used some (a failed one its prompt), and the same figures are
    # summed in the agent's stats and the statistics.
    input_tokens = sum(i["input_tokens"] for i in invocations)
    output_tokens = sum(i["output_tokens"] for i in invocations)
    assert all(i["input_tokens"] > 0 and i["tokens_estimated"] for i in invocations)
    ttfts = [i["time_to_first_token_ms"] for i in invocations if i["time_to_first_token_ms"] is not None]
    assert len(ttfts) == 4  # the successful ones; a failed call sent no text
    good_ttfts = [i["time_to_first_token_ms"] for i in good_invocations if i["status"] == "success"]
    good_stats = (await api.call("GET", f"/api/v1/agents/{good_agent['agent_id']}"))["runtime_stats"]
    assert good_stats == {
        "total_invocations": 5, "successful_invocations": 3, "failed_invocations": 2,
        "cancelled_invocations": 0,
        "avg_duration_ms": mean([i["duration_ms"] for i in good_invocations], 5),
        "last_invoked_at": good_invocations[0]["created_at"],
        "total_input_tokens": sum(i["input_tokens"] for i in good_invocations),
        "total_output_tokens": sum(i["output_tokens"] for i in good_invocations),
        "avg_time_to_first_token_ms": mean(good_ttfts, 3)}

    # -- agents: one offline, then its project deleted
    await api.call("PUT", f"/api/v1/agents/{other_agent['agent_id']}/status", json={"status": "offline"})
    figures = await overview(api)
    assert (figures["total_agents"], figures["running_agents"], figures["offline_agents"]) == (2, 1, 1)
    await api.call("DELETE", f"/api/v1/projects/{other['project_id']}")

    # -- the overview
    figures = await overview(api)
    tokens = figures.pop("tokens")
    assert tokens["invocations"] == {"input_total": input_tokens, "output_total": output_tokens,
                                     "input_today": input_tokens, "output_today": output_tokens}
    assert tokens["builds"]["input_total"] > 0 and tokens["builds"]["output_total"] > 0
    assert tokens["input_total"] == tokens["builds"]["input_total"] + input_tokens
    assert tokens["output_total"] == tokens["builds"]["output_total"] + output_tokens
    assert figures.pop("avg_time_to_first_token_ms") == mean(ttfts, 4)
    assert figures == {
        "total_agents": 1, "running_agents": 1, "building_agents": 0, "offline_agents": 0,
        # Builds are history: the deleted project's build still counts.
        "total_builds": 6, "successful_builds": 2, "failed_builds": 3, "active_builds": 0,
        # Two of five finished builds; the stopped build is not finished work.
        "success_rate": 40.0, "avg_build_time_minutes": avg_build_minutes,
        "today_calls": 7, "today_api_calls": api.api_requests, "total_invocations": 7}

    # -- per day
    today = date.fromisoformat(utc_today())
    week = [(today - timedelta(days=n)).isoformat() for n in range(6, -1, -1)]
    builds_days = await api.call("GET", "/api/v1/statistics/builds")
    assert [day["date"] for day in builds_days] == week
    assert builds_days[-1] == {
        "date": week[-1], "total_builds": 6, "successful_builds": 2, "failed_builds": 3,
        "avg_duration_minutes": avg_build_minutes,
        "builds_by_stage": {"agent_developer_manager": 2, "system_architecture": 1},
        "input_tokens": tokens["builds"]["input_today"], "output_tokens": tokens["builds"]["output_today"]}
    assert all(day == {"date": day["date"], "total_builds": 0, "successful_builds": 0,
                       "failed_builds": 0, "avg_duration_minutes": 0.0, "builds_by_stage": {},
                       "input_tokens": 0, "output_tokens": 0}
               for day in builds_days[:-1])
    one_day = {"start_date": week[-1], "end_date": week[-1]}
    assert await api.call("GET", "/api/v1/statistics/builds", params=one_day) == builds_days[-1:]

    invocation_days = await api.call("GET", "/api/v1/statistics/invocations")
    assert [day["date"] for day in invocation_days] == week
    assert invocation_days[-1] == {
        "date": week[-1], "total_invocations": 7, "successful_invocations": 4,
        "failed_invocations": 3, "success_rate": round(100 * 4 / 7, 3),
        "avg_duration_ms": avg_invocation_ms, "cancelled_invocations": 0,
        "input_tokens": input_tokens, "output_tokens": output_tokens,
        "avg_time_to_first_token_ms": mean(ttfts, 4)}
    assert all(day == {"date": day["date"], "total_invocations": 0, "successful_invocations": 0,
                       "failed_invocations": 0, "success_rate": 0.0, "avg_duration_ms": 0.0,
                       "cancelled_invocations": 0, "input_tokens": 0, "output_tokens": 0,
                       "avg_time_to_first_token_ms": 0.0}
               for day in invocation_days[:-1])

    three_days = {"start_date": week[-3], "end_date": week[-1]}
    for metric, value in (("builds", 6), ("invocations", 7), ("success_rate", 40.0), ("api_calls", None),
                          ("tokens", tokens["input_today"] + tokens["output_today"])):
        trend = await api.call("GET", "/api/v1/statistics/trends", params={"metric": metric, **three_days})
        expected = api.api_requests if value is None else value
        assert trend == {"metric": metric, "data_points": [
            {"date": week[-3], "value": 0}, {"date": week[-2], "value": 0},
            {"date": week[-1], "value": expected}]}, metric


async def test_a_project_deleted_mid_build_counts_its_build_cancelled(
        api: Api, provider: ScriptedModel) -> None:
    project = await api.create_project(f"{HOLD} Summarize research papers every morning")
    await asyncio.wait_for(provider.holding.wait(), timeout=20)
    assert (await overview(api))["active_builds"] == 1

    await api.call("DELETE", f"/api/v1/projects/{project['project_id']}")

    await api.call("GET", f"/api/v1/projects/{project['project_id']}", expect=404)
    figures = await overview(api)
    assert {key: figures[key] for key in (
        "total_builds", "successful_builds", "failed_builds", "active_builds", "building_agents",
        "success_rate", "total_agents")} == {
        "total_builds": 1, "successful_builds": 0, "failed_builds": 0, "active_builds": 0,
        "building_agents": 0, "success_rate": 0.0, "total_agents": 0}
    [today] = await api.call("GET", "/api/v1/statistics/builds",
                             params={"start_date": utc_today(), "end_date": utc_today()})
    assert (today["total_builds"], today["failed_builds"], today["builds_by_stage"]) == (1, 0, {})
    assert (await api.call("GET", "/api/v1/agents"))["count"] == 0


@pytest.mark.parametrize("path", ["/api/v1/statistics/builds", "/api/v1/statistics/invocations"])
async def test_the_default_range_stops_at_the_first_date(api: Api, path: str) -> None:
    """end_date=0001-01-01: six days before it do not exist; the range is that one day."""
    days = await api.call("GET", path, params={"end_date": "0001-01-03"})
    assert [day["date"] for day in days] == ["0001-01-01", "0001-01-02", "0001-01-03"]
    trend = await api.call("GET", "/api/v1/statistics/trends", params={"metric": "builds", "end_date": "0001-01-01"})
    assert trend["data_points"] == [{"date": "0001-01-01", "value": 0}]
