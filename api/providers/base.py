"""The model-provider interface: one chat model call, whole or streamed.

A provider speaks one wire protocol (the offline templates, OpenAI Chat Completions, Bedrock
Converse) and nothing else. What every call needs whatever the protocol (the concurrency cap,
the deadline, the metrics and the log line, counting tokens when the endpoint does not) is
`api.providers.client.ModelClient`'s; what a build stage asks and how its answer is checked
is the engine's (`api.engine.stage_work`). Retries are the SDKs' own (the openai SDK's
jittered backoff honouring `Retry-After`, botocore's retry modes): one retry policy each.
"""

import abc
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant"]
# What a call is for: the label of the model metrics and the log line (bounded values).
Operation = Literal["build", "invoke"]


class ModelError(Exception):
    """The model call failed after the provider's retries; `code` is the stage error code or
    the invocation's error."""

    code = "MODEL_ERROR"
    outcome = "error"


class ModelTimeout(ModelError):
    code = "MODEL_TIMEOUT"
    outcome = "timeout"


class ModelRateLimited(ModelError):
    code = "MODEL_RATE_LIMITED"
    outcome = "rate_limited"


class SchemaUnsupported(ModelError):
    """The endpoint refused `response_format: json_schema`; the caller asks again with the
    schema in the prompt instead."""


@dataclass(frozen=True)
class Message:
    role: Role
    content: str


@dataclass(frozen=True)
class OutputSchema:
    """A JSON schema the answer must follow (sent as `response_format` where supported; the
    answer is validated on our side either way)."""

    name: str
    schema: Mapping[str, Any]


@dataclass(frozen=True)
class ModelRequest:
    operation: Operation
    model: str
    messages: tuple[Message, ...]
    max_output_tokens: int
    temperature: float | None = None
    # Sent where the API has it (Chat Completions); Converse has no such setting.
    presence_penalty: float | None = None
    output_schema: OutputSchema | None = None
    # What the call is for (a stage name, "invoke"), for the log line; the offline provider
    # answers from `inputs` (the structured facts the prompt was written from) instead of
    # reading the prose.
    purpose: str = ""
    inputs: Mapping[str, Any] = field(default_factory=dict)
    # With `output_schema` and an endpoint that refused json_schema: ask in the prompt only.
    schema_in_prompt: bool = False


@dataclass(frozen=True)
class Usage:
    input_tokens: int
    output_tokens: int
    # True when the endpoint reported no usage and the counts are ours (api.providers.tokens).
    estimated: bool = False


@dataclass(frozen=True)
class ModelReply:
    text: str
    finish_reason: str
    model: str
    # None when the endpoint did not report it; ModelClient then estimates.
    usage: Usage | None


@dataclass(frozen=True)
class TextDelta:
    text: str


class ModelProvider(abc.ABC):
    """One protocol. Raise ModelError (or a subclass) for a failed call; a cancelled call
    must close its request (the SDKs do when the task is cancelled)."""

    name: str
    # Where the calls go (shown by the health check, credentials stripped); None: nowhere.
    endpoint: str | None = None

    @abc.abstractmethod
    async def complete(self, request: ModelRequest) -> ModelReply:
        """The whole answer in one reply."""

    @abc.abstractmethod
    def stream(self, request: ModelRequest) -> AsyncIterator[TextDelta | ModelReply]:
        """Text deltas as they come, then exactly one ModelReply (the whole text, the finish
        reason and the usage if the endpoint sent it)."""

    @abc.abstractmethod
    async def list_models(self) -> list[str]:
        """The endpoint's model list (the health check's reachability probe)."""

    async def close(self) -> None:
        """Release connections."""
