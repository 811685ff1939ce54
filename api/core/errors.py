"""Errors the services raise, each carrying its contract error code."""

from typing import Any


class ApiError(Exception):
    code = "INTERNAL_ERROR"
    headers: dict[str, str] | None = None

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class NotFound(ApiError):
    code = "RESOURCE_NOT_FOUND"

    def __init__(self, resource: str, identifier: str) -> None:
        super().__init__(f"{resource} {identifier!r} was not found",
                         details={"resource": resource, "id": identifier})


class InvalidState(ApiError):
    code = "INVALID_STATE"


class ValidationFailed(ApiError):
    code = "VALIDATION_ERROR"

    def __init__(self, field: str, message: str, *, location: str = "query") -> None:
        super().__init__(f"Invalid {field}: {message}", details=[
            {"field": field, "location": location, "message": message, "type": "value_error"}])


class InvocationFailed(ApiError):
    code = "AGENT_INVOCATION_FAILED"


class RateLimited(ApiError):
    """Over a rate limit or quota: `what` (requests, builds, invocations, tokens) of `scope`
    (tenant, key), with the headers that tell a client when to come back."""

    code = "RATE_LIMIT_EXCEEDED"

    def __init__(self, *, what: str, scope: str, limit: int, per: str, retry_after: int) -> None:
        super().__init__(f"This {scope} may make {limit} {what} {per}; it has reached that. "
                         f"Retry after {retry_after} s.",
                         details={"limit": what, "scope": scope, "allowed": limit, "per": per})
        self.what, self.scope = what, scope
        self.headers = {"Retry-After": str(retry_after), "RateLimit-Limit": str(limit),
                        "RateLimit-Remaining": "0", "RateLimit-Reset": str(retry_after)}


class ServiceUnavailable(ApiError):
    code = "SERVICE_UNAVAILABLE"
