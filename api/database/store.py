"""The storage interface every backend implements, and the records it speaks in.

Records are plain dicts with the keys listed below, so that every backend maps them the same
way and the services never see SQL or boto3 types. Timestamps are ISO-8601 UTC strings with
microseconds and a `Z`, which sort in time order as text.

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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from api.core.store_errors import RecordTooLarge
from api.observability import db_observer

T = TypeVar("T")

Record = dict[str, Any]

# A record is at most 400 KiB on every backend: DynamoDB's item limit, which SQLite (whose own
# limit is 1 GB) enforces too, so a record one backend takes the other takes as well.
MAX_RECORD_BYTES = 400 * 1024


def check_record_size(record: Record) -> None:
    """Raise RecordTooLarge for a record over MAX_RECORD_BYTES, counted as DynamoDB counts an
    item: each field's name and value, JSON values as their text, numbers as at most 21 bytes."""
    refuse_over_limit({name: len(name.encode()) + _value_bytes(value) for name, value in record.items()})


def refuse_over_limit(field_bytes: dict[str, int]) -> None:
    """RecordTooLarge, naming the largest field, when the fields' sizes add up to more than
    MAX_RECORD_BYTES."""
    total = sum(field_bytes.values())
    if total > MAX_RECORD_BYTES:
        largest = max(field_bytes, key=field_bytes.__getitem__)
        raise RecordTooLarge(largest, f"the record would be {total} bytes, over the limit of "
                                      f"{MAX_RECORD_BYTES} bytes (its largest field: {largest})")


def _value_bytes(value: Any) -> int:
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, (bool, type(None))):
        return 1
    if isinstance(value, (int, float)):
        return 21
    return len(json.dumps(value).encode())

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


def invocation_deltas(invocation: Record) -> tuple[dict[str, float], dict[str, float]]:
    """What an invocation adds to its agent's runtime stats, and to the counters and its day.

    Token and TTFT keys absent from the record (written before they existed) count as none."""
    column, counted = INVOCATION_OUTCOMES[invocation["status"]]
    input_tokens = invocation.get("input_tokens") or 0
    output_tokens = invocation.get("output_tokens") or 0
    agent = {"total_invocations": 1, column: 1, "total_duration_ms": invocation["duration_ms"],
             "total_input_tokens": input_tokens, "total_output_tokens": output_tokens}
    totals = {"invocations_total": 1, counted: 1, "invocation_ms_total": invocation["duration_ms"],
              "invocation_input_tokens": input_tokens, "invocation_output_tokens": output_tokens}
    ttft = invocation.get("time_to_first_token_ms")
    if ttft is not None:
        agent.update(ttft_ms_total=ttft, ttft_count=1)
        totals.update(invocation_ttft_ms_total=ttft, invocation_ttft_count=1)
    return agent, totals


def build_token_deltas(build: Record) -> dict[str, float]:
    """The tokens a finished build adds to the aggregates: its `usage` (None before any stage
    called a model, and on builds stored before usage was recorded)."""
    usage = build.get("usage") or {}
    return {"build_input_tokens": usage.get("input_tokens", 0),
            "build_output_tokens": usage.get("output_tokens", 0)}


@dataclass
class Page:
    items: list[Record]
    last_key: str | None = None


@dataclass
class Daily:
    """One UTC day of the statistics aggregates."""

    date: str
    counts: dict[str, float] = field(default_factory=dict)
    failed_stages: dict[str, int] = field(default_factory=dict)


class Store(abc.ABC):
    """Persistence for every resource. All methods take keyword arguments only.

    Conditional updates return False instead of raising when their condition does not hold,
    so the caller learns that another actor (a control action, another instance) got there first.
    """

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

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise StoreError when the store cannot answer a trivial read."""

    # -- projects and builds ---------------------------------------------------------------
    @abc.abstractmethod
    async def create_project(self, *, project: Record, build: Record) -> None:
        """Insert a project with its first (queued) build and count the build."""

    @abc.abstractmethod
    async def get_project(self, *, project_id: str) -> Record | None: ...

    @abc.abstractmethod
    async def list_projects(
        self, *, limit: int, last_key: str | None, status: str | None = None,
        user_id: str | None = None,
    ) -> Page:
        """Newest first."""

    @abc.abstractmethod
    async def delete_project(self, *, project_id: str) -> bool:
        """Delete the project and everything under it. Builds still active count as cancelled."""

    @abc.abstractmethod
    async def add_build(self, *, build: Record) -> bool:
        """Queue a new build of an existing project whose latest build is finished.

        False when the project is gone or its latest build is still active."""

    @abc.abstractmethod
    async def get_build(self, *, build_id: str) -> Record | None: ...

    @abc.abstractmethod
    async def list_builds(self, *, project_id: str, limit: int, last_key: str | None) -> Page:
        """Newest first."""

    @abc.abstractmethod
    async def list_claimable_builds(self, *, now: str, limit: int) -> list[Record]:
        """Builds an engine may take: unowned in CLAIMABLE_UNOWNED_STATUSES, or active and
        owned under an expired lease; oldest first."""

    @abc.abstractmethod
    async def claim_build(self, *, build_id: str, owner: str, lease_until: str, now: str) -> bool:
        """Take a claimable build. Queued builds become running; others keep their status."""

    @abc.abstractmethod
    async def renew_leases(self, *, owner: str, lease_until: str) -> list[Record]:
        """Extend the lease of every active build this owner holds; returns those builds
        (the owner learns about control actions sent to other instances from them)."""

    @abc.abstractmethod
    async def update_build(
        self, *, build_id: str, changes: Record, expect_status: tuple[str, ...],
        expect_owner: str | None = None, logs: Sequence[Record] = (),
        artifacts: Sequence[Record] = (),
    ) -> bool:
        """Apply `changes` to the build (and mirror status, progress and stage on its
        project) if its status is one of `expect_status` (and, given, its owner matches).

        `changes` may carry `usage` ({calls, input_tokens, output_tokens, tokens_estimated,
        duration_ms}: the model use of the build's stages so far), returned by get_build and
        list_builds (None on builds that never recorded any).
        A change to a final status updates the build aggregates in the same transaction,
        the build's usage tokens (as changed, else as stored) included.
        `logs` (stage, timestamp, level, message) are appended to the build's stage logs and
        `artifacts` (project_id, build_id, path, stage, content, size, created_at) upserted by
        (project_id, path) with the change: a build step's output and progress are one write.
        Lines are written only when the change is; so are artifacts on SQLite (one
        transaction), while DynamoDB writes them first, so that a step is never recorded
        complete without its output."""

    @abc.abstractmethod
    async def list_build_logs(self, *, build_id: str, stage: str) -> list[Record]: ...

    @abc.abstractmethod
    async def list_artifacts(self, *, project_id: str) -> list[Record]:
        """Without content, ordered by path."""

    @abc.abstractmethod
    async def get_artifact(self, *, project_id: str, path: str) -> Record | None: ...

    # -- agents ----------------------------------------------------------------------------
    @abc.abstractmethod
    async def put_agent(self, *, agent: Record, expect_owner: str | None = None) -> bool:
        """Register or re-register (a rebuilt project) an agent, keeping its runtime stats.

        With `expect_owner`, only while the agent's build (`agent["build_id"]`) is still held
        (HELD_BUILD_STATUSES) by that owner: a build stopped or deleted meanwhile (perhaps
        through another instance) registers nothing. False when nothing was registered."""

    @abc.abstractmethod
    async def get_agent(self, *, agent_id: str) -> Record | None: ...

    @abc.abstractmethod
    async def list_agents(
        self, *, limit: int, last_key: str | None, project_id: str | None = None,
        status: str | None = None, category: str | None = None,
        capabilities: list[str] | None = None,
    ) -> Page:
        """Newest first; `capabilities` matches agents having any of them."""

    @abc.abstractmethod
    async def update_agent(self, *, agent_id: str, changes: Record) -> Record | None:
        """Returns the updated agent, None when it does not exist."""

    @abc.abstractmethod
    async def delete_agent(self, *, agent_id: str) -> bool: ...

    @abc.abstractmethod
    async def record_invocation(self, *, invocation: Record, messages: list[Record]) -> None:
        """Store an invocation (and, for a session turn, its messages), counting it in the
        agent's runtime stats, the daily and overall aggregates, and the session.

        Besides its text and outcome, an invocation carries `model` (str | None),
        `input_tokens`, `output_tokens` (int), `tokens_estimated` (bool: counted by us, the
        endpoint sent no usage), `time_to_first_token_ms` and `finish_reason` (or None), kept
        as given. `status` is `success`, `failed` or `cancelled`; what it adds to the
        aggregates is `invocation_deltas`. Agents carry the sums: `cancelled_invocations`,
        `total_input_tokens`, `total_output_tokens`, and `ttft_ms_total` over `ttft_count`
        (the invocations that had a first token)."""

    @abc.abstractmethod
    async def list_invocations(self, *, agent_id: str, limit: int, last_key: str | None) -> Page: ...

    # -- sessions --------------------------------------------------------------------------
    @abc.abstractmethod
    async def create_session(self, *, session: Record) -> bool:
        """False when the agent does not exist."""

    @abc.abstractmethod
    async def get_session(self, *, session_id: str) -> Record | None: ...

    @abc.abstractmethod
    async def list_sessions(self, *, agent_id: str, limit: int, last_key: str | None) -> Page:
        """Most recently active first."""

    @abc.abstractmethod
    async def list_messages(self, *, session_id: str, limit: int, last_key: str | None) -> Page:
        """Oldest first."""

    @abc.abstractmethod
    async def recent_messages(self, *, session_id: str, limit: int) -> list[Record]:
        """The last `limit` messages, oldest first (the history an invocation sees)."""

    @abc.abstractmethod
    async def delete_session(self, *, session_id: str) -> bool: ...

    # -- statistics ------------------------------------------------------------------------
    @abc.abstractmethod
    async def get_counters(self) -> dict[str, float]:
        """Every name in COUNTER_NAMES."""

    @abc.abstractmethod
    async def get_daily(self, *, start: str, end: str) -> list[Daily]:
        """Days from start to end inclusive (ISO dates) that have any aggregate."""

    @abc.abstractmethod
    async def add_api_calls(self, *, counts: dict[str, int]) -> None:
        """Add HTTP request counts per ISO date."""
