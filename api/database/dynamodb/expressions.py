"""Expression placeholders, and the update expressions built on them.

Hand-written rather than boto3.dynamodb.conditions, read in boto3 1.43's source: its
ConditionExpressionBuilder does run without a resource, but it builds condition, key and
filter expressions only (nothing for UpdateExpression or ProjectionExpression, which every
write and keys-only read here needs), leaves plain Python values in the placeholders (boto3's
resource layer serializes them through TypeSerializer in a before-parameter-build hook, which
the aiobotocore client does not have, so the codec's Decimal cost would return), numbers its
placeholders `#n0`/`:v0` as `_Expression` does (the two could not share one request without
clashing) and gives every occurrence of a name a placeholder of its own.
"""

from collections.abc import Iterable, Sequence
from typing import Any

from api.database.dynamodb.codec import AttributeValue, Item, _s


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
