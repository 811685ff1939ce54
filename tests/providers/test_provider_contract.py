"""The contract every ModelProvider keeps, checked against each of them: the offline provider,
the OpenAI-compatible one against the scripted Chat Completions server and the Bedrock one
against the Bedrock double (dummy credentials, never AWS). Each is the real provider class
over real loopback HTTP; what differs between them is only how a test sees their endpoint."""

import abc
import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr

from api.providers.base import Message, ModelProvider, ModelReply, ModelRequest, TextDelta, Usage
from api.providers.bedrock import BedrockProvider
from api.providers.client import ModelCall, ModelClient, StreamProgress
from api.providers.offline import OfflineProvider
from api.providers.openai_compatible import OpenAICompatibleProvider
from api.providers.tokens import estimate_prompt_tokens, estimate_tokens
from tests.providers import bedrock_double
from tests.providers.bedrock_double import BedrockDouble, delta, serving, use_dummy_aws_credentials
from tests.providers.scripted_openai import DEFAULT_MODEL, Answer, ScriptedOpenAI

# What the offline provider's "invoke" answer is written from; the network providers get the
# same request and ignore `inputs`.
AGENT = {"agent_name": "support_triage_agent", "category": "customer_support",
         "tools": [{"name": "lookup_order", "description": "Fetch an order by id",
                    "parameters": [{"name": "order_id", "type": "str", "required": True}]},
                   {"name": "create_ticket", "description": "Open a support ticket",
                    "parameters": [{"name": "subject", "type": "str", "required": True}]}]}
INPUT_TEXT = "Where is my order 1234?"
HISTORY = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi, how can I help?"}]
# Bedrock's default answers (the scripted server's are its Answer(): "ok", 12 and 5 tokens).
BEDROCK_TEXT = "Your order ships tomorrow"
BEDROCK_USAGE = Usage(input_tokens=21, output_tokens=6)
OPENAI_USAGE = Usage(input_tokens=12, output_tokens=5)
# A stream that keeps going for ~10 s after its first delta unless its client leaves.
LONG_TEXT = "word " * 200
# The offline provider's thinking time when a test needs its stream to wait.
OFFLINE_STALL_SECONDS = 30.0


def invoke_request(model: str) -> ModelRequest:
    messages = (Message("system", "You are support_triage_agent."),
                *(Message(turn["role"], turn["content"]) for turn in HISTORY),  # type: ignore[arg-type]
                Message("user", INPUT_TEXT))
    return ModelRequest(operation="invoke", model=model, messages=messages, max_output_tokens=128,
                        purpose="invoke",
                        inputs={"agent": AGENT, "input_text": INPUT_TEXT, "history": HISTORY})


async def eventually(check: Callable[[], Any], *, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)
    return result


class Subject(abc.ABC):
    """One provider under the contract, and how a test sees what it left behind."""

    name: str
    provider: ModelProvider
    model: str
    endpoint: str | None
    # What the endpoint reports for `complete` and `stream`; None: nothing, ModelClient counts.
    complete_usage: Usage | None
    stream_usage: Usage | None

    def hold_next_stream(self) -> None:
        """The next stream has more to say after its first delta: only its consumer ends it."""

    def stall_next_stream(self) -> None:
        """The next stream is still under way whenever its consumer is cancelled."""
        self.hold_next_stream()

    @abc.abstractmethod
    async def wait_in_flight(self, progress: StreamProgress) -> None:
        """Until the stream that `progress` follows is under way."""

    @abc.abstractmethod
    async def assert_released(self, since: float) -> None:
        """The last stream, left at `since` (time.monotonic()), holds nothing any more."""


class OfflineSubject(Subject):
    name = "offline"
    model = "offline"
    endpoint = None
    complete_usage = stream_usage = None

    def __init__(self) -> None:
        self.provider = OfflineProvider(stage_delay_seconds=0.01)

    def stall_next_stream(self) -> None:
        # Its deltas come all at once after the thinking time: a consumer is cancelled during it.
        self.provider.stage_delay_seconds = OFFLINE_STALL_SECONDS

    async def wait_in_flight(self, progress: StreamProgress) -> None:
        # Nothing of the call is observable from outside: one turn of the loop takes the
        # consuming task into the provider's delay (the cancelled-call metric proves it).
        await asyncio.sleep(0)

    async def assert_released(self, since: float) -> None:
        assert asyncio.all_tasks() == {asyncio.current_task()}


class OpenAISubject(Subject):
    name = "openai"
    model = DEFAULT_MODEL
    complete_usage = stream_usage = OPENAI_USAGE

    def __init__(self, server: ScriptedOpenAI) -> None:
        self.server = server
        self.endpoint = server.url
        self.provider = OpenAICompatibleProvider(base_url=server.url, api_key=SecretStr("sk-contract"),
                                                 timeout_seconds=5, max_retries=0)

    def hold_next_stream(self) -> None:
        self.server.script(Answer(LONG_TEXT, chunk_chars=5, chunk_delay=0.05))

    async def wait_in_flight(self, progress: StreamProgress) -> None:
        await eventually(lambda: progress.text, timeout=5, what="the first delta")

    async def assert_released(self, since: float) -> None:
        request = await eventually(lambda: (r := self.server.requests[-1]).ended_at is not None and r,
                                   timeout=1, what="the server to see the request end")
        assert request.disconnected
        assert request.ended_at - since < 1.0
        await eventually(lambda: self.server.open_connections == 0, timeout=1,
                         what="the connection closed")


class BedrockSubject(Subject):
    name = "bedrock"
    model = bedrock_double.MODEL
    complete_usage = stream_usage = BEDROCK_USAGE

    def __init__(self, double: BedrockDouble) -> None:
        self.double = double
        self.endpoint = double.url
        double.default = double.like_bedrock(BEDROCK_TEXT, input_tokens=BEDROCK_USAGE.input_tokens,
                                             output_tokens=BEDROCK_USAGE.output_tokens)
        self.provider = BedrockProvider(self.model, None, 5.0, 0, endpoint_url=double.url)

    def hold_next_stream(self) -> None:
        self.double.answers.append(self.double.stream(delta("Your "), hold=True))

    async def wait_in_flight(self, progress: StreamProgress) -> None:
        await eventually(lambda: progress.text, timeout=5, what="the first delta")

    async def assert_released(self, since: float) -> None:
        await asyncio.wait_for(self.double.disconnected.wait(), 1.0)
        assert time.monotonic() - since < 1.5


@pytest.fixture(params=["offline", "openai", "bedrock"])
async def subject(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
                  tmp_path: Path) -> AsyncIterator[Subject]:
    made: Subject
    if request.param == "offline":
        made = OfflineSubject()
        yield made
    elif request.param == "openai":
        with ScriptedOpenAI() as server:
            made = OpenAISubject(server)
            yield made
            await made.provider.close()
    else:
        use_dummy_aws_credentials(monkeypatch, tmp_path)
        async with serving(BedrockDouble()) as double:
            made = BedrockSubject(double)
            yield made
            await made.provider.close()


def client_for(subject: Subject) -> ModelClient:
    return ModelClient(subject.provider, max_concurrency=2, timeout_seconds=5, max_retries=0)


def expected_usage(subject: Subject, reported: Usage | None, text: str) -> Usage:
    if reported is not None:
        return reported
    return Usage(input_tokens=estimate_prompt_tokens(invoke_request(subject.model).messages),
                 output_tokens=estimate_tokens(text), estimated=True)


def cancelled_calls(subject: Subject) -> float:
    return REGISTRY.get_sample_value("model_requests_total", {
        "provider": subject.provider.name, "model": subject.model, "operation": "invoke",
        "outcome": "cancelled"}) or 0.0


# -- the provider itself -----------------------------------------------------------------------
async def test_complete_returns_a_whole_reply(subject: Subject) -> None:
    reply = await subject.provider.complete(invoke_request(subject.model))

    assert isinstance(reply, ModelReply)
    assert reply.text.strip()
    assert isinstance(reply.finish_reason, str) and reply.finish_reason
    assert isinstance(reply.model, str) and reply.model


async def test_stream_yields_deltas_then_exactly_one_reply_of_their_text(subject: Subject) -> None:
    events = [event async for event in subject.provider.stream(invoke_request(subject.model))]

    *deltas, reply = events
    assert deltas and all(isinstance(event, TextDelta) for event in deltas)
    assert isinstance(reply, ModelReply)
    assert "".join(event.text for event in deltas) == reply.text
    assert reply.text.strip() and reply.finish_reason and reply.model


async def test_list_models_is_a_non_empty_list_of_names(subject: Subject) -> None:
    models = await subject.provider.list_models()

    assert models and all(isinstance(model, str) and model for model in models)


async def test_name_and_endpoint_say_where_calls_go(subject: Subject) -> None:
    assert subject.provider.name in ("offline", "openai", "bedrock")
    assert subject.provider.name == subject.name
    assert subject.provider.endpoint == subject.endpoint


async def test_close_twice_is_harmless(subject: Subject) -> None:
    await subject.provider.close()
    await subject.provider.close()


# -- through ModelClient -----------------------------------------------------------------------
async def test_a_completed_call_has_its_usage_and_duration(subject: Subject) -> None:
    call = await client_for(subject).complete(invoke_request(subject.model))

    assert call.text.strip()
    assert call.usage == expected_usage(subject, subject.complete_usage, call.text)
    assert call.usage.input_tokens > 0 and call.usage.output_tokens > 0
    assert call.duration_ms > 0


async def test_a_streamed_call_has_its_usage_duration_and_time_to_first_token(subject: Subject) -> None:
    request = invoke_request(subject.model)
    events = [event async for event in client_for(subject).stream(request, StreamProgress(request))]

    *deltas, call = events
    assert deltas and all(isinstance(event, TextDelta) for event in deltas)
    assert isinstance(call, ModelCall)
    assert "".join(event.text for event in deltas) == call.text
    assert call.usage == expected_usage(subject, subject.stream_usage, call.text)
    assert call.usage.input_tokens > 0 and call.usage.output_tokens > 0
    assert call.time_to_first_token_ms is not None
    assert 0 < call.time_to_first_token_ms <= call.duration_ms


# -- leaving a stream early --------------------------------------------------------------------
@pytest.mark.parametrize("through", ["provider", "client"])
async def test_a_stream_closed_after_its_first_delta_leaves_nothing_running(
        subject: Subject, through: str) -> None:
    subject.hold_next_stream()
    request = invoke_request(subject.model)
    events: Any = (subject.provider.stream(request) if through == "provider"
                   else client_for(subject).stream(request, StreamProgress(request)))

    assert isinstance(await anext(events), TextDelta)
    closed_at = time.monotonic()
    await events.aclose()

    await subject.assert_released(closed_at)


async def test_a_stream_whose_consumer_is_cancelled_leaves_nothing_running(subject: Subject) -> None:
    subject.stall_next_stream()
    request = invoke_request(subject.model)
    progress = StreamProgress(request)
    client = client_for(subject)
    before = cancelled_calls(subject)

    async def consume() -> None:
        async for _ in client.stream(request, progress):
            pass

    task = asyncio.create_task(consume())
    await subject.wait_in_flight(progress)
    cancelled_at = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    await subject.assert_released(cancelled_at)
    # ModelClient saw the call cancelled in flight, not a task cancelled before it began.
    assert cancelled_calls(subject) == before + 1
