from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse

from api.dependencies import PrincipalDep, ProjectServiceDep, page_body
from api.core.envelope import ok
from api.observability.audit import audited
from api.routers.openapi import IDEMPOTENT, errors
from api.schemas.common import Identifier, LastKey, Limit
from api.schemas.envelope import Envelope, ProjectDeleted
from api.schemas.project_records import (
    ArtifactContent,
    ArtifactList,
    BuildList,
    ProjectCreated,
    ProjectDetail,
    ProjectList,
    StageDetail,
    StageSummary,
)
from api.schemas.projects import ProjectControl, ProjectCreate, ProjectStatus

router = APIRouter(prefix="/projects", tags=["projects"])

ProjectId = Annotated[str, Path(max_length=64)]


@router.post("", status_code=201, response_model=Envelope[ProjectCreated], openapi_extra=IDEMPOTENT,
             responses=errors("SERVICE_UNAVAILABLE", body=True, idempotent=True))
async def create_project(body: ProjectCreate, projects: ProjectServiceDep) -> JSONResponse:
    return ok(await projects.create(body=body), status_code=201)


@router.get("", response_model=Envelope[ProjectList], responses=errors())
async def list_projects(
    projects: ProjectServiceDep, limit: Limit = 20, last_key: LastKey = None,
    status: Annotated[ProjectStatus | None, Query()] = None,
    user_id: Annotated[Identifier | None, Query()] = None,
) -> JSONResponse:
    page = await projects.list_projects(limit=limit, last_key=last_key, status=status, user_id=user_id)
    return ok(page_body(page))


@router.get("/{project_id}", response_model=Envelope[ProjectDetail],
            responses=errors("RESOURCE_NOT_FOUND"))
async def get_project(project_id: ProjectId, projects: ProjectServiceDep) -> JSONResponse:
    return ok(await projects.get(project_id=project_id))


@router.get("/{project_id}/stages", response_model=Envelope[list[StageSummary]],
            responses=errors("RESOURCE_NOT_FOUND"))
async def list_stages(project_id: ProjectId, projects: ProjectServiceDep) -> JSONResponse:
    return ok(await projects.stages(project_id=project_id))


@router.get("/{project_id}/stages/{stage_name}", response_model=Envelope[StageDetail],
            responses=errors("RESOURCE_NOT_FOUND"))
async def get_stage(project_id: ProjectId, stage_name: Annotated[str, Path(max_length=64)],
                    projects: ProjectServiceDep) -> JSONResponse:
    return ok(await projects.stage(project_id=project_id, stage_name=stage_name))


@router.put("/{project_id}/control", response_model=Envelope[ProjectDetail],
            responses=errors("RESOURCE_NOT_FOUND", "INVALID_STATE", body=True))
async def control_project(project_id: ProjectId, body: ProjectControl, projects: ProjectServiceDep,
                          principal: PrincipalDep) -> JSONResponse:
    with audited(f"project.{body.action}", principal=principal, target_type="project",
                 target_id=project_id, details={"reason": body.reason} if body.reason else None):
        return ok(await projects.control(project_id=project_id, body=body))


@router.delete("/{project_id}", response_model=Envelope[ProjectDeleted],
               responses=errors("RESOURCE_NOT_FOUND", "RESOURCE_CONFLICT"))
async def delete_project(project_id: ProjectId, projects: ProjectServiceDep,
                         principal: PrincipalDep) -> JSONResponse:
    with audited("project.delete", principal=principal, target_type="project", target_id=project_id):
        await projects.delete(project_id=project_id)
    return ok({"project_id": project_id, "deleted": True})


@router.get("/{project_id}/builds", response_model=Envelope[BuildList],
            responses=errors("RESOURCE_NOT_FOUND"))
async def list_builds(project_id: ProjectId, projects: ProjectServiceDep, limit: Limit = 20,
                      last_key: LastKey = None) -> JSONResponse:
    return ok(page_body(await projects.builds(project_id=project_id, limit=limit, last_key=last_key)))


@router.get("/{project_id}/artifacts", response_model=Envelope[ArtifactList],
            responses=errors("RESOURCE_NOT_FOUND"))
async def list_artifacts(project_id: ProjectId, projects: ProjectServiceDep) -> JSONResponse:
    items = await projects.artifacts(project_id=project_id)
    return ok({"items": items, "count": len(items), "last_key": None})


@router.get("/{project_id}/artifacts/{path:path}", response_model=Envelope[ArtifactContent],
            responses=errors("RESOURCE_NOT_FOUND"))
async def get_artifact(project_id: ProjectId, path: str, projects: ProjectServiceDep) -> JSONResponse:
    return ok(await projects.artifact(project_id=project_id, path=path))
