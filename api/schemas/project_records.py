"""What the projects routes answer: projects, builds, stages and artifacts, field for field as
api.services.project_service shapes them."""

from datetime import datetime
from typing import Literal

from pydantic import ConfigDict, Field

from api.schemas.envelope import TIMESTAMP_EXAMPLE, Page, Record, TenantRecord
from api.schemas.projects import ProjectStatus

BuildStatus = Literal["queued", "running", "pausing", "paused", "succeeded", "failed", "cancelled"]
StageStatus = Literal["pending", "running", "completed", "failed", "skipped"]
Percent = float


class ModelUsage(Record):
    """The model calls of one stage or sub-stage."""

    model: str
    calls: int
    input_tokens: int
    output_tokens: int
    tokens_estimated: bool = Field(description="true where a provider reported no counts")
    duration_ms: float
    prompt_version: str


class BuildUsage(Record):
    """The model calls of a whole build."""

    calls: int
    input_tokens: int
    output_tokens: int
    tokens_estimated: bool
    duration_ms: float


class StageError(Record):
    code: str
    message: str


class BuildError(Record):
    stage: str | None = Field(description="The stage that was running, if any")
    code: str
    message: str


class SubStage(Record):
    name: str
    weight: int
    status: StageStatus
    started_at: datetime | None
    completed_at: datetime | None
    duration_seconds: float | None
    model_usage: ModelUsage | None = Field(default=None, description="Once the sub-stage ran")


class StageFields(Record):
    """What a stage's full record and its summary share."""

    name: str
    order: int = Field(ge=1, le=6)
    weight: int
    status: StageStatus
    started_at: datetime | None
    completed_at: datetime | None
    duration_seconds: float | None
    error: StageError | None


class Stage(StageFields):
    """A stage as a build records it."""

    sub_stages: list[SubStage]
    model_usage: ModelUsage | None = Field(default=None, description="Once the stage ran")


class SubStageSummary(Record):
    name: str
    status: StageStatus


class StageSummary(StageFields):
    """A stage in a project's `stages_snapshot` and in GET .../stages."""

    sub_stages: list[SubStageSummary]


class BuildSummary(TenantRecord):
    build_id: str
    project_id: str
    status: BuildStatus
    progress: Percent = Field(ge=0, le=100)
    current_stage: str | None
    error: BuildError | None
    request_id: str | None = Field(description="The request that started the build")
    # A build just queued has not been written back yet: these three come with its first save.
    recoveries: int = Field(default=0, description="Times another process took the build over")
    duration_seconds: float | None = None
    usage: BuildUsage | None = None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    instance_id: str | None = Field(description="The engine running the build; null unless it runs")


class BuildPublic(BuildSummary):
    """A build with its stages (build history, and the build POST /projects queued)."""

    stages: list[Stage]


_PROJECT = {
    "tenant_id": "default", "project_id": "proj_a7dc304a08fe", "user_id": "default", "project_name": "Support triage",
    "description": "First-line triage for the support inbox",
    "requirement": "Build an agent that triages customer support tickets and answers refund questions",
    "priority": 3, "tags": ["support"], "status": "building", "progress": 54.0,
    "current_stage": "agent_developer_manager", "latest_build_id": "build_af2b10b7db78",
    "created_at": TIMESTAMP_EXAMPLE, "updated_at": TIMESTAMP_EXAMPLE}
_STAGE = {"name": "agent_developer_manager", "order": 5, "weight": 45, "status": "running",
          "started_at": TIMESTAMP_EXAMPLE, "completed_at": None, "duration_seconds": None, "error": None}


class ProjectPublic(TenantRecord):
    """A project as lists show it."""

    project_id: str = Field(pattern=r"^proj_[0-9a-f]{12}$")
    user_id: str
    project_name: str
    description: str | None = Field(description="What the project is for, if its owner said")
    requirement: str
    priority: int = Field(ge=1, le=5)
    tags: list[str]
    status: ProjectStatus
    progress: Percent = Field(ge=0, le=100)
    current_stage: str | None
    latest_build_id: str
    created_at: datetime
    updated_at: datetime


class ProjectCreated(ProjectPublic):
    """POST /projects: the project with the build it queued."""

    latest_build: BuildPublic


class ProjectDetail(ProjectPublic):
    """A project with its latest build (without stages) and the stages' snapshot."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        **_PROJECT,
        "latest_build": {
            "tenant_id": "default", "build_id": "build_af2b10b7db78", "project_id": "proj_a7dc304a08fe",
            "status": "running",
            "progress": 54.0, "current_stage": "agent_developer_manager", "error": None,
            "request_id": "c6739363-59a5-41bc-800b-081a4cd88593", "recoveries": 0,
            "duration_seconds": None, "created_at": TIMESTAMP_EXAMPLE, "started_at": TIMESTAMP_EXAMPLE,
            "finished_at": None, "updated_at": TIMESTAMP_EXAMPLE,
            "usage": {"calls": 6, "input_tokens": 1210, "output_tokens": 605, "tokens_estimated": True,
                      "duration_ms": 2.1},
            "instance_id": "api-7f9c"},
        "stages_snapshot": [{**_STAGE, "sub_stages": [{"name": "tool_developer", "status": "completed"},
                                                      {"name": "prompt_engineer", "status": "running"},
                                                      {"name": "agent_code_developer", "status": "pending"}]}],
    }]})

    latest_build: BuildSummary
    stages_snapshot: list[StageSummary]


class ArtifactPublic(TenantRecord):
    project_id: str
    path: str
    build_id: str
    stage: str
    size: int = Field(ge=0, description="Bytes of content")
    created_at: datetime


class ArtifactContent(ArtifactPublic):
    content: str


class BuildLogLine(Record):
    stage: str
    timestamp: datetime
    level: str
    message: str


class StageDetail(Stage):
    build_id: str
    artifacts: list[ArtifactPublic]
    logs: list[BuildLogLine]


class ProjectList(Page[ProjectPublic]):
    """A page of projects, newest first."""


class BuildList(Page[BuildPublic]):
    """A page of builds, newest first."""


class ArtifactList(Page[ArtifactPublic]):
    """Every artifact of the project, in one page (`last_key` is null)."""
