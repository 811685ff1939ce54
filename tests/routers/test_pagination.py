"""Keyset pagination through the HTTP API: every list walks completely, in order, with and
without filters, and a cursor the API did not issue is a validation error."""

import base64
import json
from typing import Any

import pytest

from tests.conftest import OTHER_REQUIREMENT, REQUIREMENT, Api

USERS = ("alice", "bob", "carol")
# Requirements the offline provider turns into agents of different categories and capabilities.
REQUIREMENTS = (
    REQUIREMENT,
    OTHER_REQUIREMENT,
    "Review python code in the github repository, triage bugs and write tests",
    "Manage my calendar: schedule meetings, draft emails and send reminders",
    "Summarize research papers and news articles for the literature review",
    "Help customers with support tickets and complaints about late refunds",
)


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"offline_stage_delay_seconds": 0.0}


async def walk(api: Api, path: str, *, limit: int, **params: Any) -> list[dict[str, Any]]:
    """Every item of a list endpoint, page by page; checks each page's shape on the way."""
    items: list[dict[str, Any]] = []
    last_key = None
    for _ in range(1000):
        query = {"limit": limit, **params} | ({"last_key": last_key} if last_key else {})
        page = await api.call("GET", path, params=query)
        assert set(page) == {"items", "count", "last_key"}
        assert page["count"] == len(page["items"]) <= limit
        if page["last_key"] is None:
            assert page["items"] or not items, "an empty last page after a full one"
            return items + page["items"]
        assert page["count"] == limit, f"a short page while more match: {page['count']}"
        items += page["items"]
        last_key = page["last_key"]
    raise AssertionError("pagination did not end")


def ids_of(items: list[dict[str, Any]], key: str) -> list[str]:
    values = [item[key] for item in items]
    assert len(values) == len(set(values)), "duplicates across pages"
    return values


# The engine runs one build at a time and its stage takes an hour: the first project holds the
# only slot and every later build stays queued exactly as it would behind a busy engine. The
# statuses then only change through our own control actions, so the expected listing is known.
@pytest.mark.parametrize("settings_overrides",
                         [{"max_concurrent_builds": 1, "offline_stage_delay_seconds": 3600.0}],
                         ids=["one_slot_held_for_an_hour"])
async def test_250_projects_walk_completely_with_every_filter(api: Api) -> None:
    created = []
    for n in range(250):
        project = await api.create_project(f"{REQUIREMENT} (project {n})", user_id=USERS[n % 3])
        created.append(project)
    expected_status = {project["project_id"]: "pending" for project in created}
    expected_status[created[0]["project_id"]] = "building"
    await api.wait_status(created[0]["project_id"], "building")
    for n, project in enumerate(created[1:], start=1):
        action = {1: "stop", 2: "pause"}.get(n % 4)
        if action:
            await api.call("PUT", f"/api/v1/projects/{project['project_id']}/control",
                           json={"action": action})
            expected_status[project["project_id"]] = {"stop": "stopped", "pause": "paused"}[action]

    newest_first = list(reversed(created))
    for status in (None, "pending", "building", "paused", "stopped", "completed"):
        for user_id in (None, *USERS):
            filters = {key: value for key, value in (("status", status), ("user_id", user_id)) if value}
            items = await walk(api, "/api/v1/projects", limit=20, **filters)
            expected = [p["project_id"] for p in newest_first
                        if status in (None, expected_status[p["project_id"]])
                        and user_id in (None, p["user_id"])]
            assert ids_of(items, "project_id") == expected, filters
            assert all(item["status"] == expected_status[item["project_id"]] for item in items)
            created_at = [item["created_at"] for item in items]
            assert created_at == sorted(created_at, reverse=True)
    assert len(await walk(api, "/api/v1/projects", limit=100)) == 250


async def test_agent_filters_paginate_completely(api: Api) -> None:
    projects = [await api.create_project(requirement) for requirement in REQUIREMENTS]
    for project in projects:
        await api.wait_status(project["project_id"], "completed")
    everything = (await api.call("GET", "/api/v1/agents", params={"limit": 100}))["items"]
    assert {a["project_id"] for a in everything} == {p["project_id"] for p in projects}
    for agent in everything[1::3]:
        await api.call("PUT", f"/api/v1/agents/{agent['agent_id']}/status", json={"status": "offline"})
    everything = (await api.call("GET", "/api/v1/agents", params={"limit": 100}))["items"]
    assert {a["category"] for a in everything} >= {"customer_support", "data_analysis",
                                                   "software_engineering", "scheduling", "research"}

    filters: list[dict[str, str]] = [
        {}, {"project_id": projects[0]["project_id"]}, {"status": "running"}, {"status": "offline"},
        {"category": "customer_support"}, {"capabilities": "ticket_triage,data_querying"},
        # Both capabilities belong to the same agents: each must still come once.
        {"capabilities": "ticket_triage,faq_answering"}, {"capabilities": "code_review, no_such"},
        {"capabilities": "no_such"},
        {"category": "customer_support", "status": "running", "capabilities": "faq_answering"},
    ]
    for chosen in filters:
        wanted = {part.strip() for part in chosen.get("capabilities", "").split(",") if part.strip()}
        expected = [
            a["agent_id"] for a in everything
            if all(a[key] == value for key, value in chosen.items() if key != "capabilities")
            and (not wanted or wanted & set(a["capabilities"]))]
        items = await walk(api, "/api/v1/agents", limit=2, **chosen)
        assert ids_of(items, "agent_id") == expected, chosen
    created_at = [a["created_at"] for a in everything]
    assert created_at == sorted(created_at, reverse=True)


async def test_build_history_invocations_sessions_and_messages_paginate(api: Api) -> None:
    project = await api.create_project()
    project_id = project["project_id"]
    builds = [project["latest_build"]["build_id"]]
    await api.wait_status(project_id, "completed")
    for _ in range(4):
        restarted = await api.call("PUT", f"/api/v1/projects/{project_id}/control",
                                   json={"action": "restart"})
        builds.append(restarted["latest_build"]["build_id"])
        await api.wait_status(project_id, "completed")
    history = await walk(api, f"/api/v1/projects/{project_id}/builds", limit=2)
    assert ids_of(history, "build_id") == builds[::-1]
    assert all(build["status"] == "succeeded" for build in history)
    assert all("owner" not in build and "context" not in build for build in history)

    agent_id = (await api.call("GET", "/api/v1/agents", params={"project_id": project_id}))[
        "items"][0]["agent_id"]
    invocations = [
        (await api.call("POST", f"/api/v1/agents/{agent_id}/invoke",
                        json={"input_text": f"question {n}"}))["invocation_id"]
        for n in range(7)]
    listed = await walk(api, f"/api/v1/agents/{agent_id}/invocations", limit=3)
    assert ids_of(listed, "invocation_id") == invocations[::-1]
    assert [i["input_text"] for i in listed] == [f"question {n}" for n in reversed(range(7))]

    sessions = [
        (await api.call("POST", f"/api/v1/agents/{agent_id}/sessions", expect=201,
                        json={"display_name": f"chat {n}"}))["session_id"]
        for n in range(5)]
    contents = []
    for n in range(4):
        contents.append(f"turn {n}")
        await api.call("POST", f"/api/v1/sessions/{sessions[1]}/messages", expect=201,
                       json={"content": f"turn {n}"})
    await api.call("POST", f"/api/v1/sessions/{sessions[3]}/messages", expect=201,
                   json={"content": "latest activity"})
    listed = await walk(api, f"/api/v1/agents/{agent_id}/sessions", limit=2)
    assert ids_of(listed, "session_id") == [sessions[n] for n in (3, 1, 4, 2, 0)]

    messages = await walk(api, f"/api/v1/sessions/{sessions[1]}/messages", limit=3)
    assert len(ids_of(messages, "message_id")) == 8
    assert [m["role"] for m in messages] == ["user", "assistant"] * 4
    assert [m["content"] for m in messages[::2]] == contents
    assert all(f"Turn {n + 1}" in m["content"] for n, m in enumerate(messages[1::2]))


def _cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


async def _paths_with_data(api: Api) -> dict[str, str]:
    agent = await api.built_agent()
    session = await api.call("POST", f"/api/v1/agents/{agent['agent_id']}/sessions", expect=201,
                             json={})
    return {
        "projects": "/api/v1/projects",
        "agents": "/api/v1/agents",
        "builds": f"/api/v1/projects/{agent['project_id']}/builds",
        "invocations": f"/api/v1/agents/{agent['agent_id']}/invocations",
        "sessions": f"/api/v1/agents/{agent['agent_id']}/sessions",
        "messages": f"/api/v1/sessions/{session['session_id']}/messages",
    }


async def _assert_bad_cursor(api: Api, path: str, last_key: str) -> None:
    response = await api.client.get(path, params={"last_key": last_key})
    body = response.json()
    assert response.status_code == 400, (path, last_key, body)
    assert body["success"] is False
    assert body["error"]["code"] == "VALIDATION_ERROR"
    assert [detail["field"] for detail in body["error"]["details"]] == ["last_key"]


async def test_a_garbage_last_key_is_a_validation_error_on_every_list(api: Api) -> None:
    paths = await _paths_with_data(api)
    for path in paths.values():
        await _assert_bad_cursor(api, path, "garbage!")
        await _assert_bad_cursor(api, path, _cursor({"created_at": "2024-01-01"}))


@pytest.mark.parametrize("tamper", [
    pytest.param(lambda key: key[:-3], id="truncated"),
    pytest.param(lambda key: "x" + key, id="prefixed"),
    pytest.param(lambda key: _cursor(json.loads(base64.urlsafe_b64decode(key + "===")) + ["x"]),
                 id="extra value"),
    pytest.param(lambda key: _cursor([10 ** 30, "proj_000000000000"]), id="number out of range"),
])
async def test_a_tampered_last_key_is_a_validation_error(api: Api, tamper: Any) -> None:
    for n in range(3):
        await api.create_project(f"{REQUIREMENT} {n}")
    first = await api.call("GET", "/api/v1/projects", params={"limit": 2})
    assert first["last_key"]
    await _assert_bad_cursor(api, "/api/v1/projects", tamper(first["last_key"]))
