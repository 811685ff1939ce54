"""Every error the app can answer, in the contract's error envelope."""

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from api.core.envelope import error_response
from api.core.errors import ApiError
from api.core.store_errors import (
    InvalidCursor,
    InvalidValue,
    RecordConflict,
    RecordTooLarge,
    StoreError,
    StoreThrottled,
)

logger = logging.getLogger("api.errors")

HTTP_STATUS_CODES = {404: "RESOURCE_NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "PAYLOAD_TOO_LARGE",
                     429: "RATE_LIMIT_EXCEEDED", 503: "SERVICE_UNAVAILABLE", 400: "VALIDATION_ERROR"}


def _field_name(error: dict[str, Any]) -> str:
    """("body", "tags", 3) -> "tags[3]"; ("query", "limit") -> "limit"; a body that is not
    JSON at all -> "body" (pydantic puts the character offset where a field would be)."""
    location = tuple(error["loc"])
    if error["type"] == "json_invalid":
        return "body"
    parts = [str(part) for part in location[1:]] or [str(part) for part in location]
    name = ""
    for part in parts:
        name += f"[{part}]" if part.isdigit() else (f".{part}" if name else part)
    return name


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path (Starlette names only the first route's)."""
    return ", ".join(
        method for method in ("GET", "POST", "PUT", "PATCH", "DELETE")
        if any(route.matches({**request.scope, "method": method})[0] is Match.FULL
               for route in request.app.router.routes))


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return api_error_response(exc)


def api_error_response(exc: ApiError) -> JSONResponse:
    """A service's error in the envelope, with its headers (a 429's Retry-After): also how the
    middleware answer the ones they raise before any route runs."""
    return error_response(exc.code, exc.message, details=exc.details, headers=exc.headers)


def _error_message(error: dict[str, Any], content_type: str) -> str:
    """Pydantic's message; for a body that is not an object because it was not sent as JSON
    (a form post), what to send instead."""
    if tuple(error["loc"]) == ("body",) and not content_type.startswith("application/json"):
        return (f"The body must be a JSON object sent with Content-Type: application/json; this "
                f"request's Content-Type is {content_type or 'missing'}")
    return str(error["msg"])


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    content_type = request.headers.get("content-type", "").lower()
    details = [
        {"field": _field_name(error), "location": str(error["loc"][0]),
         "message": _error_message(error, content_type), "type": error["type"]}
        for error in exc.errors()
    ]
    fields = ", ".join(dict.fromkeys(detail["field"] for detail in details))
    return error_response("VALIDATION_ERROR", f"Invalid request: {fields}", details=details)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = HTTP_STATUS_CODES.get(exc.status_code, "INTERNAL_ERROR")
    headers, details = getattr(exc, "headers", None), None
    if exc.status_code == 404:
        message = f"No route matches {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}"
        headers = {**(headers or {}), "Allow": _allowed_methods(request)}
    else:
        message = str(exc.detail)
    if exc.status_code == 400:
        # FastAPI's answer to a body it could not decode at all (not UTF-8, nested too deep).
        details = [{"field": "body", "location": "body", "message": message, "type": "body_unreadable"}]
    return error_response(code, message, details=details, headers=headers)


async def _store_error(request: Request, exc: StoreError) -> JSONResponse:
    return store_error_response(exc)


def store_error_response(exc: StoreError) -> JSONResponse:
    """Store errors by kind; the same on every backend. Only the kinds about the caller's input
    say what the store said: the others may name tables, files or the backend's error text."""
    if isinstance(exc, InvalidCursor):
        return error_response(exc.code, str(exc), details=[
            {"field": "last_key", "location": "query", "message": str(exc), "type": "invalid_cursor"}])
    if isinstance(exc, InvalidValue):
        return error_response(exc.code, str(exc), details=[
            {"field": exc.field, "location": "body", "message": exc.reason, "type": "value_error"}])
    if isinstance(exc, RecordTooLarge):
        return error_response(exc.code, f"Too large to store: {exc}", details=[
            {"field": exc.field, "location": "body", "message": str(exc), "type": "record_too_large"}])
    if isinstance(exc, RecordConflict):
        logger.warning("Database conflict", extra={"error": str(exc)})
        return error_response(exc.code, "The record kept changing while it was written; "
                                        "nothing was stored.")
    logger.error("Database error", extra={"error": str(exc)})
    headers = ({"Retry-After": str(exc.retry_after_seconds)} if isinstance(exc, StoreThrottled)
               else None)
    return error_response(exc.code, "The database could not complete the request.",
                          headers=headers)


def register_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(StoreError, _store_error)  # type: ignore[arg-type]
