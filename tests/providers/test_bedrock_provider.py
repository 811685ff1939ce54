"""The Bedrock provider against botocore's Stubber (the exact Converse request) and against the
Bedrock double (tests.providers.bedrock_double): a real HTTP server on a loopback port that
answers as Bedrock's REST-JSON and event-stream protocols do, so requests go through the
whole of botocore (signing, botocore's retry handler, parsing) and never reach AWS."""

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiobotocore.stub import AioStubber
from aiohttp import web
from prometheus_client import REGISTRY

from api.providers.base import (
    Message,
    ModelError,
    ModelRateLimited,
    ModelReply,
    ModelRequest,
    ModelTimeout,
    OutputSchema,
    TextDelta,
    Usage,
)
from api.providers.bedrock import BedrockProvider
from api.providers.client import ModelCall, ModelClient, StreamProgress
from api.providers.tokens import estimate_prompt_tokens
from tests.providers.bedrock_double import (
    MODEL,
    REGION,
    STREAM,
    BedrockDouble,
    aws_error,
    converse_body,
    delta,
    serving,
    stream_error,
    use_dummy_aws_credentials,
)


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    use_dummy_aws_credentials(monkeypatch, tmp_path)


def closed_port_url() -> str:
    """A loopback URL nothing listens on: if a stubbed call ever got past the Stubber it
    would fail to connect here rather than reach AWS."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
async def bedrock() -> AsyncIterator[BedrockDouble]:
    async with serving(BedrockDouble()) as double:
        yield double


@pytest.fixture
async def providers() -> AsyncIterator[Callable[..., BedrockProvider]]:
    made: list[BedrockProvider] = []

    def make(endpoint_url: str | None = None, *, max_retries: int = 2,
             timeout_seconds: float = 5.0) -> BedrockProvider:
        made.append(BedrockProvider(MODEL, None, timeout_seconds, max_retries,
                                    endpoint_url=endpoint_url or closed_port_url()))
        return made[-1]

    yield make
    for provider in made:
        await provider.close()


def request(*messages: Message, temperature: float | None = None, max_output_tokens: int = 256,
            **fields: Any) -> ModelRequest:
    return ModelRequest(operation="build", model=MODEL,
                        messages=messages or (Message("user", "Hi"),),
                        max_output_tokens=max_output_tokens, temperature=temperature, **fields)


async def collect(events: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in events]


# -- the request and the reply -----------------------------------------------------------------
async def test_converse_request_merges_roles_and_reply_maps_text_stop_reason_and_usage(
        providers: Callable[..., BedrockProvider]) -> None:
    provider = providers()
    conversation = request(
        Message("system", "You design agents."),
        Message("assistant", "An answer whose question was trimmed away"),
        Message("user", "First part"), Message("user", "second part"),
        Message("assistant", ""), Message("assistant", "Noted."),
        Message("system", "Answer in JSON."), Message("user", "Go on"),
        temperature=0.2, output_schema=OutputSchema("design", {"type": "object"}))
    client = await provider._client("bedrock-runtime")
    with AioStubber(client) as stubber:
        reply_body = converse_body(input_tokens=40, output_tokens=9)
        reply_body["output"]["message"]["content"] = [{"text": '{"a": '}, {"text": "1}"}]
        stubber.add_response("converse", reply_body, expected_params={
            "modelId": MODEL,
            "system": [{"text": "You design agents."}, {"text": "Answer in JSON."}],
            "messages": [
                {"role": "user", "content": [{"text": "First part"}, {"text": "second part"}]},
                {"role": "assistant", "content": [{"text": "Noted."}]},
                {"role": "user", "content": [{"text": "Go on"}]}],
            "inferenceConfig": {"maxTokens": 256, "temperature": 0.2}})
        stubber.add_response("converse", converse_body(stop_reason="max_tokens"), expected_params={
            "modelId": MODEL, "messages": [{"role": "user", "content": [{"text": "Hi"}]}],
            "inferenceConfig": {"maxTokens": 64}})

        first = await provider.complete(conversation)
        second = await provider.complete(request(max_output_tokens=64))
        stubber.assert_no_pending_responses()

    assert first == ModelReply(text='{"a": 1}', finish_reason="stop", model=MODEL,
                               usage=Usage(input_tokens=40, output_tokens=9))
    assert second.finish_reason == "length"


async def test_a_conversation_without_a_user_message_is_refused_before_any_call(
        providers: Callable[..., BedrockProvider]) -> None:
    provider = providers()
    with AioStubber(await provider._client("bedrock-runtime")) as stubber:
        with pytest.raises(ModelError, match="needs a user message"):
            await provider.complete(request(Message("system", "Rules"), Message("assistant", "Hi")))
        stubber.assert_no_pending_responses()


async def test_stream_through_the_event_seam_yields_deltas_then_one_reply(
        providers: Callable[..., BedrockProvider], monkeypatch: pytest.MonkeyPatch) -> None:
    provider = providers()

    async def events(response: Any) -> AsyncIterator[dict[str, Any]]:
        assert response == {"stream": {}}
        for item in ({"messageStart": {"role": "assistant"}},
                     {"contentBlockDelta": {"contentBlockIndex": 0, "delta": {"text": "Hel"}}},
                     {"contentBlockDelta": {"contentBlockIndex": 0,
                                            "delta": {"reasoningContent": {"text": "hmm"}}}},
                     {"contentBlockDelta": {"contentBlockIndex": 0, "delta": {"text": "lo"}}},
                     {"messageStop": {"stopReason": "end_turn"}},
                     {"metadata": {"usage": {"inputTokens": 5, "outputTokens": 2}}}):
            yield item

    monkeypatch.setattr(provider, "_events", events)
    with AioStubber(await provider._client("bedrock-runtime")) as stubber:
        stubber.add_response("converse_stream", {"stream": {}}, expected_params={
            "modelId": MODEL, "messages": [{"role": "user", "content": [{"text": "Hi"}]}],
            "inferenceConfig": {"maxTokens": 256}})
        events_seen = await collect(provider.stream(request()))
        stubber.assert_no_pending_responses()

    assert events_seen == [TextDelta("Hel"), TextDelta("lo"),
                           ModelReply("Hello", "stop", MODEL, Usage(5, 2))]


# -- over the wire -----------------------------------------------------------------------------
async def test_stream_over_the_wire_parses_bedrocks_event_stream(
        bedrock: BedrockDouble, providers: Callable[..., BedrockProvider]) -> None:
    bedrock.answers.append(bedrock.stream(*STREAM))
    provider = providers(bedrock.url)

    events_seen = await collect(provider.stream(request(Message("system", "Be brief"),
                                                        Message("user", "Hi"), temperature=0)))

    assert events_seen == [TextDelta("Hel"), TextDelta("lo"),
                           ModelReply("Hello", "length", MODEL, Usage(7, 2))]
    [seen] = bedrock.seen
    assert seen.path == f"/model/{MODEL}/converse-stream"
    assert seen.body == {"system": [{"text": "Be brief"}],
                         "messages": [{"role": "user", "content": [{"text": "Hi"}]}],
                         "inferenceConfig": {"maxTokens": 256, "temperature": 0}}
    assert seen.headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=testing/")


async def test_an_error_event_mid_stream_is_mapped_after_the_deltas_before_it(
        bedrock: BedrockDouble, providers: Callable[..., BedrockProvider]) -> None:
    for kind, message in (("throttlingException", "slow down"),
                          ("modelStreamErrorException", "broken")):
        bedrock.answers.append(bedrock.stream(delta("Hel"), stream_error(kind, message)))
    provider = providers(bedrock.url)

    received: list[Any] = []
    with pytest.raises(ModelRateLimited, match="slow down"):
        async for item in provider.stream(request()):
            received.append(item)
    with pytest.raises(ModelError, match="modelStreamErrorException: broken") as failure:
        await collect(provider.stream(request()))

    assert received == [TextDelta("Hel")]
    assert type(failure.value) is ModelError
    assert len(bedrock.seen) == 2  # an answer already streaming is not retried


async def test_a_stream_that_ends_without_message_stop_fails(
        bedrock: BedrockDouble, providers: Callable[..., BedrockProvider]) -> None:
    bedrock.answers.append(bedrock.stream(*STREAM[:3]))
    with pytest.raises(ModelError, match="without a messageStop"):
        await collect(providers(bedrock.url).stream(request()))


async def test_cancelling_a_stream_closes_its_connection(
        bedrock: BedrockDouble, providers: Callable[..., BedrockProvider]) -> None:
    bedrock.answers.append(bedrock.stream(delta("Hel"), hold=True))
    provider = providers(bedrock.url)
    first_delta = asyncio.Event()

    async def consume() -> None:
        async for _ in provider.stream(request()):
            first_delta.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first_delta.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(bedrock.disconnected.wait(), 5)


async def test_botocore_retries_a_throttled_call_and_the_retry_succeeds(
        bedrock: BedrockDouble, providers: Callable[..., BedrockProvider]) -> None:
    bedrock.answers.extend([aws_error(429, "ThrottlingException", "Too many requests"),
                            lambda _: web.json_response(converse_body("After a retry"))])
    provider = providers(bedrock.url, max_retries=2, timeout_seconds=30)

    reply = await provider.complete(request())

    assert reply.text == "After a retry"
    assert [seen.path for seen in bedrock.seen] == [f"/model/{MODEL}/converse"] * 2
    # botocore's retry handler numbered the attempts against the configured maximum.
    attempts = [dict(part.strip().split("=") for part in seen.headers["amz-sdk-request"].split(";"))
                for seen in bedrock.seen]
    assert [attempt["attempt"] for attempt in attempts] == ["1", "2"]
    assert attempts[1]["max"] == "3"
    config = (await provider._client("bedrock-runtime")).meta.config
    assert config.retries == {"mode": "standard", "total_max_attempts": 3}
    assert (config.read_timeout, config.connect_timeout) == (30, 10)


@pytest.mark.parametrize(("status", "code"), [(503, "ServiceUnavailableException"),
                                              (429, "ModelNotReadyException"),
                                              (500, "InternalServerException")])
async def test_botocore_retries_bedrocks_transient_errors(
        bedrock: BedrockDouble, providers: Callable[..., BedrockProvider], status: int,
        code: str) -> None:
    bedrock.answers.extend([aws_error(status, code, "not now"),
                            lambda _: web.json_response(converse_body("Recovered"))])

    assert (await providers(bedrock.url).complete(request())).text == "Recovered"
    assert len(bedrock.seen) == 2


async def test_persistent_throttling_is_rate_limited_after_every_attempt(
        bedrock: BedrockDouble, providers: Callable[..., BedrockProvider]) -> None:
    bedrock.answers.extend([aws_error(429, "ThrottlingException", "Too many requests")] * 3)
    provider = providers(bedrock.url, max_retries=1)

    with pytest.raises(ModelRateLimited, match=r"\(2 attempts\): Too many requests"):
        await provider.complete(request())

    assert len(bedrock.seen) == 2
    assert len(bedrock.answers) == 1


@pytest.mark.parametrize(("status", "code", "kind"), [
    (400, "ValidationException", ModelError), (403, "AccessDeniedException", ModelError),
    (408, "ModelTimeoutException", ModelTimeout)])
async def test_a_refused_call_keeps_bedrocks_code_and_message_and_is_not_retried(
        bedrock: BedrockDouble, providers: Callable[..., BedrockProvider], status: int, code: str,
        kind: type[ModelError]) -> None:
    bedrock.answers.extend([aws_error(status, code, "not like this")] * 2)

    with pytest.raises(ModelError, match=f"{code}: not like this") as failure:
        await providers(bedrock.url).complete(request())

    assert type(failure.value) is kind
    assert len(bedrock.seen) == 1


async def test_a_model_that_does_not_answer_in_time_is_a_timeout(
        bedrock: BedrockDouble, providers: Callable[..., BedrockProvider]) -> None:
    bedrock.answers.append(bedrock.stall())
    provider = providers(bedrock.url, max_retries=0, timeout_seconds=0.3)

    with pytest.raises(ModelTimeout, match="did not answer in time"):
        await provider.complete(request())


async def test_an_unreachable_endpoint_is_a_model_error(
        providers: Callable[..., BedrockProvider]) -> None:
    with pytest.raises(ModelError, match="could not reach Bedrock") as failure:
        await providers(closed_port_url(), max_retries=0).complete(request())
    assert type(failure.value) is ModelError


async def test_list_models_asks_the_control_plane_for_text_models_once(
        bedrock: BedrockDouble, providers: Callable[..., BedrockProvider]) -> None:
    bedrock.answers.append(lambda _: web.json_response({"modelSummaries": [
        {"modelArn": f"arn:aws:bedrock:{REGION}::foundation-model/{MODEL}", "modelId": MODEL},
        {"modelArn": f"arn:aws:bedrock:{REGION}::foundation-model/amazon.nova-lite-v1:0",
         "modelId": "amazon.nova-lite-v1:0"}]}))
    bedrock.answers.append(aws_error(500, "InternalServerException", "down"))
    provider = providers(bedrock.url, max_retries=2)

    assert await provider.list_models() == [MODEL, "amazon.nova-lite-v1:0"]
    with pytest.raises(ModelError, match="InternalServerException: down"):
        await provider.list_models()

    assert [(seen.path, seen.query) for seen in bedrock.seen] == [
        ("/foundation-models", {"byOutputModality": "TEXT"})] * 2  # the probe never retries


# -- through ModelClient -----------------------------------------------------------------------
def sample(name: str, label: str, value: str) -> float:
    return REGISTRY.get_sample_value(name, {"provider": "bedrock", "model": MODEL,
                                            "operation": "build", label: value}) or 0.0


async def test_model_client_counts_bedrock_calls_and_their_tokens(
        bedrock: BedrockDouble, providers: Callable[..., BedrockProvider]) -> None:
    bedrock.answers.extend([lambda _: web.json_response(converse_body(input_tokens=11,
                                                                      output_tokens=3)),
                            bedrock.stream(*STREAM),
                            aws_error(429, "ThrottlingException", "Too many requests")])
    client = ModelClient(providers(bedrock.url, max_retries=0), max_concurrency=2,
                         timeout_seconds=5, max_retries=0)
    before = {key: sample(*key) for key in (
        ("model_requests_total", "outcome", "success"),
        ("model_requests_total", "outcome", "rate_limited"),
        ("model_tokens_total", "type", "input"), ("model_tokens_total", "type", "output"))}

    call = await client.complete(request())
    streamed = [item async for item in client.stream(request(), StreamProgress(request()))]
    with pytest.raises(ModelRateLimited):
        await client.complete(request())

    assert client.provider_name == "bedrock"
    assert call.usage == Usage(11, 3)
    assert isinstance(streamed[-1], ModelCall) and streamed[-1].usage == Usage(7, 2)
    after = {key: sample(*key) for key in before}
    # The throttled call is counted with our estimate of the prompt it sent, and no output.
    assert {key[2]: after[key] - before[key] for key in before} == {
        "success": 2, "rate_limited": 1,
        "input": 11 + 7 + estimate_prompt_tokens(request().messages), "output": 3 + 2}

