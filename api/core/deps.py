"""Dependencies the routers declare, as Annotated aliases."""

from typing import Annotated

from fastapi import Depends, Request

from api.config import Settings
from api.database.store import Page, Store
from api.services.agent_service import AgentService
from api.services.project_service import ProjectService
from api.services.statistics_service import StatisticsService


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _store(request: Request) -> Store:
    return request.app.state.store


def _projects(request: Request) -> ProjectService:
    return request.app.state.project_service


def _agents(request: Request) -> AgentService:
    return request.app.state.agent_service


def _statistics(request: Request) -> StatisticsService:
    return request.app.state.statistics_service


def count_api_call(request: Request) -> None:
    request.app.state.api_calls.count()


SettingsDep = Annotated[Settings, Depends(_settings)]
StoreDep = Annotated[Store, Depends(_store)]
ProjectServiceDep = Annotated[ProjectService, Depends(_projects)]
AgentServiceDep = Annotated[AgentService, Depends(_agents)]
StatisticsServiceDep = Annotated[StatisticsService, Depends(_statistics)]


def page_body(page: Page) -> dict[str, object]:
    return {"items": page.items, "count": len(page.items), "last_key": page.last_key}
