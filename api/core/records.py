"""The records the stores keep and the services and the engine pass: each defined once, here.

Pydantic models rather than dataclasses, because the records nest (a build's stages hold
sub-stages, each with its model usage; errors and usage are records of their own) and come
back from both backends as JSON text and scalars: `Model.model_validate(row)` builds the whole
tree in one call and `pydantic_core.to_json` writes it back, where dataclasses would need a
hand-written constructor per nested type. Measured (timeit, best of 5 × 10,000, Python 3.11,
a quiet 2-core machine): a finished build (6 stages, 3 sub-stages, usage on each, a design in
its context) is read back in 46 µs (json.loads of its JSON columns, then model_validate)
against 24 µs for the json.loads alone that dicts needed, and its stages are written by
to_json in 10 µs against 40 µs for json.dumps of the same dicts: about a project GET's 3 %.
Handing SQLite's row to model_validate_json as one JSON text would read it in 29 µs, but that
text would be assembled by hand from the columns, and DynamoDB's items are not JSON.

Records are mutable: the engine advances a build's stages in place between its writes.

What derives from the models: the fields each backend stores (SQLite columns, DynamoDB
attributes), and how each is stored, by name: a field holding a list, a mapping or a record is
JSON text on both backends; `float` and `int` fields are numbers read back as such, `bool`
ones booleans. A name is stored one way on every record (the backends map by name: the
invocation's `error`, a string, is JSON text because a build's is a record). Timestamps are
ISO-8601 UTC strings with microseconds and a `Z`, which sort in time order as text.
"""

import types
import typing
from typing import Any, Self

from pydantic import BaseModel, ConfigDict


class StoredRecord(BaseModel):
    # A field a backend returns that the model lacks is a drift between the two: refuse it.
    model_config = ConfigDict(extra="forbid")

    def changed(self, changes: dict[str, Any]) -> Self:
        """A copy with `changes` (fields by name) applied, each checked against its field as
        a read would check it: a dict given for a record field becomes that record, an unknown
        name or a wrong type raises. Plain assignments are not checked (the engine makes
        hundreds per build, each a validation if they were)."""
        copy = self.model_copy()
        for name, value in changes.items():
            self.__pydantic_validator__.validate_assignment(copy, name, value)
        return copy


class ModelUsage(StoredRecord):
    """The model calls of one stage or sub-stage (stored with it, summed on the build)."""

    model: str
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    # True where a provider reported no counts and ours are estimates.
    tokens_estimated: bool = False
    duration_ms: float = 0.0
    prompt_version: str


class BuildUsage(StoredRecord):
    """The model calls of a whole build: its stages' usage summed."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    tokens_estimated: bool = False
    duration_ms: float = 0.0


class StageError(StoredRecord):
    code: str
    message: str


class BuildError(StoredRecord):
    # The stage that was running, if any.
    stage: str | None
    code: str
    message: str


class SubStage(StoredRecord):
    name: str
    weight: int
    status: str
    started_at: str | None = None
    completed_at: str | None = None
    duration_seconds: float | None = None
    model_usage: ModelUsage | None = None


class Stage(StoredRecord):
    name: str
    order: int
    weight: int
    status: str
    started_at: str | None = None
    completed_at: str | None = None
    duration_seconds: float | None = None
    error: StageError | None = None
    sub_stages: list[SubStage]
    model_usage: ModelUsage | None = None

    def steps(self) -> tuple["Stage | SubStage", ...]:
        """The stage and its sub-stages: every unit of work it records."""
        return (self, *self.sub_stages)


class Project(StoredRecord):
    tenant_id: str
    project_id: str
    user_id: str
    project_name: str
    requirement: str
    priority: int
    tags: list[str]
    # What the project is for, in the owner's words (the requirement says what to build).
    description: str | None = None
    # Mirrors the latest build (api.database.store.PROJECT_STATUS_FOR_BUILD).
    status: str
    progress: float
    current_stage: str | None
    latest_build_id: str | None
    created_at: str
    updated_at: str


class Build(StoredRecord):
    tenant_id: str
    build_id: str
    project_id: str
    status: str
    progress: float
    current_stage: str | None
    stages: list[Stage]
    # What the stages produced so far, read by the later ones and by a resumed build.
    context: dict[str, Any]
    error: BuildError | None = None
    request_id: str | None = None
    # The engine instance holding the build, and until when.
    owner: str | None = None
    lease_until: str | None = None
    # How often an engine took the build over from one that died.
    recoveries: int = 0
    duration_seconds: float | None = None
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    updated_at: str
    # None on builds that never recorded any model use.
    usage: BuildUsage | None = None


class BuildLogLine(StoredRecord):
    stage: str
    timestamp: str
    level: str
    message: str


class Artifact(StoredRecord):
    tenant_id: str
    project_id: str
    path: str
    build_id: str
    stage: str
    # None where artifacts are listed (list_artifacts leaves the content out).
    content: str | None = None
    size: int
    created_at: str


class Agent(StoredRecord):
    tenant_id: str
    # `<project_id>:<agent_name>`.
    agent_id: str
    project_id: str
    agent_name: str
    description: str
    category: str
    capabilities: list[str]
    # The design's tools as the model described them (name, description, typed parameters).
    tools: list[dict[str, Any]]
    system_prompt: str
    status: str
    error_message: str | None = None
    build_id: str | None = None
    created_at: str
    updated_at: str
    # The runtime stats, kept by the store with every invocation recorded.
    total_invocations: int = 0
    successful_invocations: int = 0
    failed_invocations: int = 0
    cancelled_invocations: int = 0
    total_duration_ms: float = 0.0
    total_input_tokens: int = 0
    total_output_tokens: int = 0
    # Over `ttft_count`: the invocations that had a first token.
    ttft_ms_total: float = 0.0
    ttft_count: int = 0
    last_invoked_at: str | None = None


# The runtime stats: what registering an agent again keeps.
AGENT_STAT_FIELDS = ("total_invocations", "successful_invocations", "failed_invocations",
                     "cancelled_invocations", "total_duration_ms", "total_input_tokens",
                     "total_output_tokens", "ttft_ms_total", "ttft_count", "last_invoked_at")


class Invocation(StoredRecord):
    tenant_id: str
    invocation_id: str
    agent_id: str
    project_id: str
    session_id: str | None = None
    input_text: str
    output: str | None = None
    # `success`, `failed` or `cancelled`.
    status: str
    error: str | None = None
    duration_ms: float
    # The steps of the call (the history sent, what was dropped, the model's answer).
    trace: list[dict[str, Any]] | None = None
    created_at: str
    model: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    # Counted by us: the endpoint sent no usage.
    tokens_estimated: bool = False
    time_to_first_token_ms: float | None = None
    finish_reason: str | None = None


class Session(StoredRecord):
    tenant_id: str
    session_id: str
    agent_id: str
    display_name: str | None = None
    metadata: dict[str, Any] | None = None
    message_count: int = 0
    created_at: str
    last_active_at: str


class Message(StoredRecord):
    tenant_id: str
    message_id: str
    session_id: str
    # The message's place in its session, from 1: numbered by the store as it records it.
    seq: int = 0
    # `user` or `assistant`.
    role: str
    content: str
    invocation_id: str | None = None
    created_at: str


STORED_RECORDS: tuple[type[StoredRecord], ...] = (
    Project, Build, BuildLogLine, Artifact, Agent, Invocation, Session, Message)


def field_names(model: type[StoredRecord]) -> tuple[str, ...]:
    """The record's fields in declaration order: its columns and attributes."""
    return tuple(model.model_fields)


def _kind(annotation: Any) -> str:
    """How a field of this type is stored: json, float, int, bool or str."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        (annotation,) = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if typing.get_origin(annotation) in (list, dict) or (
            isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        return "json"
    return {float: "float", int: "int", bool: "bool"}.get(annotation, "str")


def _stored_kinds() -> dict[str, str]:
    kinds: dict[str, str] = {}
    for model in STORED_RECORDS:
        for name, info in model.model_fields.items():
            kind = _kind(info.annotation)
            # A name is stored one way everywhere; JSON wins (see the module's docstring).
            if kinds.get(name, kind) not in (kind, "json") and kind != "json":
                raise TypeError(f"{model.__name__}.{name} is {kind}, elsewhere {kinds[name]}")
            kinds[name] = "json" if "json" in (kind, kinds.get(name)) else kind
    return kinds


_KINDS = _stored_kinds()
JSON_FIELDS = frozenset(name for name, kind in _KINDS.items() if kind == "json")
FLOAT_FIELDS = frozenset(name for name, kind in _KINDS.items() if kind == "float")
INT_FIELDS = frozenset(name for name, kind in _KINDS.items() if kind == "int")
BOOL_FIELDS = frozenset(name for name, kind in _KINDS.items() if kind == "bool")
# What a row or item written before a field existed reads as: the field's default.
FIELD_DEFAULTS: dict[str, Any] = {
    name: info.default for model in STORED_RECORDS for name, info in model.model_fields.items()
    if not info.is_required()}
