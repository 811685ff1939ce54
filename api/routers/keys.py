"""/api/v1/keys: an admin's keys of its own tenant (the command line, `nexus-ai keys`, manages
every tenant's and the operators')."""

from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse

from api.core.envelope import ok
from api.core.errors import NotFound
from api.dependencies import PrincipalDep
from api.observability.audit import audited
from api.routers.openapi import errors
from api.schemas.envelope import Envelope
from api.schemas.keys import ApiKeyPublic, KeyCreate, KeyCreated, KeyList
from api.services.keys import KeyService, key_details, public

router = APIRouter(prefix="/keys", tags=["keys"])

KeyId = Annotated[str, Path(pattern=r"^[0-9a-f]{16}$")]


def _keys(request: Request) -> KeyService:
    return request.app.state.key_service


@router.post("", status_code=201, response_model=Envelope[KeyCreated], responses=errors(body=True))
async def create_key(body: KeyCreate, request: Request, principal: PrincipalDep) -> JSONResponse:
    with audited("key.create", principal=principal, target_type="key") as act:
        key, token = await _keys(request).create(tenant_id=principal.tenant_id, role=body.role,
                                                 name=body.name, expires_days=body.expires_days)
        act.target_id, act.details = key.key_id, key_details(key)
    return ok({**public(key), "token": token}, status_code=201)


@router.get("", response_model=Envelope[KeyList], responses=errors())
async def list_keys(request: Request, principal: PrincipalDep) -> JSONResponse:
    keys = [public(key) for key in await _keys(request).list_keys(tenant_id=principal.tenant_id)]
    return ok({"items": keys, "count": len(keys)})


@router.delete("/{key_id}", response_model=Envelope[ApiKeyPublic], responses=errors("RESOURCE_NOT_FOUND"))
async def revoke_key(key_id: KeyId, request: Request, principal: PrincipalDep) -> JSONResponse:
    with audited("key.revoke", principal=principal, target_type="key", target_id=key_id) as act:
        revoked = await _keys(request).revoke(key_id=key_id, tenant_id=principal.tenant_id)
        if revoked is None:
            raise NotFound("key", key_id)
        act.details = key_details(revoked)
    return ok(public(revoked))
