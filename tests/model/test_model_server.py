"""The platform's OpenAI-compatible provider against a real model server (llama-server with
SmolLM2-135M-Instruct, tests/model/conftest.py): usage, structured output, streaming and
cancellation as the engine relies on them. Temperature 0 throughout; the assertions are about
structure, never wording (a 135M model's wording is not a contract)."""

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Literal

import httpx
import pytest
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from api.providers.base import Message, ModelRequest, OutputSchema, TextDelta
from api.providers.client import ModelCall, ModelClient, StreamProgress
from api.providers.openai_compatible import OpenAICompatibleProvider
from tests.conftest import wait_for
from tests.model.conftest import ModelServer, slots_busy

TIMEOUT_SECONDS = 30.0
# How soon a cancelled stream's connection must be closed at the server, and its slot freed.
CANCEL_SECONDS = 1.0
LONG_ANSWER = "Count from 1 to 500, one number per line."


class Ticket(BaseModel):
    """The structured answer: every string and array bounded, so a small model's constrained
    output cannot run on until max_tokens."""

    model_config = ConfigDict(extra="forbid")
    summary: Annotated[str, StringConstraints(max_length=80)]
    priority: Literal["low", "medium", "high"]
    tags: list[Annotated[str, StringConstraints(max_length=20)]] = Field(max_length=3)


@pytest.fixture
async def model_client(model_server: ModelServer) -> AsyncIterator[ModelClient]:
    # No retries: a failure here should show, not be retried away.
    provider = OpenAICompatibleProvider(base_url=model_server.base_url, api_key=None,
                                        timeout_seconds=TIMEOUT_SECONDS, max_retries=0)
    client = ModelClient(provider, max_concurrency=4, timeout_seconds=TIMEOUT_SECONDS, max_retries=0)
    yield client
    await client.close()


def request(server: ModelServer, prompt: str, *, max_output_tokens: int = 48,
            output_schema: OutputSchema | None = None) -> ModelRequest:
    return ModelRequest(operation="invoke", model=server.model, purpose="test",
                        messages=(Message("system", "You are a concise assistant."),
                                  Message("user", prompt)),
                        max_output_tokens=max_output_tokens, temperature=0.0,
                        output_schema=output_schema)


async def stream_all(client: ModelClient, model_request: ModelRequest) -> tuple[list[str], ModelCall]:
    deltas: list[str] = []
    calls: list[ModelCall] = []
    async for event in client.stream(model_request, StreamProgress(model_request)):
        if isinstance(event, TextDelta):
            assert not calls, "a delta after the final message"
            deltas.append(event.text)
        else:
            calls.append(event)
    assert len(calls) == 1
    return deltas, calls[0]


async def test_the_server_lists_its_model(model_server: ModelServer, model_client: ModelClient) -> None:
    assert model_server.model in await model_client.list_models()


async def test_a_completion_reports_the_servers_usage(model_server: ModelServer,
                                                      model_client: ModelClient) -> None:
    call = await model_client.complete(request(model_server, "Say hello in one short sentence."))

    assert call.text.strip()
    assert call.finish_reason in ("stop", "length")
    assert call.usage.estimated is False
    assert call.usage.input_tokens > 0 and 0 < call.usage.output_tokens <= 48
    assert call.time_to_first_token_ms is None  # not streamed


async def test_a_json_schema_answer_parses_and_validates(model_server: ModelServer,
                                                         model_client: ModelClient) -> None:
    schema = OutputSchema(name="ticket", schema=Ticket.model_json_schema())
    call = await model_client.complete(request(
        model_server, "Write a support ticket for a customer whose refund is two weeks late.",
        max_output_tokens=256, output_schema=schema))

    # "stop", not "length": the grammar closed the object before the token budget ran out.
    assert call.finish_reason == "stop", call.text
    ticket = Ticket.model_validate_json(call.text)
    assert ticket.summary.strip()


async def test_a_stream_sends_deltas_then_the_exact_usage(model_server: ModelServer,
                                                          model_client: ModelClient) -> None:
    prompt = "Name three colours."
    deltas, call = await stream_all(model_client, request(model_server, prompt))

    assert len(deltas) > 1 and "".join(deltas) == call.text
    assert call.usage.estimated is False
    # Every delta is at least one token; the prompt is counted as in a whole answer.
    assert len([delta for delta in deltas if delta]) <= call.usage.output_tokens <= 48
    whole = await model_client.complete(request(model_server, prompt))
    assert call.usage.input_tokens == whole.usage.input_tokens
    assert call.time_to_first_token_ms is not None
    assert 0 < call.time_to_first_token_ms < call.duration_ms


async def test_two_slots_answer_at_once(model_server: ModelServer, model_client: ModelClient) -> None:
    long_request = request(model_server, LONG_ANSWER, max_output_tokens=1000)
    progresses = [StreamProgress(long_request), StreamProgress(long_request)]

    async def consume(progress: StreamProgress) -> None:
        async for _ in model_client.stream(long_request, progress):
            pass

    tasks = [asyncio.create_task(consume(progress)) for progress in progresses]
    try:
        async def both_answering() -> bool:
            return all(progress.text for progress in progresses)

        await wait_for(both_answering, timeout=TIMEOUT_SECONDS, what="both streams to answer")
        assert not any(task.done() for task in tasks)
        assert await slots_busy(model_server) == 2
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_cancelling_a_stream_closes_its_connection_at_the_server(
        model_server: ModelServer, model_client: ModelClient) -> None:
    before = await asyncio.to_thread(model_server.open_connections)
    long_request = request(model_server, LONG_ANSWER, max_output_tokens=1000)
    progress = StreamProgress(long_request)

    async def consume() -> None:
        async for _ in model_client.stream(long_request, progress):
            pass

    task = asyncio.create_task(consume())

    async def answering() -> bool:
        return len(progress.text) > 10

    await wait_for(answering, timeout=TIMEOUT_SECONDS, what="the stream to answer")
    assert not task.done()
    streaming = await asyncio.to_thread(model_server.open_connections) - before
    assert streaming, "the stream's connection is not open at the server"

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    async def closed() -> bool:
        return not (streaming & await asyncio.to_thread(model_server.open_connections))

    async def idle() -> bool:
        return await slots_busy(model_server) == 0

    await wait_for(closed, timeout=CANCEL_SECONDS, what="the server to close the connection")
    await wait_for(idle, timeout=CANCEL_SECONDS, what="the server to stop generating")
