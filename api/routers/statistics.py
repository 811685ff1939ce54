from datetime import date
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from api.dependencies import StatisticsServiceDep
from api.core.envelope import ok
from api.routers.openapi import errors
from api.schemas.envelope import Envelope
from api.schemas.statistics import BuildDay, InvocationDay, Overview, Trends
from api.services.statistics_service import TrendMetric

router = APIRouter(prefix="/statistics", tags=["statistics"])

StartDate = Annotated[date | None, Query(description="ISO date; default 6 days before end_date")]
EndDate = Annotated[date | None, Query(description="ISO date; default today (UTC)")]


@router.get("/overview", response_model=Envelope[Overview], responses=errors())
async def overview(statistics: StatisticsServiceDep) -> JSONResponse:
    return ok(await statistics.overview())


@router.get("/builds", response_model=Envelope[list[BuildDay]], responses=errors())
async def builds(statistics: StatisticsServiceDep, start_date: StartDate = None,
                 end_date: EndDate = None) -> JSONResponse:
    return ok(await statistics.builds(start_date=start_date, end_date=end_date))


@router.get("/invocations", response_model=Envelope[list[InvocationDay]], responses=errors())
async def invocations(statistics: StatisticsServiceDep, start_date: StartDate = None,
                      end_date: EndDate = None) -> JSONResponse:
    return ok(await statistics.invocations(start_date=start_date, end_date=end_date))


@router.get("/trends", response_model=Envelope[Trends], responses=errors())
async def trends(statistics: StatisticsServiceDep, metric: Annotated[TrendMetric, Query()],
                 start_date: StartDate = None, end_date: EndDate = None) -> JSONResponse:
    return ok(await statistics.trends(metric=metric, start_date=start_date, end_date=end_date))
