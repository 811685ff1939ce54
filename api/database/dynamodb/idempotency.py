"""Idempotency keys on DynamoDB: an item per (tenant, key), claimed by a conditional put and
answered by a conditional update, both tied to the claim's id. Expired items are absent to
every condition (`expires_at`) before DynamoDB's TTL (`ttl`, enabled with the layout) deletes
them, which it does within a few days of the expiry."""

from datetime import datetime

from api.database.dynamodb.client import DynamoDBClient, _Refused
from api.database.dynamodb.codec import Item, _n, _s, _text
from api.database.dynamodb.expressions import _Expression, _update_expression
from api.database.dynamodb.keys import _key, _part, _scope
from api.database.store import IdempotencyKeyState, IdempotentAnswer, check_answer_size

IDEMPOTENCY_SK = "#IDEMPOTENCY"


def _idempotency_key(tenant_id: str, key: str) -> Item:
    return _key(f"{_scope(tenant_id)}IDEMPOTENCY#{_part('key', key)}", IDEMPOTENCY_SK)


def _state(item: Item) -> IdempotencyKeyState:
    answer = None
    if "answer_status" in item:
        answer = IdempotentAnswer(int(item["answer_status"]["N"]), _text(item, "content_type") or "",
                                  bytes(item["body"]["B"]))
    return IdempotencyKeyState(_text(item, "fingerprint") or "", answer)


class DynamoDBIdempotency(DynamoDBClient):
    """IdempotencyStore on DynamoDB."""

    async def claim_idempotency_key(
        self, *, tenant_id: str, key: str, fingerprint: str, claim_id: str, now: str,
        expires_at: str, stale_before: str,
    ) -> IdempotencyKeyState | None:
        item_key = _idempotency_key(tenant_id, key)
        expires = datetime.fromisoformat(expires_at)
        item = {**item_key, "fingerprint": _s(fingerprint), "claim_id": _s(claim_id),
                "claimed_at": _s(now), "expires_at": _s(expires_at),
                "ttl": _n(int(expires.timestamp()))}
        expression = _Expression()
        condition = (f"attribute_not_exists({expression.name('pk')}) OR "
                     f"{expression.name('expires_at')} <= {expression.value(_s(now))} OR "
                     f"(attribute_not_exists({expression.name('answer_status')}) AND "
                     f"{expression.name('claimed_at')} < {expression.value(_s(stale_before))})")
        try:
            await self._call("claim_idempotency_key", "PutItem", {
                "TableName": self.table, "Item": item, "ConditionExpression": condition,
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD", **expression.params()})
        except _Refused as refused:
            held = refused.item or await self._get("claim_idempotency_key", item_key)
            # Gone between the refused put and the read (released): the caller retries.
            return _state(held) if held else IdempotencyKeyState(fingerprint, None)
        return None

    async def keep_idempotent_answer(self, *, tenant_id: str, key: str, claim_id: str,
                                     answer: IdempotentAnswer) -> bool:
        check_answer_size(key, answer)
        expression = _Expression()
        update = _update_expression(expression, set_={
            "answer_status": _n(answer.status), "content_type": _s(answer.content_type),
            "body": {"B": answer.body}})
        try:
            await self._call("keep_idempotent_answer", "UpdateItem", {
                **self._held(expression, _idempotency_key(tenant_id, key), claim_id),
                "UpdateExpression": update})
        except _Refused:
            return False
        return True

    async def release_idempotency_key(self, *, tenant_id: str, key: str, claim_id: str) -> None:
        expression = _Expression()
        try:
            await self._call("release_idempotency_key", "DeleteItem",
                             self._held(expression, _idempotency_key(tenant_id, key), claim_id))
        except _Refused:
            pass  # answered, taken over or expired meanwhile: not ours to drop

    def _held(self, expression: _Expression, key: Item, claim_id: str) -> dict[str, object]:
        """The parameters of a write to `key` that holds only while claim `claim_id` is held
        and unanswered."""
        condition = (f"{expression.name('claim_id')} = {expression.value(_s(claim_id))} AND "
                     f"attribute_not_exists({expression.name('answer_status')})")
        return {"TableName": self.table, "Key": key, "ConditionExpression": condition,
                **expression.params()}
