"""Agents and their invocations on DynamoDB. An agent's partition holds its item, its
runtime stats (updated in the transaction that stores each invocation), its capability index
rows, its invocations and a reference row for each of its sessions."""

import asyncio
from collections import Counter
from collections.abc import Iterable
from typing import Any

from api.core.store_errors import RecordConflict, StoreError
from api.database.dynamodb.client import (
    CONTENTION_ATTEMPTS, MAX_TRANSACTION_ITEMS, DynamoDBClient, _back_off, _chunks, _Refused)
from api.database.dynamodb.codec import (
    AGENT_FIELDS, INVOCATION_FIELDS, MESSAGE_FIELDS, Fields, Item, _attributes, _check_size,
    _encode, _model, _n, _record, _record_attributes, _s, _text)
from api.database.dynamodb.expressions import _Expression, _update_expression
from api.database.dynamodb.keys import (
    AGENT_SK, BUILD_SK, CLEANUP_PK, PROJECT_SK, SESSION_SK, STATS_SK, _cleanup_sk, _key, _keyable,
    _part, _position, _scope)
from api.database.dynamodb.paging import (
    _decode_position, _Index, _list_index, _page, _table_page)
from api.core.records import AGENT_STAT_FIELDS, Agent, Invocation, Message
from api.database.interfaces import AgentStore, Changes
from api.database.store import HELD_BUILD_STATUSES, Page, invocation_deltas


class DynamoDBAgents(DynamoDBClient, AgentStore):
    """AgentStore on DynamoDB."""

    def _agent_item(self, tenant_id: str, agent: Fields, version: int) -> Item:
        scope = _scope(tenant_id)
        agent_id = _part("agent_id", agent["agent_id"])
        position = _position(agent["created_at"], agent_id)
        item = _attributes({**agent, "tenant_id": tenant_id}, AGENT_FIELDS)
        item.update(_key(f"{scope}AGENT#{agent_id}", AGENT_SK))
        item.update({"gsi1pk": _s(f"{scope}AGENTS"), "gsi1sk": _s(position),
                     "gsi2sk": _s(position), "gsi3sk": _s(position), "gsi4sk": _s(position),
                     "version": _n(version), **self._agent_index_keys(scope, agent)})
        return item

    @staticmethod
    def _agent_index_keys(scope: str, agent: Fields) -> Item:
        return {"gsi2pk": _s(f"{scope}AGENTS#status#{_part('status', agent['status'])}"),
                "gsi3pk": _s(f"{scope}AGENTS#project#{_part('project_id', agent['project_id'])}"),
                "gsi4pk": _s(f"{scope}AGENTS#category#{_part('category', agent['category'])}")}

    def _capability_actions(self, scope: str, agent_id: str, created_at: str, old: Iterable[str],
                            new: Iterable[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Index rows to add and to remove when an agent's capabilities go from old to new."""
        old_set, new_list = set(old), list(dict.fromkeys(new))
        new_set = set(new_list)
        position = _s(_position(created_at, agent_id))
        pk = f"{scope}AGENT#{agent_id}"
        puts = [self._put({**_key(pk, f"CAPABILITY#{_part('capabilities', c)}"),
                           "gsi1pk": _s(f"{scope}CAPABILITY#{c}"), "gsi1sk": position})
                for c in new_list if c not in old_set]
        deletes = [self._delete(_key(pk, f"CAPABILITY#{c}")) for c in sorted(old_set - new_set)]
        return puts, deletes

    async def _write_agent(self, operation: str, core: list[dict[str, Any]],
                           puts: list[dict[str, Any]], deletes: list[dict[str, Any]]) -> None:
        """The agent's transaction with its capability index rows when they fit; otherwise
        the new rows go first and the old ones last, which listings tolerate (they check
        every row against the agent it points to)."""
        if len(core) + len(puts) + len(deletes) <= MAX_TRANSACTION_ITEMS:
            await self._transact(operation, [*core, *puts, *deletes])
            return
        for chunk in _chunks(puts, MAX_TRANSACTION_ITEMS):
            await self._transact(operation, chunk)
        await self._transact(operation, core)
        for chunk in _chunks(deletes, MAX_TRANSACTION_ITEMS):
            await self._transact(operation, chunk)

    async def _agent_items(self, operation: str, scope: str,
                           agent_id: str) -> tuple[Item | None, Item | None]:
        """The agent and its runtime stats, in one consistent Query."""
        items, _ = await self._query(operation, partition=f"{scope}AGENT#{agent_id}",
                                     sk_between=(AGENT_SK, STATS_SK))
        by_sk = {item["sk"]["S"]: item for item in items}
        return by_sk.get(AGENT_SK), by_sk.get(STATS_SK)

    @staticmethod
    def _agent_record(agent: Item, stats: Item | None) -> Agent:
        return Agent.model_validate({**_record(agent, AGENT_FIELDS),
                                     **_record(stats or {}, AGENT_STAT_FIELDS)})

    @staticmethod
    def _agent_count_deltas(old_status: str | None, new_status: str | None) -> dict[str, float]:
        deltas: Counter[str] = Counter()
        if old_status in ("running", "offline"):
            deltas[f"agents_{old_status}"] -= 1
        if new_status in ("running", "offline"):
            deltas[f"agents_{new_status}"] += 1
        return dict(deltas)

    async def put_agent(self, *, tenant_id: str, agent: Agent,
                        expect_owner: str | None = None) -> bool:
        """In one transaction: the agent (its stats kept), the change of the agent counts,
        its reference in its project and, with `expect_owner`, the check that its build is
        still running or paused under that owner."""
        operation = "put_agent"
        fields = dict(agent)
        scope = _scope(tenant_id)
        agent_id = _part("agent_id", fields["agent_id"])
        project_id = _part("project_id", fields["project_id"])
        pk = f"{scope}AGENT#{agent_id}"
        in_project = True
        for attempt in range(CONTENTION_ATTEMPTS):
            existing, _ = await self._agent_items(operation, scope, agent_id)
            core: list[dict[str, Any]] = []
            if expect_owner is not None:
                check = _Expression()
                core.append({"ConditionCheck": {
                    "TableName": self.table,
                    "Key": _key(f"{scope}BUILD#{_part('build_id', fields['build_id'])}", BUILD_SK),
                    "ConditionExpression":
                        f"{check.name('owner')} = {check.value(_s(expect_owner))} AND "
                        f"{check.name('status')} IN ({check.values_of(HELD_BUILD_STATUSES)})",
                    **check.params()}})
            expression = _Expression()
            if existing is None:
                created_at = fields["created_at"]
                core += [self._put(self._agent_item(tenant_id, fields, 1),
                                  f"attribute_not_exists({expression.name('pk')})", expression),
                        self._put({**_key(pk, STATS_SK), **_attributes({}, AGENT_STAT_FIELDS)})]
                old_status, old_capabilities = None, []
            else:
                created_at = existing["created_at"]["S"]
                version = int(existing["version"]["N"])
                core += [self._put(self._agent_item(tenant_id, {**fields, "created_at": created_at},
                                                    version + 1),
                                  f"{expression.name('version')} = {expression.value(existing['version'])}",
                                  expression)]
                old_status = _text(existing, "status")
                old_capabilities = _record(existing, ("capabilities",))["capabilities"] or []
            project_check = len(core)
            if in_project:
                # The reference lets the project's delete find the agent; a project already
                # gone gets an agent of its own, as the embedded store would keep it.
                core += [self._exists(_key(f"{scope}PROJECT#{project_id}", PROJECT_SK)),
                         self._put(_key(f"{scope}PROJECT#{project_id}", f"AGENT#{agent_id}"))]
            core += self._bump_counters(scope, self._agent_count_deltas(old_status, fields["status"]))
            puts, deletes = self._capability_actions(scope, agent_id, created_at, old_capabilities,
                                                     fields["capabilities"])
            try:
                await self._write_agent(operation, core, puts, deletes)
                return True
            except _Refused as refused:
                if expect_owner is not None and refused.failed(0):
                    return False
                if in_project and refused.failed(project_check):
                    in_project = False
                elif not (any(refused.failed(n) for n in range(project_check))
                          or refused.contended):
                    raise StoreError(f"DynamoDB refused agent {agent_id}: {refused}") from refused
                await _back_off(attempt)
        raise RecordConflict(f"agent {agent_id} kept changing while it was registered")

    async def get_agent(self, *, tenant_id: str, agent_id: str) -> Agent | None:
        if not _keyable(agent_id):
            return None
        agent, stats = await self._agent_items("get_agent", _scope(tenant_id), agent_id)
        return self._agent_record(agent, stats) if agent else None

    async def list_agents(self, *, tenant_id: str, limit: int, last_key: str | None,
                          project_id: str | None = None, status: str | None = None,
                          category: str | None = None,
                          capabilities: list[str] | None = None) -> Page[Agent]:
        """The most selective index for the filters given (a project, the capabilities
        merged newest first, a category, a status); every candidate is checked against all
        the filters and the read goes on until the page is full."""
        start = _decode_position(last_key)
        filters = [value for value in (project_id, status, category, *(capabilities or []))
                   if value is not None]
        if not _keyable(*filters):
            return Page(items=[])
        scope = _scope(tenant_id)
        prefix = f"{scope}AGENT#"
        if project_id is not None:
            indexes = [_Index("gsi3", f"{scope}AGENTS#project#{project_id}", prefix, AGENT_SK)]
        elif capabilities:
            indexes = [_Index("gsi1", f"{scope}CAPABILITY#{c}", prefix, f"CAPABILITY#{c}")
                       for c in dict.fromkeys(capabilities)]
        elif category is not None:
            indexes = [_Index("gsi4", f"{scope}AGENTS#category#{category}", prefix, AGENT_SK)]
        elif status is not None:
            indexes = [_Index("gsi2", f"{scope}AGENTS#status#{status}", prefix, AGENT_SK)]
        else:
            indexes = [_Index("gsi1", f"{scope}AGENTS", prefix, AGENT_SK)]

        async def load(ids: list[str]) -> dict[str, Agent]:
            keys = [(f"{prefix}{i}", sk) for i in ids for sk in (AGENT_SK, STATS_SK)]
            items = await self._batch_get("list_agents", keys)
            return {i: self._agent_record(items[(f"{prefix}{i}", AGENT_SK)],
                                          items.get((f"{prefix}{i}", STATS_SK)))
                    for i in ids if (f"{prefix}{i}", AGENT_SK) in items}

        def accept(agent: Agent) -> bool:
            return (project_id in (None, agent.project_id) and status in (None, agent.status)
                    and category in (None, agent.category)
                    and (not capabilities or bool(set(capabilities) & set(agent.capabilities))))

        return await _list_index(self, "list_agents", indexes, start=start, limit=limit,
                                 load=load, accept=accept)

    async def update_agent(self, *, tenant_id: str, agent_id: str, changes: Changes) -> Agent | None:
        operation = "update_agent"
        if not _keyable(agent_id):
            return None
        scope = _scope(tenant_id)
        for attempt in range(CONTENTION_ATTEMPTS):
            existing, stats = await self._agent_items(operation, scope, agent_id)
            if existing is None:
                return None
            current = _record(existing, AGENT_FIELDS)
            updated = {**current, **{k: v for k, v in changes.items() if k in AGENT_FIELDS}}
            expression = _Expression()
            set_: Item = {}
            remove: list[str] = []
            for name in AGENT_FIELDS:
                if name in changes and name not in ("agent_id", "created_at", "tenant_id"):
                    encoded = _encode(name, changes[name])
                    if encoded is None:
                        remove.append(name)
                    else:
                        set_[name] = encoded
            set_.update(self._agent_index_keys(scope, updated))
            set_["version"] = _n(int(existing["version"]["N"]) + 1)
            _check_size({**{k: v for k, v in existing.items() if k not in remove}, **set_})
            condition = f"{expression.name('version')} = {expression.value(existing['version'])}"
            core = [self._update(_key(f"{scope}AGENT#{agent_id}", AGENT_SK), expression,
                                 _update_expression(expression, set_=set_, remove=remove),
                                 condition)]
            if updated["status"] != current["status"]:
                core += self._bump_counters(scope, self._agent_count_deltas(current["status"],
                                                                            updated["status"]))
            puts, deletes = ([], [])
            if "capabilities" in changes:
                puts, deletes = self._capability_actions(scope, agent_id, current["created_at"],
                                                         current["capabilities"] or [],
                                                         updated["capabilities"] or [])
            try:
                await self._write_agent(operation, core, puts, deletes)
            except _Refused as refused:
                if not (refused.failed(0) or refused.contended):
                    raise StoreError(f"DynamoDB refused agent {agent_id}: {refused}") from refused
                await _back_off(attempt)
                continue
            return Agent.model_validate({**updated, **_record(stats or {}, AGENT_STAT_FIELDS)})
        raise RecordConflict(f"agent {agent_id} kept changing while it was updated")

    async def delete_agent(self, *, tenant_id: str, agent_id: str) -> bool:
        if not _keyable(agent_id):
            return False
        return await self._delete_agent("delete_agent", _scope(tenant_id), agent_id,
                                        in_project=False)

    async def _delete_agent(self, operation: str, scope: str, agent_id: str, *,
                            in_project: bool) -> bool:
        """Remove the agent and its stats (counted out of the agent counts) with a cleanup
        marker, then everything in its partition and its sessions. Within a project's
        delete, the project's marker covers it and the project's partition is purged after."""
        pk = f"{scope}AGENT#{agent_id}"
        marker = _key(CLEANUP_PK, _cleanup_sk("agent", scope, agent_id))
        for attempt in range(CONTENTION_ATTEMPTS):
            existing, _ = await self._agent_items(operation, scope, agent_id)
            if existing is None:
                if in_project:
                    await self._purge_agent(operation, scope, agent_id)
                return False
            expression = _Expression()
            actions = [self._delete(_key(pk, AGENT_SK),
                                    f"{expression.name('version')} = {expression.value(existing['version'])}",
                                    expression),
                       self._delete(_key(pk, STATS_SK))]
            actions += self._bump_counters(scope, self._agent_count_deltas(_text(existing, "status"),
                                                                           None))
            if not in_project:
                actions += [self._put(marker),
                            self._delete(_key(f"{scope}PROJECT#{existing['project_id']['S']}",
                                              f"AGENT#{agent_id}"))]
            try:
                await self._transact(operation, actions)
                break
            except _Refused as refused:
                if not (refused.failed(0) or refused.contended):
                    raise StoreError(f"DynamoDB refused deleting {agent_id}: {refused}") from refused
                await _back_off(attempt)
        else:
            raise RecordConflict(f"agent {agent_id} kept changing while it was deleted")
        await self._purge_agent(operation, scope, agent_id)
        if not in_project:
            await self._batch_delete(operation, [(marker["pk"]["S"], marker["sk"]["S"])])
        return True

    async def _purge_agent(self, operation: str, scope: str, agent_id: str) -> None:
        """An agent's partition: capability rows, invocations and the sessions it refers to."""
        pk = f"{scope}AGENT#{agent_id}"
        keys = [item["sk"]["S"] for item in
                await self._query_all(operation, partition=pk, projection=("sk",))]
        sessions = [sk[len("SESSION#"):] for sk in keys if sk.startswith("SESSION#")]
        await asyncio.gather(*(self._purge_partition(operation, f"{scope}SESSION#{session_id}")
                               for session_id in sessions))
        await self._batch_delete(operation, [(pk, sk) for sk in keys])

    # -- invocations -----------------------------------------------------------------------
    async def record_invocation(self, *, tenant_id: str, invocation: Invocation,
                                messages: list[Message]) -> None:
        """One transaction: the invocation, the agent's stats (which must exist), a counter
        shard, a daily shard and, for a session turn, the session (at the message count it
        was read with) and its messages."""
        operation = "record_invocation"
        agent_id = invocation.agent_id
        if not _keyable(agent_id):
            raise LookupError(f"agent {agent_id} no longer exists")
        stats, totals = invocation_deltas(invocation)
        totals = {name: delta for name, delta in totals.items() if delta}
        scope = _scope(tenant_id)
        pk = f"{scope}AGENT#{agent_id}"
        invocation_item = {**_key(pk, "INVOCATION#" + _position(
            invocation.created_at, _part("invocation_id", invocation.invocation_id))),
            **_record_attributes(invocation, INVOCATION_FIELDS, tenant_id=tenant_id)}
        session_id = messages[0].session_id if messages else None
        if session_id is not None and not _keyable(session_id):
            raise LookupError(f"session {session_id} no longer exists")
        for attempt in range(CONTENTION_ATTEMPTS):
            expression = _Expression()
            stats_update = _update_expression(
                expression, set_={"last_invoked_at": _s(invocation.created_at)},
                add={name: _n(delta) for name, delta in stats.items()})
            actions = [self._update(_key(pk, STATS_SK), expression, stats_update,
                                    f"attribute_exists({expression.name('pk')})"),
                       self._put(invocation_item), *self._bump_counters(scope, totals),
                       *self._bump_daily(scope, invocation.created_at[:10], totals)]
            session_update = len(actions)
            if session_id is not None:
                session = await self._get(operation, _key(f"{scope}SESSION#{session_id}",
                                                          SESSION_SK))
                if session is None:
                    raise LookupError(f"session {session_id} no longer exists")
                actions += self._session_turn_actions(tenant_id, session, messages)
            try:
                await self._transact(operation, actions)
                return
            except _Refused as refused:
                if refused.failed(0):
                    raise LookupError(f"agent {agent_id} no longer exists") from refused
                if not (refused.failed(session_update) or refused.contended):
                    raise StoreError(f"DynamoDB refused the invocation: {refused}") from refused
                await _back_off(attempt)
        raise RecordConflict(f"agent {agent_id} stayed too busy to record an invocation")

    def _session_turn_actions(self, tenant_id: str, session: Item,
                              messages: list[Message]) -> list[dict[str, Any]]:
        session_id = session["session_id"]["S"]
        pk = f"{_scope(tenant_id)}SESSION#{session_id}"
        count = int(session.get("message_count", {"N": "0"})["N"])
        last_active_at = messages[-1].created_at
        expression = _Expression()
        update = _update_expression(expression, set_={
            "message_count": _n(count + len(messages)), "last_active_at": _s(last_active_at),
            "gsi1sk": _s(_position(last_active_at, session_id))})
        condition = f"{expression.name('message_count')} = {expression.value(_n(count))}"
        actions = [self._update(_key(pk, SESSION_SK), expression, update, condition)]
        for offset, message in enumerate(messages, start=1):
            seq = count + offset
            actions.append(self._put({**_key(pk, f"MESSAGE#{seq:010d}"), **_record_attributes(
                message, MESSAGE_FIELDS, seq=seq, tenant_id=tenant_id)}))
        return actions

    async def list_invocations(self, *, tenant_id: str, agent_id: str, limit: int,
                               last_key: str | None) -> Page[Invocation]:
        start = _decode_position(last_key)
        if not _keyable(agent_id):
            return Page(items=[])
        pk = f"{_scope(tenant_id)}AGENT#{agent_id}"
        exclusive = _key(pk, "INVOCATION#" + _position(*start)) if start else None
        items = await _table_page(self, "list_invocations", pk, "INVOCATION#", forward=False,
                                  limit=limit, start=exclusive)
        records = [_model(Invocation, item) for item in items]
        return _page(records, limit, lambda r: [r.created_at, r.invocation_id])
