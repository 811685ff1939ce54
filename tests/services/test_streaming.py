"""Server-Sent Events from invocations: frames, heartbeats, and errors before and after the
stream starts (the offline provider; tests/e2e/test_model_failures.py drives a real endpoint)."""

import asyncio
from collections.abc import AsyncIterator

import pytest

from api.providers.base import ModelError, ModelReply, ModelRequest, TextDelta
from api.providers.offline import OfflineProvider
from api.services import agent_service
from tests.conftest import Api, sse_events


class PausingModel(OfflineProvider):
    """Thinks for a while before its first token, or fails after it: a slow or broken model."""

    def __init__(self) -> None:
        super().__init__(stage_delay_seconds=0)
        self.pause_seconds = 0.0
        self.fail_after_first = False

    async def stream(self, request: ModelRequest) -> AsyncIterator[TextDelta | ModelReply]:
        await asyncio.sleep(self.pause_seconds)
        first = True
        async for event in super().stream(request):
            yield event
            if first and self.fail_after_first:
                raise ModelError("the model's stream was cut off")
            first = False


@pytest.fixture
def provider() -> PausingModel:
    return PausingModel()


async def test_stream_by_body_flag_matches_the_json_answer(api: Api) -> None:
    agent = await api.built_agent()
    response = await api.client.post(f"/api/v1/agents/{agent['agent_id']}/invoke",
                                     json={"input_text": "Where is my refund?", "stream": True})
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-cache"
    events = sse_events(response.text)
    assert [name for name, _ in events][-1] == "done"
    done = events[-1][1]
    assert "".join(data["text"] for name, data in events if name == "delta") == done["output"]
    assert "trace" not in done  # enable_trace was not asked for
    [stored] = (await api.call("GET", f"/api/v1/agents/{agent['agent_id']}/invocations"))["items"]
    assert stored["invocation_id"] == done["invocation_id"] and stored["output"] == done["output"]


async def test_a_quiet_model_gets_heartbeats(api: Api, provider: PausingModel,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    agent = await api.built_agent()
    monkeypatch.setattr(agent_service, "HEARTBEAT_SECONDS", 0.05)
    provider.pause_seconds = 0.3
    response = await api.client.post(f"/api/v1/agents/{agent['agent_id']}/invoke",
                                     json={"input_text": "hello"}, headers={"Accept": "text/event-stream"})
    assert response.text.startswith(": heartbeat\n\n")
    assert response.text.count(": heartbeat") >= 3
    assert sse_events(response.text)[-1][0] == "done"


async def test_an_error_mid_stream_is_an_error_event_and_a_failed_record(
        api: Api, provider: PausingModel) -> None:
    agent = await api.built_agent()
    provider.fail_after_first = True
    response = await api.client.post(f"/api/v1/agents/{agent['agent_id']}/invoke",
                                     json={"input_text": "hello", "stream": True})
    events = sse_events(response.text)
    assert [name for name, _ in events] == ["delta", "error"]
    error = events[-1][1]
    assert error["success"] is False and error["error"]["code"] == "AGENT_INVOCATION_FAILED"
    assert error["error"]["details"]["model_error"] == "MODEL_ERROR"
    [stored] = (await api.call("GET", f"/api/v1/agents/{agent['agent_id']}/invocations"))["items"]
    assert stored["invocation_id"] == error["error"]["details"]["invocation_id"]
    assert stored["status"] == "failed" and stored["output_tokens"] > 0


async def test_an_error_before_the_stream_is_a_plain_json_answer(api: Api) -> None:
    agent = await api.built_agent()
    await api.call("PUT", f"/api/v1/agents/{agent['agent_id']}/status", json={"status": "offline"})
    error = await api.call("POST", f"/api/v1/agents/{agent['agent_id']}/invoke", expect=409,
                           json={"input_text": "hello"}, headers={"Accept": "text/event-stream"})
    assert error["code"] == "INVALID_STATE"
