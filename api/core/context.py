"""Request and build context carried in contextvars and merged into every log record.

A build task copies the context of the request that started it, so every line it logs
carries that request's id along with the build's own ids.
"""

from contextvars import ContextVar

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
tenant_id_var: ContextVar[str | None] = ContextVar("tenant_id", default=None)
project_id_var: ContextVar[str | None] = ContextVar("project_id", default=None)
user_id_var: ContextVar[str | None] = ContextVar("user_id", default=None)
build_id_var: ContextVar[str | None] = ContextVar("build_id", default=None)
agent_id_var: ContextVar[str | None] = ContextVar("agent_id", default=None)
invocation_id_var: ContextVar[str | None] = ContextVar("invocation_id", default=None)

# The address a request came from, for the audit trail's lines (api.observability.audit); not
# merged into every line: the access line has it as a field of its own.
client_address_var: ContextVar[str | None] = ContextVar("client_address", default=None)

CONTEXT_VARS: dict[str, ContextVar[str | None]] = {
    "request_id": request_id_var,
    "tenant_id": tenant_id_var,
    "project_id": project_id_var,
    "user_id": user_id_var,
    "build_id": build_id_var,
    "agent_id": agent_id_var,
    "invocation_id": invocation_id_var,
}


def current_context() -> dict[str, str]:
    """The context fields that are set, for log records."""
    return {name: value for name, var in CONTEXT_VARS.items() if (value := var.get()) is not None}


def bind(**fields: str | None) -> None:
    """Set context fields for the rest of the current task (and tasks it starts)."""
    for name, value in fields.items():
        CONTEXT_VARS[name].set(value)
