from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, StringConstraints, model_validator

from api.schemas.common import StrictModel

Capability = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64,
                                              pattern=r"^[A-Za-z0-9_.-]+$")]
Category = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64,
                                            pattern=r"^[A-Za-z0-9_.-]+$")]
SessionId = Annotated[str, StringConstraints(pattern=r"^sess_[0-9a-f]{16}$")]
Text = Annotated[str, StringConstraints(min_length=1, max_length=10000)]

# orjson renders integers of 64 bits and nesting up to 254 levels: a session's metadata beyond
# either would be stored, then fail every answer that shows it.
METADATA_MAX_DEPTH = 16
METADATA_INTEGER_RANGE = (-(2**63), 2**63 - 1)


def _renderable(value: Any, depth: int = 0) -> Any:
    """`value` as given; depth counts the objects and arrays inside the metadata object."""
    if isinstance(value, dict | list) and depth > METADATA_MAX_DEPTH:
        raise ValueError(f"nests objects and arrays more than {METADATA_MAX_DEPTH} levels deep")
    if isinstance(value, dict):
        for item in value.values():
            _renderable(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _renderable(item, depth + 1)
    elif isinstance(value, int) and not isinstance(value, bool):
        low, high = METADATA_INTEGER_RANGE
        if not low <= value <= high:
            raise ValueError("holds an integer outside the signed 64-bit range")
    return value


class AgentUpdate(StrictModel):
    model_config = ConfigDict(json_schema_extra={
        "examples": [{"description": "Triages support tickets", "capabilities": ["ticket_triage", "refunds"]}],
        "minProperties": 1})

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
    metadata: Annotated[dict[str, Any], AfterValidator(_renderable)] = Field(
        default_factory=dict, max_length=50,
        description=f"Free JSON: at most 50 keys, {METADATA_MAX_DEPTH} levels deep, integers of 64 bits")


class MessageCreate(StrictModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"content": "Where is my refund for order 1042?"}]})

    content: Text
    role: Literal["user"] = "user"
    stream: bool = False
