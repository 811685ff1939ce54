"""Keyset pages: listing cursors, one partition's page, and index partitions merged newest
first, the items read consistently and checked against what the indexes said."""

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from api.core.store_errors import InvalidCursor
from api.database import cursor
from api.database.dynamodb.client import DynamoDBClient
from api.database.dynamodb.codec import Item, _model, _s
from api.database.dynamodb.keys import _keyable, _position
from api.database.interfaces import R
from api.database.store import Page


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


def _page(records: list[R], limit: int, position: Callable[[R], list[Any]]) -> Page[R]:
    if len(records) > limit:
        return Page(items=records[:limit], last_key=cursor.encode(position(records[limit - 1])))
    return Page(items=records)


async def _table_page(client: DynamoDBClient, operation: str, pk: str, prefix: str, *,
                      forward: bool, limit: int, start: Item | None) -> list[Item]:
    """Up to limit + 1 items of one partition (the extra one says whether more follow)."""
    items: list[Item] = []
    while len(items) <= limit:
        page, start = await client._query(operation, partition=pk, sk_prefix=prefix,
                                          forward=forward, limit=limit + 1 - len(items),
                                          start=start)
        items.extend(page)
        if start is None:
            break
    return items


def _items_by_id(client: DynamoDBClient, operation: str, index: _Index, id_field: str,
                 model: type[R]) -> Callable[[list[str]], Awaitable[dict[str, R]]]:
    """The `load` of `_list_index` for an index whose keys each name one item (the index's
    pk_prefix and an id, its base_sk): the records by id, read with BatchGetItem."""
    async def load(ids: list[str]) -> dict[str, R]:
        items = await client._batch_get(operation, [(f"{index.pk_prefix}{i}", index.base_sk)
                                                    for i in ids])
        return {item[id_field]["S"]: _model(model, item) for item in items.values()}

    return load


async def _list_index(client: DynamoDBClient, operation: str, indexes: list[_Index], *,
                      start: tuple[str, str] | None, limit: int,
                      load: Callable[[list[str]], Awaitable[dict[str, R]]],
                      accept: Callable[[R], bool]) -> Page[R]:
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
    found: list[tuple[str, R]] = []
    while len(found) <= limit:
        candidates = await _merge(client, operation, streams, limit + 1 - len(found), seen)
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


async def _merge(client: DynamoDBClient, operation: str, streams: list[_Stream], want: int,
                 seen: set[str]) -> list[tuple[str, str]]:
    """The next `want` (sort key, id) pairs across the streams, newest first, each id once."""
    out: list[tuple[str, str]] = []
    while len(out) < want:
        await asyncio.gather(*(_fill(client, operation, stream, want) for stream in streams
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


async def _fill(client: DynamoDBClient, operation: str, stream: _Stream, want: int) -> None:
    index = stream.index
    while not stream.buffer and not stream.exhausted:
        page, stream.start = await client._query(operation, index=index.name,
                                                 partition=index.partition, forward=False,
                                                 limit=want, start=stream.start)
        stream.buffer.extend((item[f"{index.name}sk"]["S"],
                              item["pk"]["S"][len(index.pk_prefix):]) for item in page)
        stream.exhausted = stream.start is None
