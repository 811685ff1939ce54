"""The table's item layout, marked by a version item, and the in-place migration of a table
written before tenants (docs/DYNAMODB.md, "Migrating a table").

Layout 2 (tenants) scopes every partition key of a tenant's items, of the table and of its
indexes, with `T#<tenant>#`, and keeps the platform-wide aggregates under `T#*#`. Layout 1 had
no marker and no scopes. A release refuses a table laid out for another one instead of
reading a table it would see as empty.
"""

import logging

from api.core.store_errors import StoreError
from api.database.dynamodb.client import DynamoDBClient
from api.database.dynamodb.codec import Item, _n, _s
from api.database.dynamodb.keys import (
    ACTIVE_BUILDS, AGENT_SK, BUILD_SK, CLEANUP_PK, INDEXES, PROJECT_SK, SESSION_SK, TENANT_PREFIX,
    _cleanup_sk, _key, _platform_scope, _scope)
from api.database.store import DEFAULT_TENANT

logger = logging.getLogger("api.database.dynamodb")

LAYOUT_PK = LAYOUT_SK = "#LAYOUT"
LAYOUT_VERSION = 2
# The items that are records (and so carry `tenant_id`), by sort key.
RECORD_SKS = frozenset({PROJECT_SK, BUILD_SK, AGENT_SK, SESSION_SK})
RECORD_SK_PREFIXES = ("ARTIFACT#", "INVOCATION#", "MESSAGE#")
AGGREGATE_PREFIXES = ("COUNTERS#", "DAILY#")


class OldLayout(StoreError):
    """The table holds items of the layout before tenants: `nexus-ai migrate` converts them."""


def _in_tenant_layout(item: Item) -> list[Item] | None:
    """The items a layout-1 item becomes, its rows going to tenant `default` (aggregates to
    the default tenant and to the platform totals); None for an item already in layout 2."""
    pk, sk = item["pk"]["S"], item["sk"]["S"]
    scope = _scope(DEFAULT_TENANT)
    if pk.startswith(TENANT_PREFIX) or pk == LAYOUT_PK:
        return None
    if pk == CLEANUP_PK:
        kind, identifier = sk.split("#", 1)
        if identifier.startswith(TENANT_PREFIX):
            return None
        return [{**item, "sk": _s(_cleanup_sk(kind, scope, identifier))}]
    if pk.startswith("LEASE#"):
        return None if sk.startswith(TENANT_PREFIX) else [{**item, "sk": _s(f"{scope}{sk}")}]
    if pk.startswith(AGGREGATE_PREFIXES):
        return [{**item, "pk": _s(f"{partition}{pk}")} for partition in (scope, _platform_scope())]
    moved = {**item, "pk": _s(f"{scope}{pk}")}
    for index in INDEXES:
        value = item.get(f"{index}pk")
        if value is not None and value["S"] != ACTIVE_BUILDS:
            moved[f"{index}pk"] = _s(f"{scope}{value['S']}")
    if sk in RECORD_SKS or sk.startswith(RECORD_SK_PREFIXES):
        moved["tenant_id"] = _s(DEFAULT_TENANT)
    return [moved]


class DynamoDBLayout(DynamoDBClient):
    """The layout check of every `open()`, and `migrate()`."""

    async def _layout_version(self) -> int | None:
        marker = await self._get("open", _key(LAYOUT_PK, LAYOUT_SK))
        return int(marker["version"]["N"]) if marker else None

    async def _mark_layout(self) -> None:
        """Set the table up for this layout: expiry of idempotency keys by their `ttl`
        attribute, then the marker."""
        described = await self._call("open", "DescribeTimeToLive", {"TableName": self.table})
        # Enabling it twice is a ValidationException: instances opening a new table at once
        # may both get here.
        if described["TimeToLiveDescription"]["TimeToLiveStatus"] not in ("ENABLED", "ENABLING"):
            await self._call("open", "UpdateTimeToLive", {"TableName": self.table,
                             "TimeToLiveSpecification": {"Enabled": True, "AttributeName": "ttl"}})
        await self._call("open", "PutItem", {"TableName": self.table, "Item": {
            **_key(LAYOUT_PK, LAYOUT_SK), "version": _n(LAYOUT_VERSION)}})

    async def _check_layout(self, *, new_table: bool) -> None:
        """A table without the marker is new (mark it) or was written before tenants: the
        one-item Scan says which, once per start of an instance that did not just create it."""
        if new_table:
            await self._mark_layout()
            return
        version = await self._layout_version()
        if version == LAYOUT_VERSION:
            return
        if version is not None:
            raise StoreError(f"DynamoDB table {self.table} has item layout {version}; this "
                             f"release reads layout {LAYOUT_VERSION}")
        scanned = await self._call("open", "Scan", {"TableName": self.table, "Limit": 1})
        if scanned.get("Items") and await self._layout_version() is None:
            raise OldLayout(f"DynamoDB table {self.table} holds items written before tenants; "
                            "stop every instance and run `nexus-ai migrate` (docs/DYNAMODB.md)")
        await self._mark_layout()

    async def migrate(self) -> int:
        """Convert a layout-1 table in place and mark it; returns the items converted. Each
        page of the Scan writes the new items before deleting the old ones, so a migration
        interrupted at any point is finished by running it again."""
        await self._connect()
        try:
            await self._ensure_table()
            if await self._layout_version() == LAYOUT_VERSION:
                return 0
            converted, start = 0, None
            while True:
                params = {"TableName": self.table, "ConsistentRead": True}
                page = await self._call("migrate", "Scan",
                                        {**params, **({"ExclusiveStartKey": start} if start else {})})
                moves = [(item, new) for item in page.get("Items", [])
                         if (new := _in_tenant_layout(item)) is not None]
                await self._batch_write("migrate", [{"PutRequest": {"Item": replacement}}
                                                    for _, new in moves for replacement in new])
                # Every conversion changes the key: the old item can go.
                await self._batch_delete("migrate", [(item["pk"]["S"], item["sk"]["S"])
                                                     for item, _ in moves])
                converted += len(moves)
                start = page.get("LastEvaluatedKey")
                if not start:
                    break
            await self._mark_layout()
            logger.info("Migrated DynamoDB table to the tenant layout",
                        extra={"table": self.table, "items": converted})
            return converted
        finally:
            await self.close()
