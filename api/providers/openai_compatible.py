"""OpenAI Chat Completions (OpenAI, Ollama, vLLM, llama.cpp's llama-server, LiteLLM) through the
official SDK's async client.

Retries are the SDK's and nobody else's. In openai 2.x (`openai/_base_client.py`,
`AsyncAPIClient.request`, `_should_retry` and `_calculate_retry_timeout`) a call is tried up to
`max_retries` more times after a connection error or a timeout and after a 408, 409, 429 or
5xx answer; it waits what `retry-after-ms` / `Retry-After` says (up to two minutes), else
0.5 s doubling up to 8 s, less up to 25 % jitter. What reaches us here has been retried already.
"""

import contextlib
import json
import re
from collections.abc import AsyncIterator
from typing import Any, cast

import httpx
import openai
from openai import AsyncOpenAI, AsyncStream, omit
from openai.types.chat import ChatCompletionMessageParam
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
        """The whole reply, streamed all the same: a server notices that a client closed a
        streamed request (a stopped build, its task cancelled) at its next token, but a
        non-streamed one only when its wait for the result times out; llama-server's wait
        (HTTP_POLLING_SECONDS, 1 s) starts again at every result of any request, its /slots
        answers too, so the model went on generating for a second or more after a stop."""
        async with contextlib.aclosing(self.stream(request)) as events:
            async for event in events:
                if isinstance(event, ModelReply):
                    return event
        raise ModelError("the model's stream ended without a final message")

    async def stream(self, request: ModelRequest) -> AsyncIterator[TextDelta | ModelReply]:
        parts: list[str] = []
        finish_reason: str | None = None
        model = request.model
        usage: Usage | None = None
        # Leaving this block any way (the end, an error, the task cancelled, the generator
        # closed) closes the response, so the connection closes and the server stops generating.
        async with contextlib.AsyncExitStack() as stack:
            try:
                response = await self._open_stream(request, stack)
            except openai.APIError as exc:
                raise self._error(exc, request) from exc
            try:
                async for chunk in _chunks(response):
                    model = chunk.get("model") or model
                    if isinstance(chunk.get("usage"), dict):
                        usage = _usage(chunk["usage"])
                    choices = chunk.get("choices")
                    if not choices:
                        continue
                    choice = choices[0]
                    finish_reason = choice.get("finish_reason") or finish_reason
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        parts.append(content)
                        yield TextDelta(content)
            except httpx.TimeoutException as exc:
                raise ModelTimeout("the model's stream stalled past MODEL_TIMEOUT_SECONDS") from exc
            except httpx.TransportError as exc:
                raise ModelError(f"the model's stream was cut off: {exc}") from exc
            except (ValueError, LookupError, TypeError, AttributeError) as exc:  # not JSON, not a chunk
                raise ModelError(f"the model's stream sent a malformed chunk: {exc}"[:MAX_MESSAGE_CHARS]) from exc
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

    async def _open_stream(self, request: ModelRequest, stack: contextlib.AsyncExitStack) -> httpx.Response:
        """The response of a streamed completion, its body unread (`_chunks` reads it), closed
        with `stack`. The SDK sends the request (auth, its retries until the response starts,
        its status errors), through its generic `post` rather than `chat.completions.create`,
        which first walks the arguments against its TypedDicts: 2.94 -> 1.49 ms from here to
        the connect, measured in the platform (docs/PERFORMANCE.md, Findings, items 9 and 10),
        for a body that is plain JSON already."""
        body = {key: value for key, value in self._arguments(request).items() if value is not omit}
        body["stream"] = True
        if not self._stream_options_refused:
            try:
                return await self._post_stream({**body, "stream_options": {"include_usage": True}}, stack)
            except openai.APIStatusError as exc:
                if exc.status_code not in (400, 422) or "stream_options" not in _message(exc):
                    raise
                self._stream_options_refused = True
        return await self._post_stream(body, stack)

    async def _post_stream(self, body: dict[str, Any], stack: contextlib.AsyncExitStack) -> httpx.Response:
        # With `cast_to=httpx.Response` the SDK hands back httpx's response itself, streamed
        # (`_process_response`), whatever `stream_cls` says for its type.
        response = cast(httpx.Response, await self._client.post(
            "/chat/completions", cast_to=httpx.Response, body=body, stream=True,
            stream_cls=AsyncStream[httpx.Response]))
        stack.push_async_callback(response.aclose)
        return response

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
            "presence_penalty": omit if request.presence_penalty is None else request.presence_penalty,
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


async def _chunks(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The stream's `data:` payloads as dicts, up to `[DONE]`.

    Not the SDK's `AsyncStream`: its SSE decoder and one pydantic `ChatCompletionChunk` per
    token were 58 % of an invocation's CPU in bench item 9 (docs/PERFORMANCE.md, Findings);
    `json.loads` on httpx's lines gives what we read of a chunk: measured there, the CPU of a
    32-token invocation 60 -> 40 ms, the time after the model's last byte 6.7 -> 5.1 ms.
    OpenAI-compatible servers send each chunk as one `data:` line; `event:`, `id:`, comments
    and the blank lines between events carry nothing for us. As in the SDK, a payload with an
    `error` is the endpoint's error."""
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        payload = line[5:].lstrip()
        if payload.startswith("[DONE]"):
            return
        chunk = json.loads(payload)
        if not isinstance(chunk, dict):
            raise ValueError(f"a chunk that is not an object: {payload[:100]}")
        if error := chunk.get("error"):
            message = error.get("message") if isinstance(error, dict) else error
            raise ModelError(f"the model endpoint failed mid-stream: {message}"[:MAX_MESSAGE_CHARS])
        yield chunk


def _usage(usage: dict[str, Any] | None) -> Usage | None:
    if usage is None:
        return None
    return Usage(input_tokens=usage.get("prompt_tokens") or 0,
                 output_tokens=usage.get("completion_tokens") or 0)
