"""Errors the services raise, each carrying its contract error code."""

from typing import Any


class ApiError(Exception):
    code = "INTERNAL_ERROR"

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


class ServiceUnavailable(ApiError):
    code = "SERVICE_UNAVAILABLE"
