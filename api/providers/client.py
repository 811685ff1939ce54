"""Every model call goes through one ModelClient: the per-process concurrency cap, the call's
deadline, the metrics and the log line, and our own token count when the endpoint sends none.

A call is cancelled by cancelling the task that awaits it (a stopped build, a client gone
from a stream): the provider's request is closed with it, and the call is counted and logged
`cancelled` with what it had used so far.
"""

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from api.providers.base import (
    ModelError,
    ModelProvider,
    ModelReply,
    ModelRequest,
    ModelTimeout,
    SchemaUnsupported,
    TextDelta,
    Usage,
)
from api.providers.tokens import estimate_prompt_tokens, estimate_tokens
from api.observability import metrics

logger = logging.getLogger("api.providers")

# Between attempts the SDKs back off (openai: up to 8 s each); the deadline allows for it.
BACKOFF_ALLOWANCE_SECONDS = 10.0


@dataclass
class ModelCall:
    """A finished call as the records keep it."""

    text: str
    model: str
    finish_reason: str
    usage: Usage
    duration_ms: float
    time_to_first_token_ms: float | None


@dataclass
class _Seen:
    call: ModelCall | None = None


@dataclass
class StreamProgress:
    """What a streamed call has produced so far: read it when the call is cancelled."""

    request: ModelRequest
    started: float = dataclasses.field(default_factory=time.perf_counter)
    text: str = ""
    time_to_first_token_ms: float | None = None

    def usage_so_far(self) -> Usage:
        return Usage(input_tokens=estimate_prompt_tokens(self.request.messages),
                     output_tokens=estimate_tokens(self.text), estimated=True)

    def elapsed_ms(self) -> float:
        return round((time.perf_counter() - self.started) * 1000, 3)


class ModelClient:
    def __init__(self, provider: ModelProvider, *, max_concurrency: int, timeout_seconds: float,
                 max_retries: int) -> None:
        self.provider = provider
        self._slots = asyncio.Semaphore(max_concurrency)
        self.deadline_seconds = (max_retries + 1) * timeout_seconds + max_retries * BACKOFF_ALLOWANCE_SECONDS
        # Models whose endpoint refused `response_format: json_schema`: asked in the prompt.
        self._schema_refused: set[str] = set()

    @property
    def provider_name(self) -> str:
        return self.provider.name

    def _prepared(self, request: ModelRequest) -> ModelRequest:
        if request.output_schema is not None and request.model in self._schema_refused:
            return dataclasses.replace(request, schema_in_prompt=True)
        return request

    @contextlib.asynccontextmanager
    async def _observed(self, request: ModelRequest, progress: StreamProgress) -> AsyncIterator[_Seen]:
        """One call's outcome for the metrics and the log line, whatever ends it."""
        seen, outcome = _Seen(), "error"
        try:
            yield seen
            outcome = "success"
        except TimeoutError as exc:
            outcome = "timeout"
            raise ModelTimeout(f"the model did not answer within {self.deadline_seconds:g} s") from exc
        except ModelError as exc:
            outcome = exc.outcome
            raise
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "cancelled"
            raise
        finally:
            self._observe(request, progress, seen.call, outcome)

    async def complete(self, request: ModelRequest) -> ModelCall:
        progress = StreamProgress(request)
        async with self._observed(request, progress) as seen, self._slots:
            async with asyncio.timeout(self.deadline_seconds):
                try:
                    reply = await self.provider.complete(self._prepared(request))
                except SchemaUnsupported:
                    self._schema_refused.add(request.model)
                    logger.warning("Model endpoint refused json_schema output; asking in the prompt",
                                   extra={"model": request.model, "provider": self.provider.name})
                    reply = await self.provider.complete(self._prepared(request))
            seen.call = self._finished(progress, reply)
        return seen.call

    async def stream(self, request: ModelRequest,
                     progress: StreamProgress) -> AsyncIterator[TextDelta | ModelCall]:
        """Deltas, then one ModelCall. `progress` follows the text, for a cancelled call."""
        async with self._observed(request, progress) as seen, self._slots:
            # aclosing: a consumer that stops early closes the provider's request now, not
            # whenever the generator is collected.
            async with (asyncio.timeout(self.deadline_seconds),
                        contextlib.aclosing(self.provider.stream(self._prepared(request))) as events):
                async for event in events:
                    if isinstance(event, ModelReply):
                        seen.call = self._finished(progress, event)
                        continue
                    if progress.time_to_first_token_ms is None and event.text:
                        progress.time_to_first_token_ms = progress.elapsed_ms()
                    progress.text += event.text
                    yield event
            if seen.call is None:
                raise ModelError("the model's stream ended without a final message")
        yield seen.call

    async def list_models(self) -> list[str]:
        return await self.provider.list_models()

    async def close(self) -> None:
        await self.provider.close()

    @staticmethod
    def _finished(progress: StreamProgress, reply: ModelReply) -> ModelCall:
        usage = reply.usage
        if usage is None or (usage.input_tokens == 0 and usage.output_tokens == 0 and reply.text):
            # The endpoint sent no usage (some never do in a stream): ours, marked estimated.
            usage = Usage(input_tokens=estimate_prompt_tokens(progress.request.messages),
                          output_tokens=estimate_tokens(reply.text), estimated=True)
        return ModelCall(text=reply.text, model=reply.model or progress.request.model,
                         finish_reason=reply.finish_reason, usage=usage,
                         duration_ms=progress.elapsed_ms(),
                         time_to_first_token_ms=progress.time_to_first_token_ms)

    def _observe(self, request: ModelRequest, progress: StreamProgress, call: ModelCall | None,
                 outcome: str) -> None:
        usage = call.usage if call is not None else progress.usage_so_far()
        if call is None and not progress.text:
            usage = dataclasses.replace(usage, output_tokens=0)
        seconds = (call.duration_ms if call else progress.elapsed_ms()) / 1000
        ttft = progress.time_to_first_token_ms
        metrics.record_model_call(
            provider=self.provider.name, model=request.model, operation=request.operation,
            outcome=outcome, seconds=seconds, ttft_seconds=None if ttft is None else ttft / 1000,
            input_tokens=usage.input_tokens, output_tokens=usage.output_tokens)
        level = logging.INFO if outcome in ("success", "cancelled") else logging.WARNING
        logger.log(level, "Model call", extra={
            "provider": self.provider.name, "model": request.model, "operation": request.operation,
            "purpose": request.purpose, "outcome": outcome, "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens, "tokens_estimated": usage.estimated,
            "duration_ms": round(seconds * 1000, 3), "time_to_first_token_ms": ttft,
            "finish_reason": call.finish_reason if call else None})
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("Model call content", extra={
                "purpose": request.purpose,
                "prompt": [dataclasses.asdict(message) for message in request.messages],
                "output": call.text if call else progress.text})
