"""The Amazon DynamoDB store: one table that several API instances share.

Every resource lives in one table (`<DYNAMODB_TABLE_PREFIX>platform`), keyed so that each
lookup of the storage contract is one GetItem or one Query, and every filtered, sorted list is
one Query on a global secondary index; nothing on a request path scans. docs/DYNAMODB.md
describes the items, keys and indexes.

How the contract's guarantees are kept without a relational transaction:
- Writes that must happen together (an event and the aggregates counting it, a build and its
  project's mirror) are one TransactWriteItems. Conditions make them exact under concurrent
  writers: builds and agents carry a `version` checked on every write (optimistic
  concurrency), a session's `message_count` orders its messages.
- Statistics are aggregate items updated in those transactions: the overall counters and the
  daily figures are sharded over several items (a random shard per write, all shards read
  with one BatchGetItem), so no single item is hot and the overview costs the same requests
  whatever the data size.
- A parent's partition holds a reference row for each child (a project's builds and agents,
  an agent's sessions), so cascade deletes find every child with a consistent Query. The
  first write of a delete removes the parent and leaves a cleanup marker; the children go
  next, then the marker. A delete interrupted by a crash is finished by the next `open()`.
- Each lease holder has a partition listing the builds it holds, maintained in the same
  transactions that change a build's owner, so lease renewal needs no index read.

Every request goes through `Store.timed` (slow-query log, db metrics); botocore retries
throttling in the configured mode, and `throttle_retries` counts those retries.
"""

import asyncio
import functools
import json
import logging
import math
import random
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore.exceptions import BotoCoreError, ClientError

from api.core.store_errors import (
    InvalidCursor,
    InvalidValue,
    RecordConflict,
    RecordTooLarge,
    StoreError,
    StoreThrottled,
)
from api.database import cursor
from api.database.store import (
    ACTIVE_BUILD_STATUSES,
    CLAIMABLE_UNOWNED_STATUSES,
    COUNTER_NAMES,
    DAILY_FIELDS,
    FINAL_BUILD_STATUSES,
    HELD_BUILD_STATUSES,
    PROJECT_STATUS_FOR_BUILD,
    Daily,
    Page,
    Record,
    Store,
    build_token_deltas,
    invocation_deltas,
    refuse_over_limit,
)
from api.observability import db_observer

logger = logging.getLogger("api.database.dynamodb")

AttributeValue = dict[str, Any]
Item = dict[str, AttributeValue]
Key = tuple[str, str]

TABLE_NAME = "platform"
INDEXES = ("gsi1", "gsi2", "gsi3", "gsi4")
# gsi2 lists active builds for the claim loop, which filters on these without reading items.
CLAIM_ATTRIBUTES = ("status", "owner", "lease_until")

COUNTER_SHARDS = 10
DAILY_SHARDS = 10

# DynamoDB's limits, and ours for key components (a prefix and a timestamp share the key).
MAX_KEY_PART_BYTES = 900
MAX_TRANSACTION_ITEMS = 100
MAX_TRANSACTION_BYTES = 3 * 1024 * 1024
MAX_BATCH_GET = 100
MAX_BATCH_WRITE = 25

# Optimistic writes and transaction conflicts are retried with jittered exponential backoff.
CONTENTION_ATTEMPTS = 12
CONTENTION_BASE_DELAY_SECONDS = 0.01
CONTENTION_MAX_DELAY_SECONDS = 0.5
CONTENDED_REASONS = frozenset({"TransactionConflict", "ThrottlingError",
                               "ProvisionedThroughputExceeded", "RequestLimitExceeded"})
THROTTLING_CODES = frozenset({"ProvisionedThroughputExceededException", "ThrottlingException",
                              "Throttling", "RequestLimitExceeded", "TooManyRequestsException"})

TABLE_ACTIVE_TIMEOUT_SECONDS = 600.0
TABLE_POLL_SECONDS = 1.0
# Readiness must fail fast: the ping has its own client, one attempt and short timeouts.
PING_TIMEOUT_SECONDS = 1.0
MAX_POOL_CONNECTIONS = 64
# Builds whose item this process read or wrote last, so that the owner's frequent progress
# writes need no read first (the version condition catches a stale copy).
CACHED_BUILDS = 256

JSON_FIELDS = frozenset({"tags", "stages", "context", "error", "capabilities", "tools", "trace",
                         "metadata", "usage"})
FLOAT_FIELDS = frozenset({"progress", "duration_seconds", "duration_ms", "total_duration_ms",
                          "time_to_first_token_ms", "ttft_ms_total"})
INT_FIELDS = frozenset({"priority", "recoveries", "size", "message_count", "seq",
                        "total_invocations", "successful_invocations", "failed_invocations",
                        "cancelled_invocations", "input_tokens", "output_tokens",
                        "total_input_tokens", "total_output_tokens", "ttft_count"})

PROJECT_FIELDS = ("project_id", "user_id", "project_name", "requirement", "priority", "tags",
                  "status", "progress", "current_stage", "latest_build_id", "created_at",
                  "updated_at")
BUILD_FIELDS = ("build_id", "project_id", "status", "progress", "current_stage", "stages",
                "context", "error", "request_id", "owner", "lease_until", "recoveries",
                "duration_seconds", "created_at", "started_at", "finished_at", "updated_at", "usage")
LOG_FIELDS = ("stage", "timestamp", "level", "message")
ARTIFACT_FIELDS = ("project_id", "path", "build_id", "stage", "content", "size", "created_at")
ARTIFACT_LISTED_FIELDS = tuple(name for name in ARTIFACT_FIELDS if name != "content")
AGENT_FIELDS = ("agent_id", "project_id", "agent_name", "description", "category",
                "capabilities", "tools", "system_prompt", "status", "error_message", "build_id",
                "created_at", "updated_at")
AGENT_STAT_FIELDS = ("total_invocations", "successful_invocations", "failed_invocations",
                     "cancelled_invocations", "total_duration_ms", "total_input_tokens",
                     "total_output_tokens", "ttft_ms_total", "ttft_count", "last_invoked_at")
INVOCATION_FIELDS = ("invocation_id", "agent_id", "project_id", "session_id", "input_text",
                     "output", "status", "error", "duration_ms", "trace", "created_at", "model",
                     "input_tokens", "output_tokens", "tokens_estimated",
                     "time_to_first_token_ms", "finish_reason")
SESSION_FIELDS = ("session_id", "agent_id", "display_name", "metadata", "message_count",
                  "created_at", "last_active_at")
MESSAGE_FIELDS = ("message_id", "session_id", "seq", "role", "content", "invocation_id",
                  "created_at")
# Also what items written before a field existed read as.
DEFAULTS: dict[str, Any] = {"recoveries": 0, "message_count": 0, "total_invocations": 0,
                            "successful_invocations": 0, "failed_invocations": 0,
                            "cancelled_invocations": 0, "total_duration_ms": 0.0,
                            "total_input_tokens": 0, "total_output_tokens": 0,
                            "ttft_ms_total": 0.0, "ttft_count": 0, "input_tokens": 0,
                            "output_tokens": 0, "tokens_estimated": False}

# Sort keys of the items that head each partition; '#' sorts before every child prefix.
PROJECT_SK, BUILD_SK, AGENT_SK, STATS_SK, SESSION_SK = "#PROJECT", "#BUILD", "#AGENT", "#STATS", "#SESSION"
# A build's log counter: small, so advancing it costs one write unit, and present exactly as
# long as the build is, so that writes of the build's children can require it cheaply.
LOGS_SK = "#LOGS"
# A project's build references sort just before the project item: one Query reads both.
BUILD_REF = "#BUILD#"
FAILED_STAGE_PREFIX = "failed_stage#"
CLEANUP_PK = "CLEANUP"


@functools.cache
def _session() -> AioSession:
    """One botocore session per process: it loads the service model once, and every store
    (the ping's client too) creates its clients from it in milliseconds."""
    return get_session()


# -- values ------------------------------------------------------------------------------------
def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        raise InvalidValue("number", f"{value} cannot be stored")
    # Plain notation (no exponent), as DynamoDB returns numbers.
    return format(Decimal(repr(value)).normalize(), "f")


def _encode(name: str, value: Any) -> AttributeValue | None:
    """The attribute value of a record field; None (an absent attribute) for None."""
    if value is None:
        return None
    if name in JSON_FIELDS:
        return {"S": json.dumps(value)}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, (int, float)):
        return {"N": _number(value)}
    if isinstance(value, str):
        return {"S": value}
    raise StoreError(f"cannot store {name} of type {type(value).__name__}")


def _decode(name: str, value: AttributeValue) -> Any:
    if "S" in value:
        return json.loads(value["S"]) if name in JSON_FIELDS else value["S"]
    if "N" in value:
        text = value["N"]
        if name in FLOAT_FIELDS:
            return float(text)
        if name in INT_FIELDS or not any(mark in text for mark in ".eE"):
            return int(Decimal(text))
        return float(text)
    if "BOOL" in value:
        return value["BOOL"]
    return None


def _record(item: Item, fields: tuple[str, ...]) -> Record:
    return {name: _decode(name, item[name]) if name in item else DEFAULTS.get(name)
            for name in fields}


def _attributes(record: Record, fields: tuple[str, ...]) -> Item:
    item: Item = {}
    for name in fields:
        encoded = _encode(name, record.get(name, DEFAULTS.get(name)))
        if encoded is not None:
            item[name] = encoded
    return item


def _s(value: str) -> AttributeValue:
    return {"S": value}


def _n(value: float) -> AttributeValue:
    return {"N": _number(value)}


def _key(pk: str, sk: str) -> Item:
    return {"pk": _s(pk), "sk": _s(sk)}


def _text(item: Item, name: str) -> str | None:
    value = item.get(name)
    return value["S"] if value and "S" in value else None


def _count(item: Item, name: str) -> float:
    value = item.get(name)
    return float(value["N"]) if value and "N" in value else 0.0


def _part(field_name: str, value: Any) -> str:
    """A value used inside a key: a string short enough for DynamoDB's key limits."""
    if not isinstance(value, str):
        raise InvalidValue(field_name, "must be a string")
    if len(value.encode()) > MAX_KEY_PART_BYTES:
        raise InvalidValue(field_name, f"must be at most {MAX_KEY_PART_BYTES} bytes")
    return value


def _keyable(*values: Any) -> bool:
    """Whether values can be part of a key: a lookup with any other value finds nothing."""
    return all(isinstance(v, str) and len(v.encode()) <= MAX_KEY_PART_BYTES for v in values)


def _position(timestamp: str, identifier: str) -> str:
    """A list sort key: newest first by timestamp, ties broken by id, as SQLite orders them."""
    return f"{timestamp}#{identifier}"


def _attribute_bytes(value: AttributeValue) -> int:
    if "S" in value:
        return len(value["S"].encode())
    if "N" in value:
        return 21
    return 1


def _check_size(item: Item) -> None:
    """Refuse an item over DynamoDB's 400 KB limit, naming its largest field."""
    refuse_over_limit({name: len(name.encode()) + _attribute_bytes(value) for name, value in item.items()})


# -- expressions -------------------------------------------------------------------------------
class _Expression:
    """Placeholders for names and values: every attribute name goes through a placeholder, so
    reserved words (status, size, owner, ...) are never a problem."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.values: dict[str, AttributeValue] = {}

    def name(self, attribute: str) -> str:
        alias = self.names.get(attribute)
        if alias is None:
            alias = self.names[attribute] = f"#n{len(self.names)}"
        return alias

    def value(self, value: AttributeValue) -> str:
        alias = f":v{len(self.values)}"
        self.values[alias] = value
        return alias

    def values_of(self, texts: Sequence[str]) -> str:
        """Placeholders for strings, comma-separated: the list of an IN (...)."""
        return ", ".join(self.value(_s(text)) for text in texts)

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if self.names:
            params["ExpressionAttributeNames"] = {alias: name for name, alias in self.names.items()}
        if self.values:
            params["ExpressionAttributeValues"] = self.values
        return params


def _update_expression(expression: _Expression, *, set_: Item | None = None,
                       remove: Iterable[str] = (), add: Item | None = None) -> str:
    clauses = []
    if set_:
        clauses.append("SET " + ", ".join(f"{expression.name(name)} = {expression.value(value)}"
                                          for name, value in set_.items()))
    removed = [expression.name(name) for name in remove]
    if removed:
        clauses.append("REMOVE " + ", ".join(removed))
    if add:
        clauses.append("ADD " + ", ".join(f"{expression.name(name)} {expression.value(value)}"
                                          for name, value in add.items()))
    return " ".join(clauses)


# -- outcomes ----------------------------------------------------------------------------------
class _Refused(Exception):
    """A conditional write or transaction that DynamoDB refused; reasons by transaction item."""

    def __init__(self, reasons: list[str], item: Item | None = None) -> None:
        super().__init__(", ".join(reasons))
        self.reasons = reasons
        self.item = item

    def failed(self, index: int) -> bool:
        return index < len(self.reasons) and self.reasons[index] == "ConditionalCheckFailed"

    @property
    def contended(self) -> bool:
        return any(reason in CONTENDED_REASONS for reason in self.reasons)


class _TableMissing(StoreError):
    pass


class _TableExists(StoreError):
    pass


async def _back_off(attempt: int) -> None:
    delay = min(CONTENTION_MAX_DELAY_SECONDS, CONTENTION_BASE_DELAY_SECONDS * 2 ** attempt)
    await asyncio.sleep(random.uniform(0, delay))


def _chunks(values: Sequence[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


@dataclass
class _Index:
    """One partition of a secondary index to list newest first."""

    name: str
    partition: str
    pk_prefix: str
    base_sk: str


@dataclass
class _Stream:
    """Keys read from one index partition, in order, not yet handed out."""

    index: _Index
    start: Item | None
    buffer: deque[tuple[str, str]] = field(default_factory=deque)
    exhausted: bool = False


class DynamoDBStore(Store):
    backend_name = "dynamodb"

    def __init__(self, *, region: str | None, endpoint_url: str | None, table_prefix: str,
                 connect_timeout_seconds: float, read_timeout_seconds: float, max_attempts: int,
                 retry_mode: str, slow_query_threshold_seconds: float,
                 credentials: tuple[str, str] | None = None) -> None:
        """`credentials`: static keys for a local endpoint; None uses the standard AWS chain
        (environment, shared files, profiles, container and instance roles)."""
        super().__init__(slow_query_threshold_seconds=slow_query_threshold_seconds)
        self.region = region
        self.endpoint_url = endpoint_url
        self.table = f"{table_prefix}{TABLE_NAME}"
        self.connect_timeout_seconds = connect_timeout_seconds
        self.read_timeout_seconds = read_timeout_seconds
        self.max_attempts = max_attempts
        self.retry_mode = retry_mode
        self.credentials = credentials
        # Throttled requests that botocore retried, and requests sent, by API operation.
        self.throttle_retries = 0
        self.request_counts: Counter[str] = Counter()
        self._client: Any = None
        self._ping_client: Any = None
        self._exit_stack: AsyncExitStack | None = None
        self._builds: OrderedDict[str, Item] = OrderedDict()
        self._log_seqs: OrderedDict[str, int] = OrderedDict()

    # -- plumbing --------------------------------------------------------------------------
    def _count_request(self, event_name: str = "", **_: Any) -> None:
        # before-send.dynamodb.<Operation>: once per HTTP request, retries included.
        self.request_counts[event_name.rsplit(".", 1)[-1]] += 1

    def _count_throttling(self, response: Any = None, attempts: int = 0, **_: Any) -> None:
        if response and attempts < self.max_attempts:
            code = response[1].get("Error", {}).get("Code")
            if code in THROTTLING_CODES:
                self.throttle_retries += 1
                db_observer.observe_throttle_retry()

    async def _open_client(self, stack: AsyncExitStack, config: AioConfig) -> Any:
        keys = ({"aws_access_key_id": self.credentials[0],
                 "aws_secret_access_key": self.credentials[1]} if self.credentials else {})
        client = await stack.enter_async_context(_session().create_client(
            "dynamodb", region_name=self.region, endpoint_url=self.endpoint_url, config=config,
            **keys))
        client.meta.events.register("before-send.dynamodb", self._count_request)
        client.meta.events.register("needs-retry.dynamodb", self._count_throttling)
        return client

    async def _send(self, client: Any, api: str, params: dict[str, Any]) -> Any:
        method = getattr(client, "".join(f"_{c.lower()}" if c.isupper() else c for c in api)[1:])
        for attempt in range(CONTENTION_ATTEMPTS):
            try:
                return await method(**params)
            except ClientError as exc:
                error = exc.response.get("Error", {})
                code = error.get("Code", "")
                if code == "TransactionConflictException":
                    # A single-item write that met a transaction in progress: not applied.
                    await _back_off(attempt)
                    continue
                if code == "ConditionalCheckFailedException":
                    return _Refused(["ConditionalCheckFailed"], exc.response.get("Item"))
                if code == "TransactionCanceledException":
                    reasons = [reason.get("Code") or "None"
                               for reason in exc.response.get("CancellationReasons", [])]
                    if "ValidationError" in reasons:
                        raise self._validation_error(api, error.get("Message", "")) from exc
                    return _Refused(reasons)
                if code == "ValidationException":
                    raise self._validation_error(api, error.get("Message", "")) from exc
                if code == "ResourceNotFoundException":
                    raise _TableMissing(f"DynamoDB table {self.table} does not exist: "
                                        "run `nexus-ai init-db`") from exc
                if code == "ResourceInUseException":
                    raise _TableExists(f"DynamoDB table {self.table} exists already") from exc
                if code in THROTTLING_CODES:
                    raise StoreThrottled(f"DynamoDB throttled {api} after {self.max_attempts} "
                                     "attempts") from exc
                raise StoreError(f"DynamoDB {api} failed: {code}: {error.get('Message', '')}") from exc
            except BotoCoreError as exc:
                raise StoreError(f"DynamoDB {api} failed: {exc}") from exc
        raise RecordConflict(f"DynamoDB {api}: the item stayed busy with other transactions")

    def _validation_error(self, api: str, message: str) -> Exception:
        if "size" in message.lower():
            return RecordTooLarge("body", f"DynamoDB refused the record as too large: {message}")
        return StoreError(f"DynamoDB refused {api}: {message}")

    async def _call(self, operation: str, api: str, params: dict[str, Any], *,
                    client: Any = None) -> dict[str, Any]:
        """One request, timed; raises _Refused when a condition did not hold."""
        client = client or self._client
        if client is None:
            raise StoreError("the store is not open")
        result = await self.timed(f"{operation}:{api}", lambda: self._send(client, api, params))
        if isinstance(result, _Refused):
            raise result
        return result

    async def _transact(self, operation: str, actions: list[dict[str, Any]]) -> None:
        for action in actions:
            body = next(iter(action.values()))
            if "Item" in body:
                _check_size(body["Item"])
        await self._call(operation, "TransactWriteItems", {"TransactItems": actions})

    def _put(self, item: Item, condition: str | None = None,
             expression: _Expression | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"TableName": self.table, "Item": item}
        if condition:
            body["ConditionExpression"] = condition
            body.update((expression or _Expression()).params())
        return {"Put": body}

    def _delete(self, key: Item, condition: str | None = None,
                expression: _Expression | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"TableName": self.table, "Key": key}
        if condition:
            body["ConditionExpression"] = condition
            body.update((expression or _Expression()).params())
        return {"Delete": body}

    def _update(self, key: Item, expression: _Expression, update: str,
                condition: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"TableName": self.table, "Key": key, "UpdateExpression": update,
                                **expression.params()}
        if condition:
            body["ConditionExpression"] = condition
        return {"Update": body}

    def _exists(self, key: Item) -> dict[str, Any]:
        expression = _Expression()
        return {"ConditionCheck": {"TableName": self.table, "Key": key,
                                   "ConditionExpression": f"attribute_exists({expression.name('pk')})",
                                   **expression.params()}}

    async def _get(self, operation: str, key: Item) -> Item | None:
        response = await self._call(operation, "GetItem",
                                    {"TableName": self.table, "Key": key, "ConsistentRead": True})
        return response.get("Item")

    async def _query(self, operation: str, *, partition: str, index: str | None = None,
                     sk_prefix: str | None = None, sk_between: tuple[str, str] | None = None,
                     forward: bool = True, limit: int | None = None, start: Item | None = None,
                     projection: Iterable[str] | None = None, filter_: str | None = None,
                     expression: _Expression | None = None) -> tuple[list[Item], Item | None]:
        """One Query page: the items and the LastEvaluatedKey."""
        expression = expression or _Expression()
        pk_name, sk_name = (f"{index}pk", f"{index}sk") if index else ("pk", "sk")
        condition = f"{expression.name(pk_name)} = {expression.value(_s(partition))}"
        if sk_prefix is not None:
            condition += (f" AND begins_with({expression.name(sk_name)}, "
                          f"{expression.value(_s(sk_prefix))})")
        if sk_between is not None:
            condition += (f" AND {expression.name(sk_name)} BETWEEN "
                          f"{expression.value(_s(sk_between[0]))} AND {expression.value(_s(sk_between[1]))}")
        params: dict[str, Any] = {"TableName": self.table, "KeyConditionExpression": condition,
                                  "ScanIndexForward": forward}
        if index:
            params["IndexName"] = index
        else:
            params["ConsistentRead"] = True
        if limit is not None:
            params["Limit"] = limit
        if start is not None:
            params["ExclusiveStartKey"] = start
        if projection is not None:
            params["ProjectionExpression"] = ", ".join(expression.name(name) for name in projection)
        if filter_ is not None:
            params["FilterExpression"] = filter_
        params.update(expression.params())
        response = await self._call(operation, "Query", params)
        return response.get("Items", []), response.get("LastEvaluatedKey")

    async def _query_all(self, operation: str, **query: Any) -> list[Item]:
        items: list[Item] = []
        start = None
        while True:
            page, start = await self._query(operation, start=start, **query)
            items.extend(page)
            if start is None:
                return items

    async def _batch_get(self, operation: str, keys: Iterable[Key],
                         projection: Iterable[str] | None = None) -> dict[Key, Item]:
        """Items by (pk, sk), read consistently; missing keys are absent from the answer."""
        wanted = list(dict.fromkeys(keys))
        found: dict[Key, Item] = {}

        async def fetch(chunk: list[Key]) -> None:
            request: dict[str, Any] = {"Keys": [_key(pk, sk) for pk, sk in chunk],
                                       "ConsistentRead": True}
            if projection is not None:
                expression = _Expression()
                request["ProjectionExpression"] = ", ".join(
                    expression.name(name) for name in ("pk", "sk", *projection))
                request.update(expression.params())
            for attempt in range(CONTENTION_ATTEMPTS):
                response = await self._call(operation, "BatchGetItem",
                                            {"RequestItems": {self.table: request}})
                for item in response.get("Responses", {}).get(self.table, []):
                    found[(item["pk"]["S"], item["sk"]["S"])] = item
                unprocessed = response.get("UnprocessedKeys", {}).get(self.table)
                if not unprocessed:
                    return
                request = unprocessed
                await _back_off(attempt)
            raise StoreError("DynamoDB kept keys of a BatchGetItem unprocessed")

        await asyncio.gather(*(fetch(chunk) for chunk in _chunks(wanted, MAX_BATCH_GET)))
        return found

    async def _batch_delete(self, operation: str, keys: Iterable[Key]) -> None:
        async def delete(chunk: list[Key]) -> None:
            requests = [{"DeleteRequest": {"Key": _key(pk, sk)}} for pk, sk in chunk]
            for attempt in range(CONTENTION_ATTEMPTS):
                response = await self._call(operation, "BatchWriteItem",
                                            {"RequestItems": {self.table: requests}})
                requests = response.get("UnprocessedItems", {}).get(self.table)
                if not requests:
                    return
                await _back_off(attempt)
            raise StoreError("DynamoDB kept items of a BatchWriteItem unprocessed")

        await asyncio.gather(*(delete(chunk) for chunk in _chunks(list(dict.fromkeys(keys)),
                                                                  MAX_BATCH_WRITE)))

    # -- aggregates ------------------------------------------------------------------------
    def _bump_counters(self, deltas: dict[str, float]) -> dict[str, Any] | None:
        """One counter shard's update, or None when nothing changes."""
        changes = {name: _n(delta) for name, delta in deltas.items() if delta}
        if not changes:
            return None
        expression = _Expression()
        shard = random.randrange(COUNTER_SHARDS)
        return self._update(_key(f"COUNTERS#{shard}", "#COUNTERS"), expression,
                            _update_expression(expression, add=changes))

    def _bump_daily(self, day: str, deltas: dict[str, float]) -> dict[str, Any]:
        expression = _Expression()
        shard = random.randrange(DAILY_SHARDS)
        return self._update(_key(f"DAILY#{shard}", day), expression,
                            _update_expression(expression, add={name: _n(delta)
                                                                for name, delta in deltas.items()}))

    def _finished_build_aggregates(self, build: Record) -> list[dict[str, Any]]:
        """What a build reaching a final status adds to the aggregates (as SQLite counts it)."""
        status = build["status"]
        tokens = {name: value for name, value in build_token_deltas(build).items() if value}
        counters = {"builds_active": -1, f"builds_{status}": 1, **tokens}
        day = (build["finished_at"] or build["updated_at"])[:10]
        daily: dict[str, float] = dict(tokens)
        if status == "succeeded":
            seconds = build["duration_seconds"] or 0.0
            counters["build_seconds_succeeded"] = seconds
            daily.update(builds_succeeded=1, build_seconds_succeeded=seconds)
        elif status == "failed":
            stage = (build.get("error") or {}).get("stage") or "unknown"
            daily.update({"builds_failed": 1, f"{FAILED_STAGE_PREFIX}{stage}": 1})
        actions = [action for action in [self._bump_counters(counters)] if action]
        if daily:
            actions.append(self._bump_daily(day, daily))
        return actions

    # -- lifecycle -------------------------------------------------------------------------
    async def open(self) -> None:
        stack = AsyncExitStack()
        try:
            self._client = await self._open_client(stack, AioConfig(
                connect_timeout=self.connect_timeout_seconds,
                read_timeout=self.read_timeout_seconds,
                retries={"mode": self.retry_mode, "total_max_attempts": self.max_attempts},
                max_pool_connections=MAX_POOL_CONNECTIONS))
            self._ping_client = await self._open_client(stack, AioConfig(
                connect_timeout=min(PING_TIMEOUT_SECONDS, self.connect_timeout_seconds),
                read_timeout=min(PING_TIMEOUT_SECONDS, self.read_timeout_seconds),
                retries={"mode": "standard", "total_max_attempts": 1}))
        except BotoCoreError as exc:
            await stack.aclose()
            raise StoreError(f"DynamoDB client could not start: {exc}") from exc
        self._exit_stack = stack
        try:
            await self._ensure_table()
            await self._finish_interrupted_deletes()
        except BaseException:
            await self.close()
            raise

    async def _ensure_table(self) -> None:
        """Create the table (on-demand capacity) unless it exists, and wait until it and its
        indexes are ACTIVE. Several instances may do this at once."""
        try:
            table = (await self._call("open", "DescribeTable", {"TableName": self.table}))["Table"]
        except _TableMissing:
            table = await self._create_table()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TABLE_ACTIVE_TIMEOUT_SECONDS
        while not self._active(table):
            if loop.time() > deadline:
                raise StoreError(f"DynamoDB table {self.table} did not become ACTIVE within "
                                 f"{TABLE_ACTIVE_TIMEOUT_SECONDS:g} s")
            await asyncio.sleep(TABLE_POLL_SECONDS)
            table = (await self._call("open", "DescribeTable", {"TableName": self.table}))["Table"]
        present = {index["IndexName"] for index in table.get("GlobalSecondaryIndexes", [])}
        missing = sorted(set(INDEXES) - present)
        if missing:
            raise StoreError(f"DynamoDB table {self.table} lacks the indexes {missing}; it was "
                             "not created by this version")

    async def _create_table(self) -> dict[str, Any]:
        indexes = []
        for name in INDEXES:
            projection: dict[str, Any] = {"ProjectionType": "KEYS_ONLY"}
            if name == "gsi2":
                projection = {"ProjectionType": "INCLUDE", "NonKeyAttributes": list(CLAIM_ATTRIBUTES)}
            indexes.append({"IndexName": name, "Projection": projection, "KeySchema": [
                {"AttributeName": f"{name}pk", "KeyType": "HASH"},
                {"AttributeName": f"{name}sk", "KeyType": "RANGE"}]})
        attributes = ["pk", "sk", *(f"{name}{part}" for name in INDEXES for part in ("pk", "sk"))]
        try:
            response = await self._call("open", "CreateTable", {
                "TableName": self.table, "BillingMode": "PAY_PER_REQUEST",
                "AttributeDefinitions": [{"AttributeName": name, "AttributeType": "S"}
                                         for name in attributes],
                "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"},
                              {"AttributeName": "sk", "KeyType": "RANGE"}],
                "GlobalSecondaryIndexes": indexes})
        except _TableExists:  # another instance created it first
            return (await self._call("open", "DescribeTable", {"TableName": self.table}))["Table"]
        logger.info("Created DynamoDB table", extra={"table": self.table})
        return response["TableDescription"]

    @staticmethod
    def _active(table: dict[str, Any]) -> bool:
        return table.get("TableStatus") == "ACTIVE" and all(
            index.get("IndexStatus") == "ACTIVE" for index in table.get("GlobalSecondaryIndexes", []))

    async def close(self) -> None:
        if self._exit_stack is not None:
            await self._exit_stack.aclose()
        self._exit_stack = self._client = self._ping_client = None
        self._builds.clear()
        self._log_seqs.clear()

    async def ping(self) -> None:
        await self._call("ping", "GetItem", {"TableName": self.table, "Key": _key("PING", "PING")},
                         client=self._ping_client)

    # -- projects and builds ---------------------------------------------------------------
    def _project_item(self, project: Record) -> Item:
        project_id = _part("project_id", project["project_id"])
        user_id = _part("user_id", project["user_id"])
        position = _position(project["created_at"], project_id)
        item = _attributes(project, PROJECT_FIELDS)
        item.update(_key(f"PROJECT#{project_id}", PROJECT_SK))
        item.update({
            "gsi1pk": _s("PROJECTS"), "gsi1sk": _s(position),
            "gsi3pk": _s(f"PROJECTS#user#{user_id}"), "gsi3sk": _s(position),
            "gsi2sk": _s(position), "gsi4sk": _s(position),
            **self._project_status_keys(project["status"], user_id)})
        return item

    @staticmethod
    def _project_status_keys(status: str, user_id: str) -> Item:
        return {"gsi2pk": _s(f"PROJECTS#status#{status}"),
                "gsi4pk": _s(f"PROJECTS#status_user#{status}#{user_id}")}

    def _build_item(self, build: Record, user_id: str) -> Item:
        build_id = _part("build_id", build["build_id"])
        project_id = _part("project_id", build["project_id"])
        position = _position(build["created_at"], build_id)
        item = _attributes(build, BUILD_FIELDS)
        item.update(_key(f"BUILD#{build_id}", BUILD_SK))
        item.update({"gsi1pk": _s(f"BUILDS#{project_id}"), "gsi1sk": _s(position),
                     "version": _n(1), "project_user": _s(user_id)})
        if build["status"] in ACTIVE_BUILD_STATUSES:
            item.update({"gsi2pk": _s("BUILDS#active"), "gsi2sk": _s(position)})
        return item

    def _new_build_actions(self, build: Record, user_id: str) -> list[dict[str, Any]]:
        """A new build with its reference in its project and, when owned, its lease row."""
        expression = _Expression()
        actions = [
            self._put(self._build_item(build, user_id),
                      f"attribute_not_exists({expression.name('pk')})", expression),
            self._put({**_key(f"BUILD#{build['build_id']}", LOGS_SK), "log_seq": _n(0)}),
            self._put(_key(f"PROJECT#{build['project_id']}", f"{BUILD_REF}{build['build_id']}"))]
        if build.get("owner"):
            actions.append(self._put(_key(f"LEASE#{_part('owner', build['owner'])}",
                                          f"BUILD#{build['build_id']}")))
        counters = self._bump_counters({"builds_total": 1, "builds_active": 1})
        assert counters is not None
        actions += [counters, self._bump_daily(build["created_at"][:10], {"builds_total": 1})]
        return actions

    async def create_project(self, *, project: Record, build: Record) -> None:
        expression = _Expression()
        actions = [self._put(self._project_item(project),
                             f"attribute_not_exists({expression.name('pk')})", expression),
                   *self._new_build_actions(build, project["user_id"])]
        try:
            await self._transact("create_project", actions)
        except _Refused as refused:
            raise StoreError(f"project {project['project_id']} or build {build['build_id']} "
                             f"already exists ({refused})") from refused

    async def get_project(self, *, project_id: str) -> Record | None:
        if not _keyable(project_id):
            return None
        item = await self._get("get_project", _key(f"PROJECT#{project_id}", PROJECT_SK))
        return _record(item, PROJECT_FIELDS) if item else None

    async def list_projects(self, *, limit: int, last_key: str | None, status: str | None = None,
                            user_id: str | None = None) -> Page:
        start = self._decode_position(last_key)
        if not _keyable(*(value for value in (status, user_id) if value is not None)):
            return Page(items=[])
        if status is not None and user_id is not None:
            index = _Index("gsi4", f"PROJECTS#status_user#{status}#{user_id}", "PROJECT#", PROJECT_SK)
        elif status is not None:
            index = _Index("gsi2", f"PROJECTS#status#{status}", "PROJECT#", PROJECT_SK)
        elif user_id is not None:
            index = _Index("gsi3", f"PROJECTS#user#{user_id}", "PROJECT#", PROJECT_SK)
        else:
            index = _Index("gsi1", "PROJECTS", "PROJECT#", PROJECT_SK)

        async def load(ids: list[str]) -> dict[str, Record]:
            items = await self._batch_get("list_projects",
                                          [(f"PROJECT#{i}", PROJECT_SK) for i in ids])
            return {item["project_id"]["S"]: _record(item, PROJECT_FIELDS) for item in items.values()}

        def accept(project: Record) -> bool:
            return status in (None, project["status"]) and user_id in (None, project["user_id"])

        return await self._list_index("list_projects", [index], start=start, limit=limit,
                                      load=load, accept=accept)

    async def delete_project(self, *, project_id: str) -> bool:
        operation = "delete_project"
        if not _keyable(project_id):
            return False
        pk = f"PROJECT#{project_id}"
        for attempt in range(CONTENTION_ATTEMPTS):
            head = [item["sk"]["S"] for item in await self._query_all(
                operation, partition=pk, sk_between=(BUILD_REF, PROJECT_SK), projection=("sk",))]
            if PROJECT_SK not in head:
                return False
            builds = await self._batch_get(
                operation, [(f"BUILD#{sk[len(BUILD_REF):]}", BUILD_SK) for sk in head
                            if sk.startswith(BUILD_REF)],
                projection=("status", "owner", "version", "lease_until"))
            active = [item for item in builds.values()
                      if _text(item, "status") in ACTIVE_BUILD_STATUSES]
            expression = _Expression()
            actions = [self._delete(_key(pk, PROJECT_SK),
                                    f"attribute_exists({expression.name('pk')})", expression)]
            for item in active:
                actions += self._release_build_actions(item)
            counters = self._bump_counters({"builds_active": -len(active),
                                            "builds_cancelled": len(active)})
            actions += [action for action in (counters,) if action]
            actions.append(self._put(_key(CLEANUP_PK, f"project#{project_id}")))
            if len(actions) > MAX_TRANSACTION_ITEMS:
                raise StoreError(f"project {project_id} has too many active builds to delete")
            try:
                await self._transact(operation, actions)
                break
            except _Refused as refused:
                if refused.failed(0):
                    return False
                await _back_off(attempt)
        else:
            raise RecordConflict(f"project {project_id} kept changing while it was deleted")
        await self._purge_project(project_id)
        return True

    def _release_build_actions(self, item: Item) -> list[dict[str, Any]]:
        """Delete an active build as it was read (its version), with its lease row."""
        expression = _Expression()
        actions = [self._delete(_key(item["pk"]["S"], BUILD_SK),
                                f"{expression.name('version')} = {expression.value(item['version'])}",
                                expression),
                   self._delete(_key(item["pk"]["S"], LOGS_SK))]
        owner = _text(item, "owner")
        if owner:
            actions.append(self._delete(_key(f"LEASE#{owner}", item["pk"]["S"])))
        self._builds.pop(item["pk"]["S"][len("BUILD#"):], None)
        self._log_seqs.pop(item["pk"]["S"][len("BUILD#"):], None)
        return actions

    async def _purge_project(self, project_id: str) -> None:
        """Everything left under a deleted project, then its cleanup marker."""
        operation = "delete_project"
        pk = f"PROJECT#{project_id}"
        keys = await self._query_all(operation, partition=pk, projection=("pk", "sk"))
        sort_keys = [item["sk"]["S"] for item in keys]
        agents = [sk[len("AGENT#"):] for sk in sort_keys if sk.startswith("AGENT#")]
        builds = [sk[len(BUILD_REF):] for sk in sort_keys if sk.startswith(BUILD_REF)]
        for agent_id in agents:
            await self._delete_agent(operation, agent_id, in_project=True)
        await asyncio.gather(*(self._purge_build(operation, build_id) for build_id in builds))
        await self._batch_delete(operation, [(pk, sk) for sk in sort_keys])
        await self._batch_delete(operation, [(CLEANUP_PK, f"project#{project_id}")])

    async def _purge_build(self, operation: str, build_id: str) -> None:
        self._builds.pop(build_id, None)
        self._log_seqs.pop(build_id, None)
        items = await self._query_all(operation, partition=f"BUILD#{build_id}",
                                      projection=("pk", "sk", "owner"))
        keys = [(item["pk"]["S"], item["sk"]["S"]) for item in items]
        owners = [_text(item, "owner") for item in items if item["sk"]["S"] == BUILD_SK]
        keys += [(f"LEASE#{owner}", f"BUILD#{build_id}") for owner in owners if owner]
        await self._batch_delete(operation, keys)

    async def add_build(self, *, build: Record) -> bool:
        operation = "add_build"
        if not _keyable(build["project_id"]):
            return False
        pk = f"PROJECT#{build['project_id']}"
        for attempt in range(CONTENTION_ATTEMPTS):
            project = await self._get(operation, _key(pk, PROJECT_SK))
            if project is None:
                return False
            latest_id = _text(project, "latest_build_id")
            latest = await self._get(operation, _key(f"BUILD#{latest_id}", BUILD_SK)) \
                if latest_id else None
            if latest is not None and _text(latest, "status") in ACTIVE_BUILD_STATUSES:
                return False
            user_id = project["user_id"]["S"]
            expression = _Expression()
            latest_alias = expression.name("latest_build_id")
            condition = (f"{latest_alias} = {expression.value(_s(latest_id))}" if latest_id
                         else f"attribute_not_exists({latest_alias})")
            mirrored = {"latest_build_id": build["build_id"],
                        "status": PROJECT_STATUS_FOR_BUILD[build["status"]],
                        "progress": build["progress"], "current_stage": build["current_stage"],
                        "updated_at": build["created_at"]}
            update = self._mirror_expression(expression, mirrored, user_id)
            actions = [self._update(_key(pk, PROJECT_SK), expression, update, condition)]
            checked = latest is not None
            if checked:
                check = _Expression()
                actions.append({"ConditionCheck": {
                    "TableName": self.table, "Key": _key(latest["pk"]["S"], BUILD_SK),
                    "ConditionExpression":
                        f"{check.name('version')} = {check.value(latest['version'])}",
                    **check.params()}})
            actions += self._new_build_actions(build, user_id)
            try:
                await self._transact(operation, actions)
                return True
            except _Refused as refused:
                if not (refused.failed(0) or (checked and refused.failed(1)) or refused.contended):
                    raise RecordConflict(f"build {build['build_id']} already exists") from refused
                await _back_off(attempt)
        raise RecordConflict(f"project {build['project_id']} kept changing while a build was added")

    @staticmethod
    def _mirror_expression(expression: _Expression, fields: Record, user_id: str) -> str:
        """The update of a project's mirrored fields (and its status index keys)."""
        set_ = {name: value for name, value in
                ((name, _encode(name, value)) for name, value in fields.items()) if value is not None}
        set_.update(DynamoDBStore._project_status_keys(fields["status"], user_id))
        remove = [name for name, value in fields.items() if value is None]
        return _update_expression(expression, set_=set_, remove=remove)

    def _remember_build(self, build_id: str, item: Item) -> None:
        self._builds[build_id] = item
        self._builds.move_to_end(build_id)
        while len(self._builds) > CACHED_BUILDS:
            self._builds.popitem(last=False)

    async def get_build(self, *, build_id: str) -> Record | None:
        if not _keyable(build_id):
            return None
        item = await self._get("get_build", _key(f"BUILD#{build_id}", BUILD_SK))
        if item is None:
            self._builds.pop(build_id, None)
            return None
        self._remember_build(build_id, item)
        return _record(item, BUILD_FIELDS)

    async def list_builds(self, *, project_id: str, limit: int, last_key: str | None) -> Page:
        start = self._decode_position(last_key)
        if not _keyable(project_id):
            return Page(items=[])

        async def load(ids: list[str]) -> dict[str, Record]:
            items = await self._batch_get("list_builds", [(f"BUILD#{i}", BUILD_SK) for i in ids])
            return {item["build_id"]["S"]: _record(item, BUILD_FIELDS) for item in items.values()}

        return await self._list_index(
            "list_builds", [_Index("gsi1", f"BUILDS#{project_id}", "BUILD#", BUILD_SK)],
            start=start, limit=limit, load=load,
            accept=lambda build: build["project_id"] == project_id)

    @staticmethod
    def _claimable(build: Record, now: str) -> bool:
        if build["owner"] is None:
            return build["status"] in CLAIMABLE_UNOWNED_STATUSES
        return (build["status"] in ACTIVE_BUILD_STATUSES and build["lease_until"] is not None
                and build["lease_until"] < now)

    async def list_claimable_builds(self, *, now: str, limit: int) -> list[Record]:
        """Active builds are the sparse gsi2 partition BUILDS#active, which carries status,
        owner and lease, so the claim filter runs inside the Query."""
        operation = "list_claimable_builds"
        claimable: list[Record] = []
        start = None
        while len(claimable) < limit:
            expression = _Expression()
            status, owner, lease = (expression.name(name) for name in CLAIM_ATTRIBUTES)
            filter_ = (f"(attribute_not_exists({owner}) AND {status} IN "
                       f"({expression.values_of(CLAIMABLE_UNOWNED_STATUSES)})) OR "
                       f"(attribute_exists({owner}) AND {lease} < {expression.value(_s(now))})")
            page, start = await self._query(operation, index="gsi2", partition="BUILDS#active",
                                            forward=True, start=start, filter_=filter_,
                                            expression=expression)
            keys = [(item["pk"]["S"], BUILD_SK) for item in page]
            # The index may lag its items: read the candidates needed, check them, read on.
            while keys and len(claimable) < limit:
                wanted, keys = keys[:limit - len(claimable)], keys[limit - len(claimable):]
                found = await self._batch_get(operation, wanted)
                builds = [_record(found[key], BUILD_FIELDS) for key in wanted if key in found]
                claimable += [build for build in builds if self._claimable(build, now)]
            if start is None:
                break
        return claimable

    async def claim_build(self, *, build_id: str, owner: str, lease_until: str, now: str) -> bool:
        def decide(build: Record) -> Record | None:
            if not self._claimable(build, now):
                return None
            return {"owner": owner, "lease_until": lease_until,
                    "recoveries": build["recoveries"] + (build["owner"] is not None),
                    "status": "running" if build["status"] == "queued" else build["status"],
                    "started_at": build["started_at"] or now, "updated_at": now}

        # A claim always reads afresh and requires the lease it read: a renewal between the
        # read and the write keeps the build with its live owner.
        return await self._change_build("claim_build", build_id, decide, cached=False,
                                        check_lease=True)

    async def renew_leases(self, *, owner: str, lease_until: str) -> list[Record]:
        """The owner's lease rows name its builds; each renewal is conditional on the build
        still being active and owned by it. The rows are read again until no claim made
        meanwhile is missing, so the answer covers every build held when it returns."""
        operation = "renew_leases"
        if not _keyable(owner):
            return []
        renewed: dict[str, Record | None] = {}
        while True:
            rows = await self._query_all(operation, partition=f"LEASE#{owner}", projection=("sk",))
            new = [row["sk"]["S"][len("BUILD#"):] for row in rows
                   if row["sk"]["S"][len("BUILD#"):] not in renewed]
            if not new:
                return [build for build in renewed.values() if build is not None]
            results = await asyncio.gather(*(self._renew_lease(owner, build_id, lease_until)
                                             for build_id in new))
            renewed.update(zip(new, results, strict=True))

    async def _renew_lease(self, owner: str, build_id: str, lease_until: str) -> Record | None:
        """The build (id and status) when the owner still holds it."""
        expression = _Expression()
        update = _update_expression(expression, set_={"lease_until": _s(lease_until)})
        condition = (f"{expression.name('owner')} = {expression.value(_s(owner))} AND "
                     f"{expression.name('status')} IN ({expression.values_of(ACTIVE_BUILD_STATUSES)})")
        try:
            response = await self._call("renew_leases", "UpdateItem", {
                "TableName": self.table, "Key": _key(f"BUILD#{build_id}", BUILD_SK),
                "UpdateExpression": update, "ConditionExpression": condition,
                "ReturnValues": "ALL_NEW", "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                **expression.params()})
            item: Item | None = response["Attributes"]
        except _Refused as refused:
            item = refused.item
            if not item or _text(item, "owner") != owner:
                return None
        assert item is not None
        return {"build_id": build_id, "status": item["status"]["S"]}

    async def update_build(self, *, build_id: str, changes: Record, expect_status: tuple[str, ...],
                           expect_owner: str | None = None, logs: Sequence[Record] = (),
                           artifacts: Sequence[Record] = ()) -> bool:
        """Not one transaction here: the artifacts first (one transaction per 100 items), so
        that a step is never recorded complete without its output; then the change; then the
        log lines, only if the change was made."""
        def decide(build: Record) -> Record | None:
            if build["status"] not in expect_status:
                return None
            if expect_owner is not None and build["owner"] != expect_owner:
                return None
            return changes

        if artifacts:
            await self._put_artifacts(artifacts)
        if not await self._change_build("update_build", build_id, decide, cached=True,
                                        check_lease=False):
            return False
        if logs:
            await self._append_build_logs(build_id, logs)
        return True

    async def _change_build(self, operation: str, build_id: str,
                            decide: Callable[[Record], Record | None], *, cached: bool,
                            check_lease: bool) -> bool:
        """Apply the changes `decide` makes of the build's current state, in one transaction
        with its lease rows, the aggregates of a final status and the project's mirror.

        The write requires the version it was decided on, so a stale copy (cached, or read
        before another instance wrote) is read again and decided again."""
        if not _keyable(build_id):
            return False
        item = self._builds.get(build_id) if cached else None
        mirror = True
        for attempt in range(CONTENTION_ATTEMPTS):
            fresh = item is None
            if fresh:
                item = await self._get(operation, _key(f"BUILD#{build_id}", BUILD_SK))
                if item is None:
                    self._builds.pop(build_id, None)
                    return False
            current = _record(item, BUILD_FIELDS)
            changes = decide(current)
            if changes is None:
                if fresh:
                    self._remember_build(build_id, item)
                    return False
                item = None  # refused on a cached copy: confirm on a fresh read
                continue
            actions, written = self._build_change_actions(item, current, changes, mirror,
                                                          check_lease)
            try:
                await self._transact(operation, actions)
            except _Refused as refused:
                if refused.failed(0):
                    item = None
                elif mirror and refused.failed(len(actions) - 1):
                    mirror = False  # no longer the project's latest build: nothing to mirror
                elif not refused.contended:
                    raise StoreError(f"DynamoDB refused the {operation} of {build_id}: "
                                     f"{refused}") from refused
                await _back_off(attempt)
                continue
            self._remember_build(build_id, written)
            return True
        raise RecordConflict(f"build {build_id} kept changing during {operation}")

    def _build_change_actions(self, item: Item, current: Record, changes: Record, mirror: bool,
                              check_lease: bool) -> tuple[list[dict[str, Any]], Item]:
        """The transaction that applies `changes`, and the build item it leaves."""
        build_id = current["build_id"]
        updated = {**current, **changes}
        set_: Item = {}
        remove: list[str] = []
        for name, value in changes.items():
            if name not in BUILD_FIELDS or name == "build_id":
                continue
            encoded = _encode(name, value)
            if encoded is None:
                remove.append(name)
            else:
                set_[name] = encoded
        if "status" in changes:
            if updated["status"] in ACTIVE_BUILD_STATUSES:
                set_.update({"gsi2pk": _s("BUILDS#active"),
                             "gsi2sk": _s(_position(current["created_at"], build_id))})
            else:
                remove += ["gsi2pk", "gsi2sk"]
        version = int(item["version"]["N"])
        set_["version"] = _n(version + 1)
        written = {name: value for name, value in item.items() if name not in remove}
        written.update(set_)
        _check_size(written)

        expression = _Expression()
        condition = f"{expression.name('version')} = {expression.value(item['version'])}"
        if check_lease:
            lease = expression.name("lease_until")
            condition += (f" AND {lease} = {expression.value(item['lease_until'])}"
                          if "lease_until" in item else f" AND attribute_not_exists({lease})")
        actions = [self._update(_key(f"BUILD#{build_id}", BUILD_SK), expression,
                                _update_expression(expression, set_=set_, remove=remove),
                                condition)]
        if updated["owner"] != current["owner"]:
            if current["owner"]:
                actions.append(self._delete(_key(f"LEASE#{current['owner']}", f"BUILD#{build_id}")))
            if updated["owner"]:
                actions.append(self._put(_key(f"LEASE#{_part('owner', updated['owner'])}",
                                              f"BUILD#{build_id}")))
        if updated["status"] != current["status"] and updated["status"] in FINAL_BUILD_STATUSES:
            actions += self._finished_build_aggregates(updated)
        if mirror:
            mirror_expression = _Expression()
            mirrored = {"status": PROJECT_STATUS_FOR_BUILD[updated["status"]],
                        "progress": updated["progress"], "current_stage": updated["current_stage"],
                        "updated_at": updated["updated_at"]}
            user_id = _text(item, "project_user") or ""
            update = self._mirror_expression(mirror_expression, mirrored, user_id)
            condition = (f"{mirror_expression.name('latest_build_id')} = "
                         f"{mirror_expression.value(_s(build_id))}")
            actions.append(self._update(_key(f"PROJECT#{current['project_id']}", PROJECT_SK),
                                        mirror_expression, update, condition))
        return actions, written

    async def _append_build_logs(self, build_id: str, entries: Sequence[Record]) -> None:
        """Lines are numbered per build by the build's small `#LOGS` item, advanced in the
        transaction that stores them, so they list in the order they were appended. The item
        exists as long as the build does: lines for a build that no longer exists are dropped."""
        operation = "append_build_logs"
        if not entries or not _keyable(build_id):
            return
        key = _key(f"BUILD#{build_id}", LOGS_SK)
        for chunk in _chunks(entries, MAX_TRANSACTION_ITEMS - 1):
            seq = self._log_seqs.get(build_id)
            for attempt in range(CONTENTION_ATTEMPTS):
                if seq is None:
                    item = await self._get(operation, key)
                    if item is None:
                        self._log_seqs.pop(build_id, None)
                        return
                    seq = int(item["log_seq"]["N"])
                expression = _Expression()
                update = _update_expression(expression, set_={"log_seq": _n(seq + len(chunk))})
                condition = f"{expression.name('log_seq')} = {expression.value(_n(seq))}"
                actions = [self._update(key, expression, update, condition)]
                for offset, entry in enumerate(chunk, start=1):
                    stage = _part("stage", entry["stage"])
                    actions.append(self._put({**_key(f"BUILD#{build_id}",
                                                     f"LOG#{stage}#{seq + offset:010d}"),
                                              **_attributes(entry, LOG_FIELDS)}))
                try:
                    await self._transact(operation, actions)
                except _Refused as refused:
                    if not (refused.failed(0) or refused.contended):
                        raise StoreError(f"DynamoDB refused log lines: {refused}") from refused
                    seq = None
                    await _back_off(attempt)
                    continue
                self._log_seqs[build_id] = seq + len(chunk)
                self._log_seqs.move_to_end(build_id)
                while len(self._log_seqs) > CACHED_BUILDS:
                    self._log_seqs.popitem(last=False)
                break
            else:
                raise RecordConflict(f"build {build_id} stayed busy while appending logs")

    async def list_build_logs(self, *, build_id: str, stage: str) -> list[Record]:
        if not _keyable(build_id, stage):
            return []
        items = await self._query_all("list_build_logs", partition=f"BUILD#{build_id}",
                                      sk_prefix=f"LOG#{stage}#")
        return [_record(item, LOG_FIELDS) for item in items]

    async def _put_artifacts(self, artifacts: Sequence[Record]) -> None:
        """Stored in their project's partition, conditional on their builds and projects
        existing, so that a build still writing after its project was deleted leaves nothing
        behind."""
        operation = "put_artifacts"
        latest: dict[tuple[str, str], Record] = {}
        for artifact in artifacts:
            latest[(_part("project_id", artifact["project_id"]), _part("path", artifact["path"]))] = artifact
        items = []
        for (project_id, path), artifact in latest.items():
            item = {**_key(f"PROJECT#{project_id}", f"ARTIFACT#{path}"),
                    **_attributes(artifact, ARTIFACT_FIELDS)}
            _check_size(item)
            items.append(item)
        builds = {_part("build_id", artifact["build_id"]) for artifact in latest.values()}
        parents = sorted({(f"BUILD#{build_id}", LOGS_SK) for build_id in builds}
                         | {(f"PROJECT#{project_id}", PROJECT_SK) for project_id, _ in latest})
        checks = [self._exists(_key(pk, sk)) for pk, sk in parents]
        for chunk in self._transaction_chunks(items, len(checks)):
            if not await self._put_artifact_chunk(operation, checks, chunk):
                logger.info("Artifacts of a build that no longer exists were dropped")
                return

    async def _put_artifact_chunk(self, operation: str, checks: list[dict[str, Any]],
                                  chunk: list[Item]) -> bool:
        """False when a build or project no longer exists (nothing was written)."""
        actions = [*checks, *(self._put(item) for item in chunk)]
        for attempt in range(CONTENTION_ATTEMPTS):
            try:
                await self._transact(operation, actions)
                return True
            except _Refused as refused:
                if any(refused.failed(n) for n in range(len(checks))):
                    return False
                if not refused.contended:
                    raise StoreError(f"DynamoDB refused artifacts: {refused}") from refused
                await _back_off(attempt)
        raise RecordConflict("artifacts stayed contended")

    @staticmethod
    def _transaction_chunks(items: list[Item], beside: int) -> Iterable[list[Item]]:
        """Groups that fit one transaction beside `beside` condition checks (count, bytes)."""
        if beside >= MAX_TRANSACTION_ITEMS:
            raise StoreError("artifacts of too many builds in one write")
        chunk: list[Item] = []
        size = 0
        for item in items:
            item_size = sum(len(name) + _attribute_bytes(value) for name, value in item.items())
            if chunk and (len(chunk) == MAX_TRANSACTION_ITEMS - beside
                          or size + item_size > MAX_TRANSACTION_BYTES):
                yield chunk
                chunk, size = [], 0
            chunk.append(item)
            size += item_size
        if chunk:
            yield chunk

    async def list_artifacts(self, *, project_id: str) -> list[Record]:
        if not _keyable(project_id):
            return []
        items = await self._query_all("list_artifacts", partition=f"PROJECT#{project_id}",
                                      sk_prefix="ARTIFACT#", projection=ARTIFACT_LISTED_FIELDS)
        return [_record(item, ARTIFACT_LISTED_FIELDS) for item in items]

    async def get_artifact(self, *, project_id: str, path: str) -> Record | None:
        if not _keyable(project_id, path):
            return None
        item = await self._get("get_artifact", _key(f"PROJECT#{project_id}", f"ARTIFACT#{path}"))
        return _record(item, ARTIFACT_FIELDS) if item else None

    # -- agents ----------------------------------------------------------------------------
    def _agent_item(self, agent: Record, version: int) -> Item:
        agent_id = _part("agent_id", agent["agent_id"])
        position = _position(agent["created_at"], agent_id)
        item = _attributes(agent, AGENT_FIELDS)
        item.update(_key(f"AGENT#{agent_id}", AGENT_SK))
        item.update({"gsi1pk": _s("AGENTS"), "gsi1sk": _s(position),
                     "gsi2sk": _s(position), "gsi3sk": _s(position), "gsi4sk": _s(position),
                     "version": _n(version), **self._agent_index_keys(agent)})
        return item

    @staticmethod
    def _agent_index_keys(agent: Record) -> Item:
        return {"gsi2pk": _s(f"AGENTS#status#{_part('status', agent['status'])}"),
                "gsi3pk": _s(f"AGENTS#project#{_part('project_id', agent['project_id'])}"),
                "gsi4pk": _s(f"AGENTS#category#{_part('category', agent['category'])}")}

    def _capability_actions(self, agent_id: str, created_at: str, old: Iterable[str],
                            new: Iterable[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Index rows to add and to remove when an agent's capabilities go from old to new."""
        old_set, new_list = set(old), list(dict.fromkeys(new))
        new_set = set(new_list)
        position = _s(_position(created_at, agent_id))
        puts = [self._put({**_key(f"AGENT#{agent_id}", f"CAPABILITY#{_part('capabilities', c)}"),
                           "gsi1pk": _s(f"CAPABILITY#{c}"), "gsi1sk": position})
                for c in new_list if c not in old_set]
        deletes = [self._delete(_key(f"AGENT#{agent_id}", f"CAPABILITY#{c}"))
                   for c in sorted(old_set - new_set)]
        return puts, deletes

    async def _write_agent(self, operation: str, core: list[dict[str, Any]],
                           puts: list[dict[str, Any]], deletes: list[dict[str, Any]]) -> None:
        """The agent's transaction with its capability index rows when they fit; otherwise
        the new rows go first and the old ones last, which listings tolerate (they check
        every row against the agent it points to)."""
        if len(core) + len(puts) + len(deletes) <= MAX_TRANSACTION_ITEMS:
            await self._transact(operation, [*core, *puts, *deletes])
            return
        for chunk in _chunks(puts, MAX_TRANSACTION_ITEMS):
            await self._transact(operation, chunk)
        await self._transact(operation, core)
        for chunk in _chunks(deletes, MAX_TRANSACTION_ITEMS):
            await self._transact(operation, chunk)

    async def _agent_items(self, operation: str, agent_id: str) -> tuple[Item | None, Item | None]:
        """The agent and its runtime stats, in one consistent Query."""
        items, _ = await self._query(operation, partition=f"AGENT#{agent_id}",
                                     sk_between=(AGENT_SK, STATS_SK))
        by_sk = {item["sk"]["S"]: item for item in items}
        return by_sk.get(AGENT_SK), by_sk.get(STATS_SK)

    @staticmethod
    def _agent_record(agent: Item, stats: Item | None) -> Record:
        return {**_record(agent, AGENT_FIELDS), **_record(stats or {}, AGENT_STAT_FIELDS)}

    @staticmethod
    def _agent_count_deltas(old_status: str | None, new_status: str | None) -> dict[str, float]:
        deltas: Counter[str] = Counter()
        if old_status in ("running", "offline"):
            deltas[f"agents_{old_status}"] -= 1
        if new_status in ("running", "offline"):
            deltas[f"agents_{new_status}"] += 1
        return dict(deltas)

    async def put_agent(self, *, agent: Record, expect_owner: str | None = None) -> bool:
        """In one transaction: the agent (its stats kept), the change of the agent counts,
        its reference in its project and, with `expect_owner`, the check that its build is
        still running or paused under that owner."""
        operation = "put_agent"
        agent_id = _part("agent_id", agent["agent_id"])
        project_id = _part("project_id", agent["project_id"])
        in_project = True
        for attempt in range(CONTENTION_ATTEMPTS):
            existing, _ = await self._agent_items(operation, agent_id)
            core: list[dict[str, Any]] = []
            if expect_owner is not None:
                check = _Expression()
                core.append({"ConditionCheck": {
                    "TableName": self.table,
                    "Key": _key(f"BUILD#{_part('build_id', agent['build_id'])}", BUILD_SK),
                    "ConditionExpression":
                        f"{check.name('owner')} = {check.value(_s(expect_owner))} AND "
                        f"{check.name('status')} IN ({check.values_of(HELD_BUILD_STATUSES)})",
                    **check.params()}})
            expression = _Expression()
            if existing is None:
                created_at = agent["created_at"]
                core += [self._put(self._agent_item(agent, 1),
                                  f"attribute_not_exists({expression.name('pk')})", expression),
                        self._put({**_key(f"AGENT#{agent_id}", STATS_SK),
                                   **_attributes({}, AGENT_STAT_FIELDS)})]
                old_status, old_capabilities = None, []
            else:
                created_at = existing["created_at"]["S"]
                version = int(existing["version"]["N"])
                core += [self._put(self._agent_item({**agent, "created_at": created_at}, version + 1),
                                  f"{expression.name('version')} = {expression.value(existing['version'])}",
                                  expression)]
                old_status = _text(existing, "status")
                old_capabilities = _record(existing, ("capabilities",))["capabilities"] or []
            project_check = len(core)
            if in_project:
                # The reference lets the project's delete find the agent; a project already
                # gone gets an agent of its own, as the embedded store would keep it.
                core += [self._exists(_key(f"PROJECT#{project_id}", PROJECT_SK)),
                         self._put(_key(f"PROJECT#{project_id}", f"AGENT#{agent_id}"))]
            counters = self._bump_counters(self._agent_count_deltas(old_status, agent["status"]))
            core += [counters] if counters else []
            puts, deletes = self._capability_actions(agent_id, created_at, old_capabilities,
                                                     agent["capabilities"])
            try:
                await self._write_agent(operation, core, puts, deletes)
                return True
            except _Refused as refused:
                if expect_owner is not None and refused.failed(0):
                    return False
                if in_project and refused.failed(project_check):
                    in_project = False
                elif not (any(refused.failed(n) for n in range(project_check))
                          or refused.contended):
                    raise StoreError(f"DynamoDB refused agent {agent_id}: {refused}") from refused
                await _back_off(attempt)
        raise RecordConflict(f"agent {agent_id} kept changing while it was registered")

    async def get_agent(self, *, agent_id: str) -> Record | None:
        if not _keyable(agent_id):
            return None
        agent, stats = await self._agent_items("get_agent", agent_id)
        return self._agent_record(agent, stats) if agent else None

    async def list_agents(self, *, limit: int, last_key: str | None, project_id: str | None = None,
                          status: str | None = None, category: str | None = None,
                          capabilities: list[str] | None = None) -> Page:
        """The most selective index for the filters given (a project, the capabilities
        merged newest first, a category, a status); every candidate is checked against all
        the filters and the read goes on until the page is full."""
        start = self._decode_position(last_key)
        filters = [value for value in (project_id, status, category, *(capabilities or []))
                   if value is not None]
        if not _keyable(*filters):
            return Page(items=[])
        if project_id is not None:
            indexes = [_Index("gsi3", f"AGENTS#project#{project_id}", "AGENT#", AGENT_SK)]
        elif capabilities:
            indexes = [_Index("gsi1", f"CAPABILITY#{c}", "AGENT#", f"CAPABILITY#{c}")
                       for c in dict.fromkeys(capabilities)]
        elif category is not None:
            indexes = [_Index("gsi4", f"AGENTS#category#{category}", "AGENT#", AGENT_SK)]
        elif status is not None:
            indexes = [_Index("gsi2", f"AGENTS#status#{status}", "AGENT#", AGENT_SK)]
        else:
            indexes = [_Index("gsi1", "AGENTS", "AGENT#", AGENT_SK)]

        async def load(ids: list[str]) -> dict[str, Record]:
            keys = [(f"AGENT#{i}", sk) for i in ids for sk in (AGENT_SK, STATS_SK)]
            items = await self._batch_get("list_agents", keys)
            return {i: self._agent_record(items[(f"AGENT#{i}", AGENT_SK)],
                                          items.get((f"AGENT#{i}", STATS_SK)))
                    for i in ids if (f"AGENT#{i}", AGENT_SK) in items}

        def accept(agent: Record) -> bool:
            return (project_id in (None, agent["project_id"]) and status in (None, agent["status"])
                    and category in (None, agent["category"])
                    and (not capabilities
                         or bool(set(capabilities) & set(agent["capabilities"] or []))))

        return await self._list_index("list_agents", indexes, start=start, limit=limit,
                                      load=load, accept=accept)

    async def update_agent(self, *, agent_id: str, changes: Record) -> Record | None:
        operation = "update_agent"
        if not _keyable(agent_id):
            return None
        for attempt in range(CONTENTION_ATTEMPTS):
            existing, stats = await self._agent_items(operation, agent_id)
            if existing is None:
                return None
            current = _record(existing, AGENT_FIELDS)
            updated = {**current, **{k: v for k, v in changes.items() if k in AGENT_FIELDS}}
            expression = _Expression()
            set_: Item = {}
            remove: list[str] = []
            for name in AGENT_FIELDS:
                if name in changes and name not in ("agent_id", "created_at"):
                    encoded = _encode(name, changes[name])
                    if encoded is None:
                        remove.append(name)
                    else:
                        set_[name] = encoded
            set_.update(self._agent_index_keys(updated))
            set_["version"] = _n(int(existing["version"]["N"]) + 1)
            _check_size({**{k: v for k, v in existing.items() if k not in remove}, **set_})
            condition = f"{expression.name('version')} = {expression.value(existing['version'])}"
            core = [self._update(_key(f"AGENT#{agent_id}", AGENT_SK), expression,
                                 _update_expression(expression, set_=set_, remove=remove),
                                 condition)]
            if updated["status"] != current["status"]:
                counters = self._bump_counters(self._agent_count_deltas(current["status"],
                                                                        updated["status"]))
                core += [counters] if counters else []
            puts, deletes = ([], [])
            if "capabilities" in changes:
                puts, deletes = self._capability_actions(agent_id, current["created_at"],
                                                         current["capabilities"] or [],
                                                         updated["capabilities"] or [])
            try:
                await self._write_agent(operation, core, puts, deletes)
            except _Refused as refused:
                if not (refused.failed(0) or refused.contended):
                    raise StoreError(f"DynamoDB refused agent {agent_id}: {refused}") from refused
                await _back_off(attempt)
                continue
            return {**updated, **_record(stats or {}, AGENT_STAT_FIELDS)}
        raise RecordConflict(f"agent {agent_id} kept changing while it was updated")

    async def delete_agent(self, *, agent_id: str) -> bool:
        if not _keyable(agent_id):
            return False
        return await self._delete_agent("delete_agent", agent_id, in_project=False)

    async def _delete_agent(self, operation: str, agent_id: str, *, in_project: bool) -> bool:
        """Remove the agent and its stats (counted out of the agent counts) with a cleanup
        marker, then everything in its partition and its sessions. Within a project's
        delete, the project's marker covers it and the project's partition is purged after."""
        for attempt in range(CONTENTION_ATTEMPTS):
            existing, _ = await self._agent_items(operation, agent_id)
            if existing is None:
                if in_project:
                    await self._purge_agent(operation, agent_id)
                return False
            expression = _Expression()
            actions = [self._delete(_key(f"AGENT#{agent_id}", AGENT_SK),
                                    f"{expression.name('version')} = {expression.value(existing['version'])}",
                                    expression),
                       self._delete(_key(f"AGENT#{agent_id}", STATS_SK))]
            counters = self._bump_counters(self._agent_count_deltas(_text(existing, "status"), None))
            actions += [counters] if counters else []
            if not in_project:
                actions += [self._put(_key(CLEANUP_PK, f"agent#{agent_id}")),
                            self._delete(_key(f"PROJECT#{existing['project_id']['S']}",
                                              f"AGENT#{agent_id}"))]
            try:
                await self._transact(operation, actions)
                break
            except _Refused as refused:
                if not (refused.failed(0) or refused.contended):
                    raise StoreError(f"DynamoDB refused deleting {agent_id}: {refused}") from refused
                await _back_off(attempt)
        else:
            raise RecordConflict(f"agent {agent_id} kept changing while it was deleted")
        await self._purge_agent(operation, agent_id)
        if not in_project:
            await self._batch_delete(operation, [(CLEANUP_PK, f"agent#{agent_id}")])
        return True

    async def _purge_agent(self, operation: str, agent_id: str) -> None:
        """An agent's partition: capability rows, invocations and the sessions it refers to."""
        pk = f"AGENT#{agent_id}"
        keys = [item["sk"]["S"] for item in
                await self._query_all(operation, partition=pk, projection=("sk",))]
        sessions = [sk[len("SESSION#"):] for sk in keys if sk.startswith("SESSION#")]
        await asyncio.gather(*(self._purge_partition(operation, f"SESSION#{session_id}")
                               for session_id in sessions))
        await self._batch_delete(operation, [(pk, sk) for sk in keys])

    async def _purge_partition(self, operation: str, pk: str) -> None:
        items = await self._query_all(operation, partition=pk, projection=("sk",))
        await self._batch_delete(operation, [(pk, item["sk"]["S"]) for item in items])

    async def record_invocation(self, *, invocation: Record, messages: list[Record]) -> None:
        """One transaction: the invocation, the agent's stats (which must exist), a counter
        shard, a daily shard and, for a session turn, the session (at the message count it
        was read with) and its messages."""
        operation = "record_invocation"
        agent_id = invocation["agent_id"]
        if not _keyable(agent_id):
            raise LookupError(f"agent {agent_id} no longer exists")
        stats, totals = invocation_deltas(invocation)
        totals = {name: delta for name, delta in totals.items() if delta}
        pk = f"AGENT#{agent_id}"
        invocation_item = {**_key(pk, "INVOCATION#" + _position(
            invocation["created_at"], _part("invocation_id", invocation["invocation_id"]))),
            **_attributes(invocation, INVOCATION_FIELDS)}
        session_id = messages[0]["session_id"] if messages else None
        if session_id is not None and not _keyable(session_id):
            raise LookupError(f"session {session_id} no longer exists")
        for attempt in range(CONTENTION_ATTEMPTS):
            expression = _Expression()
            stats_update = _update_expression(
                expression, set_={"last_invoked_at": _s(invocation["created_at"])},
                add={name: _n(delta) for name, delta in stats.items()})
            counters = self._bump_counters(totals)
            assert counters is not None
            actions = [self._update(_key(pk, STATS_SK), expression, stats_update,
                                    f"attribute_exists({expression.name('pk')})"),
                       self._put(invocation_item), counters,
                       self._bump_daily(invocation["created_at"][:10], totals)]
            if session_id is not None:
                session = await self._get(operation, _key(f"SESSION#{session_id}", SESSION_SK))
                if session is None:
                    raise LookupError(f"session {session_id} no longer exists")
                actions += self._session_turn_actions(session, messages)
            try:
                await self._transact(operation, actions)
                return
            except _Refused as refused:
                if refused.failed(0):
                    raise LookupError(f"agent {agent_id} no longer exists") from refused
                if not (refused.failed(4) or refused.contended):
                    raise StoreError(f"DynamoDB refused the invocation: {refused}") from refused
                await _back_off(attempt)
        raise RecordConflict(f"agent {agent_id} stayed too busy to record an invocation")

    def _session_turn_actions(self, session: Item, messages: list[Record]) -> list[dict[str, Any]]:
        session_id = session["session_id"]["S"]
        count = int(session.get("message_count", {"N": "0"})["N"])
        last_active_at = messages[-1]["created_at"]
        expression = _Expression()
        update = _update_expression(expression, set_={
            "message_count": _n(count + len(messages)), "last_active_at": _s(last_active_at),
            "gsi1sk": _s(_position(last_active_at, session_id))})
        condition = f"{expression.name('message_count')} = {expression.value(_n(count))}"
        actions = [self._update(_key(f"SESSION#{session_id}", SESSION_SK), expression, update,
                                condition)]
        for offset, message in enumerate(messages, start=1):
            seq = count + offset
            actions.append(self._put({**_key(f"SESSION#{session_id}", f"MESSAGE#{seq:010d}"),
                                      **_attributes({**message, "seq": seq}, MESSAGE_FIELDS)}))
        return actions

    async def list_invocations(self, *, agent_id: str, limit: int, last_key: str | None) -> Page:
        start = self._decode_position(last_key)
        if not _keyable(agent_id):
            return Page(items=[])
        pk = f"AGENT#{agent_id}"
        exclusive = _key(pk, "INVOCATION#" + _position(*start)) if start else None
        items = await self._table_page("list_invocations", pk, "INVOCATION#", forward=False,
                                       limit=limit, start=exclusive)
        records = [_record(item, INVOCATION_FIELDS) for item in items]
        return self._page(records, limit, lambda r: [r["created_at"], r["invocation_id"]])

    async def _table_page(self, operation: str, pk: str, prefix: str, *, forward: bool,
                          limit: int, start: Item | None) -> list[Item]:
        """Up to limit + 1 items of one partition (the extra one says whether more follow)."""
        items: list[Item] = []
        while len(items) <= limit:
            page, start = await self._query(operation, partition=pk, sk_prefix=prefix,
                                            forward=forward, limit=limit + 1 - len(items),
                                            start=start)
            items.extend(page)
            if start is None:
                break
        return items

    @staticmethod
    def _page(records: list[Record], limit: int, position: Callable[[Record], list[Any]]) -> Page:
        if len(records) > limit:
            return Page(items=records[:limit], last_key=cursor.encode(position(records[limit - 1])))
        return Page(items=records)

    # -- sessions --------------------------------------------------------------------------
    async def create_session(self, *, session: Record) -> bool:
        agent_id = session["agent_id"]
        if not _keyable(agent_id):
            return False
        session_id = _part("session_id", session["session_id"])
        item = {**_key(f"SESSION#{session_id}", SESSION_SK), **_attributes(session, SESSION_FIELDS),
                "gsi1pk": _s(f"SESSIONS#{agent_id}"),
                "gsi1sk": _s(_position(session["last_active_at"], session_id))}
        expression = _Expression()
        actions = [self._exists(_key(f"AGENT#{agent_id}", AGENT_SK)),
                   self._put(item, f"attribute_not_exists({expression.name('pk')})", expression),
                   self._put(_key(f"AGENT#{agent_id}", f"SESSION#{session_id}"))]
        try:
            await self._transact("create_session", actions)
        except _Refused as refused:
            if refused.failed(0):
                return False
            raise StoreError(f"session {session_id} could not be created: {refused}") from refused
        return True

    async def get_session(self, *, session_id: str) -> Record | None:
        if not _keyable(session_id):
            return None
        item = await self._get("get_session", _key(f"SESSION#{session_id}", SESSION_SK))
        return _record(item, SESSION_FIELDS) if item else None

    async def list_sessions(self, *, agent_id: str, limit: int, last_key: str | None) -> Page:
        start = self._decode_position(last_key)
        if not _keyable(agent_id):
            return Page(items=[])

        async def load(ids: list[str]) -> dict[str, Record]:
            items = await self._batch_get("list_sessions", [(f"SESSION#{i}", SESSION_SK) for i in ids])
            return {item["session_id"]["S"]: _record(item, SESSION_FIELDS) for item in items.values()}

        return await self._list_index(
            "list_sessions", [_Index("gsi1", f"SESSIONS#{agent_id}", "SESSION#", SESSION_SK)],
            start=start, limit=limit, load=load,
            accept=lambda session: session["agent_id"] == agent_id)

    async def list_messages(self, *, session_id: str, limit: int, last_key: str | None) -> Page:
        start = None
        if last_key is not None:
            seq, message_id = cursor.decode(last_key, size=2)
            if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < 10 ** 10 \
                    or not isinstance(message_id, str):
                raise InvalidCursor("last_key is not a cursor returned by this API")
            start = _key(f"SESSION#{session_id}", f"MESSAGE#{seq:010d}")
        if not _keyable(session_id):
            return Page(items=[])
        items = await self._table_page("list_messages", f"SESSION#{session_id}", "MESSAGE#",
                                       forward=True, limit=limit, start=start)
        records = [_record(item, MESSAGE_FIELDS) for item in items]
        return self._page(records, limit, lambda r: [r["seq"], r["message_id"]])

    async def recent_messages(self, *, session_id: str, limit: int) -> list[Record]:
        if not _keyable(session_id):
            return []
        items: list[Item] = []
        start = None
        while len(items) < limit:
            page, start = await self._query("recent_messages", partition=f"SESSION#{session_id}",
                                            sk_prefix="MESSAGE#", forward=False,
                                            limit=limit - len(items), start=start)
            items.extend(page)
            if start is None:
                break
        return [_record(item, MESSAGE_FIELDS) for item in reversed(items)]

    async def delete_session(self, *, session_id: str) -> bool:
        operation = "delete_session"
        if not _keyable(session_id):
            return False
        session = await self._get(operation, _key(f"SESSION#{session_id}", SESSION_SK))
        if session is None:
            return False
        expression = _Expression()
        actions = [self._delete(_key(f"SESSION#{session_id}", SESSION_SK),
                                f"attribute_exists({expression.name('pk')})", expression),
                   self._delete(_key(f"AGENT#{session['agent_id']['S']}", f"SESSION#{session_id}")),
                   self._put(_key(CLEANUP_PK, f"session#{session_id}"))]
        try:
            await self._transact(operation, actions)
        except _Refused as refused:
            if refused.failed(0):
                return False
            raise StoreError(f"session {session_id} could not be deleted: {refused}") from refused
        await self._purge_partition(operation, f"SESSION#{session_id}")
        await self._batch_delete(operation, [(CLEANUP_PK, f"session#{session_id}")])
        return True

    # -- statistics ------------------------------------------------------------------------
    async def get_counters(self) -> dict[str, float]:
        """Every counter shard in one BatchGetItem: a constant cost whatever the data size."""
        items = await self._batch_get("get_counters", [(f"COUNTERS#{shard}", "#COUNTERS")
                                                       for shard in range(COUNTER_SHARDS)])
        return {name: sum(_count(item, name) for item in items.values()) for name in COUNTER_NAMES}

    async def get_daily(self, *, start: str, end: str) -> list[Daily]:
        """Daily shards: one BatchGetItem for a short range (the overview's today), one Query
        per shard for a longer one; the cost depends on the range, never on the data."""
        operation = "get_daily"
        if end < start:
            return []
        try:
            first, last = date.fromisoformat(start), date.fromisoformat(end)
            dates = [(first + timedelta(days=n)).isoformat() for n in range((last - first).days + 1)]
        except ValueError:
            dates = None
        if dates is not None and len(dates) * DAILY_SHARDS <= MAX_BATCH_GET:
            found = await self._batch_get(operation, [(f"DAILY#{shard}", day) for day in dates
                                                      for shard in range(DAILY_SHARDS)])
            items = list(found.values())
        else:
            shards = await asyncio.gather(*(self._query_all(
                operation, partition=f"DAILY#{shard}", sk_between=(start, end))
                for shard in range(DAILY_SHARDS)))
            items = [item for shard in shards for item in shard]
        days: dict[str, Daily] = {}
        for item in items:
            day = days.setdefault(item["sk"]["S"], Daily(date=item["sk"]["S"]))
            for name, value in item.items():
                if name in DAILY_FIELDS:
                    day.counts[name] = day.counts.get(name, 0.0) + float(value["N"])
                elif name.startswith(FAILED_STAGE_PREFIX):
                    stage = name[len(FAILED_STAGE_PREFIX):]
                    day.failed_stages[stage] = day.failed_stages.get(stage, 0) + int(value["N"])
        return [days[day] for day in sorted(days)]

    async def add_api_calls(self, *, counts: dict[str, int]) -> None:
        """One transaction (idempotent under retries, unlike a bare ADD) on a random shard
        of each day: API calls are the hottest aggregate."""
        actions = [self._bump_daily(day, {"api_calls": count}) for day, count in counts.items()]
        for chunk in _chunks(actions, MAX_TRANSACTION_ITEMS):
            for attempt in range(CONTENTION_ATTEMPTS):
                try:
                    await self._transact("add_api_calls", chunk)
                    break
                except _Refused as refused:
                    if not refused.contended:
                        raise StoreError(f"DynamoDB refused API call counts: {refused}") from refused
                    await _back_off(attempt)
            else:
                raise RecordConflict("API call counts stayed contended")

    # -- listings --------------------------------------------------------------------------
    @staticmethod
    def _decode_position(last_key: str | None) -> tuple[str, str] | None:
        """A listing cursor: the (timestamp, id) of the last item, i.e. the sort key of the
        LastEvaluatedKey a Query stopping there returns."""
        if last_key is None:
            return None
        timestamp, identifier = cursor.decode(last_key, size=2)
        if not (isinstance(timestamp, str) and isinstance(identifier, str)
                and "#" not in timestamp and _keyable(timestamp, identifier)):
            raise InvalidCursor("last_key is not a cursor returned by this API")
        return timestamp, identifier

    async def _list_index(self, operation: str, indexes: list[_Index], *,
                          start: tuple[str, str] | None, limit: int,
                          load: Callable[[list[str]], Awaitable[dict[str, Record]]],
                          accept: Callable[[Record], bool]) -> Page:
        """A keyset page over index partitions merged newest first. Keys come from the
        indexes; the items are read consistently and checked (an index may lag), and reading
        goes on until the page is full or the indexes are exhausted."""
        streams = []
        for index in indexes:
            exclusive = None
            if start is not None:
                exclusive = {f"{index.name}pk": _s(index.partition),
                             f"{index.name}sk": _s(_position(*start)),
                             "pk": _s(f"{index.pk_prefix}{start[1]}"), "sk": _s(index.base_sk)}
            streams.append(_Stream(index=index, start=exclusive))
        seen: set[str] = set()
        found: list[tuple[str, Record]] = []
        while len(found) <= limit:
            candidates = await self._merge(operation, streams, limit + 1 - len(found), seen)
            if not candidates:
                break
            records = await load([identifier for _, identifier in candidates])
            for sort_key, identifier in candidates:
                record = records.get(identifier)
                if record is not None and accept(record):
                    found.append((sort_key, record))
        if len(found) > limit:
            return Page(items=[record for _, record in found[:limit]],
                        last_key=cursor.encode(found[limit - 1][0].split("#", 1)))
        return Page(items=[record for _, record in found])

    async def _merge(self, operation: str, streams: list[_Stream], want: int,
                     seen: set[str]) -> list[tuple[str, str]]:
        """The next `want` (sort key, id) pairs across the streams, newest first, each id once."""
        out: list[tuple[str, str]] = []
        while len(out) < want:
            await asyncio.gather(*(self._fill(operation, stream, want) for stream in streams
                                   if not stream.buffer and not stream.exhausted))
            live = [stream for stream in streams if stream.buffer]
            if not live:
                break
            best = max(live, key=lambda stream: stream.buffer[0][0])
            sort_key, identifier = best.buffer.popleft()
            if identifier not in seen:
                seen.add(identifier)
                out.append((sort_key, identifier))
        return out

    async def _fill(self, operation: str, stream: _Stream, want: int) -> None:
        index = stream.index
        while not stream.buffer and not stream.exhausted:
            page, stream.start = await self._query(operation, index=index.name,
                                                   partition=index.partition, forward=False,
                                                   limit=want, start=stream.start)
            stream.buffer.extend((item[f"{index.name}sk"]["S"],
                                  item["pk"]["S"][len(index.pk_prefix):]) for item in page)
            stream.exhausted = stream.start is None

    # -- interrupted deletes ---------------------------------------------------------------
    async def _finish_interrupted_deletes(self) -> None:
        """Deletes whose process died after removing the parent leave a cleanup marker; the
        next start finishes them (finishing twice is harmless)."""
        markers = await self._query_all("open", partition=CLEANUP_PK, projection=("sk",))
        for marker in markers:
            kind, identifier = marker["sk"]["S"].split("#", 1)
            logger.warning("Finishing an interrupted delete", extra={"kind": kind, "id": identifier})
            if kind == "project":
                await self._purge_project(identifier)
                continue
            if kind == "agent":
                await self._purge_agent("open", identifier)
            elif kind == "session":
                await self._purge_partition("open", f"SESSION#{identifier}")
            await self._batch_delete("open", [(CLEANUP_PK, marker["sk"]["S"])])
