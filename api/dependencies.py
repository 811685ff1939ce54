"""Dependencies the routers declare, as Annotated aliases.

They are `async def` although they do no I/O: FastAPI runs a plain `def` dependency in a
thread pool, two thread hand-offs per request for an attribute read (docs/PERFORMANCE.md, F3)."""

from typing import Annotated

from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from api.config import Settings
from api.core.errors import ValidationFailed
from api.core.context import bind
from api.core.principal import Principal
from api.database.store import Page, Store
from api.services.agent_service import AgentService
from api.services.project_service import ProjectService
from api.services.statistics_service import StatisticsService


async def _settings(request: Request) -> Settings:
    return request.app.state.settings


async def _store(request: Request) -> Store:
    return request.app.state.store


async def current_principal(request: Request) -> Principal:
    """Who the request acts as: decided once, by api.middleware.auth (the key's tenant, role
    and name; without keys the default tenant's unnamed admin)."""
    return request.scope["state"]["principal"]


PrincipalDep = Annotated[Principal, Depends(current_principal)]


async def _projects(request: Request, principal: PrincipalDep) -> ProjectService:
    return request.app.state.project_service.acting_as(principal)


async def _agents(request: Request, principal: PrincipalDep) -> AgentService:
    return request.app.state.agent_service.acting_as(principal)


async def _statistics(request: Request, principal: PrincipalDep) -> StatisticsService:
    """An operator (no tenant) reads the platform-wide statistics."""
    return request.app.state.statistics_service.acting_as(principal)


async def count_api_call(request: Request, principal: PrincipalDep) -> None:
    if principal.tenant_id is None:
        return  # an operator's reads are nobody's API calls: statistics count tenants' use
    bind(tenant_id=principal.tenant_id)
    request.app.state.api_calls.count(principal.tenant_id)


# Each /api/v1 route's query parameter names, by id(route): routes compare by value and so
# are not hashable, and they live as long as the app.
_query_names: dict[int, frozenset[str]] = {}


def _query_params_of(dependant: Dependant) -> frozenset[str]:
    """The query parameters of an endpoint and of every dependency it declares."""
    names = {param.alias for param in dependant.query_params}
    for dependency in dependant.dependencies:
        names |= _query_params_of(dependency)
    return frozenset(names)


async def refuse_unknown_query_params(request: Request) -> None:
    """Refuse a query parameter the route does not take, as unknown body fields are refused:
    a misspelt filter (`?stauts=failed`) would otherwise list everything without a word."""
    if not request.query_params:
        return
    route: APIRoute = request.scope["route"]
    known = _query_names.get(id(route))
    if known is None:
        known = _query_names[id(route)] = _query_params_of(route.dependant)
    unknown = [name for name in request.query_params if name not in known]
    if unknown:
        takes = ", ".join(sorted(known)) or "no query parameters"
        raise ValidationFailed(unknown[0], f"not a query parameter of {request.method} "
                                           f"{request.url.path} (it takes {takes})")


SettingsDep = Annotated[Settings, Depends(_settings)]
StoreDep = Annotated[Store, Depends(_store)]
ProjectServiceDep = Annotated[ProjectService, Depends(_projects)]
AgentServiceDep = Annotated[AgentService, Depends(_agents)]
StatisticsServiceDep = Annotated[StatisticsService, Depends(_statistics)]


def page_body(page: Page) -> dict[str, object]:
    return {"items": page.items, "count": len(page.items), "last_key": page.last_key}
