"""Amazon Bedrock through the Converse API (`Converse`, `ConverseStream`), with aiobotocore.

Retries are botocore's standard mode and nothing else (`total_max_attempts` = retries + 1).
In botocore 1.43 (`botocore/retries/standard.py`, `StandardRetryConditions`) that retries
Bedrock's ThrottlingException (by code: `ThrottledRetryableChecker._THROTTLED_ERROR_CODES`),
ServiceUnavailableException and InternalServerException (HTTP 503 and 500:
`TransientRetryableChecker._TRANSIENT_STATUS_CODES`), ModelNotReadyException (modeled
`retryable` in `data/bedrock-runtime/2023-09-30/service-2.json.gz`: `ModeledRetryableChecker`)
and connection errors and read timeouts (`_TRANSIENT_EXCEPTION_CLS`), with jittered
exponential backoff. What is left after the retries is mapped onto ModelError's kinds.
"""

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import AsyncExitStack, aclosing
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from api.providers.base import (
    Message,
    ModelError,
    ModelProvider,
    ModelRateLimited,
    ModelReply,
    ModelRequest,
    ModelTimeout,
    TextDelta,
    Usage,
)

# Converse's stop reasons in the words of the other providers (OpenAI's finish_reason).
FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}
# Above any sensible MODEL_MAX_CONCURRENCY (a stream holds its connection to the end), so
# ModelClient's semaphore is the only cap and no call waits for a pooled connection.
MAX_POOL_CONNECTIONS = 64
# The health check's probe: one attempt and a short deadline, so a probe never hangs.
PROBE_TIMEOUT_SECONDS = 5.0
# ModelTimeoutException: the model itself ran past Bedrock's processing time limit.
MODEL_TIMEOUT_CODE = "modeltimeoutexception"


class BedrockProvider(ModelProvider):
    name = "bedrock"

    def __init__(self, model_id: str, region: str | None, timeout_seconds: float,
                 max_retries: int, endpoint_url: str | None = None) -> None:
        # The configured default; each request names its own model (builds' and agents' may differ).
        self.model_id = model_id
        # None: the standard chain (AWS_REGION, AWS_DEFAULT_REGION, the profile's region).
        self.region = region
        # None: botocore's own (AWS_ENDPOINT_URL_BEDROCK_RUNTIME / _BEDROCK, or AWS's).
        self.endpoint_url = self.endpoint = endpoint_url
        self.config = AioConfig(
            retries={"mode": "standard", "total_max_attempts": max_retries + 1},
            read_timeout=timeout_seconds, connect_timeout=min(timeout_seconds, 10),
            max_pool_connections=MAX_POOL_CONNECTIONS)
        self._probe_config = AioConfig(
            retries={"mode": "standard", "total_max_attempts": 1},
            read_timeout=min(timeout_seconds, PROBE_TIMEOUT_SECONDS),
            connect_timeout=min(timeout_seconds, PROBE_TIMEOUT_SECONDS))
        self._session = get_session()
        self._stack = AsyncExitStack()
        self._clients: dict[str, Any] = {}
        self._opening = asyncio.Lock()

    async def _client(self, service: str) -> Any:
        """The process's one client of `service`, created on first use."""
        if service not in self._clients:
            async with self._opening:
                if service not in self._clients:
                    config = self.config if service == "bedrock-runtime" else self._probe_config
                    try:
                        self._clients[service] = await self._stack.enter_async_context(
                            self._session.create_client(service, region_name=self.region,
                                                        endpoint_url=self.endpoint_url,
                                                        config=config))
                    except BotoCoreError as exc:  # no region, a bad endpoint URL
                        raise ModelError(f"the Bedrock client could not start: {exc}") from exc
        return self._clients[service]

    async def complete(self, request: ModelRequest) -> ModelReply:
        client = await self._client("bedrock-runtime")
        try:
            response = await client.converse(**converse_params(request))
        except (BotoCoreError, ClientError) as exc:
            raise model_error(exc) from exc
        text = "".join(block.get("text", "")
                       for block in response["output"]["message"]["content"])
        return ModelReply(text=text, finish_reason=finish_reason(response["stopReason"]),
                          model=request.model, usage=usage(response.get("usage")))

    async def stream(self, request: ModelRequest) -> AsyncIterator[TextDelta | ModelReply]:
        client = await self._client("bedrock-runtime")
        parts: list[str] = []
        stop_reason: str | None = None
        reported: Usage | None = None
        try:
            response = await client.converse_stream(**converse_params(request))
            async with aclosing(self._events(response)) as events:
                async for event in events:
                    if "contentBlockDelta" in event:
                        # Text only: reasoning and tool-use deltas are not part of the answer.
                        text = event["contentBlockDelta"]["delta"].get("text")
                        if text:
                            parts.append(text)
                            yield TextDelta(text)
                    elif "messageStop" in event:
                        stop_reason = event["messageStop"]["stopReason"]
                    elif "metadata" in event:
                        reported = usage(event["metadata"].get("usage"))
        except (BotoCoreError, ClientError) as exc:  # EventStreamError: an error mid-stream
            raise model_error(exc) from exc
        if stop_reason is None:
            raise ModelError("Bedrock's stream ended without a messageStop event")
        yield ModelReply(text="".join(parts), finish_reason=finish_reason(stop_reason),
                         model=request.model, usage=reported)

    async def _events(self, response: Mapping[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
        """The ConverseStream events, one dict each (the tests inject theirs here: botocore's
        Stubber cannot answer with an event stream). Closing the stream closes its
        connection, whether the answer was read to the end, abandoned or cancelled."""
        events = response["stream"]
        try:
            async for event in events:
                yield event
        finally:
            events.close()

    async def list_models(self) -> list[str]:
        # The control plane's ListFoundationModels: free, read-only, no tokens spent, and it
        # proves the credentials, the region and the network path to Bedrock. Nothing on the
        # runtime endpoint is as cheap for every model (Converse spends tokens, CountTokens
        # serves a few models), so the probe has a second, small client: one attempt and short
        # timeouts, as the health check calls this every ~30 s. It needs the IAM permission
        # bedrock:ListFoundationModels besides bedrock:InvokeModel*.
        client = await self._client("bedrock")
        try:
            response = await client.list_foundation_models(byOutputModality="TEXT")
        except (BotoCoreError, ClientError) as exc:
            raise model_error(exc) from exc
        return [summary["modelId"] for summary in response.get("modelSummaries", [])]

    async def close(self) -> None:
        stack, self._stack = self._stack, AsyncExitStack()
        self._clients.clear()
        await stack.aclose()


def converse_params(request: ModelRequest) -> dict[str, Any]:
    """Converse's request. `output_schema` is not sent: Converse's `outputConfig.textFormat`
    (json_schema) is served by select models only (Claude 4.5, some open-weight ones), and
    the engine describes the JSON in every prompt and validates the answer, so the prompt asks.
    Nor is `presence_penalty`: Converse's inferenceConfig has no such field."""
    inference: dict[str, Any] = {"maxTokens": request.max_output_tokens}
    if request.temperature is not None:
        inference["temperature"] = request.temperature
    params: dict[str, Any] = {"modelId": request.model, "messages": turns(request.messages),
                              "inferenceConfig": inference}
    system = [{"text": message.content} for message in request.messages
              if message.role == "system" and message.content.strip()]
    if system:
        params["system"] = system
    return params


def turns(messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    """The conversation as Converse takes it: user first, roles alternating (consecutive
    messages of one role become one message of several text blocks), no blank text blocks
    (Converse refuses them: an empty answer in a session's history would fail every turn)."""
    result: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "system" or not message.content.strip():
            continue
        if not result and message.role == "assistant":
            # A history trimmed oldest first can begin with an answer whose question is gone.
            continue
        if result and result[-1]["role"] == message.role:
            result[-1]["content"].append({"text": message.content})
        else:
            result.append({"role": message.role, "content": [{"text": message.content}]})
    if not result:
        raise ModelError("a Bedrock conversation needs a user message")
    return result


def finish_reason(stop_reason: str) -> str:
    return FINISH_REASONS.get(stop_reason, stop_reason)


def usage(reported: Mapping[str, Any] | None) -> Usage | None:
    if not reported:
        return None
    return Usage(input_tokens=reported.get("inputTokens", 0),
                 output_tokens=reported.get("outputTokens", 0))


def model_error(exc: BotoCoreError | ClientError) -> ModelError:
    """What botocore raised once its retries were spent, as one of ModelError's kinds."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code, message = error.get("Code", ""), error.get("Message", "")
        attempts = exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0) + 1
        # Mid-stream errors carry the event's member name (`throttlingException`).
        if code.lower() == "throttlingexception":
            return ModelRateLimited(f"Bedrock throttled the call ({attempts} attempts): {message}")
        if code.lower() == MODEL_TIMEOUT_CODE:
            return ModelTimeout(f"Bedrock {code}: {message}")
        return ModelError(f"Bedrock {code or 'error'}: {message}")
    if isinstance(exc, (ReadTimeoutError, ConnectTimeoutError)):
        return ModelTimeout(f"Bedrock did not answer in time: {exc}")
    if isinstance(exc, EndpointConnectionError):
        return ModelError(f"could not reach Bedrock: {exc}")
    return ModelError(f"the Bedrock call failed: {exc}")
