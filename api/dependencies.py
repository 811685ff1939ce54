"""Dependencies the routers declare, as Annotated aliases.

They are `async def` although they do no I/O: FastAPI runs a plain `def` dependency in a
thread pool, two thread hand-offs per request for an attribute read (docs/PERFORMANCE.md, F3)."""

from typing import Annotated

from fastapi import Depends, Request

from api.config import Settings
from api.database.store import Page, Store
from api.services.agent_service import AgentService
from api.services.project_service import ProjectService
from api.services.statistics_service import StatisticsService


async def _settings(request: Request) -> Settings:
    return request.app.state.settings


async def _store(request: Request) -> Store:
    return request.app.state.store


async def _projects(request: Request) -> ProjectService:
    return request.app.state.project_service


async def _agents(request: Request) -> AgentService:
    return request.app.state.agent_service


async def _statistics(request: Request) -> StatisticsService:
    return request.app.state.statistics_service


async def count_api_call(request: Request) -> None:
    request.app.state.api_calls.count()


SettingsDep = Annotated[Settings, Depends(_settings)]
StoreDep = Annotated[Store, Depends(_store)]
ProjectServiceDep = Annotated[ProjectService, Depends(_projects)]
AgentServiceDep = Annotated[AgentService, Depends(_agents)]
StatisticsServiceDep = Annotated[StatisticsService, Depends(_statistics)]


def page_body(page: Page) -> dict[str, object]:
    return {"items": page.items, "count": len(page.items), "last_key": page.last_key}
