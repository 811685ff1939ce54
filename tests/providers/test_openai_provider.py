"""The OpenAI-compatible provider against a scripted server speaking the Chat Completions wire
format, directly and through ModelClient (deadline, metrics, log line, our token estimate)."""

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr

from api.providers.base import (
    Message,
    ModelError,
    ModelRateLimited,
    ModelReply,
    ModelRequest,
    ModelTimeout,
    OutputSchema,
    SchemaUnsupported,
    TextDelta,
    Usage,
)
from api.providers.client import ModelCall, ModelClient, StreamProgress
from api.providers.openai_compatible import OpenAICompatibleProvider
from tests.providers.scripted_openai import (
    MALFORMED_JSON,
    Answer,
    CutStream,
    Fail,
    Hang,
    ScriptedOpenAI,
    rate_limited,
    schema_refusal,
    server_error,
    stream_options_refusal,
)

T = TypeVar("T")
API_KEY = "sk-test-7f3c9e1a-never-log-me"
MODEL = "scripted-model"
SCHEMA = OutputSchema(name="agent_design", schema={
    "type": "object", "properties": {"agent_name": {"type": "string"}},
    "required": ["agent_name"], "additionalProperties": False})
LONG_TEXT = "word " * 200
MakeProvider = Callable[..., OpenAICompatibleProvider]


def model_request(*, schema: OutputSchema | None = None, temperature: float | None = None,
                  operation: str = "build") -> ModelRequest:
    return ModelRequest(
        operation=operation, model=MODEL, max_output_tokens=256, temperature=temperature,
        output_schema=schema, purpose="requirements_analysis",
        messages=(Message("system", "You analyse requirements."),
                  Message("user", "An agent that triages support tickets.")))


def client_for(provider: OpenAICompatibleProvider, *, timeout_seconds: float = 5.0,
               max_retries: int = 2) -> ModelClient:
    return ModelClient(provider, max_concurrency=4, timeout_seconds=timeout_seconds,
                       max_retries=max_retries)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, {"provider": "openai", "model": MODEL, **labels}) or 0.0


def calls(outcome: str, operation: str = "build") -> float:
    return sample("model_requests_total", operation=operation, outcome=outcome)


def tokens(kind: str, operation: str = "build") -> float:
    return sample("model_tokens_total", operation=operation, type=kind)


async def eventually(check: Callable[[], T | None], *, timeout: float = 5.0, what: str) -> T:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)
    return result


async def streamed(client: ModelClient, request: ModelRequest) -> tuple[list[str], ModelCall]:
    deltas: list[str] = []
    call: ModelCall | None = None
    async for event in client.stream(request, StreamProgress(request)):
        if isinstance(event, TextDelta):
            deltas.append(event.text)
        else:
            call = event
    assert call is not None
    return deltas, call


async def raises(error: type[ModelError], call: Awaitable[Any]) -> ModelError:
    with pytest.raises(error) as caught:
        await call
    return caught.value


@pytest.fixture
def server() -> Iterator[ScriptedOpenAI]:
    with ScriptedOpenAI() as scripted:
        yield scripted


@pytest.fixture
async def make_provider(server: ScriptedOpenAI) -> AsyncIterator[MakeProvider]:
    made: list[OpenAICompatibleProvider] = []

    def make(*, timeout_seconds: float = 5.0, max_retries: int = 2,
             base_url: str | None = None) -> OpenAICompatibleProvider:
        provider = OpenAICompatibleProvider(base_url=base_url or server.url, api_key=SecretStr(API_KEY),
                                            timeout_seconds=timeout_seconds, max_retries=max_retries)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.close()


async def test_a_completion_returns_the_text_and_the_endpoints_usage(
        server: ScriptedOpenAI, make_provider: MakeProvider) -> None:
    server.script(Answer("The requirement is clear.", usage=(31, 7)), Answer("again", usage=(31, 2)))
    provider = make_provider()
    before = calls("success"), tokens("input"), tokens("output")

    reply = await provider.complete(model_request(temperature=0.3))
    call = await client_for(provider).complete(model_request())

    assert reply == ModelReply(text="The requirement is clear.", finish_reason="stop", model=MODEL,
                               usage=Usage(input_tokens=31, output_tokens=7))
    assert (call.text, call.usage) == ("again", Usage(input_tokens=31, output_tokens=2, estimated=False))
    first, second = server.requests
    assert first.body is not None and second.body is not None
    assert first.body["model"] == MODEL and first.body["max_tokens"] == 256
    assert first.body["messages"] == [
        {"role": "system", "content": "You analyse requirements."},
        {"role": "user", "content": "An agent that triages support tickets."}]
    assert first.body["temperature"] == 0.3
    assert "temperature" not in second.body and "response_format" not in second.body
    # Only the ModelClient call is counted: the bare provider records nothing.
    assert (calls("success"), tokens("input"), tokens("output")) == (
        before[0] + 1, before[1] + 31, before[2] + 2)


async def test_an_output_schema_is_sent_as_a_strict_json_schema_response_format(
        server: ScriptedOpenAI, make_provider: MakeProvider) -> None:
    server.script(Answer('{"agent_name": "triage"}'))
    call = await client_for(make_provider()).complete(model_request(schema=SCHEMA))

    assert call.text == '{"agent_name": "triage"}'
    body = server.requests[0].body
    assert body is not None and body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "agent_design", "schema": dict(SCHEMA.schema), "strict": True}}


@pytest.mark.parametrize("style", ["llama.cpp", "vllm"])
async def test_a_refused_json_schema_is_asked_again_without_it_and_remembered(
        server: ScriptedOpenAI, make_provider: MakeProvider, style: Any) -> None:
    server.script(schema_refusal(style), Answer('{"agent_name": "a"}'), Answer('{"agent_name": "b"}'))
    provider = make_provider()
    client = client_for(provider)

    first = await client.complete(model_request(schema=SCHEMA))
    second = await client.complete(model_request(schema=SCHEMA))

    assert (first.text, second.text) == ('{"agent_name": "a"}', '{"agent_name": "b"}')
    bodies = [r.body or {} for r in server.requests]
    assert len(bodies) == 3
    assert "response_format" in bodies[0]
    # The refusal is a 400, which the SDK does not retry: the second request is ModelClient's.
    assert "response_format" not in bodies[1] and "response_format" not in bodies[2]


async def test_a_refusal_is_schema_unsupported_only_when_a_schema_was_sent(
        server: ScriptedOpenAI, make_provider: MakeProvider) -> None:
    server.script(schema_refusal(), schema_refusal())
    provider = make_provider()

    await raises(SchemaUnsupported, provider.complete(model_request(schema=SCHEMA)))
    error = await raises(ModelError, provider.complete(model_request()))

    assert not isinstance(error, SchemaUnsupported)
    assert "HTTP 400" in str(error) and 'must be one of "text" or "json_object"' in str(error)


async def test_a_429_is_retried_after_its_retry_after(
        server: ScriptedOpenAI, make_provider: MakeProvider) -> None:
    server.script(rate_limited(retry_after=1), Answer("after the wait"))
    call = await client_for(make_provider()).complete(model_request())

    assert call.text == "after the wait"
    first, second = server.requests
    assert second.received_at - first.received_at >= 0.95


async def test_a_persistent_429_is_rate_limited(server: ScriptedOpenAI, make_provider: MakeProvider) -> None:
    server.script(rate_limited(retry_after=0.1), rate_limited(retry_after=0.1))
    before = calls("rate_limited")

    error = await raises(ModelRateLimited, client_for(make_provider(max_retries=1), max_retries=1)
                         .complete(model_request()))

    assert "HTTP 429" in str(error) and "Rate limit reached" in str(error)
    assert len(server.requests) == 2
    assert calls("rate_limited") == before + 1


async def test_a_persistent_500_fails_after_every_retry(
        server: ScriptedOpenAI, make_provider: MakeProvider) -> None:
    server.script(server_error(), server_error(), server_error(), Answer("never asked"))
    before = calls("error")

    error = await raises(ModelError, client_for(make_provider(max_retries=2)).complete(model_request()))

    assert type(error) is ModelError
    assert "HTTP 500" in str(error) and "The server had an error" in str(error)
    assert len(server.requests) == 3 and server.pending == 1
    assert calls("error") == before + 1


async def test_an_endpoint_error_carries_its_status_and_message(
        server: ScriptedOpenAI, make_provider: MakeProvider) -> None:
    server.script(Fail(404, {"error": {"message": "The model `gpt-9` does not exist", "type": "invalid_request_error"}}))

    error = await raises(ModelError, make_provider().complete(model_request()))

    assert str(error) == "the model endpoint answered HTTP 404: The model `gpt-9` does not exist"
    assert len(server.requests) == 1


async def test_a_hang_times_out_after_each_attempt(server: ScriptedOpenAI, make_provider: MakeProvider) -> None:
    server.script(Hang(), Hang())
    before = calls("timeout")
    started = time.monotonic()

    await raises(ModelTimeout, client_for(make_provider(timeout_seconds=0.5, max_retries=1),
                                          timeout_seconds=0.5, max_retries=1).complete(model_request()))

    # Two attempts of 0.5 s and one backoff of at most 0.5 s, with room for a slow machine.
    assert 1.0 <= time.monotonic() - started < 4.0
    assert len(server.requests) == 2
    # The client gave up on each attempt by closing its connection.
    await eventually(lambda: all(r.disconnected for r in server.requests), what="both requests closed")
    assert calls("timeout") == before + 1


async def test_an_unreachable_endpoint_is_a_model_error(make_provider: MakeProvider) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    provider = make_provider(base_url=f"http://127.0.0.1:{port}/v1", max_retries=0)

    error = await raises(ModelError, provider.complete(model_request()))

    assert type(error) is ModelError and str(error).startswith("could not reach the model endpoint")


async def test_malformed_json_text_is_returned_as_it_came(
        server: ScriptedOpenAI, make_provider: MakeProvider) -> None:
    server.script(Answer(MALFORMED_JSON))
    reply = await make_provider().complete(model_request(schema=SCHEMA))
    assert reply.text == MALFORMED_JSON


async def test_a_stream_yields_deltas_then_one_reply_with_the_endpoints_usage(
        server: ScriptedOpenAI, make_provider: MakeProvider) -> None:
    text = "Tickets are triaged by urgency."
    server.script(Answer(text, usage=(40, 9), chunk_chars=5), Answer(text, usage=(40, 9)))
    provider = make_provider()
    before = tokens("input", "invoke"), tokens("output", "invoke")

    events = [event async for event in provider.stream(model_request())]
    deltas, call = await streamed(client_for(provider), model_request(operation="invoke"))

    *pieces, reply = events
    assert [type(piece) for piece in pieces] == [TextDelta] * 7
    assert "".join(piece.text for piece in pieces if isinstance(piece, TextDelta)) == text
    assert reply == ModelReply(text=text, finish_reason="stop", model=MODEL,
                               usage=Usage(input_tokens=40, output_tokens=9))
    assert "".join(deltas) == text
    assert call.usage == Usage(input_tokens=40, output_tokens=9, estimated=False)
    assert call.time_to_first_token_ms is not None
    body = server.requests[0].body
    assert body is not None and body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert (tokens("input", "invoke"), tokens("output", "invoke")) == (before[0] + 40, before[1] + 9)


async def test_a_stream_without_usage_is_counted_by_our_estimate(
        server: ScriptedOpenAI, make_provider: MakeProvider) -> None:
    server.script(Answer(LONG_TEXT, usage=None, chunk_chars=50), Answer(LONG_TEXT, usage=None))
    provider = make_provider()

    events = [event async for event in provider.stream(model_request())]
    _, call = await streamed(client_for(provider), model_request())

    assert isinstance(events[-1], ModelReply) and events[-1].usage is None
    assert call.text == LONG_TEXT
    assert call.usage.estimated and call.usage.input_tokens > 0 and call.usage.output_tokens >= 250


async def test_an_endpoint_that_rejects_stream_options_is_asked_without_them(
        server: ScriptedOpenAI, make_provider: MakeProvider) -> None:
    server.script(stream_options_refusal(), Answer("one", usage=None), Answer("two", usage=None))
    provider = make_provider()

    first = [event async for event in provider.stream(model_request())]
    second = [event async for event in provider.stream(model_request())]

    assert [event.text for event in (first[-1], second[-1]) if isinstance(event, ModelReply)] == ["one", "two"]
    assert ["stream_options" in (r.body or {}) for r in server.requests] == [True, False, False]


@pytest.mark.parametrize("send_done", [False, True], ids=["connection-dropped", "no-finish-reason"])
async def test_a_stream_cut_mid_way_is_a_model_error(
        server: ScriptedOpenAI, make_provider: MakeProvider, send_done: bool) -> None:
    server.script(CutStream(chunks=2, send_done=send_done))
    before = calls("error")
    deltas: list[str] = []

    with pytest.raises(ModelError, match="the model's stream was cut off") as caught:
        async for event in client_for(make_provider()).stream(model_request(), StreamProgress(model_request())):
            assert isinstance(event, TextDelta)
            deltas.append(event.text)

    assert type(caught.value) is ModelError
    assert "".join(deltas) == "an answe"  # two chunks of four characters
    assert calls("error") == before + 1
    # A stream is never retried: the SDK's retries end once the response has started.
    assert len(server.requests) == 1


async def test_cancelling_a_streaming_consumer_closes_the_request_at_once(
        server: ScriptedOpenAI, make_provider: MakeProvider) -> None:
    server.script(Answer(LONG_TEXT, chunk_chars=5, chunk_delay=0.05))  # 200 chunks, 10 s
    client = client_for(make_provider())
    first_text = asyncio.Event()
    before = calls("cancelled")

    async def consume() -> None:
        async for event in client.stream(model_request(), StreamProgress(model_request())):
            if isinstance(event, TextDelta) and event.text:
                first_text.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first_text.wait(), timeout=5)
    cancelled_at = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    request = await eventually(lambda: (r := server.requests[0]).ended_at is not None and r,
                               timeout=2, what="the server to see the request end")
    assert request.disconnected
    assert request.ended_at is not None and request.ended_at - cancelled_at < 1.0
    await eventually(lambda: server.open_connections == 0, timeout=1, what="the connection closed")
    assert calls("cancelled") == before + 1


async def test_closing_the_stream_generator_closes_the_request(
        server: ScriptedOpenAI, make_provider: MakeProvider) -> None:
    server.script(Answer(LONG_TEXT, chunk_chars=5, chunk_delay=0.05))
    events = make_provider().stream(model_request())
    assert isinstance(await anext(events), TextDelta)

    closed_at = time.monotonic()
    await events.aclose()  # type: ignore[attr-defined]  # an async generator

    request = await eventually(lambda: (r := server.requests[0]).ended_at is not None and r,
                               timeout=2, what="the server to see the request end")
    assert request.disconnected and request.ended_at is not None and request.ended_at - closed_at < 1.0
    await eventually(lambda: server.open_connections == 0, timeout=1, what="the connection closed")


async def test_list_models_reads_the_endpoints_ids(make_provider: MakeProvider) -> None:
    assert await make_provider().list_models() == [MODEL]


async def test_the_api_key_is_sent_as_a_bearer_token_and_never_logged(
        server: ScriptedOpenAI, make_provider: MakeProvider, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    server.script(Answer("fine"), Answer("streamed"), server_error(), server_error(), Hang(), Hang())
    client = client_for(make_provider(timeout_seconds=0.3, max_retries=1), timeout_seconds=0.3, max_retries=1)

    await client.complete(model_request(schema=SCHEMA))
    await streamed(client, model_request())
    failures = [await raises(ModelError, client.complete(model_request())),
                await raises(ModelTimeout, client.complete(model_request()))]
    models = await client.list_models()

    assert models == [MODEL]
    assert {r.headers.get("authorization") for r in server.all_requests} == {f"Bearer {API_KEY}"}
    # The SDK's and httpx's own debug records were captured too, so a leak there would show.
    assert {"openai._base_client", "httpx", "api.providers"} <= {r.name for r in caplog.records}
    formatter = logging.Formatter()
    for record in caplog.records:
        assert API_KEY not in formatter.format(record), record.name
        assert API_KEY not in repr(vars(record)), record.name
    assert all(API_KEY not in str(error) for error in failures)
