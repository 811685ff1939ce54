"""Projects, their builds, stages, artifacts and control actions.

The service validates and reads; every change to a build (and creating or deleting a project,
which starts or ends one) is an operation of the build engine."""

import logging

from api.core import ids
from api.core.clock import utc_now
from api.core.context import bind
from api.core.envelope import View
from api.core.errors import InvalidState, NotFound, ServiceUnavailable
from api.core.records import Artifact, Build, Project, Stage
from api.database.store import ACTIVE_BUILD_STATUSES, PROJECT_STATUS_FOR_BUILD, Page, Store
from api.engine.build_engine import BuildEngine
from api.engine.stages import STAGE_NAMES
from api.schemas.projects import ProjectControl, ProjectCreate
from api.services.limits import Limits
from api.services.tenancy import TenantScoped

logger = logging.getLogger("api.services.project_service")

# What a project's status must be for each control action (the latest build's status
# decides, since the project mirrors it).
ACTION_FROM = {
    "pause": ("queued", "running"),
    "resume": ("pausing", "paused"),
    "stop": ACTIVE_BUILD_STATUSES,
    "restart": ("succeeded", "failed", "cancelled"),
}
BUILD_PRIVATE_FIELDS = {"context", "owner", "lease_until"}
# What a project's stage list shows of each stage (GET /projects/{id}/stages).
STAGE_SUMMARY_FIELDS = {"name", "order", "weight", "status", "started_at", "completed_at",
                        "duration_seconds", "error"}
# As long as a given `project_name` may be.
MAX_DEFAULT_NAME = 80


def default_project_name(requirement: str) -> str:
    """The requirement's first line, cut at a word boundary (and marked …) when it is long."""
    line = requirement.strip().splitlines()[0].strip()
    if len(line) <= MAX_DEFAULT_NAME:
        return line
    head = line[:MAX_DEFAULT_NAME - 1]
    words = head.rsplit(" ", 1)[0] if " " in head else head
    return words.rstrip(" ,;:.-") + "…"


def build_public(build: Build, *, with_stages: bool = True) -> View:
    # Dumping only what is shown: a build's stages are most of the time a project GET spends
    # turning records into its answer.
    public = build.model_dump(exclude=BUILD_PRIVATE_FIELDS if with_stages
                              else BUILD_PRIVATE_FIELDS | {"stages"})
    # Which engine is running the build; null while it is queued, paused, or finished.
    public["instance_id"] = build.owner
    return public


def _stage_summary(stage: Stage) -> View:
    return stage.model_dump(include=STAGE_SUMMARY_FIELDS) | {
        "sub_stages": [{"name": sub.name, "status": sub.status} for sub in stage.sub_stages]}


class ProjectService(TenantScoped):
    def __init__(self, *, store: Store, engine: BuildEngine, limits: Limits) -> None:
        self.limits = limits
        self.store = store
        self.engine = engine

    async def _project(self, project_id: str) -> Project:
        project = await self.store.get_project(tenant_id=self.tenant_id, project_id=project_id)
        if project is None:
            raise NotFound("project", project_id)
        bind(project_id=project_id)
        self.bind_owner(project.user_id)
        return project

    async def _project_and_build(self, project_id: str) -> tuple[Project, Build]:
        """The project and its latest build."""
        found = await self.store.get_project_with_latest_build(tenant_id=self.tenant_id,
                                                               project_id=project_id)
        if found is None:
            raise NotFound("project", project_id)
        bind(project_id=project_id)
        self.bind_owner(found[0].user_id)
        return found

    async def create(self, *, body: ProjectCreate) -> View:
        if not self.engine.accepting:
            raise ServiceUnavailable("The service is shutting down and accepts no new builds.")
        await self.limits.admit_build(self.principal)
        project_id = ids.project_id()
        user_id = self.user_of(body.user_id)
        bind(project_id=project_id)
        self.bind_owner(user_id)
        now = utc_now()
        project, build = await self.engine.create(project=Project(
            tenant_id=self.tenant_id, project_id=project_id, user_id=user_id,
            project_name=body.project_name or default_project_name(body.requirement),
            description=body.description, requirement=body.requirement, priority=body.priority,
            tags=body.tags, status="pending", progress=0.0, current_stage=None, latest_build_id=None,
            created_at=now, updated_at=now))
        logger.info("Project created successfully",
                    extra={"build_id": build.build_id, "priority": body.priority})
        return {**project.model_dump(), "latest_build": build_public(build)}

    async def get(self, *, project_id: str) -> View:
        project, build = await self._project_and_build(project_id)
        latest = build_public(build, with_stages=False)
        # The project mirrors its latest build, but on DynamoDB the two reads are not one
        # snapshot: the mirrored fields come from the later read, so that a build settled
        # between them (a pause taking hold) never shows a `pausing` project beside its
        # released build.
        mirrored = {"status": PROJECT_STATUS_FOR_BUILD[build.status], "progress": build.progress,
                    "current_stage": build.current_stage}
        return {**project.model_dump(), **mirrored, "latest_build": latest,
                "stages_snapshot": [_stage_summary(stage) for stage in build.stages]}

    async def list_projects(self, *, limit: int, last_key: str | None, status: str | None,
                   user_id: str | None) -> Page[Project]:
        return await self.store.list_projects(tenant_id=self.tenant_id, limit=limit,
                                              last_key=last_key, status=status, user_id=user_id)

    async def stages(self, *, project_id: str) -> list[View]:
        _, build = await self._project_and_build(project_id)
        return [_stage_summary(stage) for stage in build.stages]

    async def stage(self, *, project_id: str, stage_name: str) -> View:
        if stage_name not in STAGE_NAMES:
            raise NotFound("stage", stage_name)
        _, build = await self._project_and_build(project_id)
        stage = next(s for s in build.stages if s.name == stage_name)
        artifacts = [a for a in await self.store.list_artifacts(tenant_id=self.tenant_id,
                                                                project_id=project_id)
                     if a.stage == stage_name and a.build_id == build.build_id]
        logs = await self.store.list_build_logs(tenant_id=self.tenant_id, build_id=build.build_id,
                                                stage=stage_name)
        return {**stage.model_dump(), "build_id": build.build_id,
                "artifacts": [artifact.model_dump(exclude={"content"}) for artifact in artifacts],
                "logs": [line.model_dump() for line in logs]}

    async def control(self, *, project_id: str, body: ProjectControl) -> View:
        project, build = await self._project_and_build(project_id)
        bind(build_id=build.build_id)
        if build.status not in ACTION_FROM[body.action]:
            raise InvalidState(
                f"Cannot {body.action} a project whose status is {project.status!r}",
                details={"status": project.status, "action": body.action})
        if body.action == "restart":
            await self.limits.admit_build(self.principal)
            applied = await self.engine.restart(tenant_id=self.tenant_id, project_id=project_id)
        else:
            act = {"pause": self.engine.pause, "resume": self.engine.resume, "stop": self.engine.stop}
            applied = await act[body.action](build)
        if not applied:
            raise InvalidState("The build changed while applying the action; read it again.")
        logger.info(f"Project {body.action} requested", extra={"action": body.action, "reason": body.reason})
        return await self.get(project_id=project_id)

    async def delete(self, *, project_id: str) -> None:
        project = await self._project(project_id)
        if not await self.engine.delete_project(project):
            raise NotFound("project", project_id)
        logger.info("Project deleted")

    async def builds(self, *, project_id: str, limit: int, last_key: str | None) -> Page[View]:
        await self._project(project_id)
        page = await self.store.list_builds(tenant_id=self.tenant_id, project_id=project_id,
                                            limit=limit, last_key=last_key)
        return Page(items=[build_public(build) for build in page.items], last_key=page.last_key)

    async def artifacts(self, *, project_id: str) -> list[View]:
        await self._project(project_id)
        return [artifact.model_dump(exclude={"content"}) for artifact in
                await self.store.list_artifacts(tenant_id=self.tenant_id, project_id=project_id)]

    async def artifact(self, *, project_id: str, path: str) -> Artifact:
        await self._project(project_id)
        artifact = await self.store.get_artifact(tenant_id=self.tenant_id, project_id=project_id,
                                                 path=path)
        if artifact is None:
            raise NotFound("artifact", path)
        return artifact
