"""The whole platform against a model endpoint that misbehaves on cue: MODEL_PROVIDER=openai
pointed at the scripted OpenAI server, so the real factory, provider, SDK retries, ModelClient,
stage checks and stores all run. Each build request is answered by stage (told by its system
prompt): a behaviour scripted for that stage if any, else the offline provider's valid answer
with that stage's own usage. SQLite only (the `settings` fixture below)."""

import ast
import json
import re
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api import prompts
from api.config import Settings
from api.engine.stage_work import tool_signature
from api.engine.stages import STAGE_NAMES
from api.providers.offline import OfflineProvider, design_for
from tests.conftest import OTHER_REQUIREMENT, REQUIREMENT, Api, ServerProcess, make_settings, wait_for
from tests.providers.scripted_openai import (
    MALFORMED_JSON,
    Answer,
    CutStream,
    Hang,
    ReceivedRequest,
    Respond,
    ScriptedOpenAI,
    Served,
    rate_limited,
    schema_refusal,
    server_error,
)

MODEL = "scripted-model"
# The steps that ask the model, in build order (agent_developer_manager asks through its subs).
MODEL_STAGES = ("orchestrator", "requirements_analysis", "system_architecture", "agent_design",
                "tool_developer", "prompt_engineer", "agent_code_developer", "agent_deployer")
STAGE_OF_SYSTEM_PROMPT = {prompts.load(stage).system: stage for stage in MODEL_STAGES}
# A usage of its own per stage: a count summed from the wrong stage's calls cannot match.
USAGE = {stage: (100 + 10 * n, 20 + n) for n, stage in enumerate(MODEL_STAGES)}
# A design that parses but breaks the schema (an agent needs at least one tool).
NO_TOOLS = json.dumps({"agent_name": "triage_agent", "description": "Triages tickets.",
                       "category": "customer_support", "capabilities": ["ticket_triage"], "tools": []})
UNCOMPILABLE = "```python\ndef search_knowledge_base(query: str -> dict[str, Any]:\n    return {}\n```\n"


def stage_of(body: dict[str, Any] | None) -> str | None:
    messages = (body or {}).get("messages") or [{}]
    return STAGE_OF_SYSTEM_PROMPT.get(messages[0].get("content", ""))


class Stages:
    """Answers build requests by stage: `queued[stage]` first, then `always[stage]`, else the
    offline provider's valid answer. A str is an answer's text, with the stage's usage."""

    def __init__(self) -> None:
        self.queued: dict[str, deque[Served | str]] = defaultdict(deque)
        self.always: dict[str, Served | str] = {}
        # agent_name -> requirement: later stages' prompts name the agent, not the requirement.
        self._requirements: dict[str, str] = {}

    def __call__(self, body: dict[str, Any]) -> Served:
        stage = stage_of(body)
        if stage is None:  # an invocation nobody scripted
            return Answer("Hello from the scripted model.")
        queued = self.queued[stage]
        behaviour = queued.popleft() if queued else self.always.get(stage) or self._valid(stage, body)
        return Answer(behaviour, usage=USAGE[stage]) if isinstance(behaviour, str) else behaviour

    def _valid(self, stage: str, body: dict[str, Any]) -> str:
        prompt = body["messages"][1]["content"]  # the stage's prompt, before any repair round
        inputs: dict[str, Any]
        if found := re.match(r"Requirement:\n(.*?)\n\n", prompt, re.S):
            inputs = {"requirement": found.group(1)}
            self._requirements[design_for(found.group(1))["agent_name"]] = found.group(1)
        else:
            agent_name = prompt.removeprefix("Agent: ").split(maxsplit=1)[0]
            design = design_for(self._requirements[agent_name])
            del design["keywords"]  # as the agent_design answer has it
            inputs = {"design": design}
            if stage == "tool_developer":
                tool = next(t for t in design["tools"] if f"`{t['name']}`" in prompt)
                inputs |= {"tool": tool, "signature": tool_signature(tool)}
        answer: Callable[[dict[str, Any]], str] = getattr(OfflineProvider, f"_{stage}")
        return answer(inputs)


@pytest.fixture
def stages() -> Stages:
    return Stages()


@pytest.fixture
def scripted(stages: Stages) -> Iterator[ScriptedOpenAI]:
    with ScriptedOpenAI(default=Respond(stages)) as server:
        yield server


@pytest.fixture
def settings_overrides(scripted: ScriptedOpenAI) -> dict[str, Any]:
    return {"model_provider": "openai", "openai_base_url": scripted.url, "model_name": MODEL,
            "model_timeout_seconds": 1, "model_max_retries": 1, "max_concurrent_builds": 1}


@pytest.fixture
def settings(tmp_path: Path, settings_overrides: dict[str, Any]) -> Settings:
    """conftest's, without `storage_backend`: tests/e2e parametrizes every test that reaches
    it, even through other fixtures, over every backend, and these run on SQLite only."""
    return make_settings(tmp_path, **settings_overrides)


def asked(server: ScriptedOpenAI, stage: str) -> list[ReceivedRequest]:
    return [request for request in server.requests if stage_of(request.body) == stage]


def last_user_message(request: ReceivedRequest) -> str:
    assert request.body is not None
    message = request.body["messages"][-1]
    assert message["role"] == "user"
    return str(message["content"])


async def finished(api: Api, status: str) -> dict[str, Any]:
    """A new project's build, once it completed or failed (which must be `status`)."""
    created = await api.create_project(REQUIREMENT)
    project = await api.wait_status(created["project_id"], "completed", "failed", timeout=20)
    assert project["status"] == status, project["latest_build"]["error"]
    return project


async def steps(api: Api, project_id: str) -> dict[str, dict[str, Any]]:
    """Every stage and sub-stage record by name, as GET /stages/{name} answers them."""
    found: dict[str, dict[str, Any]] = {}
    for name in STAGE_NAMES:
        stage = await api.call("GET", f"/api/v1/projects/{project_id}/stages/{name}")
        found |= {name: stage} | {sub["name"]: sub for sub in stage["sub_stages"]}
    return found


def sse(text: str) -> list[tuple[str, Any]]:
    """(event, data) of every frame; comments (heartbeats) left out."""
    frames = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        if fields:
            frames.append((fields["event"], json.loads(fields["data"])))
    return frames


def expected_usage(server: ScriptedOpenAI, stage: str) -> dict[str, Any]:
    calls = len(asked(server, stage))
    prompt, completion = USAGE[stage]
    return {"model": MODEL, "calls": calls, "input_tokens": calls * prompt,
            "output_tokens": calls * completion, "tokens_estimated": False, "prompt_version": "v1"}


def usage_of(step: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in step["model_usage"].items() if key != "duration_ms"}


async def test_a_build_counts_each_stages_calls_and_exact_tokens(api: Api, scripted: ScriptedOpenAI) -> None:
    project = await finished(api, "completed")
    records = await steps(api, project["project_id"])
    for stage in MODEL_STAGES:
        assert usage_of(records[stage]) == expected_usage(scripted, stage), stage
        assert records[stage]["model_usage"]["calls"] >= 1
        assert records[stage]["model_usage"]["duration_ms"] > 0
    assert records["tool_developer"]["model_usage"]["calls"] == len(design_for(REQUIREMENT)["tools"])
    total = project["latest_build"]["usage"]
    for key in ("calls", "input_tokens", "output_tokens"):
        assert total[key] == sum(records[stage]["model_usage"][key] for stage in MODEL_STAGES)
    assert total["calls"] == len(scripted.requests) and total["tokens_estimated"] is False
    builds = await api.call("GET", f"/api/v1/projects/{project['project_id']}/builds")
    assert builds["items"][0]["usage"] == total
    # What went over the wire: the configured model, a strict schema named after the stage's
    # prompt for the structured answers, none for code and prose.
    for request in scripted.requests:
        assert request.body is not None and request.body["model"] == MODEL
        schema = request.body.get("response_format")
        if stage_of(request.body) in ("tool_developer", "prompt_engineer", "agent_code_developer"):
            assert schema is None
        else:
            assert schema["type"] == "json_schema" and schema["json_schema"]["strict"] is True
            assert schema["json_schema"]["name"] == stage_of(request.body)


async def test_a_429_is_retried_after_its_retry_after_and_the_build_completes(
        api: Api, scripted: ScriptedOpenAI, stages: Stages) -> None:
    stages.queued["system_architecture"].append(rate_limited(retry_after=1))
    project = await finished(api, "completed")
    limited, retried = asked(scripted, "system_architecture")
    assert getattr(limited.behaviour, "status", None) == 429
    assert retried.received_at - limited.received_at >= 1.0
    # The SDK retried inside one call: the stage counts one call, with the answer's tokens.
    records = await steps(api, project["project_id"])
    assert usage_of(records["system_architecture"])["calls"] == 1


async def test_a_persistent_500_fails_the_build_with_model_error_after_every_retry(
        api: Api, scripted: ScriptedOpenAI, stages: Stages) -> None:
    stages.always["requirements_analysis"] = server_error(500)
    project = await finished(api, "failed")
    error = project["latest_build"]["error"]
    assert error["stage"] == "requirements_analysis" and error["code"] == "MODEL_ERROR"
    assert "HTTP 500" in error["message"] and "The server had an error" in error["message"]
    assert len(asked(scripted, "requirements_analysis")) == 1 + 1  # 1 + MODEL_MAX_RETRIES
    assert asked(scripted, "system_architecture") == []
    stage = (await steps(api, project["project_id"]))["requirements_analysis"]
    assert stage["status"] == "failed"
    assert stage["error"] == {"code": "MODEL_ERROR", "message": error["message"]}
    assert stage["model_usage"]["calls"] == 0


async def test_a_hang_times_out_frees_the_slot_and_closes_the_connection(
        api: Api, scripted: ScriptedOpenAI, stages: Stages) -> None:
    stages.queued["agent_design"].extend([Hang(), Hang()])  # the first attempt and its retry
    hung = await api.create_project(REQUIREMENT)

    async def hanging() -> list[ReceivedRequest]:
        return asked(scripted, "agent_design")
    await wait_for(hanging, timeout=10, what="the hung request")
    started = time.monotonic()
    waiting = await api.create_project(OTHER_REQUIREMENT)
    failed = await api.wait_status(hung["project_id"], "completed", "failed", timeout=15)
    # Two attempts of MODEL_TIMEOUT_SECONDS=1 and one backoff of under a second.
    assert time.monotonic() - started < 6
    assert failed["status"] == "failed"
    assert failed["latest_build"]["error"]["code"] == "MODEL_TIMEOUT"
    assert failed["latest_build"]["error"]["stage"] == "agent_design"
    attempts = [r for r in asked(scripted, "agent_design") if isinstance(r.behaviour, Hang)]
    assert len(attempts) == 2
    for attempt in attempts:
        assert attempt.disconnected and attempt.ended_at is not None
        assert attempt.ended_at - attempt.received_at < 2
    # MAX_CONCURRENT_BUILDS=1: the second build ran only once the hung one let its slot go.
    done = await api.wait_status(waiting["project_id"], "completed", "failed", timeout=20)
    assert done["status"] == "completed"
    assert done["latest_build"]["started_at"] >= failed["latest_build"]["finished_at"]


async def test_invalid_answers_are_repaired_with_the_validation_error(
        api: Api, scripted: ScriptedOpenAI, stages: Stages) -> None:
    stages.queued["agent_design"].extend([MALFORMED_JSON, NO_TOOLS])
    project = await finished(api, "completed")
    first, second, third = asked(scripted, "agent_design")
    assert first.body and second.body and third.body
    assert "That answer is not valid" in last_user_message(second)
    assert "Invalid JSON" in last_user_message(second)
    assert second.body["messages"][-2] == {"role": "assistant", "content": MALFORMED_JSON}
    assert "tools: List should have at least 1 item" in last_user_message(third)
    # Only the repair rounds carry a presence penalty (to move a small model off a loop).
    assert "presence_penalty" not in first.body
    assert second.body["presence_penalty"] == third.body["presence_penalty"] == 0.5
    # Each round adds the rejected answer and the error to the same conversation.
    assert len(third.body["messages"]) == len(first.body["messages"]) + 4
    records = await steps(api, project["project_id"])
    assert usage_of(records["agent_design"]) == expected_usage(scripted, "agent_design")
    assert records["agent_design"]["model_usage"]["calls"] == 3


async def test_an_answer_cut_off_at_the_limit_is_asked_again_afresh_with_a_penalty(
        api: Api, scripted: ScriptedOpenAI, stages: Stages) -> None:
    looping = "```python\ndef search_knowledge_base(query: str) -> dict[str, Any]:\n    return {'" + "Result." * 80
    stages.queued["tool_developer"].append(Answer(looping, usage=(40, 700), finish_reason="length"))
    await finished(api, "completed")
    cut, again, *_ = asked(scripted, "tool_developer")
    assert cut.body and again.body
    # Not shown its own loop (a small model continues it): the same question, with the penalty.
    assert again.body["messages"] == cut.body["messages"]
    assert "presence_penalty" not in cut.body and again.body["presence_penalty"] == 0.5


async def test_always_invalid_json_fails_with_model_output_invalid(
        api: Api, scripted: ScriptedOpenAI, stages: Stages) -> None:
    stages.always["agent_design"] = MALFORMED_JSON
    project = await finished(api, "failed")
    error = project["latest_build"]["error"]
    assert error["code"] == "MODEL_OUTPUT_INVALID" and error["stage"] == "agent_design"
    assert "still invalid after 2 repair rounds" in error["message"] and "Invalid JSON" in error["message"]
    assert len(asked(scripted, "agent_design")) == 3
    # The spent tokens stay on the failed stage and the build.
    records = await steps(api, project["project_id"])
    assert usage_of(records["agent_design"]) == expected_usage(scripted, "agent_design")
    assert project["latest_build"]["usage"]["calls"] == len(scripted.requests)


async def test_code_that_never_compiles_fails_with_generated_code_invalid(
        api: Api, scripted: ScriptedOpenAI, stages: Stages) -> None:
    stages.always["tool_developer"] = UNCOMPILABLE
    project = await finished(api, "failed")
    error = project["latest_build"]["error"]
    assert error["code"] == "GENERATED_CODE_INVALID" and error["stage"] == "agent_developer_manager"
    with pytest.raises(SyntaxError) as syntax:
        ast.parse(UNCOMPILABLE.split("\n", 1)[1].rsplit("```", 1)[0])
    compile_error = f"tools/search_knowledge_base.py line {syntax.value.lineno}: {syntax.value.msg}"
    attempts = asked(scripted, "tool_developer")
    assert len(attempts) == 3  # the first tool's ask and its 2 repair rounds; no other tool asked
    assert all(compile_error in last_user_message(repair) for repair in attempts[1:])
    assert compile_error in error["message"]
    records = await steps(api, project["project_id"])
    assert records["tool_developer"]["status"] == "failed"
    assert records["agent_developer_manager"]["error"]["code"] == "GENERATED_CODE_INVALID"


async def test_a_refused_json_schema_is_asked_in_the_prompt_from_then_on(
        api: Api, scripted: ScriptedOpenAI, stages: Stages) -> None:
    stages.queued["orchestrator"].append(schema_refusal())
    await finished(api, "completed")
    refused, *later = scripted.requests
    assert refused.body is not None and refused.body["response_format"]["type"] == "json_schema"
    assert getattr(refused.behaviour, "status", None) == 400
    assert [stage_of(request.body) for request in later[:2]] == ["orchestrator", "requirements_analysis"]
    assert all("response_format" not in (request.body or {}) for request in later)


async def invoke_stream(api: Api, agent_id: str, behaviour: Served, server: ScriptedOpenAI) -> httpx.Response:
    server.script(behaviour)
    response = await api.client.post(f"/api/v1/agents/{agent_id}/invoke",
                                     json={"input_text": "Where is my refund for order 7?", "stream": True})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache" and response.headers["x-accel-buffering"] == "no"
    return response


async def test_streamed_invocations_carry_the_endpoints_usage_or_an_estimate_or_the_error(
        api: Api, scripted: ScriptedOpenAI) -> None:
    agent = await api.built_agent()
    text = "Your refund for order 7 was sent on Monday."
    frames = sse((await invoke_stream(api, agent["agent_id"], Answer(text, usage=(31, 9)), scripted)).text)
    assert [event for event, _ in frames] == ["delta"] * (len(frames) - 1) + ["done"]
    assert len(frames) > 2 and "".join(data["text"] for _, data in frames[:-1]) == text
    done = frames[-1][1]
    assert (done["status"], done["output"]) == ("success", text)
    assert (done["input_tokens"], done["output_tokens"]) == (31, 9)
    assert done["tokens_estimated"] is False and done["time_to_first_token_ms"] > 0
    assert (scripted.requests[-1].body or {})["stream_options"] == {"include_usage": True}

    frames = sse((await invoke_stream(api, agent["agent_id"], Answer(text, usage=None), scripted)).text)
    estimated = frames[-1][1]
    assert frames[-1][0] == "done" and estimated["tokens_estimated"] is True
    assert estimated["input_tokens"] > 0 and estimated["output_tokens"] > 0

    frames = sse((await invoke_stream(api, agent["agent_id"], CutStream(chunks=2), scripted)).text)
    assert [event for event, _ in frames] == ["delta", "delta", "error"]
    envelope = frames[-1][1]
    assert envelope["success"] is False and envelope["error"]["code"] == "AGENT_INVOCATION_FAILED"
    assert envelope["error"]["details"]["model_error"] == "MODEL_ERROR"
    invocations = await api.call("GET", f"/api/v1/agents/{agent['agent_id']}/invocations")
    failed = next(i for i in invocations["items"]
                  if i["invocation_id"] == envelope["error"]["details"]["invocation_id"])
    assert failed["status"] == "failed" and "cut off" in failed["error"]
    assert [i["status"] for i in invocations["items"]].count("success") == 2


async def test_a_client_leaving_a_stream_closes_the_model_request_and_records_cancelled(
        scripted: ScriptedOpenAI, server_factory: Callable[..., ServerProcess]) -> None:
    # A real server: in process, ASGITransport hands over the whole body, so a client cannot
    # leave mid-stream.
    server = server_factory(MODEL_PROVIDER="openai", OPENAI_BASE_URL=scripted.url, MODEL_NAME=MODEL,
                            MODEL_TIMEOUT_SECONDS="5", MODEL_MAX_RETRIES="1")
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        api = Api(client)
        agent = await api.built_agent()
        text = " ".join(f"word{n}" for n in range(200))
        scripted.script(Answer(text, chunk_chars=5, chunk_delay=0.05))  # about 10 s of stream
        async with client.stream("POST", f"/api/v1/agents/{agent['agent_id']}/invoke",
                                 json={"input_text": "Tell me a long story", "stream": True}) as response:
            lines = response.aiter_lines()
            while not (await anext(lines)).startswith("event: delta"):
                pass
        left = time.monotonic()
        streamed = scripted.requests[-1]
        assert streamed.streamed and stage_of(streamed.body) is None

        async def closed() -> bool:
            return streamed.ended_at is not None
        await wait_for(closed, timeout=3, what="the model request to be closed")
        assert streamed.disconnected and streamed.ended_at is not None and streamed.ended_at - left < 1

        async def cancelled() -> dict[str, Any] | None:
            page = await api.call("GET", f"/api/v1/agents/{agent['agent_id']}/invocations")
            return next((i for i in page["items"] if i["status"] == "cancelled"), None)
        invocation = await wait_for(cancelled, timeout=5, what="the invocation to be recorded cancelled")
    assert invocation["output_tokens"] > 0 and invocation["tokens_estimated"] is True
    assert invocation["output"] and text.startswith(invocation["output"])
    assert invocation["time_to_first_token_ms"] > 0
