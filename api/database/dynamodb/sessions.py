"""Sessions and their messages on DynamoDB. A session's partition holds its item and its
messages, numbered by the session's `message_count`, which orders them; an invocation's
turn is written by DynamoDBAgents.record_invocation."""

from api.core.store_errors import InvalidCursor, StoreError
from api.database import cursor
from api.database.dynamodb.client import DynamoDBClient, _Refused
from api.database.dynamodb.codec import (
    SESSION_FIELDS, Item, _model, _record_attributes, _s)
from api.database.dynamodb.expressions import _Expression
from api.database.dynamodb.keys import (
    AGENT_SK, CLEANUP_PK, SESSION_SK, _cleanup_sk, _key, _keyable, _part, _position, _scope)
from api.database.dynamodb.paging import (
    _decode_position, _Index, _items_by_id, _list_index, _page, _table_page)
from api.database.interfaces import SessionStore
from api.core.records import Message, Session
from api.database.store import Page


class DynamoDBSessions(DynamoDBClient, SessionStore):
    """SessionStore on DynamoDB."""

    async def create_session(self, *, tenant_id: str, session: Session) -> bool:
        agent_id = session.agent_id
        if not _keyable(agent_id):
            return False
        scope = _scope(tenant_id)
        session_id = _part("session_id", session.session_id)
        item = {**_key(f"{scope}SESSION#{session_id}", SESSION_SK),
                **_record_attributes(session, SESSION_FIELDS, tenant_id=tenant_id),
                "gsi1pk": _s(f"{scope}SESSIONS#{agent_id}"),
                "gsi1sk": _s(_position(session.last_active_at, session_id))}
        expression = _Expression()
        actions = [self._exists(_key(f"{scope}AGENT#{agent_id}", AGENT_SK)),
                   self._put(item, f"attribute_not_exists({expression.name('pk')})", expression),
                   self._put(_key(f"{scope}AGENT#{agent_id}", f"SESSION#{session_id}"))]
        try:
            await self._transact("create_session", actions)
        except _Refused as refused:
            if refused.failed(0):
                return False
            raise StoreError(f"session {session_id} could not be created: {refused}") from refused
        return True

    async def get_session(self, *, tenant_id: str, session_id: str) -> Session | None:
        if not _keyable(session_id):
            return None
        item = await self._get("get_session", _key(f"{_scope(tenant_id)}SESSION#{session_id}",
                                                   SESSION_SK))
        return _model(Session, item) if item else None

    async def list_sessions(self, *, tenant_id: str, agent_id: str, limit: int,
                            last_key: str | None) -> Page[Session]:
        start = _decode_position(last_key)
        if not _keyable(agent_id):
            return Page(items=[])
        scope = _scope(tenant_id)
        index = _Index("gsi1", f"{scope}SESSIONS#{agent_id}", f"{scope}SESSION#", SESSION_SK)
        return await _list_index(
            self, "list_sessions", [index], start=start, limit=limit,
            load=_items_by_id(self, "list_sessions", index, "session_id", Session),
            accept=lambda session: session.agent_id == agent_id)

    async def list_messages(self, *, tenant_id: str, session_id: str, limit: int,
                            last_key: str | None) -> Page[Message]:
        pk = f"{_scope(tenant_id)}SESSION#{session_id}"
        start = None
        if last_key is not None:
            seq, message_id = cursor.decode(last_key, size=2)
            if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < 10 ** 10 \
                    or not isinstance(message_id, str):
                raise InvalidCursor("last_key is not a cursor returned by this API")
            start = _key(pk, f"MESSAGE#{seq:010d}")
        if not _keyable(session_id):
            return Page(items=[])
        items = await _table_page(self, "list_messages", pk, "MESSAGE#",
                                  forward=True, limit=limit, start=start)
        records = [_model(Message, item) for item in items]
        return _page(records, limit, lambda r: [r.seq, r.message_id])

    async def recent_messages(self, *, tenant_id: str, session_id: str, limit: int) -> list[Message]:
        if not _keyable(session_id):
            return []
        pk = f"{_scope(tenant_id)}SESSION#{session_id}"
        items: list[Item] = []
        start = None
        while len(items) < limit:
            page, start = await self._query("recent_messages", partition=pk,
                                            sk_prefix="MESSAGE#", forward=False,
                                            limit=limit - len(items), start=start)
            items.extend(page)
            if start is None:
                break
        return [_model(Message, item) for item in reversed(items)]

    async def delete_session(self, *, tenant_id: str, session_id: str) -> bool:
        operation = "delete_session"
        if not _keyable(session_id):
            return False
        scope = _scope(tenant_id)
        pk = f"{scope}SESSION#{session_id}"
        marker = _key(CLEANUP_PK, _cleanup_sk("session", scope, session_id))
        session = await self._get(operation, _key(pk, SESSION_SK))
        if session is None:
            return False
        expression = _Expression()
        actions = [self._delete(_key(pk, SESSION_SK),
                                f"attribute_exists({expression.name('pk')})", expression),
                   self._delete(_key(f"{scope}AGENT#{session['agent_id']['S']}",
                                     f"SESSION#{session_id}")),
                   self._put(marker)]
        try:
            await self._transact(operation, actions)
        except _Refused as refused:
            if refused.failed(0):
                return False
            raise StoreError(f"session {session_id} could not be deleted: {refused}") from refused
        await self._purge_partition(operation, pk)
        await self._batch_delete(operation, [(marker["pk"]["S"], marker["sk"]["S"])])
        return True
