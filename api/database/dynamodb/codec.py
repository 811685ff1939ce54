"""Records as DynamoDB attribute values (the fields, and how each is stored, derive from the
models of api.core.records), and the item size check.

Hand-written rather than boto3's TypeSerializer/TypeDeserializer, measured (timeit, Python
3.11, best of 5 runs of 10,000): encoding and decoding a typical build item (23 attributes,
its stages, context and usage as JSON text) takes 27.5 µs here and 39 to 41 µs through the
thinnest wrapper around the two, 12 µs (45 %) more per item. The wrapper cannot be thinner:
the fields stored as JSON strings, the floats (TypeSerializer refuses them unless they are
Decimal), None stored as an absent attribute (it would write NULL) and the numbers read back
as int or float (it returns Decimal) all stay ours; only the `{"S": ...}` lines would go, for
boto3 as a runtime dependency (aiobotocore needs botocore alone, and boto3 pins botocore too).
"""

import json
import math
from decimal import Decimal
from typing import Any

from pydantic_core import to_json

from api.core.records import (
    AGENT_STAT_FIELDS, FIELD_DEFAULTS, FLOAT_FIELDS, INT_FIELDS, JSON_FIELDS, Agent, Artifact, Build,
    BuildLogLine, Invocation, Message, Project, Session, StoredRecord, field_names)
from api.core.store_errors import InvalidValue, StoreError
from api.database.interfaces import R
from api.database.store import refuse_over_limit

AttributeValue = dict[str, Any]
Item = dict[str, AttributeValue]
# A record's fields by name, as the backend's plumbing passes them between item and record.
Fields = dict[str, Any]

PROJECT_FIELDS = field_names(Project)
BUILD_FIELDS = field_names(Build)
LOG_FIELDS = field_names(BuildLogLine)
ARTIFACT_FIELDS = field_names(Artifact)
ARTIFACT_LISTED_FIELDS = tuple(name for name in ARTIFACT_FIELDS if name != "content")
# An agent's item holds its definition; its runtime stats are an item of their own.
AGENT_FIELDS = tuple(name for name in field_names(Agent) if name not in AGENT_STAT_FIELDS)
INVOCATION_FIELDS = field_names(Invocation)
SESSION_FIELDS = field_names(Session)
MESSAGE_FIELDS = field_names(Message)


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
        return {"S": to_json(value).decode()}
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


def _record(item: Item, fields: tuple[str, ...]) -> Fields:
    """The named fields of an item (a field the item lacks: its default)."""
    return {name: _decode(name, item[name]) if name in item else FIELD_DEFAULTS.get(name)
            for name in fields}


def _model(model: type[R], item: Item, fields: tuple[str, ...] | None = None) -> R:
    """The record an item holds (`fields`: the ones read, when not all of the model's)."""
    return model.model_validate(_record(item, fields or field_names(model)))


def _attributes(record: Fields, fields: tuple[str, ...]) -> Item:
    item: Item = {}
    for name in fields:
        encoded = _encode(name, record.get(name, FIELD_DEFAULTS.get(name)))
        if encoded is not None:
            item[name] = encoded
    return item


def _record_attributes(record: StoredRecord, fields: tuple[str, ...], **values: Any) -> Item:
    """The attributes of a record, `values` (its tenant, say) in place of its own. Its fields
    are taken as they are, not dumped: a nested record is JSON text, which _encode writes."""
    return _attributes({**dict(record), **values}, fields)


def _s(value: str) -> AttributeValue:
    return {"S": value}


def _n(value: float) -> AttributeValue:
    return {"N": _number(value)}


def _text(item: Item, name: str) -> str | None:
    value = item.get(name)
    return value["S"] if value and "S" in value else None


def _count(item: Item, name: str) -> float:
    value = item.get(name)
    return float(value["N"]) if value and "N" in value else 0.0


def _attribute_bytes(value: AttributeValue) -> int:
    if "S" in value:
        return len(value["S"].encode())
    if "N" in value:
        return 21
    return 1


def _check_size(item: Item) -> None:
    """Refuse an item over DynamoDB's 400 KB limit, naming its largest field."""
    refuse_over_limit({name: len(name.encode()) + _attribute_bytes(value) for name, value in item.items()})
