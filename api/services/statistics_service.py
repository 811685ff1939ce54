"""Business statistics, read from the store's aggregates (never from the event tables)."""

from datetime import date, timedelta
from typing import Any, Literal

from api.core.errors import ValidationFailed
from api.database.interfaces import Daily, StatisticsStore
from api.services.api_call_counter import ApiCallCounter, today
from api.services.tenancy import TenantScoped

DEFAULT_DAYS = 7
MAX_DAYS = 366
TrendMetric = Literal["builds", "invocations", "success_rate", "api_calls", "tokens"]
# Where model tokens are spent, each counted under `<source>_input_tokens` / `_output_tokens`.
TOKEN_SOURCES = ("invocation", "build")


def _ratio(part: float, whole: float, scale: float = 1.0) -> float:
    return round(scale * part / whole, 3) if whole else 0.0


def _tokens(counts: dict[str, float], source: str, direction: str) -> int:
    return int(counts.get(f"{source}_{direction}_tokens", 0))


def _token_totals(counters: dict[str, float], today_counts: dict[str, float],
                  sources: tuple[str, ...]) -> dict[str, int]:
    return {f"{direction}_{period}": sum(_tokens(counts, source, direction) for source in sources)
            for direction in ("input", "output")
            for period, counts in (("total", counters), ("today", today_counts))}


def _success_rate(succeeded: float, failed: float) -> float:
    """Percent of finished builds that succeeded; cancelled builds are not finished work."""
    return round(100.0 * succeeded / (succeeded + failed), 2) if succeeded + failed else 0.0


class StatisticsService(TenantScoped):
    def __init__(self, *, store: StatisticsStore, api_calls: ApiCallCounter) -> None:
        self.store = store
        self.api_calls = api_calls

    async def overview(self) -> dict[str, Any]:
        counters = await self.store.get_counters(tenant_id=self.tenant_id)
        day = today()
        async with self.api_calls.settled:
            todays = await self.store.get_daily(tenant_id=self.tenant_id, start=day, end=day)
            api_calls = self.api_calls.pending(self.tenant_id, day)
        counts = todays[0].counts if todays else {}
        succeeded, failed = counters["builds_succeeded"], counters["builds_failed"]
        return {
            "total_agents": int(counters["agents_running"] + counters["agents_offline"]),
            "running_agents": int(counters["agents_running"]),
            "building_agents": int(counters["builds_active"]),
            "offline_agents": int(counters["agents_offline"]),
            "total_builds": int(counters["builds_total"]),
            "successful_builds": int(succeeded),
            "failed_builds": int(failed),
            "active_builds": int(counters["builds_active"]),
            "success_rate": _success_rate(succeeded, failed),
            "avg_build_time_minutes": _ratio(counters["build_seconds_succeeded"], succeeded, 1 / 60),
            "today_calls": int(counts.get("invocations_total", 0)),
            "today_api_calls": int(counts.get("api_calls", 0)) + api_calls,
            "total_invocations": int(counters["invocations_total"]),
            "tokens": {**_token_totals(counters, counts, TOKEN_SOURCES),
                       "invocations": _token_totals(counters, counts, ("invocation",)),
                       "builds": _token_totals(counters, counts, ("build",))},
            "avg_time_to_first_token_ms": _ratio(counters["invocation_ttft_ms_total"],
                                                 counters["invocation_ttft_count"]),
        }

    async def _days(self, start_date: date | None, end_date: date | None) -> list[Daily]:
        end = end_date or date.fromisoformat(today())
        # By ordinal: a default range that would begin before year 1 begins there (end - 6 days
        # overflows for end_date=0001-01-01).
        start = start_date or date.fromordinal(max(1, end.toordinal() - (DEFAULT_DAYS - 1)))
        if start > end:
            raise ValidationFailed("start_date", "must not be after end_date")
        if (end - start).days >= MAX_DAYS:
            raise ValidationFailed("start_date", f"the range may span at most {MAX_DAYS} days")
        async with self.api_calls.settled:
            stored = {day.date: day for day in await self.store.get_daily(
                tenant_id=self.tenant_id, start=start.isoformat(), end=end.isoformat())}
            days = []
            for offset in range((end - start).days + 1):
                key = (start + timedelta(days=offset)).isoformat()
                day = stored.get(key, Daily(date=key))
                day.counts["api_calls"] = day.counts.get("api_calls", 0) + self.api_calls.pending(self.tenant_id, key)
                days.append(day)
        return days

    async def builds(self, *, start_date: date | None, end_date: date | None) -> list[dict[str, Any]]:
        return [
            {
                "date": day.date,
                "total_builds": int(day.counts.get("builds_total", 0)),
                "successful_builds": int(day.counts.get("builds_succeeded", 0)),
                "failed_builds": int(day.counts.get("builds_failed", 0)),
                "avg_duration_minutes": _ratio(day.counts.get("build_seconds_succeeded", 0),
                                               day.counts.get("builds_succeeded", 0), 1 / 60),
                "builds_by_stage": day.failed_stages,
                "input_tokens": _tokens(day.counts, "build", "input"),
                "output_tokens": _tokens(day.counts, "build", "output"),
            }
            for day in await self._days(start_date, end_date)
        ]

    async def invocations(self, *, start_date: date | None, end_date: date | None) -> list[dict[str, Any]]:
        result = []
        for day in await self._days(start_date, end_date):
            total = day.counts.get("invocations_total", 0)
            succeeded = day.counts.get("invocations_succeeded", 0)
            result.append({
                "date": day.date,
                "total_invocations": int(total),
                "successful_invocations": int(succeeded),
                "failed_invocations": int(day.counts.get("invocations_failed", 0)),
                "cancelled_invocations": int(day.counts.get("invocations_cancelled", 0)),
                "success_rate": _ratio(succeeded, total, 100),
                "avg_duration_ms": _ratio(day.counts.get("invocation_ms_total", 0), total),
                "input_tokens": _tokens(day.counts, "invocation", "input"),
                "output_tokens": _tokens(day.counts, "invocation", "output"),
                "avg_time_to_first_token_ms": _ratio(day.counts.get("invocation_ttft_ms_total", 0),
                                                     day.counts.get("invocation_ttft_count", 0)),
            })
        return result

    async def trends(self, *, metric: TrendMetric, start_date: date | None,
                     end_date: date | None) -> dict[str, Any]:
        def value(day: Daily) -> float:
            counts = day.counts
            if metric == "success_rate":
                return _success_rate(counts.get("builds_succeeded", 0), counts.get("builds_failed", 0))
            if metric == "tokens":
                return sum(_tokens(counts, source, direction) for source in TOKEN_SOURCES
                           for direction in ("input", "output"))
            name = {"builds": "builds_total", "invocations": "invocations_total",
                    "api_calls": "api_calls"}[metric]
            return int(counts.get(name, 0))

        days = await self._days(start_date, end_date)
        return {"metric": metric, "data_points": [{"date": day.date, "value": value(day)} for day in days]}
