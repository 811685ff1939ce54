"""Every way a request can be wrong, answered in the contract's error envelope: bad fields
(400, each named), unknown routes (404), wrong methods (405), oversized bodies (413), unknown
ids (404) and illegal transitions (409). A refused request changes nothing."""

import re
from typing import Any

import httpx
import pytest

from tests.conftest import REQUIREMENT, Api

TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
MISSING_PROJECT = "proj_000000000000"
MISSING_AGENT = f"{MISSING_PROJECT}:no_agent"
MISSING_SESSION = "sess_0000000000000000"
MiB = 1024 * 1024


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"offline_stage_delay_seconds": 0.0}


@pytest.fixture
async def world(api: Api) -> dict[str, str]:
    """A completed project with its running agent and an empty session."""
    agent = await api.built_agent()
    session = await api.call("POST", f"/api/v1/agents/{agent['agent_id']}/sessions", expect=201,
                             json={"display_name": "validation"})
    return {"project_id": agent["project_id"], "agent_id": agent["agent_id"],
            "session_id": session["session_id"]}


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The complete error envelope; returns its `error`."""
    body = response.json()
    assert response.status_code == status, body
    assert set(body) == {"success", "error", "timestamp", "request_id"}, body
    assert body["success"] is False
    error = body["error"]
    assert set(error) == {"code", "message", "details", "suggestion", "trace_id"}, error
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["suggestion"], str) and error["suggestion"]
    assert TIMESTAMP.match(body["timestamp"]), body["timestamp"]
    assert body["request_id"]
    assert error["trace_id"] == body["request_id"] == response.headers["x-request-id"]
    return error


def assert_names_field(error: dict[str, Any], field: str) -> None:
    details = error["details"]
    assert isinstance(details, list) and details, error
    assert all(isinstance(d, dict) and d.get("field") and d.get("message") for d in details), details
    assert field in [d["field"] for d in details], details
    assert field in error["message"], error["message"]


def case(method: str, path: str, field: str, *, json: Any = None,
         params: dict[str, Any] | None = None, id: str) -> Any:
    kwargs = {key: value for key, value in (("json", json), ("params", params)) if value is not None}
    return pytest.param(method, path, kwargs, field, id=id)


PROJECTS = "/api/v1/projects"
CONTROL = "/api/v1/projects/{project_id}/control"
AGENT = "/api/v1/agents/{agent_id}"
INVOKE = "/api/v1/agents/{agent_id}/invoke"
SESSIONS = "/api/v1/agents/{agent_id}/sessions"
MESSAGES = "/api/v1/sessions/{session_id}/messages"
VALID = {"requirement": REQUIREMENT}

BODY_CASES = [
    case("POST", PROJECTS, "requirement", json={}, id="requirement-missing"),
    case("POST", PROJECTS, "requirement", json={"requirement": "too short"}, id="requirement-9-chars"),
    case("POST", PROJECTS, "requirement", json={"requirement": "x" * 5001}, id="requirement-5001-chars"),
    case("POST", PROJECTS, "requirement", json={"requirement": " " * 40}, id="requirement-whitespace"),
    case("POST", PROJECTS, "requirement", json={"requirement": 12345678901}, id="requirement-number"),
    case("POST", PROJECTS, "requirement", json={"requirement": ["Build an agent", "x"]},
         id="requirement-list"),
    case("POST", PROJECTS, "description", json={**VALID, "description": "x" * 2001}, id="description-too-long"),
    case("POST", PROJECTS, "project_name", json={**VALID, "project_name": ""}, id="project_name-empty"),
    case("POST", PROJECTS, "project_name", json={**VALID, "project_name": "   "},
         id="project_name-whitespace"),
    case("POST", PROJECTS, "project_name", json={**VALID, "project_name": "n" * 81},
         id="project_name-81-chars"),
    case("POST", PROJECTS, "user_id", json={**VALID, "user_id": "bob smith"}, id="user_id-space"),
    case("POST", PROJECTS, "user_id", json={**VALID, "user_id": "../etc/passwd"}, id="user_id-slash"),
    case("POST", PROJECTS, "user_id", json={**VALID, "user_id": ""}, id="user_id-empty"),
    case("POST", PROJECTS, "user_id", json={**VALID, "user_id": "u" * 129}, id="user_id-129-chars"),
    case("POST", PROJECTS, "priority", json={**VALID, "priority": 0}, id="priority-0"),
    case("POST", PROJECTS, "priority", json={**VALID, "priority": 6}, id="priority-6"),
    case("POST", PROJECTS, "priority", json={**VALID, "priority": "x"}, id="priority-text"),
    case("POST", PROJECTS, "priority", json={**VALID, "priority": 2.5}, id="priority-fraction"),
    case("POST", PROJECTS, "tags", json={**VALID, "tags": [f"t{n}" for n in range(21)]},
         id="tags-21-items"),
    case("POST", PROJECTS, "tags[1]", json={**VALID, "tags": ["ok", ""]}, id="tags-empty-tag"),
    case("POST", PROJECTS, "tags[0]", json={**VALID, "tags": ["t" * 51]}, id="tags-51-char-tag"),
    case("POST", PROJECTS, "tags[2]", json={**VALID, "tags": ["a", "b", 7]}, id="tags-number-tag"),
    case("POST", PROJECTS, "tags", json={**VALID, "tags": "a,b"}, id="tags-not-a-list"),
    case("POST", PROJECTS, "colour", json={**VALID, "colour": "red"}, id="project-unknown-field"),
    case("POST", PROJECTS, "body", json=["Build an agent that answers questions"], id="project-body-list"),
    case("PUT", CONTROL, "action", json={"action": "explode"}, id="control-action-unknown"),
    case("PUT", CONTROL, "action", json={}, id="control-action-missing"),
    case("PUT", CONTROL, "action", json={"action": None}, id="control-action-null"),
    case("PUT", CONTROL, "reason", json={"action": "pause", "reason": "r" * 501}, id="control-reason-501"),
    case("PUT", CONTROL, "force", json={"action": "stop", "force": True}, id="control-unknown-field"),
    case("PUT", AGENT, "body", json={}, id="agent-update-empty"),
    case("PUT", AGENT, "category", json={"category": "bad category!"}, id="agent-category-bad"),
    case("PUT", AGENT, "category", json={"category": ""}, id="agent-category-empty"),
    case("PUT", AGENT, "capabilities", json={"capabilities": [f"c{n}" for n in range(51)]},
         id="agent-capabilities-51"),
    case("PUT", AGENT, "capabilities[1]", json={"capabilities": ["ok", "has space"]},
         id="agent-capability-bad-chars"),
    case("PUT", AGENT, "capabilities", json={"capabilities": "triage"}, id="agent-capabilities-not-list"),
    case("PUT", AGENT, "description", json={"description": "  "}, id="agent-description-blank"),
    case("PUT", AGENT, "status", json={"status": "offline"}, id="agent-update-unknown-field"),
    case("PUT", AGENT + "/status", "status", json={"status": "paused"}, id="agent-status-unknown"),
    case("PUT", AGENT + "/status", "status", json={}, id="agent-status-missing"),
    case("PUT", AGENT + "/status", "error_message",
         json={"status": "offline", "error_message": "e" * 2001}, id="agent-error_message-2001"),
    case("POST", INVOKE, "input_text", json={"input_text": ""}, id="invoke-input_text-empty"),
    case("POST", INVOKE, "input_text", json={"input_text": "x" * 10001}, id="invoke-input_text-10001"),
    case("POST", INVOKE, "input_text", json={}, id="invoke-input_text-missing"),
    case("POST", INVOKE, "input_text", json={"input_text": 42}, id="invoke-input_text-number"),
    case("POST", INVOKE, "session_id", json={"input_text": "hi", "session_id": "abc"},
         id="invoke-session_id-format"),
    case("POST", INVOKE, "session_id", json={"input_text": "hi", "session_id": "sess_ABCDEF0123456789"},
         id="invoke-session_id-uppercase"),
    case("POST", INVOKE, "enable_trace", json={"input_text": "hi", "enable_trace": "maybe"},
         id="invoke-enable_trace-text"),
    case("POST", SESSIONS, "metadata", json={"metadata": "x"}, id="session-metadata-string"),
    case("POST", SESSIONS, "metadata", json={"metadata": [1, 2]}, id="session-metadata-list"),
    case("POST", SESSIONS, "metadata", json={"metadata": {f"k{n}": n for n in range(51)}},
         id="session-metadata-51-keys"),
    # Stored, they would fail every answer showing them (orjson renders 64-bit integers, 254 levels).
    case("POST", SESSIONS, "metadata", json={"metadata": {"n": [{"big": 2**64}]}},
         id="session-metadata-integer-over-64-bits"),
    case("POST", SESSIONS, "metadata", json={"metadata": {"n": -(2**63) - 1}},
         id="session-metadata-integer-under-64-bits"),
    case("POST", SESSIONS, "metadata", json={"metadata": {"deep": [[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]}},
         id="session-metadata-17-levels"),
    case("POST", SESSIONS, "display_name", json={"display_name": "d" * 201},
         id="session-display_name-201"),
    case("POST", MESSAGES, "role", json={"content": "hello", "role": "assistant"},
         id="message-role-assistant"),
    case("POST", MESSAGES, "content", json={"content": ""}, id="message-content-empty"),
    case("POST", MESSAGES, "content", json={}, id="message-content-missing"),
    case("POST", MESSAGES, "content", json={"content": "x" * 10001}, id="message-content-10001"),
    case("POST", "/api/v1/keys", "expires_days", json={"role": "viewer", "expires_days": True},
         id="key-expires_days-true"),
    case("POST", PROJECTS, "priority", json={**VALID, "priority": True}, id="priority-true"),
    case("POST", PROJECTS, "priority", json={**VALID, "priority": "3"}, id="priority-text"),
    case("POST", "/api/v1/keys", "expires_days", json={"role": "viewer", "expires_days": 0},
         id="key-expires_days-0"),
    case("POST", "/api/v1/keys", "role", json={"role": "operator"}, id="key-role-operator"),
    case("POST", "/api/v1/keys", "name", json={"role": "viewer", "name": "n" * 81}, id="key-name-81"),
]

LISTS = {
    "projects": "/api/v1/projects",
    "agents": "/api/v1/agents",
    "builds": "/api/v1/projects/{project_id}/builds",
    "invocations": "/api/v1/agents/{agent_id}/invocations",
    "sessions": "/api/v1/agents/{agent_id}/sessions",
    "messages": "/api/v1/sessions/{session_id}/messages",
}
STATISTICS = {
    "builds": ("/api/v1/statistics/builds", {}),
    "invocations": ("/api/v1/statistics/invocations", {}),
    "trends": ("/api/v1/statistics/trends", {"metric": "builds"}),
}
QUERY_CASES = [
    *(case("GET", path, "limit", params={"limit": limit}, id=f"{name}-limit-{limit}")
      for name, path in LISTS.items() for limit in (0, 101, "x")),
    case("GET", LISTS["projects"], "last_key", params={"last_key": "k" * 1025}, id="last_key-1025-chars"),
    case("GET", LISTS["projects"], "status", params={"status": "running"}, id="projects-status-unknown"),
    case("GET", LISTS["projects"], "user_id", params={"user_id": "bob smith"}, id="projects-user_id-bad"),
    case("GET", LISTS["agents"], "status", params={"status": "paused"}, id="agents-status-unknown"),
    case("GET", LISTS["agents"], "category", params={"category": "bad cat!"}, id="agents-category-bad"),
    case("GET", LISTS["agents"], "capabilities", params={"capabilities": " , ,"},
         id="agents-capabilities-empty"),
    case("GET", LISTS["agents"], "capabilities",
         params={"capabilities": ",".join(f"c{n}" for n in range(21))}, id="agents-capabilities-21"),
    case("GET", LISTS["agents"], "project_id", params={"project_id": "p" * 65},
         id="agents-project_id-too-long"),
    *(case("GET", path, "start_date", params={**extra, "start_date": "2024-13-01"},
           id=f"statistics-{name}-start_date-malformed") for name, (path, extra) in STATISTICS.items()),
    *(case("GET", path, "end_date", params={**extra, "end_date": "yesterday"},
           id=f"statistics-{name}-end_date-malformed") for name, (path, extra) in STATISTICS.items()),
    # pydantic alone reads a number as a Unix time: 0 would be 1970-01-01.
    *(case("GET", path, "end_date", params={**extra, "end_date": "0"},
           id=f"statistics-{name}-end_date-number") for name, (path, extra) in STATISTICS.items()),
    *(case("GET", path, "start_date", params={**extra, "start_date": "1733011200"},
           id=f"statistics-{name}-start_date-unix-time") for name, (path, extra) in STATISTICS.items()),
    *(case("GET", path, "start_date", params={**extra, "start_date": "2024-03-02", "end_date": "2024-03-01"},
           id=f"statistics-{name}-start-after-end") for name, (path, extra) in STATISTICS.items()),
    *(case("GET", path, "start_date", params={**extra, "start_date": "2024-01-01", "end_date": "2025-01-01"},
           id=f"statistics-{name}-367-days") for name, (path, extra) in STATISTICS.items()),
    case("GET", "/api/v1/statistics/trends", "metric", params={}, id="trends-metric-missing"),
    case("GET", "/api/v1/statistics/trends", "metric", params={"metric": "latency"},
         id="trends-metric-unknown"),
]


def _needs_world(param: Any) -> bool:
    return "{" in param.values[1]


@pytest.mark.parametrize(("method", "path", "kwargs", "field"),
                         [p for p in BODY_CASES + QUERY_CASES if not _needs_world(p)])
async def test_a_bad_value_is_a_validation_error_naming_the_field(
        api: Api, method: str, path: str, kwargs: dict[str, Any], field: str) -> None:
    response = await api.client.request(method, path, **kwargs)
    assert_names_field(assert_error(response, 400, "VALIDATION_ERROR"), field)


# Paths under a project, agent or session get real ones, so nothing but the bad value is wrong.
@pytest.mark.parametrize(("method", "path", "kwargs", "field"),
                         [p for p in BODY_CASES + QUERY_CASES if _needs_world(p)])
async def test_a_bad_value_under_a_resource_is_a_validation_error_naming_the_field(
        api: Api, world: dict[str, str], method: str, path: str, kwargs: dict[str, Any],
        field: str) -> None:
    response = await api.client.request(method, path.format(**world), **kwargs)
    assert_names_field(assert_error(response, 400, "VALIDATION_ERROR"), field)


@pytest.mark.parametrize(("path", "params", "unknown", "takes"), [
    ("/api/v1/projects", {"stauts": "failed"}, "stauts", "last_key, limit, status, user_id"),
    ("/api/v1/agents", {"limit": "5", "category": "finance", "tag": "x"}, "tag",
     "capabilities, category, last_key, limit, project_id, status"),
    ("/api/v1/statistics/overview", {"days": "7"}, "days", "no query parameters"),
])
async def test_an_unknown_query_parameter_is_refused_like_an_unknown_body_field(
        api: Api, path: str, params: dict[str, str], unknown: str, takes: str) -> None:
    error = assert_error(await api.client.get(path, params=params), 400, "VALIDATION_ERROR")
    assert_names_field(error, unknown)
    assert error["details"][0]["message"] == f"not a query parameter of GET {path} (it takes {takes})"
    # Without it the same request is answered.
    known = {name: value for name, value in params.items() if name != unknown}
    assert (await api.client.get(path, params=known)).status_code == 200


async def test_a_form_post_is_told_to_send_json(api: Api) -> None:
    response = await api.client.post(PROJECTS, data={"requirement": REQUIREMENT})
    error = assert_error(response, 400, "VALIDATION_ERROR")
    assert [detail["field"] for detail in error["details"]] == ["body"]
    assert error["details"][0]["message"] == (
        "The body must be a JSON object sent with Content-Type: application/json; this "
        "request's Content-Type is application/x-www-form-urlencoded")
    # A JSON body that is not an object keeps pydantic's own words.
    listed = assert_error(await api.client.post(PROJECTS, json=[REQUIREMENT]), 400, "VALIDATION_ERROR")
    assert "Content-Type" not in listed["details"][0]["message"]
    assert (await api.call("GET", PROJECTS))["count"] == 0


async def snapshot(api: Api, world: dict[str, str]) -> dict[str, Any]:
    """Everything a client can read about the world (the API call counter aside)."""
    overview = await api.call("GET", "/api/v1/statistics/overview")
    overview.pop("today_api_calls")
    reads = {
        "projects": ("/api/v1/projects", {"limit": 100}),
        "project": (f"/api/v1/projects/{world['project_id']}", {}),
        "builds": (f"/api/v1/projects/{world['project_id']}/builds", {}),
        "agents": ("/api/v1/agents", {"limit": 100}),
        "invocations": (f"/api/v1/agents/{world['agent_id']}/invocations", {}),
        "sessions": (f"/api/v1/agents/{world['agent_id']}/sessions", {}),
        "messages": (f"/api/v1/sessions/{world['session_id']}/messages", {}),
        "build statistics": ("/api/v1/statistics/builds", {}),
        "invocation statistics": ("/api/v1/statistics/invocations", {}),
    }
    return {"overview": overview} | {
        name: await api.call("GET", path, params=params) for name, (path, params) in reads.items()}


async def test_a_refused_request_writes_nothing(api: Api, world: dict[str, str]) -> None:
    before = await snapshot(api, world)
    for param in BODY_CASES:
        method, path, kwargs, _ = param.values
        response = await api.client.request(method, path.format(**world), **kwargs)
        assert response.status_code == 400, (param.id, response.json())
    assert await snapshot(api, world) == before


@pytest.mark.parametrize("content", [
    pytest.param(b'{"requirement": ', id="truncated"),
    pytest.param(b"requirement=Build an agent", id="form-encoded"),
    pytest.param(b'{"requirement": "Build an agent that answers",}', id="trailing-comma"),
    pytest.param(b'{"requirement": "\xff\xfe Build an agent that answers"}', id="not-utf-8"),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, id="nested-too-deep"),
    pytest.param(b"", id="empty"),
])
async def test_a_malformed_json_body_is_a_validation_error_of_the_body(
        api: Api, content: bytes) -> None:
    response = await api.client.post("/api/v1/projects", content=content,
                                     headers={"content-type": "application/json"})
    error = assert_error(response, 400, "VALIDATION_ERROR")
    assert isinstance(error["details"], list), error
    assert [(d["field"], d.get("location")) for d in error["details"]] == [("body", "body")], error
    assert (await api.call("GET", "/api/v1/projects"))["count"] == 0


async def test_boundary_values_are_accepted(api: Api) -> None:
    shortest = await api.create_project("r" * 10, project_name="n" * 80, user_id="a.b_c-d@e",
                                        priority=1, tags=[f"t{n}" for n in range(20)])
    assert (shortest["project_name"], shortest["priority"], len(shortest["tags"])) == ("n" * 80, 1, 20)
    longest = await api.create_project("r" * 5000, priority=5)
    assert len(longest["requirement"]) == 5000
    for limit in (1, 100):
        assert (await api.call("GET", "/api/v1/projects", params={"limit": limit}))["count"] == min(limit, 2)
    # 366 days inclusive is the widest range allowed.
    days = await api.call("GET", "/api/v1/statistics/builds",
                          params={"start_date": "2024-01-01", "end_date": "2024-12-31"})
    assert len(days) == 366


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/api/v1/nothing-here"),
    ("GET", "/nothing-here"),
    ("POST", "/api/v1/projects/proj_000000000000/rebuild"),
    ("GET", "/api/v2/projects"),
])
async def test_an_unknown_route_is_resource_not_found(api: Api, method: str, path: str) -> None:
    error = assert_error(await api.client.request(method, path), 404, "RESOURCE_NOT_FOUND")
    assert path in error["message"]


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("DELETE", "/api/v1/statistics/overview", {"GET"}),
    ("PATCH", "/api/v1/projects", {"GET", "POST"}),
    ("POST", "/api/v1/agents", {"GET"}),
    ("GET", "/api/v1/projects/proj_000000000000/control", {"PUT"}),
    ("PUT", "/api/v1/projects/proj_000000000000", {"GET", "DELETE"}),
    ("POST", f"/api/v1/agents/{MISSING_AGENT}", {"GET", "PUT", "DELETE"}),
])
async def test_a_wrong_method_is_method_not_allowed(
        api: Api, method: str, path: str, allowed: set[str]) -> None:
    response = await api.client.request(method, path)
    error = assert_error(response, 405, "METHOD_NOT_ALLOWED")
    assert method in error["message"]
    assert {m.strip() for m in response.headers["allow"].split(",")} == allowed


def _too_large_body() -> bytes:
    return b'{"requirement": "' + b"x" * MiB + b'"}'


async def test_a_body_over_one_mebibyte_is_refused_with_or_without_its_length(api: Api) -> None:
    body = _too_large_body()

    async def chunks() -> Any:
        for start in range(0, len(body), 64 * 1024):
            yield body[start:start + 64 * 1024]

    declared = await api.client.post("/api/v1/projects", content=body,
                                     headers={"content-type": "application/json"})
    assert_error(declared, 413, "PAYLOAD_TOO_LARGE")
    chunked = await api.client.post("/api/v1/projects", content=chunks(),
                                    headers={"content-type": "application/json"})
    assert "content-length" not in chunked.request.headers
    assert chunked.request.headers["transfer-encoding"] == "chunked"
    assert_error(chunked, 413, "PAYLOAD_TOO_LARGE")
    assert (await api.call("GET", "/api/v1/projects"))["count"] == 0
    # Just under the limit is read and judged on its content.
    near = b'{"requirement": "' + b"x" * (MiB - 100) + b'"}'
    response = await api.client.post("/api/v1/projects", content=near,
                                     headers={"content-type": "application/json"})
    assert_names_field(assert_error(response, 400, "VALIDATION_ERROR"), "requirement")


async def test_a_body_under_the_limit_whose_record_is_over_400_kib_stores_nothing(
        api: Api, world: dict[str, str]) -> None:
    """The body fits the 1 MiB request limit but the session it would store does not fit a
    record (400 KiB, as on DynamoDB): the same 413 on every backend, naming the field."""
    response = await api.client.post(f"/api/v1/agents/{world['agent_id']}/sessions",
                                     json={"metadata": {"notes": "x" * 500_000}})
    error = assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert [d["field"] for d in error["details"]] == ["metadata"]
    assert "409600 bytes" in error["details"][0]["message"]
    sessions = await api.call("GET", f"/api/v1/agents/{world['agent_id']}/sessions")
    assert [s["session_id"] for s in sessions["items"]] == [world["session_id"]]


def test_a_real_server_refuses_oversized_bodies_with_or_without_their_length(server_factory: Any) -> None:
    server = server_factory(OFFLINE_STAGE_DELAY_SECONDS="0")
    body = _too_large_body()

    def chunks() -> Any:
        for start in range(0, len(body), 64 * 1024):
            yield body[start:start + 64 * 1024]

    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        for content in (body, chunks()):
            response = client.post("/api/v1/projects", content=content,
                                   headers={"content-type": "application/json"})
            assert_error(response, 413, "PAYLOAD_TOO_LARGE")
        assert client.get("/api/v1/projects").json()["data"]["count"] == 0


async def test_unknown_ids_are_resource_not_found_on_every_path(api: Api, world: dict[str, str]) -> None:
    project, agent = world["project_id"], world["agent_id"]
    other = await api.built_agent("Summarize research papers and news articles every week")
    other_session = await api.call("POST", f"/api/v1/agents/{other['agent_id']}/sessions",
                                   expect=201, json={})
    cases: list[tuple[str, str, dict[str, Any], str]] = [
        ("GET", f"/api/v1/projects/{MISSING_PROJECT}", {}, MISSING_PROJECT),
        ("GET", f"/api/v1/projects/{MISSING_PROJECT}/stages", {}, MISSING_PROJECT),
        ("GET", f"/api/v1/projects/{MISSING_PROJECT}/stages/orchestrator", {}, MISSING_PROJECT),
        ("PUT", f"/api/v1/projects/{MISSING_PROJECT}/control", {"json": {"action": "pause"}},
         MISSING_PROJECT),
        ("DELETE", f"/api/v1/projects/{MISSING_PROJECT}", {}, MISSING_PROJECT),
        ("GET", f"/api/v1/projects/{MISSING_PROJECT}/builds", {}, MISSING_PROJECT),
        ("GET", f"/api/v1/projects/{MISSING_PROJECT}/artifacts", {}, MISSING_PROJECT),
        ("GET", f"/api/v1/projects/{MISSING_PROJECT}/artifacts/agent/a.py", {}, MISSING_PROJECT),
        ("GET", f"/api/v1/projects/{project}/stages/no_such_stage", {}, "no_such_stage"),
        ("GET", f"/api/v1/projects/{project}/artifacts/no/such.py", {}, "no/such.py"),
        ("GET", f"/api/v1/agents/{MISSING_AGENT}", {}, MISSING_AGENT),
        ("PUT", f"/api/v1/agents/{MISSING_AGENT}", {"json": {"description": "x"}}, MISSING_AGENT),
        ("PUT", f"/api/v1/agents/{MISSING_AGENT}/status", {"json": {"status": "offline"}}, MISSING_AGENT),
        ("DELETE", f"/api/v1/agents/{MISSING_AGENT}", {}, MISSING_AGENT),
        ("POST", f"/api/v1/agents/{MISSING_AGENT}/invoke", {"json": {"input_text": "hi"}}, MISSING_AGENT),
        ("GET", f"/api/v1/agents/{MISSING_AGENT}/invocations", {}, MISSING_AGENT),
        ("POST", f"/api/v1/agents/{MISSING_AGENT}/sessions", {"json": {}}, MISSING_AGENT),
        ("GET", f"/api/v1/agents/{MISSING_AGENT}/sessions", {}, MISSING_AGENT),
        ("POST", f"/api/v1/agents/{agent}/invoke",
         {"json": {"input_text": "hi", "session_id": MISSING_SESSION}}, MISSING_SESSION),
        # A session of another agent is not this agent's session.
        ("POST", f"/api/v1/agents/{agent}/invoke",
         {"json": {"input_text": "hi", "session_id": other_session["session_id"]}},
         other_session["session_id"]),
        ("GET", f"/api/v1/sessions/{MISSING_SESSION}", {}, MISSING_SESSION),
        ("POST", f"/api/v1/sessions/{MISSING_SESSION}/messages", {"json": {"content": "hi"}},
         MISSING_SESSION),
        ("GET", f"/api/v1/sessions/{MISSING_SESSION}/messages", {}, MISSING_SESSION),
        ("DELETE", f"/api/v1/sessions/{MISSING_SESSION}", {}, MISSING_SESSION),
    ]
    before = await snapshot(api, world)
    for method, path, kwargs, missing in cases:
        error = assert_error(await api.client.request(method, path, **kwargs), 404, "RESOURCE_NOT_FOUND")
        assert error["details"]["id"] == missing, (method, path, error)
    assert await snapshot(api, world) == before


async def _control(api: Api, project_id: str, action: str, expect: int = 200) -> dict[str, Any]:
    return await api.call("PUT", f"/api/v1/projects/{project_id}/control", expect=expect,
                          json={"action": action})


async def _control_state(api: Api, project_id: str) -> tuple[Any, ...]:
    """What a control action changes (a running build's progress moves on by itself)."""
    project = await api.project(project_id)
    builds = (await api.call("GET", f"/api/v1/projects/{project_id}/builds"))["items"]
    return project["status"], project["latest_build_id"], [(b["build_id"], b["status"]) for b in builds]


async def _assert_refused(api: Api, project_id: str, action: str, status: str) -> None:
    before = await _control_state(api, project_id)
    assert before[0] == status
    response = await api.client.put(f"/api/v1/projects/{project_id}/control", json={"action": action})
    error = assert_error(response, 409, "INVALID_STATE")
    assert error["details"] == {"status": status, "action": action}
    assert await _control_state(api, project_id) == before


async def test_illegal_transitions_of_finished_projects_are_invalid_state(api: Api) -> None:
    completed = await api.create_project()
    await api.wait_status(completed["project_id"], "completed")
    for action in ("pause", "resume", "stop"):
        await _assert_refused(api, completed["project_id"], action, "completed")

    stopped = await api.create_project()
    await _control(api, stopped["project_id"], "stop")
    for action in ("pause", "resume", "stop"):
        await _assert_refused(api, stopped["project_id"], action, "stopped")


# A stage that takes a minute keeps the one build slot busy for as long as the test needs, so
# a second project stays queued.
@pytest.mark.parametrize("settings_overrides",
                         [{"offline_stage_delay_seconds": 60.0, "max_concurrent_builds": 1}],
                         ids=["one_slow_slot"])
async def test_illegal_transitions_of_active_projects_are_invalid_state(api: Api) -> None:
    running = await api.create_project()
    await api.wait_status(running["project_id"], "building")
    for action in ("restart", "resume"):
        await _assert_refused(api, running["project_id"], action, "building")

    queued = await api.create_project()
    assert (await api.project(queued["project_id"]))["status"] == "pending"
    for action in ("restart", "resume"):
        await _assert_refused(api, queued["project_id"], action, "pending")

    # The running build's minute-long stage holds its pause at `pausing`; the queued one
    # pauses at once.
    await _control(api, running["project_id"], "pause")
    for action in ("pause", "restart"):
        await _assert_refused(api, running["project_id"], action, "pausing")
    await _control(api, queued["project_id"], "pause")
    for action in ("pause", "restart"):
        await _assert_refused(api, queued["project_id"], action, "paused")


async def test_invoking_an_offline_agent_is_invalid_state_and_records_nothing(
        api: Api, world: dict[str, str]) -> None:
    agent_id = world["agent_id"]
    await api.call("PUT", f"/api/v1/agents/{agent_id}/status",
                   json={"status": "offline", "error_message": "maintenance"})
    before = await snapshot(api, world)

    error = assert_error(await api.client.post(f"/api/v1/agents/{agent_id}/invoke",
                                               json={"input_text": "are you there?"}),
                         409, "INVALID_STATE")
    assert error["details"] == {"status": "offline"}
    error = assert_error(await api.client.post(f"/api/v1/sessions/{world['session_id']}/messages",
                                               json={"content": "are you there?"}),
                         409, "INVALID_STATE")
    assert error["details"] == {"status": "offline"}
    assert await snapshot(api, world) == before
    stats = (await api.call("GET", f"/api/v1/agents/{agent_id}"))["runtime_stats"]
    assert stats["total_invocations"] == 0


async def test_session_metadata_at_the_limits_is_kept_and_answered(api: Api, world: dict[str, str]) -> None:
    metadata = {"max": 2**63 - 1, "min": -(2**63), "deep": [[[[[[[[[[[[[[[["sixteen"]]]]]]]]]]]]]]]]}
    created = await api.call("POST", SESSIONS.format(**world), expect=201, json={"metadata": metadata})
    assert created["metadata"] == metadata
    listed = await api.call("GET", SESSIONS.format(**world))
    assert metadata in [item["metadata"] for item in listed["items"]]
