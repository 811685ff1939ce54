from typing import Annotated, Literal

from pydantic import ConfigDict, Field, StringConstraints

from api.schemas.common import Identifier, Name, StrictModel

Tag = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=50)]
ProjectStatus = Literal["pending", "building", "pausing", "paused", "completed", "failed", "stopped"]


class ProjectCreate(StrictModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "requirement": "Build an agent that triages customer support tickets and answers refund questions",
        "project_name": "Support triage", "priority": 3, "tags": ["support"]}]})

    requirement: Annotated[str, StringConstraints(strip_whitespace=True, min_length=10, max_length=5000)]
    project_name: Name | None = None
    description: Annotated[str, StringConstraints(strip_whitespace=True, max_length=2000)] | None = None
    user_id: Identifier = "default"
    priority: int = Field(default=3, ge=1, le=5)
    tags: list[Tag] = Field(default_factory=list, max_length=20)


class ProjectControl(StrictModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"action": "pause", "reason": "checking the design"}]})

    action: Literal["pause", "resume", "stop", "restart"]
    reason: Annotated[str, StringConstraints(max_length=500)] | None = None
