import re
from datetime import date
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import BeforeValidator

from api.dependencies import StatisticsServiceDep
from api.core.envelope import ok
from api.routers.openapi import errors
from api.schemas.envelope import Envelope
from api.schemas.statistics import BuildDay, InvocationDay, Overview, Trends
from api.services.statistics_service import TrendMetric

router = APIRouter(prefix="/statistics", tags=["statistics"])

def _iso_date(value: object) -> object:
    # pydantic reads a number as a Unix time (`end_date=0` is 1970-01-01): only YYYY-MM-DD is
    # a date here, as the schema's `format: date` says.
    if isinstance(value, str) and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise ValueError("must be an ISO date, YYYY-MM-DD")
    return value


IsoDate = Annotated[date, BeforeValidator(_iso_date)]
StartDate = Annotated[IsoDate | None, Query(description="ISO date; default 6 days before end_date")]
EndDate = Annotated[IsoDate | None, Query(description="ISO date; default today (UTC)")]


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
