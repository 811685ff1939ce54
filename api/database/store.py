"""The storage interface every backend implements, and the constants it speaks in.

The records are the models of `api.core.records`, so that every backend maps them the same
way and the services never see SQL or boto3 types.

Aggregates (the counters behind the statistics) are updated by the store inside the same
transaction as the event they count, so the statistics are exact and never need a scan:
- builds and invocations are historical events: deleting a project does not un-count them;
- agent counts (`agents_running`, `agents_offline`) describe the agents that exist now;
- model tokens are counted where they were spent: an invocation's on its agent and the
  `invocation_*` aggregates, a build's (its `usage`) in the `build_*` ones when it finishes.
"""

import abc
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from api.core.records import Build, Invocation
from api.core.store_errors import RecordTooLarge
# The records are imported from here by the backends and services, with the constants below.
from api.database.interfaces import (
    AgentStore,
    ApiKey,
    Changes,
    Daily,
    IdempotencyKeyState,
    IdempotencyStore,
    IdempotentAnswer,
    KeyStore,
    LeasedBuild,
    LeaseStore,
    LimitStore,
    Page,
    ProjectStore,
    SessionStore,
    StatisticsStore,
)
from api.observability import db_observer

T = TypeVar("T")

# A record is at most 400 KiB on every backend: DynamoDB's item limit, which SQLite (whose own
# limit is 1 GB) enforces too, so a record one backend takes the other takes as well.
MAX_RECORD_BYTES = 400 * 1024


def check_record_size(record: dict[str, Any]) -> None:
    """Raise RecordTooLarge for a record (as stored: fields by name) over MAX_RECORD_BYTES,
    counted as DynamoDB counts an item: each field's name and value, JSON values as their
    text, numbers as at most 21 bytes."""
    refuse_over_limit({name: len(name.encode()) + _value_bytes(value) for name, value in record.items()})


def refuse_over_limit(field_bytes: dict[str, int]) -> None:
    """RecordTooLarge, naming the largest field, when the fields' sizes add up to more than
    MAX_RECORD_BYTES."""
    total = sum(field_bytes.values())
    if total > MAX_RECORD_BYTES:
        largest = max(field_bytes, key=field_bytes.__getitem__)
        raise RecordTooLarge(largest, f"the record would be {total} bytes, over the limit of "
                                      f"{MAX_RECORD_BYTES} bytes (its largest field: {largest})")


def check_answer_size(key: str, answer: IdempotentAnswer) -> None:
    """Raise RecordTooLarge for an idempotency key's answer that would make a record over
    MAX_RECORD_BYTES."""
    refuse_over_limit({"key": len(key.encode()), "body": len(answer.body)})


def _value_bytes(value: Any) -> int:
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, (bool, type(None))):
        return 1
    if isinstance(value, (int, float)):
        return 21
    return len(json.dumps(value).encode())

# The tenant every request acts as until access control says whose key it is, and the one the
# rows of a database written before tenants existed belong to.
DEFAULT_TENANT = "default"
# The aggregates' platform-wide scope, kept beside each tenant's by the same writes. Not a
# valid tenant id (those are identifiers), so no tenant can read it as its own.
PLATFORM_SCOPE = "*"

# Build statuses that still hold a place in the engine (the build is not finished).
# `pausing`: a pause is asked for and the step in progress is finishing; `paused` once it has.
ACTIVE_BUILD_STATUSES = ("queued", "running", "pausing", "paused")
FINAL_BUILD_STATUSES = ("succeeded", "failed", "cancelled")
# Unowned builds an engine may claim: queued or handed back (a `pausing` one is claimed to be
# settled as `paused` at its next step boundary). Owned ones are claimable only once their
# lease has expired, whatever their active status.
CLAIMABLE_UNOWNED_STATUSES = ("queued", "running", "pausing")
# An engine may be in the middle of a step of a build it owns in these: `paused` too, as
# records written before `pausing` existed hold it while their step finishes.
HELD_BUILD_STATUSES = ("running", "pausing", "paused")

# Project status follows its latest build.
PROJECT_STATUS_FOR_BUILD = {
    "queued": "pending",
    "running": "building",
    "pausing": "pausing",
    "paused": "paused",
    "succeeded": "completed",
    "failed": "failed",
    "cancelled": "stopped",
}

# Kept both overall and per day: invocations and model usage.
EVENT_COUNTS = (
    "invocations_total",
    "invocations_succeeded",
    "invocations_failed",
    "invocations_cancelled",
    "invocation_ms_total",
    "invocation_input_tokens",
    "invocation_output_tokens",
    "invocation_ttft_ms_total",
    "invocation_ttft_count",
    "build_input_tokens",
    "build_output_tokens",
)

COUNTER_NAMES = (
    "builds_total",
    "builds_succeeded",
    "builds_failed",
    "builds_cancelled",
    "builds_active",
    "build_seconds_succeeded",
    "agents_running",
    "agents_offline",
    *EVENT_COUNTS,
)

DAILY_FIELDS = (
    "builds_total",
    "builds_succeeded",
    "builds_failed",
    "build_seconds_succeeded",
    *EVENT_COUNTS,
    "api_calls",
)

# An invocation's status -> the agent's column and the aggregate that count it. A cancelled
# invocation (the client went away mid-stream) neither succeeded nor failed, but used tokens.
INVOCATION_OUTCOMES = {
    "success": ("successful_invocations", "invocations_succeeded"),
    "failed": ("failed_invocations", "invocations_failed"),
    "cancelled": ("cancelled_invocations", "invocations_cancelled"),
}

logger = logging.getLogger("api.database")


def invocation_deltas(invocation: Invocation) -> tuple[dict[str, float], dict[str, float]]:
    """What an invocation adds to its agent's runtime stats, and to the counters and its day."""
    column, counted = INVOCATION_OUTCOMES[invocation.status]
    input_tokens, output_tokens = invocation.input_tokens, invocation.output_tokens
    agent = {"total_invocations": 1, column: 1, "total_duration_ms": invocation.duration_ms,
             "total_input_tokens": input_tokens, "total_output_tokens": output_tokens}
    totals = {"invocations_total": 1, counted: 1, "invocation_ms_total": invocation.duration_ms,
              "invocation_input_tokens": input_tokens, "invocation_output_tokens": output_tokens}
    ttft = invocation.time_to_first_token_ms
    if ttft is not None:
        agent.update(ttft_ms_total=ttft, ttft_count=1)
        totals.update(invocation_ttft_ms_total=ttft, invocation_ttft_count=1)
    return agent, totals


def build_token_deltas(build: Build) -> dict[str, float]:
    """The tokens a finished build adds to the aggregates: its `usage` (None before any stage
    called a model, and on builds stored before usage was recorded)."""
    usage = build.usage
    return {"build_input_tokens": usage.input_tokens if usage else 0,
            "build_output_tokens": usage.output_tokens if usage else 0}


class Store(ProjectStore, LeaseStore, AgentStore, SessionStore, StatisticsStore, IdempotencyStore,
            KeyStore, LimitStore):
    """Persistence for every resource: the domains of `api.database.interfaces` in the one
    object the app holds, with its lifecycle and the timing every call goes through."""

    backend_name: str

    def __init__(self, *, slow_query_threshold_seconds: float) -> None:
        self.slow_query_threshold_seconds = slow_query_threshold_seconds

    async def timed(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run one store call, timing it for the slow-query log and the db metrics."""
        start = time.perf_counter()
        ok = False
        try:
            result = await call()
            ok = True
            return result
        finally:
            duration = time.perf_counter() - start
            slow = duration >= self.slow_query_threshold_seconds
            db_observer.observe(operation=operation, seconds=duration, ok=ok, slow=slow)
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("Store call", extra={"operation": operation, "ok": ok,
                                                  "duration_seconds": round(duration, 6)})
            if slow:
                logger.warning(
                    f"Slow query detected: {duration:.2f}s",
                    extra={"duration_seconds": round(duration, 6), "operation": operation,
                           "backend": self.backend_name},
                )

    # -- lifecycle -------------------------------------------------------------------------
    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and bring the schema up to date."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def migrate(self) -> int:
        """Bring the stored data to this release's layout and close; returns the items
        converted. Most backends do it in `open` (SQLite's migrations)."""
        await self.open()
        await self.close()
        return 0

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise StoreError when the store cannot answer a trivial read."""
