"""The statistics endpoints' model-usage figures, exact after a known mix of builds and
invocations written to the app's own store (no model runs), on every storage backend."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from api.core.records import BuildError, BuildUsage, Project
from api.database.store import ACTIVE_BUILD_STATUSES, DEFAULT_TENANT as TENANT, Store
from tests.conftest import Api
from tests.database.test_store_contract import finished, new_agent, new_build, new_invocation

TODAY = datetime.now(UTC).date()
YESTERDAY = (TODAY - timedelta(days=1)).isoformat()
DAYS = {"start_date": YESTERDAY, "end_date": TODAY.isoformat()}
FAR_FUTURE = "2999-01-01T00:00:00.000000Z"


@pytest.fixture(params=["sqlite", "dynamodb"])
def storage_backend(request: pytest.FixtureRequest) -> str:
    return request.param


def at(day: str, second: int) -> str:
    return f"{day}T00:00:{second:02d}.000000Z"


def usage(input_tokens: int, output_tokens: int) -> BuildUsage:
    return BuildUsage(calls=6, input_tokens=input_tokens, output_tokens=output_tokens,
                      tokens_estimated=False, duration_ms=1500.0)


async def build_with_usage(store: Store, *, status: str, finished_on: str,
                           tokens: tuple[int, int]) -> Project:
    """A project whose build another instance holds (so this app's engine leaves it alone)
    and then finishes with its usage."""
    created_at = at(YESTERDAY, 0)
    build = new_build(f"proj_{status}{finished_on.replace('-', '')}", created_at=created_at,
                      tenant_id=TENANT).changed({
        "status": "running", "owner": "elsewhere", "lease_until": FAR_FUTURE,
        "started_at": created_at})
    project = Project(tenant_id=TENANT, project_id=build.project_id, user_id="alice",
                      project_name=status, requirement="Answer support tickets", priority=3,
                      tags=[], status="building", progress=0.0, current_stage=None,
                      latest_build_id=build.build_id, created_at=created_at,
                      updated_at=created_at)
    await store.create_project(tenant_id=TENANT, project=project, build=build)
    error = BuildError(stage="agent_design", code="PROVIDER_ERROR", message="x") \
        if status == "failed" else None
    assert await store.update_build(tenant_id=TENANT,
        build_id=build.build_id, expect_status=ACTIVE_BUILD_STATUSES, expect_owner="elsewhere",
        changes={**finished(status, at=at(finished_on, 30), error=error), "usage": usage(*tokens)})
    return project


async def seed(store: Store) -> None:
    today = TODAY.isoformat()
    project = await build_with_usage(store, status="succeeded", finished_on=YESTERDAY,
                                     tokens=(1000, 200))
    await build_with_usage(store, status="failed", finished_on=today, tokens=(300, 50))
    agent = new_agent(project.project_id, created_at=at(YESTERDAY, 40), tenant_id=TENANT)
    await store.put_agent(tenant_id=TENANT, agent=agent)
    for invocation in (
            new_invocation(agent, created_at=at(YESTERDAY, 50), status="failed", tokens=(20, 0)),
            new_invocation(agent, created_at=at(today, 1), duration_ms=40.0, tokens=(30, 12),
                           ttft_ms=100.0),
            new_invocation(agent, created_at=at(today, 2), status="cancelled", duration_ms=20.0,
                           tokens=(25, 7), ttft_ms=50.0)):
        await store.record_invocation(tenant_id=TENANT, invocation=invocation, messages=[])


@pytest.fixture
async def seeded(app: Any, api: Api) -> Api:
    await seed(app.state.store)
    return api


async def test_the_overview_sums_tokens_by_source_overall_and_today(seeded: Api) -> None:
    figures = await seeded.call("GET", "/api/v1/statistics/overview")
    assert figures["tokens"] == {
        "input_total": 1375, "output_total": 269, "input_today": 355, "output_today": 69,
        "invocations": {"input_total": 75, "output_total": 19, "input_today": 55,
                        "output_today": 19},
        "builds": {"input_total": 1300, "output_total": 250, "input_today": 300,
                   "output_today": 50}}
    # Over the invocations that had a first token (the failed one had none).
    assert figures["avg_time_to_first_token_ms"] == 75.0
    # The figures that were there before stay as they were: a cancelled invocation counts
    # as an invocation, neither successful nor failed.
    assert {key: figures[key] for key in ("total_builds", "successful_builds", "failed_builds",
                                          "success_rate", "today_calls", "total_invocations",
                                          "total_agents")} == {
        "total_builds": 2, "successful_builds": 1, "failed_builds": 1, "success_rate": 50.0,
        "today_calls": 2, "total_invocations": 3, "total_agents": 1}


async def test_the_days_carry_tokens_cancellations_and_time_to_first_token(seeded: Api) -> None:
    invocations = await seeded.call("GET", "/api/v1/statistics/invocations", params=DAYS)
    assert invocations == [
        {"date": YESTERDAY, "total_invocations": 1, "successful_invocations": 0,
         "failed_invocations": 1, "cancelled_invocations": 0, "success_rate": 0.0,
         "avg_duration_ms": 10.0, "input_tokens": 20, "output_tokens": 0,
         "avg_time_to_first_token_ms": 0.0},
        {"date": TODAY.isoformat(), "total_invocations": 2, "successful_invocations": 1,
         "failed_invocations": 0, "cancelled_invocations": 1, "success_rate": 50.0,
         "avg_duration_ms": 30.0, "input_tokens": 55, "output_tokens": 19,
         "avg_time_to_first_token_ms": 75.0}]
    builds = await seeded.call("GET", "/api/v1/statistics/builds", params=DAYS)
    assert [(day["date"], day["total_builds"], day["input_tokens"], day["output_tokens"])
            for day in builds] == [(YESTERDAY, 2, 1000, 200), (TODAY.isoformat(), 0, 300, 50)]


async def test_the_tokens_trend_is_each_days_input_and_output_of_builds_and_invocations(
        seeded: Api) -> None:
    trend = await seeded.call("GET", "/api/v1/statistics/trends", params={"metric": "tokens", **DAYS})
    assert trend == {"metric": "tokens", "data_points": [
        {"date": YESTERDAY, "value": 1000 + 200 + 20}, {"date": TODAY.isoformat(),
                                                       "value": 300 + 50 + 30 + 12 + 25 + 7}]}
    refused = await seeded.call("GET", "/api/v1/statistics/trends", expect=400,
                                params={"metric": "token", **DAYS})
    assert refused["code"] == "VALIDATION_ERROR"
