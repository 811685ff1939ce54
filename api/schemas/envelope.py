"""The envelopes of the contract as response models, for the OpenAPI document.

The routers render their answers themselves (api.core.envelope, orjson); these models describe
those bodies, so that the schema a client generates from is the one the service answers with
(tests/routers/test_openapi.py holds the two together, schemathesis checks the live server)."""

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import ConfigDict, Field

from api.core.envelope import ERROR_CODES
from api.schemas.common import Documented

T = TypeVar("T")
ErrorCode = Literal[tuple(ERROR_CODES)]  # type: ignore[valid-type]

REQUEST_ID = "6f1c2d4e-8a9b-4c3d-9e8f-0a1b2c3d4e5f"
TIMESTAMP_EXAMPLE = "2026-12-03T18:32:02.435795Z"


class Record(Documented):
    """A response record: exactly these fields, so that a field added to an answer without its
    model fails the tests rather than going undocumented."""

    model_config = ConfigDict(extra="forbid")


class TenantRecord(Record):
    """A record of the data model: every one belongs to exactly one tenant."""

    tenant_id: str = Field(description="The tenant owning the record (`default` until API keys)")


class Envelope(Record, Generic[T]):
    success: Literal[True]
    data: T
    timestamp: datetime
    request_id: str = Field(description="Equals the X-Request-ID response header")


class Page(Record, Generic[T]):
    items: list[T]
    count: int = Field(ge=0, le=100, description="Items on this page")
    last_key: str | None = Field(description="Cursor of the next page (`last_key`); null on the last page")


class ErrorDetail(Record):
    field: str = Field(description="`tags[3]`, `limit`, `body`")
    location: str = Field(description="`body`, `query`, `path`")
    message: str
    type: str = Field(description="pydantic's error type, or `value_error`, `invalid_cursor`, …")


class ErrorBody(Record):
    code: ErrorCode
    message: str
    details: list[ErrorDetail] | dict[str, Any] | None = Field(
        description="For VALIDATION_ERROR one entry per bad field; otherwise what the code is about "
                    "(the resource and id, the status, the exception with DEBUG=true), or null")
    suggestion: str = Field(description="What to do about it, one line per code")
    trace_id: str = Field(description="Equals request_id and the X-Request-ID response header")


class ErrorEnvelope(Record):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "success": False,
        "error": {"code": "RESOURCE_NOT_FOUND", "message": "project 'proj_000000000000' was not found",
                  "details": {"resource": "project", "id": "proj_000000000000"},
                  "suggestion": ERROR_CODES["RESOURCE_NOT_FOUND"][1], "trace_id": REQUEST_ID},
        "timestamp": TIMESTAMP_EXAMPLE, "request_id": REQUEST_ID}]})

    success: Literal[False]
    error: ErrorBody
    timestamp: datetime
    request_id: str


class ProjectDeleted(Record):
    project_id: str
    deleted: Literal[True]


class AgentDeleted(Record):
    agent_id: str
    deleted: Literal[True]


class SessionDeleted(Record):
    session_id: str
    deleted: Literal[True]
