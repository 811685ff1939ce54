from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse, Response

from api.dependencies import AgentServiceDep, PrincipalDep, SettingsDep, page_body
from api.core.envelope import ok
from api.core.errors import ValidationFailed
from api.observability.audit import audited
from api.routers.openapi import IDEMPOTENT, errors, streams
from api.routers.streaming import event_stream, wants_stream
from api.schemas.agent_records import (
    AgentList,
    AgentPublic,
    InvocationList,
    InvocationPublic,
    SessionList,
    SessionPublic,
)
from api.schemas.agents import (
    AgentStatusUpdate,
    AgentUpdate,
    Category,
    InvokeRequest,
    SessionCreate,
)
from api.schemas.common import LastKey, Limit
from api.schemas.envelope import AgentDeleted, Envelope
from api.services.agent_service import invocation_public

router = APIRouter(prefix="/agents", tags=["agents"])

AgentId = Annotated[str, Path(max_length=200)]


def _capability_list(raw: str | None) -> list[str] | None:
    if raw is None:
        return None
    capabilities = [part.strip() for part in raw.split(",") if part.strip()]
    if not capabilities or len(capabilities) > 20:
        raise ValidationFailed("capabilities", "give 1 to 20 comma-separated capabilities")
    return capabilities


@router.get("", response_model=Envelope[AgentList], responses=errors())
async def list_agents(
    agents: AgentServiceDep, limit: Limit = 20, last_key: LastKey = None,
    project_id: Annotated[str | None, Query(max_length=64)] = None,
    status: Annotated[str | None, Query(pattern="^(running|offline)$")] = None,
    category: Annotated[Category | None, Query()] = None,
    capabilities: Annotated[str | None, Query(max_length=1000)] = None,
) -> JSONResponse:
    page = await agents.list_agents(limit=limit, last_key=last_key, project_id=project_id, status=status,
                             category=category, capabilities=_capability_list(capabilities))
    return ok(page_body(page))


@router.get("/{agent_id}", response_model=Envelope[AgentPublic], responses=errors("RESOURCE_NOT_FOUND"))
async def get_agent(agent_id: AgentId, agents: AgentServiceDep) -> JSONResponse:
    return ok(await agents.get(agent_id=agent_id))


@router.put("/{agent_id}", response_model=Envelope[AgentPublic],
            responses=errors("RESOURCE_NOT_FOUND", body=True))
async def update_agent(agent_id: AgentId, body: AgentUpdate, agents: AgentServiceDep) -> JSONResponse:
    return ok(await agents.update(agent_id=agent_id, body=body))


@router.put("/{agent_id}/status", response_model=Envelope[AgentPublic],
            responses=errors("RESOURCE_NOT_FOUND", body=True))
async def set_agent_status(agent_id: AgentId, body: AgentStatusUpdate, agents: AgentServiceDep,
                           principal: PrincipalDep) -> JSONResponse:
    with audited("agent.status", principal=principal, target_type="agent", target_id=agent_id,
                 details={"status": body.status}):
        return ok(await agents.set_status(agent_id=agent_id, body=body))


@router.delete("/{agent_id}", response_model=Envelope[AgentDeleted],
               responses=errors("RESOURCE_NOT_FOUND"))
async def delete_agent(agent_id: AgentId, agents: AgentServiceDep, principal: PrincipalDep) -> JSONResponse:
    with audited("agent.delete", principal=principal, target_type="agent", target_id=agent_id):
        await agents.delete(agent_id=agent_id)
    return ok({"agent_id": agent_id, "deleted": True})


@router.post("/{agent_id}/invoke", response_model=Envelope[InvocationPublic], openapi_extra=IDEMPOTENT,
             responses={**errors("RESOURCE_NOT_FOUND", "INVALID_STATE", "AGENT_INVOCATION_FAILED",
                                 body=True, idempotent=True), **streams(200)})
async def invoke_agent(agent_id: AgentId, body: InvokeRequest, agents: AgentServiceDep,
                       request: Request, settings: SettingsDep) -> Response:
    if not wants_stream(request, body.stream):
        return ok(await agents.invoke(agent_id=agent_id, input_text=body.input_text,
                                      session_id=body.session_id, enable_trace=body.enable_trace))
    turn = await agents.prepare(agent_id=agent_id, input_text=body.input_text, session_id=body.session_id)
    return event_stream(agents.run(turn), debug=settings.debug,
                        done=lambda done: invocation_public(done.invocation, with_trace=body.enable_trace))


@router.get("/{agent_id}/invocations", response_model=Envelope[InvocationList],
            responses=errors("RESOURCE_NOT_FOUND"))
async def list_invocations(agent_id: AgentId, agents: AgentServiceDep, limit: Limit = 20,
                           last_key: LastKey = None) -> JSONResponse:
    return ok(page_body(await agents.invocations(agent_id=agent_id, limit=limit, last_key=last_key)))


@router.post("/{agent_id}/sessions", status_code=201, response_model=Envelope[SessionPublic],
             openapi_extra=IDEMPOTENT, responses=errors("RESOURCE_NOT_FOUND", body=True, idempotent=True))
async def create_session(agent_id: AgentId, body: SessionCreate, agents: AgentServiceDep) -> JSONResponse:
    return ok(await agents.create_session(agent_id=agent_id, body=body), status_code=201)


@router.get("/{agent_id}/sessions", response_model=Envelope[SessionList],
            responses=errors("RESOURCE_NOT_FOUND"))
async def list_sessions(agent_id: AgentId, agents: AgentServiceDep, limit: Limit = 20,
                        last_key: LastKey = None) -> JSONResponse:
    return ok(page_body(await agents.sessions(agent_id=agent_id, limit=limit, last_key=last_key)))
