"""Rate limits and quotas (issue 12, item 6) in one process: requests per
minute, builds per hour, invocations in flight and model tokens per day, per key and per
tenant, answered 429 with Retry-After and RateLimit-*; failed authentications per address.
tests/e2e/test_rate_limits.py holds them across processes."""

import asyncio
from typing import Any

import httpx
import pytest

from api.observability import metrics
from tests.conftest import Api
from tests.routers.test_idempotency import HOLD, HeldModel

# A minute's start: the tests' clock stands still in it unless a test moves it.
T0 = 1_800_000_000.0


@pytest.fixture
def provider() -> HeldModel:
    return HeldModel()


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"auth_mode": "api_key", "offline_stage_delay_seconds": 0.0}


@pytest.fixture
def clock(app: Any) -> list[float]:
    """The limits' clock, which a test moves by setting clock[0]."""
    now = [T0 + 5]
    app.state.limits.clock = lambda: now[0]
    return now


def limit(app: Any, **values: int) -> None:
    """These limits, and no others (0: none), from now on."""
    unlimited = {name: 0 for name in app.state.settings.model_fields
                 if name.endswith(("_per_minute", "_per_hour", "_in_flight", "_per_day"))}
    app.state.limits.settings = app.state.settings.model_copy(update={**unlimited, **values})


async def token(app: Any, tenant_id: str, role: str = "admin") -> dict[str, str]:
    _, secret = await app.state.key_service.create(tenant_id=tenant_id, role=role)
    return {"Authorization": f"Bearer {secret}"}


def refused(response: httpx.Response, what: str, scope: str, allowed: int,
            retry_after: int | None) -> None:
    """A 429 of this limit; `retry_after` None: any time up to a day (the real clock's)."""
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["code"] == "RATE_LIMIT_EXCEEDED"
    assert error["details"] == {"limit": what, "scope": scope, "allowed": allowed,
                                "per": error["details"]["per"]}
    assert error["suggestion"]
    wait = response.headers["retry-after"]
    assert wait == str(retry_after) if retry_after is not None else 1 <= int(wait) <= 86400
    assert response.headers["ratelimit-limit"] == str(allowed)
    assert response.headers["ratelimit-remaining"] == "0"
    assert response.headers["ratelimit-reset"] == wait


def refusals(what: str, scope: str) -> float:
    return metrics.rate_limited_total.labels(what, scope)._value.get()


async def test_requests_per_minute_per_key_and_per_tenant(app: Any, api: Api, clock: list[float]) -> None:
    limit(app, key_requests_per_minute=3, tenant_requests_per_minute=5)
    first, second = await token(app, "acme"), await token(app, "acme")
    other = await token(app, "globex")
    before = refusals("requests", "key")
    answers = [await api.client.get("/api/v1/projects", headers=first) for _ in range(3)]
    assert [a.status_code for a in answers] == [200] * 3
    # The tightest limit's headers: the key's, 2, 1, 0 left of 3, the minute's 55 s to go.
    assert [a.headers["ratelimit-remaining"] for a in answers] == ["2", "1", "0"]
    assert {(a.headers["ratelimit-limit"], a.headers["ratelimit-reset"]) for a in answers} == {("3", "55")}
    refused(await api.client.get("/api/v1/projects", headers=first), "requests", "key", 3, 55)
    assert refusals("requests", "key") == before + 1
    # The same tenant's other key has its own 3, but the tenant only 2 more.
    for _ in range(2):
        assert (await api.client.get("/api/v1/projects", headers=second)).status_code == 200
    refused(await api.client.get("/api/v1/projects", headers=second), "requests", "tenant", 5, 55)
    # Another tenant is not touched; the probes are never limited.
    assert (await api.client.get("/api/v1/projects", headers=other)).status_code == 200
    assert (await api.client.get("/health/ready", headers=first)).status_code == 200
    # The next minute starts afresh.
    clock[0] = T0 + 60
    again = await api.client.get("/api/v1/projects", headers=first)
    assert again.status_code == 200 and again.headers["ratelimit-remaining"] == "2"


async def test_a_large_limit_is_taken_in_shares_and_never_passed(app: Any, api: Api,
                                                                 clock: list[float]) -> None:
    limit(app, key_requests_per_minute=45)  # shares of 3 (a twentieth, rounded up)
    headers = await token(app, "acme")
    statuses = [(await api.client.get("/api/v1/projects", headers=headers)).status_code
                for _ in range(50)]
    assert statuses == [200] * 45 + [429] * 5


async def test_builds_per_hour(app: Any, api: Api, clock: list[float]) -> None:
    limit(app, key_builds_per_hour=2, tenant_builds_per_hour=3)
    first, second = await token(app, "acme"), await token(app, "acme")
    api.client.headers.update(first)
    project = await api.create_project()
    await api.create_project()
    response = await api.client.post("/api/v1/projects", json={"requirement": "x" * 20})
    refused(response, "builds", "key", 2, 3595)
    # A restart is a build too: the other key's first, then the tenant's third and last.
    api.client.headers.update(second)
    await api.wait_status(project["project_id"], "completed")
    await api.call("PUT", f"/api/v1/projects/{project['project_id']}/control",
                   json={"action": "restart"})
    refused(await api.client.post("/api/v1/projects", json={"requirement": "x" * 20}),
            "builds", "tenant", 3, 3595)
    assert (await api.call("GET", "/api/v1/projects"))["count"] == 2  # nothing half-made
    clock[0] = T0 + 3600
    assert (await api.client.post("/api/v1/projects", json={"requirement": "x" * 20})).status_code == 201


async def test_invocations_in_flight(app: Any, api: Api, provider: HeldModel,
                                     clock: list[float]) -> None:
    api.client.headers.update(await token(app, "acme"))
    agent = await api.built_agent()
    limit(app, key_invocations_in_flight=1)
    path = f"/api/v1/agents/{agent['agent_id']}/invoke"
    held = asyncio.create_task(api.client.post(path, json={"input_text": f"{HOLD} a long one"}))
    await provider.holding.wait()
    refused(await api.client.post(path, json={"input_text": "another"}), "invocations", "key", 1, 1)
    provider.release.set()
    assert (await held).status_code == 200
    # The slot is free once the first is recorded, and a refused one recorded nothing.
    assert (await api.client.post(path, json={"input_text": "another"})).status_code == 200
    invocations = await api.call("GET", f"/api/v1/agents/{agent['agent_id']}/invocations")
    assert invocations["count"] == 2


async def test_the_tokens_of_a_day_run_out_mid_session(app: Any, api: Api) -> None:
    # The real clock: the quota reads today's statistics, which the store dates by it.
    api.client.headers.update(await token(app, "acme"))
    agent = await api.built_agent()
    session = await api.call("POST", f"/api/v1/agents/{agent['agent_id']}/sessions", expect=201, json={})
    path = f"/api/v1/sessions/{session['session_id']}/messages"
    first = await api.call("POST", path, expect=201, json={"content": "hello"})
    spent = first["invocation"]["input_tokens"] + first["invocation"]["output_tokens"]
    assert spent > 0
    # Today's tokens so far (the build's and this turn's), and one more: one more turn.
    day = first["invocation"]["created_at"][:10]
    daily = await app.state.store.get_daily(tenant_id="acme", start=day, end=day)
    today = sum(day.counts.get(name, 0) for day in daily for name in
                ("build_input_tokens", "build_output_tokens", "invocation_input_tokens",
                 "invocation_output_tokens"))
    assert today >= spent
    limit(app, tenant_tokens_per_day=int(today) + 1)
    assert (await api.client.post(path, json={"content": "again"})).status_code == 201
    app.state.limits._tokens.clear()  # what another process would read after TOKENS_READ_SECONDS
    response = await api.client.post(path, json={"content": "and again"})
    refused(response, "tokens", "tenant", int(today) + 1, None)
    messages = await api.call("GET", path)
    assert messages["count"] == 4  # two turns; the refused one wrote nothing
    # A build needs tokens too.
    refused(await api.client.post("/api/v1/projects", json={"requirement": "x" * 20}),
            "tokens", "tenant", int(today) + 1, None)


async def test_a_key_s_tokens_are_its_invocations(app: Any, api: Api) -> None:
    api.client.headers.update(await token(app, "acme"))
    agent = await api.built_agent()
    limit(app, key_tokens_per_day=1)
    path = f"/api/v1/agents/{agent['agent_id']}/invoke"
    assert (await api.client.post(path, json={"input_text": "hello"})).status_code == 200
    refused(await api.client.post(path, json={"input_text": "hello"}), "tokens", "key", 1,
            None)
    api.client.headers.update(await token(app, "acme"))  # a fresh key of the same tenant
    assert (await api.client.post(path, json={"input_text": "hello"})).status_code == 200


async def test_an_address_that_keeps_failing_is_answered_429(app: Any, api: Api) -> None:
    app.state.failed_authentications.per_minute = 3
    bad = {"Authorization": "Bearer nxk_0123456789abcdef_" + "x" * 43}
    statuses = [(await api.client.get("/api/v1/projects", headers=bad)).status_code for _ in range(5)]
    assert statuses == [401, 401, 401, 429, 429]
    response = await api.client.get("/api/v1/projects", headers=bad)
    assert response.json()["error"]["details"]["scope"] == "address"
    assert 1 <= int(response.headers["retry-after"]) <= 60
    # A valid key from the same address still works: only failures are slowed.
    assert (await api.client.get("/api/v1/projects", headers=await token(app, "acme"))).status_code == 200
