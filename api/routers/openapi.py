"""The OpenAPI document as the service answers: each operation's error statuses with the
error envelope and the codes each can carry, stable operation ids, no FastAPI 422.

The success bodies are the routes' `response_model`s (api/schemas/*_records.py). The routes
return their own EnvelopeResponse, and FastAPI neither validates nor re-serializes a returned
Response: the models document the answer at no cost per request (docs/PERFORMANCE.md, F5)."""

from collections import defaultdict
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from api.core.envelope import ERROR_CODES
from api.core.principal import PROBES
from api.schemas.common import EXAMPLES
from api.schemas.envelope import ErrorEnvelope

ERROR_SCHEMA = "#/components/schemas/ErrorEnvelope"
# Every /api/v1 operation: an unknown query parameter or a bad one (400), no valid key or a
# role that does not cover it (401, 403), over a rate limit (429; all three with
# AUTH_MODE=api_key), the store failing or throttling (503); every operation at all: a bug (500).
API_ERRORS = ("VALIDATION_ERROR", "AUTHENTICATION_REQUIRED", "PERMISSION_DENIED",
              "RATE_LIMIT_EXCEEDED", "DATABASE_ERROR")
# And every one with a body: too large for the request or for a record (413), a write that
# kept conflicting (409).
WRITE_ERRORS = ("PAYLOAD_TOO_LARGE", "RESOURCE_CONFLICT")
# The POSTs that create take an Idempotency-Key (api.middleware.idempotency).
IDEMPOTENCY_ERRORS = ("IDEMPOTENCY_KEY_REUSED", "IDEMPOTENCY_KEY_IN_USE")
IDEMPOTENT = {"parameters": [{
    "name": "Idempotency-Key", "in": "header", "required": False,
    # HTTP drops the spaces and tabs around a header's value before the service sees it.
    "schema": {"type": "string", "pattern": "^[ \t]*[!-~]{1,255}[ \t]*$"},
    "description": "Makes a retry safe: the same key with the same request within 24 h answers "
                   "the first answer again (header `Idempotent-Replayed: true`) and creates nothing; "
                   "with another request, 409 IDEMPOTENCY_KEY_REUSED; while the first still runs, "
                   "409 IDEMPOTENCY_KEY_IN_USE with Retry-After."}]}


def operation_id(route: APIRoute) -> str:
    """`{tag}-{name}`: `projects-get_project`, stable across paths and FastAPI versions (the
    untagged routes, /docs and /metrics, are not in the document)."""
    return "-".join([*route.tags[:1], route.name])


def _example(code: str) -> dict[str, Any]:
    example = EXAMPLES["ErrorEnvelope"][0]
    return {**example, "error": {**example["error"], "code": code, "details": None,
                                 "message": f"(a {code} message)", "suggestion": ERROR_CODES[code][1]}}


def errors(*codes: str, api: bool = True, body: bool = False,
           idempotent: bool = False) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of an operation that can answer these codes; `api`: the codes of every
    /api/v1 operation too, `body`: those of one with a request body, `idempotent`: those of
    one taking an Idempotency-Key (its `openapi_extra=IDEMPOTENT`)."""
    by_status: dict[int, list[str]] = defaultdict(list)
    every = (*codes, *(API_ERRORS if api else ()), *(WRITE_ERRORS if body else ()),
             *(IDEMPOTENCY_ERRORS if idempotent else ()), "INTERNAL_ERROR")
    for code in dict.fromkeys(every):
        by_status[ERROR_CODES[code][0]].append(code)
    return {status: {
        "description": " or ".join(status_codes),
        "content": {"application/json": {
            "schema": {"allOf": [{"$ref": ERROR_SCHEMA}, {"properties": {"error": {
                "properties": {"code": {"enum": status_codes}}}}}]},
        }},
    } for status, status_codes in sorted(by_status.items())}


def streams(status: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` entry of an operation that answers Server-Sent Events when asked."""
    return {status: {"content": {"text/event-stream": {"schema": {
        "type": "object", "required": ["event", "data"],
        "description": "One event of the stream, with `stream: true` or `Accept: "
        "text/event-stream`: `delta` events with the text as it comes (`{\"text\": ...}`), then "
        "`done` with the JSON answer's `data`, or `error` with the error envelope "
        "(api/routers/streaming.py); a comment every 10 s of silence",
        "properties": {"event": {"type": "string", "enum": ["delta", "done", "error"]},
                       "data": {"type": "string", "contentMediaType": "application/json"}}}}}}}


def _put_back_examples(schema: dict[str, Any]) -> None:
    """The examples with their nulls (api.schemas.common.EXAMPLES says why), and one example
    per code of each error response."""
    for name, component in schema["components"]["schemas"].items():
        if name in EXAMPLES:
            component["examples"] = EXAMPLES[name]
    for methods in schema["paths"].values():
        for operation in methods.values():
            for status, response in operation["responses"].items():
                if status >= "4":
                    content = response["content"]["application/json"]
                    codes = content["schema"]["allOf"][1]["properties"]["error"]["properties"]["code"]["enum"]
                    content["examples"] = {code: {"summary": code, "value": _example(code)} for code in codes}


def _drop_fastapi_422(schema: dict[str, Any]) -> None:
    """FastAPI documents a 422 HTTPValidationError on every operation with parameters; the
    service answers those errors 400 VALIDATION_ERROR (api.core.handlers)."""
    for methods in schema["paths"].values():
        for operation in methods.values():
            operation["responses"].pop("422", None)
    for name in ("HTTPValidationError", "ValidationError"):
        schema["components"]["schemas"].pop(name, None)


def _declare_api_keys(schema: dict[str, Any]) -> None:
    """With AUTH_MODE=api_key: the key every operation but the probes needs, as the server
    answers (api.middleware.auth); clients and Schemathesis's `ignored_auth` read it."""
    schema["components"]["securitySchemes"] = {"ApiKey": {
        "type": "http", "scheme": "bearer",
        "description": "An API key, `nxk_<key id>_<secret>` (also accepted as `X-API-Key`)"}}
    for path, methods in schema["paths"].items():
        if path not in PROBES:
            for operation in methods.values():
                operation["security"] = [{"ApiKey": []}]


def install(app: FastAPI) -> None:
    """Serve the document above at /openapi.json (FastAPI's own, amended once and cached)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            _drop_fastapi_422(schema)
            envelope = ErrorEnvelope.model_json_schema(ref_template="#/components/schemas/{model}")
            schema["components"]["schemas"].update(envelope.pop("$defs"), ErrorEnvelope=envelope)
            _put_back_examples(schema)
            if app.state.settings.auth_mode == "api_key":
                _declare_api_keys(schema)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
