"""What the agents and sessions routes answer, field for field as api.services.agent_service
shapes them."""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.schemas.envelope import TIMESTAMP_EXAMPLE, Page, Record, TenantRecord

AGENT_ID_EXAMPLE = "proj_a7dc304a08fe:triages_customer_agent"


class ToolParameter(Record):
    name: str
    type: str = Field(description="A Python type name: `str`, `int`, …")
    required: bool


class Tool(Record):
    name: str
    description: str
    parameters: list[ToolParameter]


class RuntimeStats(Record):
    total_invocations: int
    successful_invocations: int
    failed_invocations: int
    cancelled_invocations: int
    avg_duration_ms: float
    last_invoked_at: datetime | None
    total_input_tokens: int
    total_output_tokens: int
    avg_time_to_first_token_ms: float


class AgentPublic(TenantRecord):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "tenant_id": "default", "agent_id": AGENT_ID_EXAMPLE, "project_id": "proj_a7dc304a08fe",
        "agent_name": "triages_customer_agent",
        "description": "Triages support tickets and answers refund questions",
        "category": "customer_support", "capabilities": ["ticket_triage", "refunds"],
        "tools": [{"name": "lookup_order", "description": "Find an order by its number",
                   "parameters": [{"name": "order_id", "type": "str", "required": True}]}],
        "system_prompt": "You are triages_customer_agent, a customer support agent…",
        "status": "running", "error_message": None, "build_id": "build_af2b10b7db78",
        "created_at": TIMESTAMP_EXAMPLE, "updated_at": TIMESTAMP_EXAMPLE,
        "runtime_stats": {"total_invocations": 2, "successful_invocations": 2, "failed_invocations": 0,
                          "cancelled_invocations": 0, "avg_duration_ms": 0.791,
                          "last_invoked_at": TIMESTAMP_EXAMPLE, "total_input_tokens": 239,
                          "total_output_tokens": 101, "avg_time_to_first_token_ms": 0.253}}]})

    agent_id: str = Field(description="`<project_id>:<agent_name>`")
    project_id: str
    agent_name: str
    description: str
    category: str
    capabilities: list[str]
    tools: list[Tool]
    system_prompt: str
    status: Literal["running", "offline"]
    error_message: str | None
    build_id: str
    created_at: datetime
    updated_at: datetime
    runtime_stats: RuntimeStats


class TraceStep(BaseModel):
    """One step of an invocation's trace: `history`, `tools`, `model`, each with its figures."""

    model_config = ConfigDict(extra="allow")
    step: str


class InvocationPublic(TenantRecord):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "tenant_id": "default", "invocation_id": "inv_e5717620c68a0bba", "agent_id": AGENT_ID_EXAMPLE,
        "project_id": "proj_a7dc304a08fe", "session_id": None,
        "input_text": "Where is my refund for order 1042?",
        "output": "[offline provider] triages_customer_agent received: …", "status": "success",
        "error": None, "duration_ms": 1.02, "model": "offline", "input_tokens": 119,
        "output_tokens": 50, "tokens_estimated": True, "time_to_first_token_ms": 0.33,
        "finish_reason": "stop", "created_at": TIMESTAMP_EXAMPLE}]})

    invocation_id: str = Field(pattern=r"^inv_[0-9a-f]{16}$")
    agent_id: str
    project_id: str
    session_id: str | None
    input_text: str
    output: str | None = Field(description="null when the model gave nothing before failing")
    status: Literal["success", "failed", "cancelled"]
    error: str | None
    duration_ms: float
    model: str | None
    input_tokens: int
    output_tokens: int
    tokens_estimated: bool
    time_to_first_token_ms: float | None
    finish_reason: str | None
    created_at: datetime
    trace: list[TraceStep] | None = Field(
        default=None, description="With `enable_trace` on an invocation, always in the list")


class SessionPublic(TenantRecord):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "tenant_id": "default", "session_id": "sess_c726aeeefa01f083", "agent_id": AGENT_ID_EXAMPLE,
        "display_name": "Refund questions", "metadata": {"channel": "web"}, "message_count": 2,
        "created_at": TIMESTAMP_EXAMPLE, "last_active_at": TIMESTAMP_EXAMPLE}]})

    session_id: str = Field(pattern=r"^sess_[0-9a-f]{16}$")
    agent_id: str
    display_name: str | None
    metadata: dict[str, Any]
    message_count: int = Field(ge=0)
    created_at: datetime
    last_active_at: datetime


class MessagePublic(TenantRecord):
    message_id: str = Field(pattern=r"^msg_[0-9a-f]{16}$")
    session_id: str
    role: Literal["user", "assistant"]
    content: str
    invocation_id: str
    created_at: datetime


class TurnPublic(Record):
    """POST /sessions/{id}/messages: both messages and the invocation (without its trace)."""

    user_message: MessagePublic
    assistant_message: MessagePublic
    invocation: InvocationPublic


class AgentList(Page[AgentPublic]):
    """A page of agents."""


class InvocationList(Page[InvocationPublic]):
    """A page of invocations, newest first."""


class SessionList(Page[SessionPublic]):
    """A page of sessions, most recently active first."""


class MessageList(Page[MessagePublic]):
    """A page of messages, oldest first."""
