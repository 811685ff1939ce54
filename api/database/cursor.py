"""Opaque pagination cursors: the keyset position of the last item, base64url-encoded JSON."""

import base64
import binascii
import json
from typing import Any

from api.core.store_errors import InvalidCursor


def encode(position: list[Any]) -> str:
    raw = json.dumps(position, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(cursor: str, *, size: int) -> list[Any]:
    """The position inside `cursor`, which must hold `size` scalar values."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        position = json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise InvalidCursor("last_key is not a cursor returned by this API") from exc
    if not isinstance(position, list) or len(position) != size or not all(map(_storable, position)):
        raise InvalidCursor("last_key is not a cursor returned by this API")
    return position


def _storable(value: Any) -> bool:
    """Positions are ids, timestamps and sequence numbers: strings and 64-bit integers."""
    if isinstance(value, bool):
        return False
    return isinstance(value, str) or (isinstance(value, int) and -(2**63) <= value < 2**63)
