"""Idempotency-Key on the POSTs that create (issue 13, item 4): a retry with the same key and
request gets the first answer and creates nothing; another request under the key is refused;
a retry while the first runs is told to wait; concurrent retries, on one instance or two,
create one resource; only complete successful answers are kept."""

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.providers.base import ModelError, ModelReply, ModelRequest, TextDelta
from api.providers.offline import OfflineProvider
from tests.conftest import REQUIREMENT, Api, ServerProcess, make_settings, serving, sse_events
from tests.routers.test_tenant_scope import use_key

HOLD, FAIL = "[hold]", "[fail]"
KEY = {"Idempotency-Key": "6f1c2d4e-8a9b-4c3d-9e8f-0a1b2c3d4e5f"}


class HeldModel(OfflineProvider):
    """The offline model, except that a question starting with HOLD waits for `release`, and
    one starting with FAIL fails as a model endpoint can."""

    name = "held"

    def __init__(self) -> None:
        super().__init__(stage_delay_seconds=0)
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    async def stream(self, request: ModelRequest) -> AsyncIterator[TextDelta | ModelReply]:
        if request.inputs["input_text"].startswith(HOLD):
            self.holding.set()
            await self.release.wait()
        if request.inputs["input_text"].startswith(FAIL):
            raise ModelError("model endpoint answered 503")
        async for event in super().stream(request):
            yield event


@pytest.fixture
def provider() -> HeldModel:
    return HeldModel()


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"offline_stage_delay_seconds": 0.0}


async def post(api: Api, path: str, body: dict[str, Any] | bytes, *, key: str = KEY["Idempotency-Key"],
               **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await api.client.post(path, content=content, headers={
        "Content-Type": "application/json", "Idempotency-Key": key, **headers})


async def test_a_retry_gets_the_first_answer_and_creates_nothing(api: Api) -> None:
    first = await post(api, "/api/v1/projects", {"requirement": REQUIREMENT, "priority": 2, "tags": ["a"]})
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    # The same request: the same JSON, whatever its key order and spacing.
    again = await post(api, "/api/v1/projects",
                       b'{ "tags": ["a"],  "priority": 2, "requirement": "%s" }' % REQUIREMENT.encode())
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["content-type"] == first.headers["content-type"]
    assert again.content == first.content
    assert again.headers["x-request-id"] != first.headers["x-request-id"]  # a request of its own
    assert (await api.call("GET", "/api/v1/projects"))["count"] == 1

    other = await post(api, "/api/v1/projects", {"requirement": REQUIREMENT, "priority": 2, "tags": ["a"]},
                       key="another-key")
    assert other.status_code == 201 and other.json()["data"]["project_id"] != first.json()["data"]["project_id"]
    assert (await api.call("GET", "/api/v1/projects"))["count"] == 2
    # Without a key nothing changes: every POST creates.
    await api.create_project()
    assert (await api.call("GET", "/api/v1/projects"))["count"] == 3


async def test_the_key_with_another_request_is_refused(api: Api) -> None:
    assert (await post(api, "/api/v1/projects", {"requirement": REQUIREMENT})).status_code == 201
    for path, body in (("/api/v1/projects", {"requirement": REQUIREMENT, "priority": 5}),
                       ("/api/v1/sessions/sess_0000000000000000/messages", {"content": "hi"})):
        refused = await post(api, path, body)
        assert refused.status_code == 409, refused.text
        error = refused.json()["error"]
        assert error["code"] == "IDEMPOTENCY_KEY_REUSED"
        assert "another request" in error["message"] and error["suggestion"]
    assert (await api.call("GET", "/api/v1/projects"))["count"] == 1


async def test_a_retry_while_the_first_runs_waits_then_gets_its_answer(api: Api, provider: HeldModel) -> None:
    agent = await api.built_agent()
    path = f"/api/v1/agents/{agent['agent_id']}/invoke"
    first = asyncio.create_task(post(api, path, {"input_text": f"{HOLD} where is my order?"}))
    await asyncio.wait_for(provider.holding.wait(), timeout=10)

    busy = await post(api, path, {"input_text": f"{HOLD} where is my order?"})
    assert busy.status_code == 409 and busy.headers["retry-after"] == "1"
    assert busy.json()["error"]["code"] == "IDEMPOTENCY_KEY_IN_USE"

    provider.release.set()
    answered = await first
    assert answered.status_code == 200
    replayed = await post(api, path, {"input_text": f"{HOLD} where is my order?"})
    assert replayed.headers["idempotent-replayed"] == "true"
    assert replayed.json()["data"]["invocation_id"] == answered.json()["data"]["invocation_id"]
    invocations = await api.call("GET", f"/api/v1/agents/{agent['agent_id']}/invocations")
    assert [item["invocation_id"] for item in invocations["items"]] == [answered.json()["data"]["invocation_id"]]


async def test_a_streamed_answer_is_replayed_whole_and_only_as_a_stream(api: Api) -> None:
    agent = await api.built_agent()
    session = await api.call("POST", f"/api/v1/agents/{agent['agent_id']}/sessions", expect=201, json={})
    path = f"/api/v1/sessions/{session['session_id']}/messages"
    first = await post(api, path, {"content": "What can you do?"}, Accept="text/event-stream")
    assert first.status_code == 201 and first.headers["content-type"].startswith("text/event-stream")
    events = sse_events(first.text)
    assert events[-1][0] == "done"

    again = await post(api, path, {"content": "What can you do?"}, Accept="text/event-stream")
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["content-type"] == first.headers["content-type"]
    assert again.content == first.content
    # The same body asking for JSON is another request: its answer would have another form.
    assert (await post(api, path, {"content": "What can you do?"})).json()["error"]["code"] == (
        "IDEMPOTENCY_KEY_REUSED")
    messages = await api.call("GET", f"{path}")
    assert messages["count"] == 2  # one turn: the user's message and the answer


async def test_an_error_is_not_kept_and_the_retry_runs_anew(api: Api) -> None:
    agent = await api.built_agent()
    await api.call("PUT", f"/api/v1/agents/{agent['agent_id']}/status", json={"status": "offline"})
    path = f"/api/v1/agents/{agent['agent_id']}/invoke"
    refused = await post(api, path, {"input_text": "hello"})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "INVALID_STATE"

    await api.call("PUT", f"/api/v1/agents/{agent['agent_id']}/status", json={"status": "running"})
    retried = await post(api, path, {"input_text": "hello"})
    assert retried.status_code == 200 and "idempotent-replayed" not in retried.headers
    assert retried.json()["data"]["status"] == "success"
    # A stream that failed after its 200 went out (an `error` event) is not an answer either.
    for attempt in range(1, 3):
        failed = await post(api, path, {"input_text": f"{FAIL} hello"}, key="streamed", Accept="text/event-stream")
        assert failed.status_code == 200 and "idempotent-replayed" not in failed.headers
        assert sse_events(failed.text)[-1][0] == "error"
        invocations = await api.call("GET", f"/api/v1/agents/{agent['agent_id']}/invocations")
        assert [item["status"] for item in invocations["items"]].count("failed") == attempt
    # An invalid body is refused before any claim too, and refused alike on its retry.
    for _ in range(2):
        invalid = await post(api, path, {"input_text": ""}, key="invalid-body")
        assert invalid.status_code == 400 and "idempotent-replayed" not in invalid.headers


@pytest.mark.parametrize("key", ["", " leading-space", "x" * 256, "caf\u00e9"])
async def test_an_invalid_key_is_a_validation_error(api: Api, key: str) -> None:
    response = await api.client.post("/api/v1/projects", json={"requirement": REQUIREMENT},
                                     headers=[(b"Idempotency-Key", key.encode("utf-8"))])
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert error["details"][0]["field"] == "Idempotency-Key" and error["details"][0]["location"] == "header"
    assert (await api.call("GET", "/api/v1/projects"))["count"] == 0


async def test_keys_are_the_tenants_own(tmp_path: Path) -> None:
    async with serving(make_settings(tmp_path, auth_mode="api_key")) as (app, api):
        await use_key(app, api, "default", role="builder")
        first = await post(api, "/api/v1/projects", {"requirement": REQUIREMENT})
        default_key = api.client.headers["Authorization"]
        await use_key(app, api, "globex", role="builder")
        theirs = await post(api, "/api/v1/projects", {"requirement": REQUIREMENT})
        assert theirs.status_code == 201 and "idempotent-replayed" not in theirs.headers
        assert theirs.json()["data"]["tenant_id"] == "globex"
        assert theirs.json()["data"]["project_id"] != first.json()["data"]["project_id"]
        api.client.headers["Authorization"] = default_key
        assert (await post(api, "/api/v1/projects", {"requirement": REQUIREMENT})).content == first.content


async def test_concurrent_retries_on_two_instances_create_one_project(
        tmp_path: Path, server_factory: Callable[..., ServerProcess]) -> None:
    # Two real servers on one SQLite file, as two instances behind a load balancer.
    servers = [server_factory(OFFLINE_STAGE_DELAY_SECONDS="0"), server_factory(OFFLINE_STAGE_DELAY_SECONDS="0")]
    body = {"requirement": REQUIREMENT, "project_name": "Concurrent retries"}
    async with httpx.AsyncClient(timeout=30) as client:
        responses = await asyncio.gather(*(
            client.post(f"{servers[n % 2].base_url}/api/v1/projects", json=body, headers=KEY)
            for n in range(16)))
        listed = (await client.get(f"{servers[0].base_url}/api/v1/projects")).json()["data"]
    created = [response for response in responses if response.status_code == 201]
    waiting = [response for response in responses if response.status_code == 409]
    assert len(created) + len(waiting) == len(responses), [r.text for r in responses]
    assert all(response.json()["error"]["code"] == "IDEMPOTENCY_KEY_IN_USE" for response in waiting)
    assert len({response.json()["data"]["project_id"] for response in created}) == 1
    assert sum("idempotent-replayed" not in response.headers for response in created) == 1
    assert listed["count"] == 1 and listed["items"][0]["project_name"] == "Concurrent retries"
