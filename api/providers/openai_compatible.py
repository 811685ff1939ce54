"""OpenAI Chat Completions (OpenAI, Ollama, vLLM, llama.cpp's llama-server, LiteLLM) through the
official SDK's async client.

Retries are the SDK's and nobody else's. In openai 2.x (`openai/_base_client.py`,
`AsyncAPIClient.request`, `_should_retry` and `_calculate_retry_timeout`) a call is tried up to
`max_retries` more times after a connection error or a timeout and after a 408, 409, 429 or
5xx answer; it waits what `retry-after-ms` / `Retry-After` says (up to two minutes), else
0.5 s doubling up to 8 s, less up to 25 % jitter. What reaches us here has been retried already.
"""

import json
import re
from collections.abc import AsyncIterator
from typing import Any, cast

import httpx
import openai
from openai import AsyncOpenAI, AsyncStream, omit
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam
from pydantic import SecretStr

from api.providers.base import (
    ModelError,
    ModelProvider,
    ModelRateLimited,
    ModelReply,
    ModelRequest,
    ModelTimeout,
    SchemaUnsupported,
    TextDelta,
    Usage,
)

OPENAI_BASE_URL = "https://api.openai.com/v1"
# Local servers take no key, but the SDK refuses to start without one.
NO_API_KEY = "not-needed"
# How vLLM, llama.cpp and LM Studio word their refusal of `response_format: json_schema`.
SCHEMA_REFUSAL = re.compile(r"response_format|json_schema|not supported", re.IGNORECASE)
MAX_MESSAGE_CHARS = 500


class OpenAICompatibleProvider(ModelProvider):
    name = "openai"

    def __init__(self, *, base_url: str, api_key: SecretStr | None, timeout_seconds: float,
                 max_retries: int) -> None:
        self.base_url = self.endpoint = base_url
        # `timeout` bounds each attempt's connect and each read; ModelClient's deadline bounds
        # the whole call with its retries.
        self._client = AsyncOpenAI(
            base_url=base_url,
            api_key=api_key.get_secret_value() if api_key else NO_API_KEY,
            timeout=timeout_seconds, max_retries=max_retries)
        # The SDK imports its resource modules on first use, ~1.9 s measured here: at start-up,
        # not on the event loop in the middle of the first build.
        _ = self._client.chat.completions, self._client.models
        # Some servers (older vLLM, some proxies) reject `stream_options`: asked without them
        # from then on, and their streams are counted by our estimate.
        self._stream_options_refused = False

    async def complete(self, request: ModelRequest) -> ModelReply:
        try:
            completion = await self._client.chat.completions.create(
                **self._arguments(request), stream=False)
        except openai.APIError as exc:
            raise self._error(exc, request) from exc
        if not completion.choices:
            raise ModelError("the model endpoint answered with no choices")
        choice = completion.choices[0]
        return ModelReply(text=choice.message.content or "", finish_reason=choice.finish_reason,
                          model=completion.model, usage=_usage(completion.usage))

    async def stream(self, request: ModelRequest) -> AsyncIterator[TextDelta | ModelReply]:
        try:
            chunks = await self._open_stream(request)
        except openai.APIError as exc:
            raise self._error(exc, request) from exc
        parts: list[str] = []
        finish_reason: str | None = None
        model = request.model
        usage: Usage | None = None
        # Leaving this block any way (the end, an error, the task cancelled, the generator
        # closed) closes the response, so the connection closes and the server stops generating.
        async with chunks:
            try:
                async for chunk in chunks:
                    model = chunk.model or model
                    if chunk.usage is not None:
                        usage = _usage(chunk.usage)
                    if not chunk.choices:
                        continue
                    choice = chunk.choices[0]
                    finish_reason = choice.finish_reason or finish_reason
                    if choice.delta.content:
                        parts.append(choice.delta.content)
                        yield TextDelta(choice.delta.content)
            except httpx.TimeoutException as exc:
                raise ModelTimeout("the model's stream stalled past MODEL_TIMEOUT_SECONDS") from exc
            except (httpx.TransportError, json.JSONDecodeError) as exc:
                raise ModelError(f"the model's stream was cut off: {exc}") from exc
            except openai.APIError as exc:
                raise self._error(exc, request) from exc
        if finish_reason is None:
            raise ModelError("the model's stream was cut off before it finished (no finish_reason)")
        yield ModelReply(text="".join(parts), finish_reason=finish_reason, model=model, usage=usage)

    async def list_models(self) -> list[str]:
        try:
            return [model.id async for model in self._client.models.list()]
        except openai.APIError as exc:
            raise self._error(exc, None) from exc

    async def close(self) -> None:
        await self._client.close()

    async def _open_stream(self, request: ModelRequest) -> AsyncStream[ChatCompletionChunk]:
        arguments = self._arguments(request)
        if not self._stream_options_refused:
            try:
                return await self._client.chat.completions.create(
                    **arguments, stream=True, stream_options={"include_usage": True})
            except openai.APIStatusError as exc:
                if exc.status_code not in (400, 422) or "stream_options" not in _message(exc):
                    raise
                self._stream_options_refused = True
        return await self._client.chat.completions.create(**arguments, stream=True)

    @staticmethod
    def _arguments(request: ModelRequest) -> dict[str, Any]:
        messages = [cast(ChatCompletionMessageParam, {"role": message.role, "content": message.content})
                    for message in request.messages]
        schema = request.output_schema
        return {
            "model": request.model,
            "messages": messages,
            "max_tokens": request.max_output_tokens,
            "temperature": omit if request.temperature is None else request.temperature,
            "response_format": omit if schema is None or request.schema_in_prompt else {
                "type": "json_schema",
                "json_schema": {"name": schema.name, "schema": dict(schema.schema), "strict": True},
            },
        }

    def _error(self, exc: openai.APIError, request: ModelRequest | None) -> ModelError:
        """What a failed call (after the SDK's retries) means to us. Messages carry the status
        and the endpoint's own words, never the request's headers."""
        if isinstance(exc, openai.APITimeoutError):
            return ModelTimeout("the model endpoint did not answer within MODEL_TIMEOUT_SECONDS")
        if isinstance(exc, openai.APIConnectionError):
            return ModelError(f"could not reach the model endpoint at {self.base_url}: {exc.message}")
        if isinstance(exc, openai.RateLimitError):
            return ModelRateLimited(f"the model endpoint is rate limiting (HTTP 429): {_message(exc)}")
        if isinstance(exc, openai.APIStatusError):
            message = _message(exc)
            sent_schema = (request is not None and request.output_schema is not None
                           and not request.schema_in_prompt)
            if sent_schema and exc.status_code in (400, 422) and SCHEMA_REFUSAL.search(message):
                return SchemaUnsupported(
                    f"the model endpoint refused json_schema output (HTTP {exc.status_code}): {message}")
            return ModelError(f"the model endpoint answered HTTP {exc.status_code}: {message}")
        return ModelError(f"the model endpoint failed: {exc.message[:MAX_MESSAGE_CHARS]}")


def _message(exc: openai.APIStatusError) -> str:
    """The endpoint's own message: `{"error": {"message"}}` (OpenAI, llama.cpp; the SDK unwraps
    it) or a top-level `{"message"}` (vLLM), else the body as text."""
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        text = body["message"]
    elif isinstance(body, str) and body:
        text = body
    else:
        text = exc.message
    return text[:MAX_MESSAGE_CHARS]


def _usage(usage: CompletionUsage | None) -> Usage | None:
    if usage is None:
        return None
    return Usage(input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens)
