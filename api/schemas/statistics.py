"""What the statistics routes answer, as api.services.statistics_service shapes it."""

import datetime as dt
from typing import Literal

from pydantic import ConfigDict, Field

from api.schemas.envelope import Record

TrendMetric = Literal["builds", "invocations", "success_rate", "api_calls", "tokens"]


class TokenTotals(Record):
    input_total: int
    input_today: int
    output_total: int
    output_today: int


class OverviewTokens(TokenTotals):
    invocations: TokenTotals
    builds: TokenTotals


class Overview(Record):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "total_agents": 1, "running_agents": 1, "building_agents": 0, "offline_agents": 0,
        "total_builds": 1, "successful_builds": 1, "failed_builds": 0, "active_builds": 0,
        "success_rate": 100.0, "avg_build_time_minutes": 0.9, "today_calls": 2,
        "today_api_calls": 23, "total_invocations": 2,
        "tokens": {"input_total": 2265, "input_today": 2265, "output_total": 1004, "output_today": 1004,
                   "invocations": {"input_total": 239, "input_today": 239, "output_total": 101,
                                   "output_today": 101},
                   "builds": {"input_total": 2026, "input_today": 2026, "output_total": 903,
                              "output_today": 903}},
        "avg_time_to_first_token_ms": 0.253}]})

    total_agents: int
    running_agents: int
    building_agents: int
    offline_agents: int
    total_builds: int
    successful_builds: int
    failed_builds: int
    active_builds: int
    success_rate: float = Field(description="Percent of finished builds that succeeded (cancelled excluded)")
    avg_build_time_minutes: float
    today_calls: int = Field(description="Agent invocations today (UTC)")
    today_api_calls: int = Field(description="HTTP API requests served today (UTC)")
    total_invocations: int
    tokens: OverviewTokens
    avg_time_to_first_token_ms: float


class BuildDay(Record):
    date: dt.date
    total_builds: int
    successful_builds: int
    failed_builds: int
    avg_duration_minutes: float
    builds_by_stage: dict[str, int] = Field(description="Failed builds by the stage they stopped at")
    input_tokens: int
    output_tokens: int


class InvocationDay(Record):
    date: dt.date
    total_invocations: int
    successful_invocations: int
    failed_invocations: int
    cancelled_invocations: int
    success_rate: float
    avg_duration_ms: float
    input_tokens: int
    output_tokens: int
    avg_time_to_first_token_ms: float


class DataPoint(Record):
    date: dt.date
    value: float


class Trends(Record):
    metric: TrendMetric
    data_points: list[DataPoint]
