"""Two tenants doing the same journeys through the HTTP API, each with its own API keys, on
every backend (issue 12, Tests): neither reads, controls, invokes, lists, counts, pages nor
deletes what the other wrote (another tenant's id answers exactly as a missing id does), and
each tenant's statistics are exactly what it did; an operator's are both tenants' together."""

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import httpx
import pytest

from tests.conftest import OTHER_REQUIREMENT, REQUIREMENT, Api

THIRD_REQUIREMENT = "Review python code in the github repository, triage bugs and write tests"
STAGE = "requirements_analysis"
# Ids of the same shape as real ones that no tenant has.
MISSING_PROJECT = "proj_000000000000"
MISSING_SESSION = "sess_0000000000000000"
MISSING_KEY = "0000000000000000"
# Answer headers that differ from one request to the next whatever the request (the
# rate-limit window's state moves with every request the key makes).
VOLATILE_HEADERS = {"x-request-id", "x-response-time", "date", "ratelimit-remaining", "ratelimit-reset"}


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"auth_mode": "api_key", "offline_stage_delay_seconds": 0.0}


@dataclass(frozen=True)
class Plan:
    """What a tenant does; the two tenants' plans differ in size, so that a count that mixed
    them up could not come out right by chance."""

    requirements: tuple[str, ...]
    invocations_per_agent: int
    sessions: int
    messages_per_session: int


PLANS = {"acme": Plan((REQUIREMENT, OTHER_REQUIREMENT, THIRD_REQUIREMENT), 2, 2, 2),
         "globex": Plan((REQUIREMENT, OTHER_REQUIREMENT), 1, 1, 3)}


@dataclass
class Tenant:
    """A tenant's keys (the same names in both tenants) and every id its journey created."""

    name: str
    plan: Plan
    builder: Api
    admin: Api
    key_ids: list[str]
    projects: list[str] = field(default_factory=list)
    builds: dict[str, list[str]] = field(default_factory=dict)
    agents: list[str] = field(default_factory=list)
    invocations: dict[str, list[str]] = field(default_factory=dict)
    sessions: list[str] = field(default_factory=list)
    messages: dict[str, list[str]] = field(default_factory=dict)
    artifacts: dict[str, list[str]] = field(default_factory=dict)

    @property
    def api_requests(self) -> int:
        return self.builder.api_requests + self.admin.api_requests

    @property
    def all_invocations(self) -> int:
        return sum(len(ids) for ids in self.invocations.values())


async def _client(stack: AsyncExitStack, app: Any, token: str | None = None) -> Api:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    client = await stack.enter_async_context(httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver", headers=headers))
    return Api(client)


@pytest.fixture
async def clients(app: Any) -> AsyncIterator[tuple[dict[str, Tenant], Api]]:
    """Both tenants with a builder and an admin key each, and an operator."""
    keys = app.state.key_service
    async with AsyncExitStack() as stack:
        tenants = {}
        for name, plan in PLANS.items():
            builder_key, builder = await keys.create(tenant_id=name, role="builder", name="alice")
            admin_key, admin = await keys.create(tenant_id=name, role="admin", name="root")
            tenants[name] = Tenant(name, plan, await _client(stack, app, builder),
                                   await _client(stack, app, admin),
                                   [builder_key.key_id, admin_key.key_id])
        _, operator = await keys.create(tenant_id=None, role="operator", name="prometheus")
        yield tenants, await _client(stack, app, operator)


async def send(api: Api, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """A raw request, counted as Api.call counts them (the tenant's API calls are exact)."""
    api.api_requests += path.startswith("/api/v1/")
    return await api.client.request(method, path, **kwargs)


async def journey(tenant: Tenant) -> None:
    """Projects built (the first one twice), its agents invoked, sessions with messages.
    Both tenants send the same Idempotency-Keys with the same bodies: each gets its own."""
    api, plan = tenant.builder, tenant.plan
    for n, requirement in enumerate(plan.requirements):
        project = await api.call("POST", "/api/v1/projects", expect=201,
                                 json={"requirement": requirement, "user_id": "mallory"},
                                 headers={"Idempotency-Key": f"journey-project-{n}"})
        assert (project["tenant_id"], project["user_id"]) == (tenant.name, "alice")
        tenant.projects.append(project["project_id"])
        tenant.builds[project["project_id"]] = [project["latest_build_id"]]
    for project_id in tenant.projects:
        await api.wait_status(project_id, "completed")
    first = tenant.projects[0]
    restarted = await api.call("PUT", f"/api/v1/projects/{first}/control", json={"action": "restart"})
    tenant.builds[first].append(restarted["latest_build_id"])
    await api.wait_status(first, "completed")

    for n, project_id in enumerate(tenant.projects):
        [agent] = (await api.call("GET", "/api/v1/agents", params={"project_id": project_id}))["items"]
        agent_id = agent["agent_id"]
        tenant.agents.append(agent_id)
        tenant.invocations[agent_id] = []
        for i in range(plan.invocations_per_agent):
            answer = await api.call("POST", f"/api/v1/agents/{agent_id}/invoke",
                                    json={"input_text": f"Question {i}: what can you do?"},
                                    headers={"Idempotency-Key": f"journey-invoke-{n}-{i}"})
            assert (answer["tenant_id"], answer["status"]) == (tenant.name, "success")
            tenant.invocations[agent_id].append(answer["invocation_id"])
        artifacts = await api.call("GET", f"/api/v1/projects/{project_id}/artifacts")
        tenant.artifacts[project_id] = [item["path"] for item in artifacts["items"]]

    talker = tenant.agents[0]
    for s in range(plan.sessions):
        session = await api.call("POST", f"/api/v1/agents/{talker}/sessions", expect=201,
                                 json={"display_name": f"chat {s}"},
                                 headers={"Idempotency-Key": f"journey-session-{s}"})
        assert session["tenant_id"] == tenant.name
        tenant.sessions.append(session["session_id"])
        tenant.messages[session["session_id"]] = []
        for m in range(plan.messages_per_session):
            turn = await api.call("POST", f"/api/v1/sessions/{session['session_id']}/messages",
                                  expect=201, json={"content": f"Message {m} of chat {s}"},
                                  headers={"Idempotency-Key": f"journey-message-{s}-{m}"})
            assert turn["invocation"]["tenant_id"] == tenant.name
            tenant.invocations[talker].append(turn["invocation"]["invocation_id"])
            tenant.messages[session["session_id"]] += [turn["user_message"]["message_id"],
                                                       turn["assistant_message"]["message_id"]]


async def walk(api: Api, path: str, *, limit: int = 2, **params: Any) -> list[dict[str, Any]]:
    """Every item of a list, page by page with a small limit, through the cursor."""
    items: list[dict[str, Any]] = []
    last_key = None
    for _ in range(200):
        query = {"limit": limit, **params} | ({"last_key": last_key} if last_key else {})
        page = await api.call("GET", path, params=query)
        assert page["count"] == len(page["items"]) <= limit, (path, page["count"])
        items += page["items"]
        if page["last_key"] is None:
            return items
        last_key = page["last_key"]
    raise AssertionError(f"{path}: pagination did not end")


def ids(items: list[dict[str, Any]], key: str, tenant: Tenant) -> list[str]:
    assert {item["tenant_id"] for item in items} <= {tenant.name}, [item["tenant_id"] for item in items]
    values = [item[key] for item in items]
    assert len(values) == len(set(values)), f"duplicates across pages: {values}"
    return values


def comparable(response: httpx.Response, replacements: dict[str, str]) -> dict[str, Any]:
    """The status, headers and body of an answer, with what differs between any two requests
    left out, and the ids it names replaced by those of the missing ones."""
    text = response.text
    for real, missing in replacements.items():
        text = text.replace(real, missing)
    body = json.loads(text)
    for volatile in ("timestamp", "request_id"):
        body.pop(volatile, None)
    if isinstance(body.get("error"), dict):
        body["error"].pop("trace_id", None)
    headers = {name: value for name, value in response.headers.items() if name not in VOLATILE_HEADERS}
    return {"status": response.status_code, "headers": headers, "body": body}


async def assert_out_of_reach(owner: Tenant, intruder: Tenant) -> None:
    """Every operation by the intruder's admin on an id of the owner's answers as the same
    operation on a missing id: 404 RESOURCE_NOT_FOUND, the same envelope and headers."""
    project, agent, session = owner.projects[0], owner.agents[0], owner.sessions[0]
    artifact = owner.artifacts[project][0]
    missing_agent = MISSING_PROJECT + agent[len(project):]
    replacements = {agent: missing_agent, project: MISSING_PROJECT, session: MISSING_SESSION,
                    owner.key_ids[0]: MISSING_KEY}
    own_agent = intruder.agents[0]
    operations: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", f"/api/v1/projects/{project}", None),
        ("GET", f"/api/v1/projects/{project}/builds", None),
        ("GET", f"/api/v1/projects/{project}/stages", None),
        ("GET", f"/api/v1/projects/{project}/stages/{STAGE}", None),
        ("GET", f"/api/v1/projects/{project}/artifacts", None),
        ("GET", f"/api/v1/projects/{project}/artifacts/{artifact}", None),
        *[("PUT", f"/api/v1/projects/{project}/control", {"action": action})
          for action in ("pause", "resume", "stop", "restart")],
        ("GET", f"/api/v1/agents/{agent}", None),
        ("PUT", f"/api/v1/agents/{agent}", {"category": "stolen"}),
        ("PUT", f"/api/v1/agents/{agent}/status", {"status": "offline"}),
        ("POST", f"/api/v1/agents/{agent}/invoke", {"input_text": "Whose agent is this?"}),
        ("POST", f"/api/v1/agents/{agent}/invoke", {"input_text": "Stream it", "stream": True}),
        # The intruder's own agent, with the owner's session: no history read, none written.
        ("POST", f"/api/v1/agents/{own_agent}/invoke", {"input_text": "Hi", "session_id": session}),
        ("GET", f"/api/v1/agents/{agent}/invocations", None),
        ("POST", f"/api/v1/agents/{agent}/sessions", {}),
        ("GET", f"/api/v1/agents/{agent}/sessions", None),
        ("GET", f"/api/v1/sessions/{session}", None),
        ("POST", f"/api/v1/sessions/{session}/messages", {"content": "Let me in"}),
        ("GET", f"/api/v1/sessions/{session}/messages", None),
        ("DELETE", f"/api/v1/keys/{owner.key_ids[0]}", None),
        # Deletes last: the owner's records must still be there afterwards.
        ("DELETE", f"/api/v1/sessions/{session}", None),
        ("DELETE", f"/api/v1/agents/{agent}", None),
        ("DELETE", f"/api/v1/projects/{project}", None),
    ]
    for method, path, body in operations:
        missing_path = path
        for real, missing in replacements.items():
            missing_path = missing_path.replace(real, missing)
        missing_body = body and json.loads(json.dumps(body).replace(session, MISSING_SESSION))
        assert (missing_path, missing_body) != (path, body)
        theirs = await send(intruder.admin, method, path, json=body)
        nobody_s = await send(intruder.admin, method, missing_path, json=missing_body)
        assert theirs.status_code == 404, (method, path, theirs.text)
        assert theirs.json()["error"]["code"] == "RESOURCE_NOT_FOUND"
        assert comparable(theirs, replacements) == comparable(nobody_s, {}), (method, path)
    # And every other id of theirs.
    for path in ([f"/api/v1/projects/{project_id}" for project_id in owner.projects[1:]]
                 + [f"/api/v1/agents/{agent_id}" for agent_id in owner.agents[1:]]
                 + [f"/api/v1/sessions/{session_id}" for session_id in owner.sessions[1:]]):
        theirs = await send(intruder.admin, "GET", path)
        assert (theirs.status_code, theirs.json()["error"]["code"]) == (404, "RESOURCE_NOT_FOUND"), path


async def assert_lists_are_own(tenant: Tenant, other: Tenant) -> None:
    """Every list the tenant walks, page by page, holds exactly its own records."""
    api = tenant.builder
    for params in ({}, {"user_id": "alice"}, {"status": "completed"}):
        listed = await walk(api, "/api/v1/projects", **params)
        assert sorted(ids(listed, "project_id", tenant)) == sorted(tenant.projects), params
    for params in ({}, {"status": "running"}):
        listed = await walk(api, "/api/v1/agents", **params)
        assert sorted(ids(listed, "agent_id", tenant)) == sorted(tenant.agents), params
    assert await walk(api, "/api/v1/agents", project_id=other.projects[0]) == []
    for project_id in tenant.projects:
        builds = await walk(api, f"/api/v1/projects/{project_id}/builds", limit=1)
        assert sorted(ids(builds, "build_id", tenant)) == sorted(tenant.builds[project_id])
        artifacts = (await api.call("GET", f"/api/v1/projects/{project_id}/artifacts"))["items"]
        assert ids(artifacts, "path", tenant) == tenant.artifacts[project_id]
        assert {item["project_id"] for item in artifacts} == {project_id}
        stage = await api.call("GET", f"/api/v1/projects/{project_id}/stages/{STAGE}")
        assert stage["build_id"] == tenant.builds[project_id][-1] and stage["logs"]
        ids(stage["artifacts"], "path", tenant)
    for agent_id in tenant.agents:
        invocations = await walk(api, f"/api/v1/agents/{agent_id}/invocations")
        assert sorted(ids(invocations, "invocation_id", tenant)) == sorted(tenant.invocations[agent_id])
    sessions = await walk(api, f"/api/v1/agents/{tenant.agents[0]}/sessions", limit=1)
    assert sorted(ids(sessions, "session_id", tenant)) == sorted(tenant.sessions)
    for session_id in tenant.sessions:
        messages = await walk(api, f"/api/v1/sessions/{session_id}/messages", limit=3)
        assert ids(messages, "message_id", tenant) == tenant.messages[session_id]
        session = await api.call("GET", f"/api/v1/sessions/{session_id}")
        assert session["message_count"] == len(tenant.messages[session_id])
    keys = (await tenant.admin.call("GET", "/api/v1/keys"))["items"]
    assert sorted(ids(keys, "key_id", tenant)) == sorted(tenant.key_ids)
    assert [key["revoked_at"] for key in keys] == [None, None]
    # The other tenant's cursor continues nothing of theirs: it is refused, or it pages on
    # through this tenant's own records only.
    for path in ("/api/v1/projects", "/api/v1/agents"):
        cursor = (await other.builder.call("GET", path, params={"limit": 1}))["last_key"]
        assert cursor is not None
        response = await send(api, "GET", path, params={"limit": 50, "last_key": cursor})
        if response.status_code != 400:
            assert response.status_code == 200, response.text
            items = response.json()["data"]["items"]
            ids(items, "project_id", tenant)
            assert {item["project_id"] for item in items} <= set(tenant.projects)


async def figures_of(tenant: Tenant) -> dict[str, Any]:
    """What the tenant's statistics must say, from what it did and the records it has."""
    api = tenant.builder
    builds = [build for project_id in tenant.projects
              for build in await walk(api, f"/api/v1/projects/{project_id}/builds", limit=20)]
    invocations = [invocation for agent_id in tenant.agents
                   for invocation in await walk(api, f"/api/v1/agents/{agent_id}/invocations", limit=50)]
    assert len(builds) == len(tenant.projects) + 1
    assert len(invocations) == tenant.all_invocations == (
        len(tenant.plan.requirements) * tenant.plan.invocations_per_agent
        + tenant.plan.sessions * tenant.plan.messages_per_session)
    figures = {"agents": len(tenant.agents), "builds": len(builds), "invocations": len(invocations),
               "build_tokens": {direction: sum(build["usage"][f"{direction}_tokens"] for build in builds)
                                for direction in ("input", "output")},
               "invocation_tokens": {direction: sum(item[f"{direction}_tokens"] for item in invocations)
                                     for direction in ("input", "output")}}
    assert all(figures["build_tokens"].values()) and all(figures["invocation_tokens"].values())
    return figures


def added(first: Any, second: Any) -> Any:
    """Two tenants' figures together (numbers, or dicts of them)."""
    if isinstance(first, dict):
        return {name: added(first[name], second[name]) for name in first}
    return first + second


def today() -> str:
    return datetime.now(timezone.utc).date().isoformat()


async def assert_statistics(api: Api, figures: dict[str, Any], *, api_calls: Callable[[], int]) -> None:
    """Every statistics route, as `api` reads it, says exactly `figures` for today.
    `api_calls`: the number of API calls the reader's scope has made so far (a tenant's own
    reads count; an operator's are nobody's)."""
    [*_, build_day] = await api.call("GET", "/api/v1/statistics/builds")
    [*_, invocation_day] = await api.call("GET", "/api/v1/statistics/invocations")
    trends, calls_at_trend = {}, 0
    for metric in ("builds", "invocations", "success_rate", "api_calls", "tokens"):
        trend = await api.call("GET", "/api/v1/statistics/trends", params={"metric": metric})
        [*_, point] = trend["data_points"]
        assert point["date"] == today()
        trends[metric] = point["value"]
        if metric == "api_calls":
            calls_at_trend = api_calls()  # this request included
    overview = await api.call("GET", "/api/v1/statistics/overview")
    builds, invocations = figures["builds"], figures["invocations"]
    build_tokens, invocation_tokens = figures["build_tokens"], figures["invocation_tokens"]

    def tokens(by_direction: dict[str, int]) -> dict[str, int]:
        return {"input_total": by_direction["input"], "input_today": by_direction["input"],
                "output_total": by_direction["output"], "output_today": by_direction["output"]}

    assert {name: overview[name] for name in (
        "total_agents", "running_agents", "building_agents", "offline_agents", "total_builds",
        "successful_builds", "failed_builds", "active_builds", "success_rate", "today_calls",
        "today_api_calls", "total_invocations", "tokens")} == {
        "total_agents": figures["agents"], "running_agents": figures["agents"], "building_agents": 0,
        "offline_agents": 0, "total_builds": builds, "successful_builds": builds, "failed_builds": 0,
        "active_builds": 0, "success_rate": 100.0, "today_calls": invocations,
        "today_api_calls": api_calls(), "total_invocations": invocations,
        "tokens": {**tokens(added(build_tokens, invocation_tokens)),
                   "invocations": tokens(invocation_tokens), "builds": tokens(build_tokens)}}
    assert {name: build_day[name] for name in (
        "date", "total_builds", "successful_builds", "failed_builds", "input_tokens", "output_tokens")} == {
        "date": today(), "total_builds": builds, "successful_builds": builds, "failed_builds": 0,
        "input_tokens": build_tokens["input"], "output_tokens": build_tokens["output"]}
    assert {name: invocation_day[name] for name in (
        "date", "total_invocations", "successful_invocations", "failed_invocations", "input_tokens",
        "output_tokens")} == {
        "date": today(), "total_invocations": invocations, "successful_invocations": invocations,
        "failed_invocations": 0, "input_tokens": invocation_tokens["input"],
        "output_tokens": invocation_tokens["output"]}
    assert trends == {"builds": builds, "invocations": invocations, "success_rate": 100.0,
                      "api_calls": calls_at_trend,
                      "tokens": sum(build_tokens.values()) + sum(invocation_tokens.values())}


async def test_two_tenants_share_nothing_and_count_exactly_their_own(
        clients: tuple[dict[str, Tenant], Api]) -> None:
    tenants, operator = clients
    acme, globex = tenants["acme"], tenants["globex"]
    await asyncio.gather(journey(acme), journey(globex))

    for owner, intruder in ((acme, globex), (globex, acme)):
        before = {project_id: await owner.builder.project(project_id) for project_id in owner.projects}
        await assert_out_of_reach(owner, intruder)
        # The owner's records are as they were: nothing restarted, changed, silenced or deleted.
        for project_id, project in before.items():
            after = await owner.builder.project(project_id)
            assert (after["status"], after["latest_build_id"]) == ("completed", project["latest_build_id"])
        for agent_id in owner.agents:
            agent = await owner.builder.call("GET", f"/api/v1/agents/{agent_id}")
            assert (agent["status"], agent["category"] != "stolen",
                    agent["runtime_stats"]["total_invocations"]) == (
                "running", True, len(owner.invocations[agent_id]))
    for tenant, other in ((acme, globex), (globex, acme)):
        await assert_lists_are_own(tenant, other)

    figures = {tenant.name: await figures_of(tenant) for tenant in (acme, globex)}
    for tenant in (acme, globex):
        await assert_statistics(tenant.builder, figures[tenant.name],
                                api_calls=lambda tenant=tenant: tenant.api_requests)
    # The platform's figures are both tenants' together; the operator's reads are nobody's calls.
    await assert_statistics(operator, added(figures["acme"], figures["globex"]),
                            api_calls=lambda: acme.api_requests + globex.api_requests)
