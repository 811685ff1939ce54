"""The OpenAPI document tells the truth: every operation documents its success body as a typed
model and each error status with the error envelope and its codes, ids are `{tag}-{name}`, and
what the service really answers, success and error, matches what its operation documents."""

import json
import re
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from tests.conftest import Api, sse_events

OPERATION_ID = re.compile(r"^(projects|agents|sessions|statistics|keys|health)-[a-z_]+$")


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"offline_stage_delay_seconds": 0.0}


@pytest.fixture
def schema(app: Any) -> dict[str, Any]:
    return app.openapi()


def operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method.upper(), path, operation) for path, methods in schema["paths"].items()
            for method, operation in methods.items()]


def error_codes(response: dict[str, Any]) -> list[str]:
    """The codes an error response of the document can carry."""
    envelope, codes = response["content"]["application/json"]["schema"]["allOf"]
    assert envelope == {"$ref": "#/components/schemas/ErrorEnvelope"}
    return codes["properties"]["error"]["properties"]["code"]["enum"]


def test_every_operation_documents_a_typed_body_and_its_errors(schema: dict[str, Any]) -> None:
    assert len(operations(schema)) == 34
    for method, path, operation in operations(schema):
        assert OPERATION_ID.match(operation["operationId"]), operation["operationId"]
        responses = operation["responses"]
        assert "422" not in responses, (method, path)
        success = [status for status in responses if status.startswith("2")]
        assert len(success) == 1, (method, path, success)
        body = responses[success[0]]["content"]["application/json"]["schema"]
        assert body["$ref"].startswith("#/components/schemas/Envelope_"), (method, path, body)
        errors = {status: error_codes(response) for status, response in responses.items()
                  if not status.startswith("2")}
        assert "INTERNAL_ERROR" in errors.pop("500"), (method, path)
        if path.startswith("/api/v1/"):
            assert "VALIDATION_ERROR" in errors["400"] and "DATABASE_ERROR" in errors["503"]
            assert (errors["401"], errors["403"]) == (["AUTHENTICATION_REQUIRED"], ["PERMISSION_DENIED"])
        if "{" in path:
            assert errors["404"] == ["RESOURCE_NOT_FOUND"], (method, path)
        if "requestBody" in operation:
            assert errors["413"] == ["PAYLOAD_TOO_LARGE"], (method, path)
    assert {"HTTPValidationError", "ValidationError"}.isdisjoint(schema["components"]["schemas"])


def test_the_main_bodies_carry_examples(schema: dict[str, Any]) -> None:
    components = schema["components"]["schemas"]
    for name in ("ProjectCreate", "ProjectDetail", "AgentPublic", "InvokeRequest", "InvocationPublic",
                 "SessionCreate", "SessionPublic", "MessageCreate", "Overview", "ErrorEnvelope"):
        assert components[name]["examples"], name


def validate(schema: dict[str, Any], instance: Any, against: dict[str, Any]) -> None:
    """`instance` against `against`, a schema of the document (its $refs resolved in it)."""
    Draft202012Validator({**against, "components": schema["components"]},
                         format_checker=Draft202012Validator.FORMAT_CHECKER).validate(instance)


def test_the_examples_are_valid_under_their_schemas(schema: dict[str, Any]) -> None:
    components = schema["components"]["schemas"]
    for name, component in components.items():
        for example in component.get("examples", []):
            validate(schema, example, {"$ref": f"#/components/schemas/{name}"})


class Checked:
    """Calls the service and holds each answer to its operation's document: the status is one it
    documents, the body validates against the documented schema (whose records forbid fields
    they do not name), an error's code is one the document lists for that status."""

    def __init__(self, schema: dict[str, Any], api: Api) -> None:
        self.client = api.client
        self.schema = schema
        self.operations = {operation["operationId"]: operation for _, _, operation in operations(schema)}
        self.checked: set[str] = set()

    async def __call__(self, operation_id: str, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.client.request(method, path, **kwargs)
        documented = self.operations[operation_id]["responses"]
        status = str(response.status_code)
        assert status in documented, (operation_id, status, response.text)
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        validate(self.schema, body, documented[status]["content"]["application/json"]["schema"])
        if not response.is_success:
            assert body["error"]["code"] in error_codes(documented[status]), (operation_id, body)
        self.checked.add(operation_id)
        return body.get("data")


async def test_every_answer_is_what_its_operation_documents(schema: dict[str, Any], api: Api) -> None:
    call = Checked(schema, api)
    health = ("health", "live", "ready", "detailed")
    for name, path in zip(health, ("/health", "/health/live", "/health/ready", "/health/detailed")):
        await call(f"health-{name}", "GET", path)
    project = await call("projects-create_project", "POST", "/api/v1/projects",
                         json={"requirement": "Build an agent that triages support tickets", "tags": ["t"]})
    project_id = project["project_id"]
    projects = f"/api/v1/projects/{project_id}"
    await api.wait_status(project_id, "completed")
    await call("projects-get_project", "GET", projects)
    await call("projects-list_projects", "GET", "/api/v1/projects", params={"limit": 1})
    await call("projects-list_stages", "GET", f"{projects}/stages")
    await call("projects-get_stage", "GET", f"{projects}/stages/agent_developer_manager")
    await call("projects-list_builds", "GET", f"{projects}/builds")
    artifacts = await call("projects-list_artifacts", "GET", f"{projects}/artifacts")
    await call("projects-get_artifact", "GET", f"{projects}/artifacts/{artifacts['items'][0]['path']}")
    await call("projects-get_artifact", "GET", f"{projects}/artifacts/no/such/file.py")
    await call("projects-control_project", "PUT", f"{projects}/control", json={"action": "pause"})
    agent = (await call("agents-list_agents", "GET", "/api/v1/agents"))["items"][0]
    agents = f"/api/v1/agents/{agent['agent_id']}"
    await call("agents-get_agent", "GET", agents)
    await call("agents-update_agent", "PUT", agents, json={"category": "support"})
    await call("agents-invoke_agent", "POST", f"{agents}/invoke", json={"input_text": "hi", "enable_trace": True})
    await call("agents-invoke_agent", "POST", f"{agents}/invoke", json={"input_text": ""})
    await call("agents-list_invocations", "GET", f"{agents}/invocations")
    session = await call("agents-create_session", "POST", f"{agents}/sessions", json={"metadata": {"k": 1}})
    sessions = f"/api/v1/sessions/{session['session_id']}"
    await call("sessions-post_message", "POST", f"{sessions}/messages", json={"content": "hello"})
    key = await call("keys-create_key", "POST", "/api/v1/keys", json={"role": "viewer", "name": "docs"})
    await call("keys-list_keys", "GET", "/api/v1/keys")
    await call("keys-revoke_key", "DELETE", f"/api/v1/keys/{key['key_id']}")
    await call("keys-revoke_key", "DELETE", "/api/v1/keys/0000000000000000")
    await call("sessions-list_messages", "GET", f"{sessions}/messages")
    await call("sessions-get_session", "GET", sessions)
    await call("agents-list_sessions", "GET", f"{agents}/sessions")
    for name in ("overview", "builds", "invocations"):
        await call(f"statistics-{name}", "GET", f"/api/v1/statistics/{name}")
    await call("statistics-trends", "GET", "/api/v1/statistics/trends", params={"metric": "tokens"})
    await call("statistics-trends", "GET", "/api/v1/statistics/trends", params={"metric": "volume"})
    await call("agents-set_agent_status", "PUT", f"{agents}/status", json={"status": "offline"})
    await call("sessions-post_message", "POST", f"{sessions}/messages", json={"content": "offline?"})
    await call("projects-control_project", "PUT", f"{projects}/control", json={"action": "resume"})
    await call("projects-control_project", "PUT", f"{projects}/control", json={"action": "restart"})
    await call("sessions-delete_session", "DELETE", sessions)
    await call("sessions-get_session", "GET", sessions)
    await call("agents-delete_agent", "DELETE", agents)
    await call("projects-delete_project", "DELETE", projects)
    await call("projects-get_project", "GET", projects, params={"colour": "red"})
    assert call.checked == set(call.operations)


async def test_a_streamed_answer_is_served_as_documented(app: Any, api: Api) -> None:
    """The status and content type as documented (the JSON form's status), and every event
    valid against the documented event schema."""
    agent = await api.built_agent()
    session = await api.call("POST", f"/api/v1/agents/{agent['agent_id']}/sessions", expect=201, json={})
    paths = app.openapi()["paths"]
    for path, template, body, status in (
            (f"/api/v1/agents/{agent['agent_id']}/invoke", "/api/v1/agents/{agent_id}/invoke",
             {"input_text": "hi", "stream": True}, 200),
            (f"/api/v1/sessions/{session['session_id']}/messages", "/api/v1/sessions/{session_id}/messages",
             {"content": "hi", "stream": True}, 201)):
        response = await api.client.post(path, json=body)
        documented = paths[template]["post"]["responses"][str(status)]["content"]
        assert response.status_code == status, path
        media_type = response.headers["content-type"].split(";")[0]
        schema = documented[media_type]["schema"]
        events = sse_events(response.text)
        assert [name for name, _ in events][-1] == "done"
        for name, data in events:
            Draft202012Validator(schema).validate({"event": name, "data": json.dumps(data)})


@pytest.mark.parametrize("settings_overrides", [{"auth_mode": "api_key"}])
async def test_refusals_are_what_the_operations_document(app: Any, schema: dict[str, Any], api: Api) -> None:
    call = Checked(schema, api)
    await call("projects-list_projects", "GET", "/api/v1/projects")  # no key: 401
    await call("health-detailed", "GET", "/health/detailed")
    _, token = await app.state.key_service.create(tenant_id="default", role="viewer")
    api.client.headers["Authorization"] = f"Bearer {token}"
    await call("projects-create_project", "POST", "/api/v1/projects",
               json={"requirement": "Build an agent that triages support tickets"})  # 403
    await call("keys-list_keys", "GET", "/api/v1/keys")
    await call("health-detailed", "GET", "/health/detailed")
    assert call.checked == {"projects-list_projects", "health-detailed", "projects-create_project",
                            "keys-list_keys"}
