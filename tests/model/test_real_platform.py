"""The platform against a real model: llama-server with SmolLM2-135M-Instruct (the fixture).

Every build stage is a real model call at temperature 0; the agent it builds answers a direct
invocation and a three-turn streamed session. A 135M model's prose is weak, so these assert
structure (stages, usage, records, counters), never wording.
"""

import asyncio
from typing import Any

import pytest
from prometheus_client import REGISTRY

from api.engine.stages import STAGE_NAMES
from tests.conftest import Api, sse_events, wait_for
from tests.model.conftest import ModelServer, slots_busy

REQUIREMENT = "A travel planner that books flights within a budget"
BUILD_TIMEOUT_SECONDS = 600.0


@pytest.fixture
def settings_overrides(model_server: ModelServer) -> dict[str, Any]:
    return {"model_provider": "openai", "openai_base_url": model_server.base_url,
            "model_name": model_server.model, "model_temperature": 0.0,
            "model_timeout_seconds": 120.0, "model_max_retries": 1, "max_concurrent_builds": 1,
            # Room for every stage's answer (the design takes ~500 tokens); a 135M model's chat
            # answers ramble to whatever cap they get, and this bounds the test's time.
            "model_max_output_tokens": 600}


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def steps(stage: dict[str, Any]) -> list[dict[str, Any]]:
    return stage["sub_stages"] or [stage]


async def test_a_real_model_builds_an_agent_that_answers_and_every_figure_agrees(
        api: Api, model_server: ModelServer) -> None:
    invoke_labels = {"provider": "openai", "model": model_server.model, "operation": "invoke"}
    tokens_before = {kind: metric("model_tokens_total", **invoke_labels, type=kind)
                     for kind in ("input", "output")}
    build_calls_before = metric("model_requests_total", provider="openai", model=model_server.model,
                                operation="build", outcome="success")

    project = await api.create_project(REQUIREMENT)
    done = await api.wait_status(project["project_id"], "completed", "failed",
                                 timeout=BUILD_TIMEOUT_SECONDS)
    assert done["status"] == "completed", done["latest_build"]["error"]

    # Every stage and sub-stage was model work, with the endpoint's own token counts.
    calls = input_tokens = output_tokens = 0
    for name in STAGE_NAMES:
        stage = await api.call("GET", f"/api/v1/projects/{project['project_id']}/stages/{name}")
        for step in steps(stage):
            usage = step["model_usage"]
            assert usage["calls"] >= 1 and usage["model"] == model_server.model, (name, usage)
            assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0, (name, usage)
            assert usage["tokens_estimated"] is False, (name, usage)
            calls += usage["calls"]
            input_tokens += usage["input_tokens"]
            output_tokens += usage["output_tokens"]
    [build] = (await api.call("GET", f"/api/v1/projects/{project['project_id']}/builds"))["items"]
    assert (build["usage"]["calls"], build["usage"]["input_tokens"], build["usage"]["output_tokens"]) == (
        calls, input_tokens, output_tokens)
    assert metric("model_requests_total", provider="openai", model=model_server.model,
                  operation="build", outcome="success") - build_calls_before == calls

    agents = await api.call("GET", "/api/v1/agents", params={"project_id": project["project_id"]})
    [agent] = agents["items"]
    assert agent["tools"] and agent["system_prompt"]
    artifacts = {a["path"] for a in (await api.call(
        "GET", f"/api/v1/projects/{project['project_id']}/artifacts"))["items"]}
    assert f"agent/{agent['agent_name']}.py" in artifacts
    assert any(path.startswith("tools/") for path in artifacts)

    # One direct invocation, then a session of three streamed turns.
    direct = await api.call("POST", f"/api/v1/agents/{agent['agent_id']}/invoke",
                            json={"input_text": "Find me a flight to Lisbon under 300 euros"})
    assert direct["status"] == "success" and direct["output"]
    session = await api.call("POST", f"/api/v1/agents/{agent['agent_id']}/sessions", expect=201, json={})
    turns = []
    for text in ("Hello, I want to travel in May", "My budget is 500 euros", "Which day is cheapest?"):
        response = await api.client.post(f"/api/v1/sessions/{session['session_id']}/messages",
                                         json={"content": text},
                                         headers={"Accept": "text/event-stream"}, timeout=300)
        assert response.status_code == 201  # a session turn, as its JSON form
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-accel-buffering"] == "no"
        events = sse_events(response.text)
        names = [event for event, _ in events]
        assert names[-1] == "done" and set(names[:-1]) == {"delta"}, names
        turn = events[-1][1]
        assert "".join(data["text"] for _, data in events[:-1]) == turn["assistant_message"]["content"]
        turns.append(turn["invocation"])
    history = await api.call("GET", f"/api/v1/sessions/{session['session_id']}/messages")
    assert [m["role"] for m in history["items"]] == ["user", "assistant"] * 3

    invocations = (await api.call("GET", f"/api/v1/agents/{agent['agent_id']}/invocations"))["items"]
    assert len(invocations) == 4
    for invocation in invocations:
        assert invocation["status"] == "success" and invocation["model"] == model_server.model
        assert invocation["input_tokens"] > 0 and invocation["output_tokens"] > 0
        assert invocation["tokens_estimated"] is False
        assert invocation["time_to_first_token_ms"] > 0 and invocation["finish_reason"]
    # The second turn sent the first (the third may have dropped it: the history has a token
    # budget, and the trace says what it kept).
    by_id = {i["invocation_id"]: i for i in invocations}
    prompts = [by_id[turn["invocation_id"]]["input_tokens"] for turn in turns]
    assert prompts[0] < prompts[1]
    assert [by_id[turn["invocation_id"]]["trace"][0]["messages"] for turn in turns][:2] == [0, 2]

    used_input = sum(i["input_tokens"] for i in invocations)
    used_output = sum(i["output_tokens"] for i in invocations)
    stats = (await api.call("GET", f"/api/v1/agents/{agent['agent_id']}"))["runtime_stats"]
    assert (stats["total_input_tokens"], stats["total_output_tokens"]) == (used_input, used_output)
    assert stats["avg_time_to_first_token_ms"] > 0
    overview = await api.call("GET", "/api/v1/statistics/overview")
    assert overview["tokens"]["invocations"]["input_total"] == used_input
    assert overview["tokens"]["invocations"]["output_total"] == used_output
    assert overview["tokens"]["builds"]["input_total"] == input_tokens
    assert overview["tokens"]["builds"]["output_total"] == output_tokens
    [today] = (await api.call("GET", "/api/v1/statistics/invocations"))[-1:]
    assert (today["input_tokens"], today["output_tokens"]) == (used_input, used_output)
    assert metric("model_tokens_total", **invoke_labels, type="input") - tokens_before["input"] == used_input
    assert metric("model_tokens_total", **invoke_labels, type="output") - tokens_before["output"] == used_output
    exposition = (await api.client.get("/metrics")).text
    assert 'model_time_to_first_token_seconds_count{model="%s",operation="invoke",provider="openai"}' % (
        model_server.model) in exposition


async def test_stop_aborts_the_build_s_model_request_at_once(api: Api, model_server: ModelServer) -> None:
    project = await api.create_project(REQUIREMENT)

    async def generating() -> bool:
        building = (await api.project(project["project_id"]))["status"] == "building"
        return building and await slots_busy(model_server) > 0

    await wait_for(generating, timeout=60, what="the build's first model request")
    open_at_stop = await asyncio.to_thread(model_server.open_connections)
    stopped = await api.call("PUT", f"/api/v1/projects/{project['project_id']}/control",
                             json={"action": "stop"})
    assert stopped["status"] == "stopped"

    async def aborted() -> bool:
        # The request's connection is closed (a kept-alive idle one, the health probe's, may stay)
        # and the server stopped generating.
        still_open = await asyncio.to_thread(model_server.open_connections)
        return len(still_open & open_at_stop) < len(open_at_stop) and await slots_busy(model_server) == 0

    # Within a second: the engine cancels the run, and the SDK closes its request with it.
    await wait_for(aborted, timeout=1.0, interval=0.05, what="the model request to be aborted")
    build = (await api.project(project["project_id"]))["latest_build"]
    assert build["status"] == "cancelled"
