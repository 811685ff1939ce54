"""API keys on DynamoDB: an item per key under its id (`APIKEY#<key_id>`, read by every
authenticated request's cache miss with one GetItem), listed through gsi1 per tenant
(`T#<tenant>#APIKEYS`) and gsi3 platform-wide (`APIKEYS`), oldest first. Keys are few: a
listing reads them all."""

from dataclasses import asdict, fields

from api.database.dynamodb.client import DynamoDBClient, _Refused
from api.database.dynamodb.codec import Item, _s, _text
from api.database.dynamodb.expressions import _Expression
from api.database.dynamodb.keys import _key, _keyable, _part, _position, _scope
from api.database.store import ApiKey

API_KEY_SK = "#APIKEY"
ALL_KEYS = "APIKEYS"
# Every field of the record is a string or None (an absent attribute).
_FIELDS = tuple(field.name for field in fields(ApiKey))


def _item_key(key_id: str) -> Item:
    return _key(f"APIKEY#{_part('key_id', key_id)}", API_KEY_SK)


def _api_key(item: Item) -> ApiKey:
    return ApiKey(**{name: _text(item, name) for name in _FIELDS})  # type: ignore[arg-type]


class DynamoDBApiKeys(DynamoDBClient):
    """KeyStore on DynamoDB."""

    async def put_api_key(self, *, key: ApiKey) -> None:
        position = _s(_position(key.created_at, key.key_id))
        item: Item = {**_item_key(key.key_id), "gsi3pk": _s(ALL_KEYS), "gsi3sk": position,
                      **{name: _s(value) for name, value in asdict(key).items() if value is not None}}
        if key.tenant_id is not None:
            item.update({"gsi1pk": _s(f"{_scope(key.tenant_id)}APIKEYS"), "gsi1sk": position})
        expression = _Expression()
        await self._call("put_api_key", "PutItem", {
            "TableName": self.table, "Item": item,
            "ConditionExpression": f"attribute_not_exists({expression.name('pk')})",
            **expression.params()})

    async def get_api_key(self, *, key_id: str) -> ApiKey | None:
        if not _keyable(key_id):
            return None
        item = await self._get("get_api_key", _item_key(key_id))
        return None if item is None else _api_key(item)

    async def list_api_keys(self, *, tenant_id: str | None) -> list[ApiKey]:
        operation = "list_api_keys"
        if tenant_id is None:
            rows = await self._query_all(operation, index="gsi3", partition=ALL_KEYS)
        else:
            rows = await self._query_all(operation, index="gsi1", partition=f"{_scope(tenant_id)}APIKEYS")
        keys = [(row["pk"]["S"], row["sk"]["S"]) for row in rows]
        found = await self._batch_get(operation, keys)
        return [_api_key(found[key]) for key in keys if key in found]

    async def revoke_api_key(self, *, key_id: str, tenant_id: str | None,
                             revoked_at: str) -> ApiKey | None:
        if not _keyable(key_id):
            return None
        expression = _Expression()
        revoked = expression.name("revoked_at")
        update = f"SET {revoked} = if_not_exists({revoked}, {expression.value(_s(revoked_at))})"
        condition = f"attribute_exists({expression.name('pk')})"
        if tenant_id is not None:
            condition += f" AND {expression.name('tenant_id')} = {expression.value(_s(tenant_id))}"
        try:
            response = await self._call("revoke_api_key", "UpdateItem", {
                "TableName": self.table, "Key": _item_key(key_id), "UpdateExpression": update,
                "ConditionExpression": condition, "ReturnValues": "ALL_NEW", **expression.params()})
        except _Refused:
            return None
        return _api_key(response["Attributes"])
