from datetime import date
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from api.dependencies import StatisticsServiceDep
from api.core.envelope import ok
from api.services.statistics_service import TrendMetric

router = APIRouter(prefix="/statistics", tags=["statistics"])

StartDate = Annotated[date | None, Query(description="ISO date; default 6 days before end_date")]
EndDate = Annotated[date | None, Query(description="ISO date; default today (UTC)")]


@router.get("/overview")
async def overview(statistics: StatisticsServiceDep) -> JSONResponse:
    return ok(await statistics.overview())


@router.get("/builds")
async def builds(statistics: StatisticsServiceDep, start_date: StartDate = None,
                 end_date: EndDate = None) -> JSONResponse:
    return ok(await statistics.builds(start_date=start_date, end_date=end_date))


@router.get("/invocations")
async def invocations(statistics: StatisticsServiceDep, start_date: StartDate = None,
                      end_date: EndDate = None) -> JSONResponse:
    return ok(await statistics.invocations(start_date=start_date, end_date=end_date))


@router.get("/trends")
async def trends(statistics: StatisticsServiceDep, metric: Annotated[TrendMetric, Query()],
                 start_date: StartDate = None, end_date: EndDate = None) -> JSONResponse:
    return ok(await statistics.trends(metric=metric, start_date=start_date, end_date=end_date))
