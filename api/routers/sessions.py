from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response

from api.dependencies import AgentServiceDep, PrincipalDep, SettingsDep, page_body
from api.core.envelope import ok
from api.observability.audit import audited
from api.routers.openapi import IDEMPOTENT, errors, streams
from api.routers.streaming import event_stream, wants_stream
from api.schemas.agent_records import MessageList, SessionPublic, TurnPublic
from api.schemas.agents import MessageCreate
from api.schemas.common import LastKey, Limit
from api.schemas.envelope import Envelope, SessionDeleted
from api.services.agent_service import turn_public

router = APIRouter(prefix="/sessions", tags=["sessions"])

SessionId = Annotated[str, Path(max_length=64)]


@router.get("/{session_id}", response_model=Envelope[SessionPublic],
            responses=errors("RESOURCE_NOT_FOUND"))
async def get_session(session_id: SessionId, agents: AgentServiceDep) -> JSONResponse:
    return ok(await agents.get_session(session_id=session_id))


@router.post("/{session_id}/messages", status_code=201, response_model=Envelope[TurnPublic],
             openapi_extra=IDEMPOTENT, responses={**errors(
                 "RESOURCE_NOT_FOUND", "INVALID_STATE", "AGENT_INVOCATION_FAILED", body=True,
                 idempotent=True), **streams(201)})
async def post_message(session_id: SessionId, body: MessageCreate, agents: AgentServiceDep,
                       request: Request, settings: SettingsDep) -> Response:
    if not wants_stream(request, body.stream):
        return ok(await agents.post_message(session_id=session_id, content=body.content), status_code=201)
    turn = await agents.prepare_message(session_id=session_id, content=body.content)
    return event_stream(agents.run(turn), done=turn_public, debug=settings.debug, status_code=201)


@router.get("/{session_id}/messages", response_model=Envelope[MessageList],
            responses=errors("RESOURCE_NOT_FOUND"))
async def list_messages(session_id: SessionId, agents: AgentServiceDep, limit: Limit = 20,
                        last_key: LastKey = None) -> JSONResponse:
    return ok(page_body(await agents.messages(session_id=session_id, limit=limit, last_key=last_key)))


@router.delete("/{session_id}", response_model=Envelope[SessionDeleted],
               responses=errors("RESOURCE_NOT_FOUND"))
async def delete_session(session_id: SessionId, agents: AgentServiceDep,
                         principal: PrincipalDep) -> JSONResponse:
    with audited("session.delete", principal=principal, target_type="session", target_id=session_id):
        await agents.delete_session(session_id=session_id)
    return ok({"session_id": session_id, "deleted": True})
