from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, StringConstraints, model_validator

from api.schemas.common import StrictModel

Capability = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64,
                                              pattern=r"^[A-Za-z0-9_.-]+$")]
Category = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64,
                                            pattern=r"^[A-Za-z0-9_.-]+$")]
SessionId = Annotated[str, StringConstraints(pattern=r"^sess_[0-9a-f]{16}$")]
Text = Annotated[str, StringConstraints(min_length=1, max_length=10000)]


class AgentUpdate(StrictModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"description": "Triages support tickets", "capabilities": ["ticket_triage", "refunds"]}]})

    description: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)] | None = None
    category: Category | None = None
    capabilities: list[Capability] | None = Field(default=None, max_length=50)

    @model_validator(mode="after")
    def _something_to_change(self) -> "AgentUpdate":
        if not self.model_fields_set:
            raise ValueError("give at least one of description, category, capabilities")
        return self


class AgentStatusUpdate(StrictModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "offline", "error_message": "maintenance"}]})

    status: Literal["running", "offline"]
    error_message: Annotated[str, StringConstraints(max_length=2000)] | None = None


class InvokeRequest(StrictModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"input_text": "Where is my refund for order 1042?", "enable_trace": True}]})

    input_text: Text
    session_id: SessionId | None = None
    enable_trace: bool = False
    # Or `Accept: text/event-stream`: the answer as Server-Sent Events.
    stream: bool = False


class SessionCreate(StrictModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"display_name": "Refund questions", "metadata": {"channel": "web"}}]})

    display_name: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)] | None = None
    metadata: dict[str, Any] = Field(default_factory=dict, max_length=50)


class MessageCreate(StrictModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"content": "Where is my refund for order 1042?"}]})

    content: Text
    role: Literal["user"] = "user"
    stream: bool = False
