"""The DynamoDB plumbing every domain module builds on: the aiobotocore client, each request
timed and its refusals translated, retries of contention and throttling, the table's creation,
and the aggregate items the domains' transactions update.

Every request goes through `Store.timed` (slow-query log, db metrics); botocore retries
throttling in the configured mode, and `throttle_retries` counts those retries.
"""

import abc
import asyncio
import functools
import logging
import random
from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence
from contextlib import AsyncExitStack
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore.exceptions import BotoCoreError, ClientError

from api.core.store_errors import RecordConflict, RecordTooLarge, StoreError, StoreThrottled
from api.database.dynamodb.codec import Item, _check_size, _n, _s
from api.database.dynamodb.expressions import _Expression, _update_expression
from api.database.dynamodb.keys import (
    CLAIM_ATTRIBUTES, COUNTER_SHARDS, DAILY_SHARDS, INDEXES, TABLE_NAME, Key, _key, _platform_scope)
from api.database.store import Store
from api.observability import db_observer

logger = logging.getLogger("api.database.dynamodb")

# DynamoDB's limits.
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


@functools.cache
def _session() -> AioSession:
    """One botocore session per process: it loads the service model once, and every store
    (the ping's client too) creates its clients from it in milliseconds."""
    return get_session()


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


class DynamoDBClient(Store):
    """The store's connection to its table; the domain modules add the storage contract."""

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
        # The build items and log counters this process read or wrote last, by the build's
        # partition key (tenant and id), which DynamoDBBuilds keeps; closing forgets them.
        self._builds: OrderedDict[str, Item] = OrderedDict()
        self._log_seqs: OrderedDict[str, int] = OrderedDict()

    # -- requests --------------------------------------------------------------------------
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
        return {"Put": self._conditional({"TableName": self.table, "Item": item}, condition,
                                         expression)}

    def _delete(self, key: Item, condition: str | None = None,
                expression: _Expression | None = None) -> dict[str, Any]:
        return {"Delete": self._conditional({"TableName": self.table, "Key": key}, condition,
                                            expression)}

    @staticmethod
    def _conditional(body: dict[str, Any], condition: str | None,
                     expression: _Expression | None) -> dict[str, Any]:
        """A transaction action's body, with its condition when it has one."""
        if condition:
            body["ConditionExpression"] = condition
            body.update((expression or _Expression()).params())
        return body

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
        await self._batch_write(operation, [{"DeleteRequest": {"Key": _key(pk, sk)}}
                                            for pk, sk in dict.fromkeys(keys)])

    async def _batch_write(self, operation: str, requests: list[dict[str, Any]]) -> None:
        """BatchWriteItem's put and delete requests, at most one per key, retried until none
        is left unprocessed."""
        async def write(chunk: list[dict[str, Any]]) -> None:
            for attempt in range(CONTENTION_ATTEMPTS):
                response = await self._call(operation, "BatchWriteItem",
                                            {"RequestItems": {self.table: chunk}})
                chunk = response.get("UnprocessedItems", {}).get(self.table)
                if not chunk:
                    return
                await _back_off(attempt)
            raise StoreError("DynamoDB kept items of a BatchWriteItem unprocessed")

        await asyncio.gather(*(write(chunk) for chunk in _chunks(requests, MAX_BATCH_WRITE)))

    async def _purge_partition(self, operation: str, pk: str) -> None:
        items = await self._query_all(operation, partition=pk, projection=("sk",))
        await self._batch_delete(operation, [(pk, item["sk"]["S"]) for item in items])

    # -- aggregates ------------------------------------------------------------------------
    def _bump_counters(self, scope: str, deltas: dict[str, float]) -> list[dict[str, Any]]:
        """The updates of one counter shard of the tenant (its `scope`) and one of the
        platform totals; none when nothing changes."""
        changes = {name: _n(delta) for name, delta in deltas.items() if delta}
        if not changes:
            return []
        return [self._update(_key(f"{partition}COUNTERS#{random.randrange(COUNTER_SHARDS)}",
                                  "#COUNTERS"), expression,
                             _update_expression(expression, add=changes))
                for partition, expression in ((scope, _Expression()),
                                              (_platform_scope(), _Expression()))]

    def _bump_daily(self, scope: str, day: str, deltas: dict[str, float]) -> list[dict[str, Any]]:
        """The updates of one daily shard of the tenant and one of the platform totals."""
        changes = {name: _n(delta) for name, delta in deltas.items()}
        return [self._update(_key(f"{partition}DAILY#{random.randrange(DAILY_SHARDS)}", day),
                             expression, _update_expression(expression, add=changes))
                for partition, expression in ((scope, _Expression()),
                                              (_platform_scope(), _Expression()))]

    # -- lifecycle -------------------------------------------------------------------------
    async def open(self) -> None:
        await self._connect()
        try:
            await self._check_layout(new_table=await self._ensure_table())
            await self._finish_interrupted_deletes()
        except BaseException:
            await self.close()
            raise

    async def _connect(self) -> None:
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

    async def _ensure_table(self) -> bool:
        """Create the table (on-demand capacity) unless it exists, and wait until it and its
        indexes are ACTIVE; True when this call created it. Several instances may do this at
        once."""
        created = False
        try:
            table = (await self._call("open", "DescribeTable", {"TableName": self.table}))["Table"]
        except _TableMissing:
            table, created = await self._create_table()
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
        return created

    async def _create_table(self) -> tuple[dict[str, Any], bool]:
        """The new table's description, and whether this call created it."""
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
            described = await self._call("open", "DescribeTable", {"TableName": self.table})
            return described["Table"], False
        logger.info("Created DynamoDB table", extra={"table": self.table})
        return response["TableDescription"], True

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

    @abc.abstractmethod
    async def _check_layout(self, *, new_table: bool) -> None:
        """Refuse a table whose items are laid out for another release (mark a new one)."""

    @abc.abstractmethod
    async def _finish_interrupted_deletes(self) -> None:
        """Deletes whose process died after removing the parent leave a cleanup marker; the
        next start finishes them (finishing twice is harmless)."""
