"""Rate limits' counters and slots on DynamoDB.

A counter is an item (`<t>LIMIT#<counter>`, `#COUNTER`) advanced by a conditional ADD: one
UpdateItem takes an allowance while it fits under the limit; when only part of it fits, a
second one takes that part, conditional on the total it read. A pool of slots is one item
(`<t>LIMIT#<pool>`, `#SLOTS`) holding a map of slot id to expiry and a version: an acquire
reads it, drops the expired slots and writes it back conditional on the version (retrying a
few times when another process wrote first); a release removes its slot and advances the
version, so that no acquire writes back a slot already released. DynamoDB's TTL (`ttl`)
deletes the items after they expire.
"""

import math

from api.core.store_errors import RecordConflict
from api.database.dynamodb.client import DynamoDBClient, _Refused
from api.database.dynamodb.codec import Item, _n
from api.database.dynamodb.expressions import _Expression
from api.database.dynamodb.keys import _key, _part, _scope

COUNTER_SK, SLOTS_SK = "#COUNTER", "#SLOTS"
# Processes acquiring one pool at the same moment: each retry re-reads the pool.
SLOT_ATTEMPTS = 8


def _limit_key(tenant_id: str, name: str, sk: str) -> Item:
    return _key(f"{_scope(tenant_id)}LIMIT#{_part('counter', name)}", sk)


class DynamoDBLimits(DynamoDBClient):
    """LimitStore on DynamoDB."""

    async def take_allowance(self, *, tenant_id: str, counter: str, amount: int,
                             limit: int | None, now: float, expires_at: float) -> tuple[int, int]:
        key = _limit_key(tenant_id, counter, COUNTER_SK)
        wanted = amount if limit is None else min(amount, limit)
        while True:
            expression = _Expression()
            total = expression.name("total")
            update = (f"ADD {total} {expression.value(_n(wanted))} SET "
                      f"{expression.name('ttl')} = {expression.value(_n(math.ceil(expires_at)))}")
            params = {"TableName": self.table, "Key": key, "UpdateExpression": update,
                      "ReturnValues": "ALL_NEW"}
            if limit is not None:
                params["ConditionExpression"] = (
                    f"attribute_not_exists({total}) OR {total} <= {expression.value(_n(limit - wanted))}")
                params["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
            try:
                response = await self._call("take_allowance", "UpdateItem",
                                            {**params, **expression.params()})
            except _Refused as refused:
                item = refused.item or await self._get("take_allowance", key)
                held = int(item["total"]["N"]) if item else 0
                if limit is None or held >= limit:
                    return 0, held
                # What is left fits: take it, unless another process moved the counter since.
                wanted = limit - held
                continue
            return wanted, int(response["Attributes"]["total"]["N"])

    async def acquire_slot(self, *, tenant_id: str, pool: str, slot_id: str, limit: int,
                           now: float, expires_at: float) -> bool:
        key = _limit_key(tenant_id, pool, SLOTS_SK)
        for _ in range(SLOT_ATTEMPTS):
            item = await self._get("acquire_slot", key)
            slots = {name: float(value["N"]) for name, value in
                     (item["slots"]["M"] if item else {}).items() if float(value["N"]) > now}
            if len(slots) >= limit:
                return False
            slots[slot_id] = expires_at
            expression = _Expression()
            condition = (f"{expression.name('version')} = {expression.value(item['version'])}" if item
                         else f"attribute_not_exists({expression.name('pk')})")
            new_item = {**key, "slots": {"M": {name: _n(value) for name, value in slots.items()}},
                        "version": _n(int(item["version"]["N"]) + 1 if item else 1),
                        "ttl": _n(math.ceil(max(slots.values())))}
            try:
                await self._call("acquire_slot", "PutItem", {
                    "TableName": self.table, "Item": new_item, "ConditionExpression": condition,
                    **expression.params()})
            except _Refused:
                continue
            return True
        raise RecordConflict(f"the slots of {pool} stayed busy with other processes")

    async def release_slot(self, *, tenant_id: str, pool: str, slot_id: str) -> None:
        expression = _Expression()
        update = (f"REMOVE {expression.name('slots')}.{expression.name(slot_id)} "
                  f"ADD {expression.name('version')} {expression.value(_n(1))}")
        try:
            await self._call("release_slot", "UpdateItem", {
                "TableName": self.table, "Key": _limit_key(tenant_id, pool, SLOTS_SK),
                "UpdateExpression": update,
                "ConditionExpression": f"attribute_exists({expression.name('pk')})",
                **expression.params()})
        except _Refused:
            pass  # the pool's item expired and went: nothing held
