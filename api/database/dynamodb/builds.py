"""Builds on DynamoDB: a build's item, its changes (each one transaction with its lease rows,
the aggregates of a final status and its project's mirror), its stage logs and artifacts.

Builds carry a `version` checked on every write (optimistic concurrency); the engine's
frequent progress writes start from the copy this process wrote last.
"""

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from api.core.store_errors import RecordConflict, StoreError
from api.database.dynamodb.client import (
    CONTENTION_ATTEMPTS, MAX_TRANSACTION_BYTES, MAX_TRANSACTION_ITEMS, DynamoDBClient, _back_off,
    _chunks, _Refused)
from api.database.dynamodb.codec import (
    ARTIFACT_FIELDS, ARTIFACT_LISTED_FIELDS, BUILD_FIELDS, LOG_FIELDS, Fields, Item,
    _attribute_bytes, _check_size, _encode, _model, _n, _record_attributes, _s, _text)
from api.database.dynamodb.expressions import _Expression, _update_expression
from api.database.dynamodb.keys import (
    ACTIVE_BUILDS, BUILD_REF, BUILD_SK, FAILED_STAGE_PREFIX, LOGS_SK, PROJECT_SK, _key, _keyable,
    _part, _position, _project_status_keys, _scope)
from api.database.dynamodb.paging import _decode_position, _Index, _items_by_id, _list_index
from api.core.records import Artifact, Build, BuildLogLine
from api.database.interfaces import Changes, ProjectStore
from api.database.store import (
    ACTIVE_BUILD_STATUSES, FINAL_BUILD_STATUSES, PROJECT_STATUS_FOR_BUILD, Page,
    build_token_deltas)

logger = logging.getLogger("api.database.dynamodb")

# Builds whose item this process read or wrote last (by partition key), so that the owner's
# frequent progress writes need no read first (the version condition catches a stale copy).
CACHED_BUILDS = 256


class DynamoDBBuilds(DynamoDBClient, ProjectStore):
    """ProjectStore's builds, build logs and artifacts; DynamoDBProjects adds the projects."""

    @staticmethod
    def _build_item(tenant_id: str, build: Build, user_id: str) -> Item:
        scope = _scope(tenant_id)
        build_id = _part("build_id", build.build_id)
        project_id = _part("project_id", build.project_id)
        position = _position(build.created_at, build_id)
        item = _record_attributes(build, BUILD_FIELDS, tenant_id=tenant_id)
        item.update(_key(f"{scope}BUILD#{build_id}", BUILD_SK))
        item.update({"gsi1pk": _s(f"{scope}BUILDS#{project_id}"), "gsi1sk": _s(position),
                     "version": _n(1), "project_user": _s(user_id)})
        if build.status in ACTIVE_BUILD_STATUSES:
            item.update({"gsi2pk": _s(ACTIVE_BUILDS), "gsi2sk": _s(position)})
        return item

    def _new_build_actions(self, tenant_id: str, build: Build,
                           user_id: str) -> list[dict[str, Any]]:
        """A new build with its reference in its project and, when owned, its lease row."""
        scope = _scope(tenant_id)
        pk = f"{scope}BUILD#{build.build_id}"
        expression = _Expression()
        actions = [
            self._put(self._build_item(tenant_id, build, user_id),
                      f"attribute_not_exists({expression.name('pk')})", expression),
            self._put({**_key(pk, LOGS_SK), "log_seq": _n(0)}),
            self._put(_key(f"{scope}PROJECT#{build.project_id}",
                           f"{BUILD_REF}{build.build_id}"))]
        if build.owner:
            actions.append(self._put(_key(f"LEASE#{_part('owner', build.owner)}", pk)))
        actions += self._bump_counters(scope, {"builds_total": 1, "builds_active": 1})
        actions += self._bump_daily(scope, build.created_at[:10], {"builds_total": 1})
        return actions

    def _release_build_actions(self, item: Item) -> list[dict[str, Any]]:
        """Delete an active build as it was read (its version), with its lease row."""
        expression = _Expression()
        actions = [self._delete(_key(item["pk"]["S"], BUILD_SK),
                                f"{expression.name('version')} = {expression.value(item['version'])}",
                                expression),
                   self._delete(_key(item["pk"]["S"], LOGS_SK))]
        owner = _text(item, "owner")
        if owner:
            actions.append(self._delete(_key(f"LEASE#{owner}", item["pk"]["S"])))
        self._builds.pop(item["pk"]["S"], None)
        self._log_seqs.pop(item["pk"]["S"], None)
        return actions

    async def _purge_build(self, operation: str, pk: str) -> None:
        self._builds.pop(pk, None)
        self._log_seqs.pop(pk, None)
        items = await self._query_all(operation, partition=pk, projection=("pk", "sk", "owner"))
        keys = [(item["pk"]["S"], item["sk"]["S"]) for item in items]
        owners = [_text(item, "owner") for item in items if item["sk"]["S"] == BUILD_SK]
        keys += [(f"LEASE#{owner}", pk) for owner in owners if owner]
        await self._batch_delete(operation, keys)

    @staticmethod
    def _mirror_expression(expression: _Expression, scope: str, fields: Fields,
                           user_id: str) -> str:
        """The update of a project's mirrored fields (and its status index keys)."""
        set_ = {name: value for name, value in
                ((name, _encode(name, value)) for name, value in fields.items()) if value is not None}
        set_.update(_project_status_keys(scope, fields["status"], user_id))
        remove = [name for name, value in fields.items() if value is None]
        return _update_expression(expression, set_=set_, remove=remove)

    def _remember_build(self, pk: str, item: Item) -> None:
        self._builds[pk] = item
        self._builds.move_to_end(pk)
        while len(self._builds) > CACHED_BUILDS:
            self._builds.popitem(last=False)

    async def get_build(self, *, tenant_id: str, build_id: str) -> Build | None:
        if not _keyable(build_id):
            return None
        pk = f"{_scope(tenant_id)}BUILD#{build_id}"
        item = await self._get("get_build", _key(pk, BUILD_SK))
        if item is None:
            self._builds.pop(pk, None)
            return None
        self._remember_build(pk, item)
        return _model(Build, item)

    async def list_builds(self, *, tenant_id: str, project_id: str, limit: int,
                          last_key: str | None) -> Page[Build]:
        start = _decode_position(last_key)
        if not _keyable(project_id):
            return Page(items=[])
        scope = _scope(tenant_id)
        index = _Index("gsi1", f"{scope}BUILDS#{project_id}", f"{scope}BUILD#", BUILD_SK)
        return await _list_index(
            self, "list_builds", [index], start=start, limit=limit,
            load=_items_by_id(self, "list_builds", index, "build_id", Build),
            accept=lambda build: build.project_id == project_id)

    async def update_build(self, *, tenant_id: str, build_id: str, changes: Changes,
                           expect_status: tuple[str, ...], expect_owner: str | None = None,
                           logs: Sequence[BuildLogLine] = (),
                           artifacts: Sequence[Artifact] = ()) -> bool:
        """Not one transaction here: the artifacts first (one transaction per 100 items), so
        that a step is never recorded complete without its output; then the change; then the
        log lines, only if the change was made."""
        def decide(build: Build) -> Changes | None:
            if build.status not in expect_status:
                return None
            if expect_owner is not None and build.owner != expect_owner:
                return None
            return changes

        if not _keyable(build_id):
            return False
        scope = _scope(tenant_id)
        if artifacts:
            await self._put_artifacts(tenant_id, artifacts)
        if not await self._change_build("update_build", scope, build_id, decide, cached=True,
                                        check_lease=False):
            return False
        if logs:
            await self._append_build_logs(f"{scope}BUILD#{build_id}", logs)
        return True

    async def _change_build(self, operation: str, scope: str, build_id: str,
                            decide: Callable[[Build], Changes | None], *, cached: bool,
                            check_lease: bool) -> bool:
        """Apply the changes `decide` makes of the build's current state, in one transaction
        with its lease rows, the aggregates of a final status and the project's mirror.

        The write requires the version it was decided on, so a stale copy (cached, or read
        before another instance wrote) is read again and decided again."""
        if not _keyable(build_id):
            return False
        pk = f"{scope}BUILD#{build_id}"
        item = self._builds.get(pk) if cached else None
        mirror = True
        for attempt in range(CONTENTION_ATTEMPTS):
            fresh = item is None
            if fresh:
                item = await self._get(operation, _key(pk, BUILD_SK))
                if item is None:
                    self._builds.pop(pk, None)
                    return False
            current = _model(Build, item)
            changes = decide(current)
            if changes is None:
                if fresh:
                    self._remember_build(pk, item)
                    return False
                item = None  # refused on a cached copy: confirm on a fresh read
                continue
            actions, written = self._build_change_actions(scope, item, current, changes, mirror,
                                                          check_lease)
            try:
                await self._transact(operation, actions)
            except _Refused as refused:
                if refused.failed(0):
                    item = None
                elif mirror and refused.failed(len(actions) - 1):
                    mirror = False  # no longer the project's latest build: nothing to mirror
                elif not refused.contended:
                    raise StoreError(f"DynamoDB refused the {operation} of {build_id}: "
                                     f"{refused}") from refused
                await _back_off(attempt)
                continue
            self._remember_build(pk, written)
            return True
        raise RecordConflict(f"build {build_id} kept changing during {operation}")

    def _build_change_actions(self, scope: str, item: Item, current: Build, changes: Changes,
                              mirror: bool, check_lease: bool) -> tuple[list[dict[str, Any]], Item]:
        """The transaction that applies `changes`, and the build item it leaves."""
        build_id, pk = current.build_id, item["pk"]["S"]
        updated = current.changed(changes)
        set_: Item = {}
        remove: list[str] = []
        for name in changes:
            if name in ("build_id", "tenant_id"):
                continue
            # Stored as checked: a value given as what validates into its field is written as the field.
            encoded = _encode(name, getattr(updated, name))
            if encoded is None:
                remove.append(name)
            else:
                set_[name] = encoded
        if "status" in changes:
            if updated.status in ACTIVE_BUILD_STATUSES:
                set_.update({"gsi2pk": _s(ACTIVE_BUILDS),
                             "gsi2sk": _s(_position(current.created_at, build_id))})
            else:
                remove += ["gsi2pk", "gsi2sk"]
        version = int(item["version"]["N"])
        set_["version"] = _n(version + 1)
        written = {name: value for name, value in item.items() if name not in remove}
        written.update(set_)
        _check_size(written)

        expression = _Expression()
        condition = f"{expression.name('version')} = {expression.value(item['version'])}"
        if check_lease:
            lease = expression.name("lease_until")
            condition += (f" AND {lease} = {expression.value(item['lease_until'])}"
                          if "lease_until" in item else f" AND attribute_not_exists({lease})")
        actions = [self._update(_key(pk, BUILD_SK), expression,
                                _update_expression(expression, set_=set_, remove=remove),
                                condition)]
        if updated.owner != current.owner:
            if current.owner:
                actions.append(self._delete(_key(f"LEASE#{current.owner}", pk)))
            if updated.owner:
                actions.append(self._put(_key(f"LEASE#{_part('owner', updated.owner)}", pk)))
        if updated.status != current.status and updated.status in FINAL_BUILD_STATUSES:
            actions += self._finished_build_aggregates(scope, updated)
        if mirror:
            mirror_expression = _Expression()
            mirrored = {"status": PROJECT_STATUS_FOR_BUILD[updated.status],
                        "progress": updated.progress, "current_stage": updated.current_stage,
                        "updated_at": updated.updated_at}
            user_id = _text(item, "project_user") or ""
            update = self._mirror_expression(mirror_expression, scope, mirrored, user_id)
            condition = (f"{mirror_expression.name('latest_build_id')} = "
                         f"{mirror_expression.value(_s(build_id))}")
            actions.append(self._update(_key(f"{scope}PROJECT#{current.project_id}", PROJECT_SK),
                                        mirror_expression, update, condition))
        return actions, written

    def _finished_build_aggregates(self, scope: str, build: Build) -> list[dict[str, Any]]:
        """What a build reaching a final status adds to the aggregates (as SQLite counts it)."""
        status = build.status
        tokens = {name: value for name, value in build_token_deltas(build).items() if value}
        counters = {"builds_active": -1, f"builds_{status}": 1, **tokens}
        day = (build.finished_at or build.updated_at)[:10]
        daily: dict[str, float] = dict(tokens)
        if status == "succeeded":
            seconds = build.duration_seconds or 0.0
            counters["build_seconds_succeeded"] = seconds
            daily.update(builds_succeeded=1, build_seconds_succeeded=seconds)
        elif status == "failed":
            stage = (build.error and build.error.stage) or "unknown"
            daily.update({"builds_failed": 1, f"{FAILED_STAGE_PREFIX}{stage}": 1})
        actions = self._bump_counters(scope, counters)
        if daily:
            actions += self._bump_daily(scope, day, daily)
        return actions

    # -- logs ------------------------------------------------------------------------------
    async def _append_build_logs(self, pk: str, entries: Sequence[BuildLogLine]) -> None:
        """Lines are numbered per build by the build's small `#LOGS` item, advanced in the
        transaction that stores them, so they list in the order they were appended. The item
        exists as long as the build does: lines for a build that no longer exists are dropped."""
        operation = "append_build_logs"
        key = _key(pk, LOGS_SK)
        for chunk in _chunks(entries, MAX_TRANSACTION_ITEMS - 1):
            seq = self._log_seqs.get(pk)
            for attempt in range(CONTENTION_ATTEMPTS):
                if seq is None:
                    item = await self._get(operation, key)
                    if item is None:
                        self._log_seqs.pop(pk, None)
                        return
                    seq = int(item["log_seq"]["N"])
                expression = _Expression()
                update = _update_expression(expression, set_={"log_seq": _n(seq + len(chunk))})
                condition = f"{expression.name('log_seq')} = {expression.value(_n(seq))}"
                actions = [self._update(key, expression, update, condition)]
                for offset, entry in enumerate(chunk, start=1):
                    stage = _part("stage", entry.stage)
                    actions.append(self._put({**_key(pk, f"LOG#{stage}#{seq + offset:010d}"),
                                              **_record_attributes(entry, LOG_FIELDS)}))
                try:
                    await self._transact(operation, actions)
                except _Refused as refused:
                    if not (refused.failed(0) or refused.contended):
                        raise StoreError(f"DynamoDB refused log lines: {refused}") from refused
                    seq = None
                    await _back_off(attempt)
                    continue
                self._log_seqs[pk] = seq + len(chunk)
                self._log_seqs.move_to_end(pk)
                while len(self._log_seqs) > CACHED_BUILDS:
                    self._log_seqs.popitem(last=False)
                break
            else:
                raise RecordConflict(f"build {pk} stayed busy while appending logs")

    async def list_build_logs(self, *, tenant_id: str, build_id: str, stage: str) -> list[BuildLogLine]:
        if not _keyable(build_id, stage):
            return []
        items = await self._query_all("list_build_logs",
                                      partition=f"{_scope(tenant_id)}BUILD#{build_id}",
                                      sk_prefix=f"LOG#{stage}#")
        return [_model(BuildLogLine, item) for item in items]

    # -- artifacts -------------------------------------------------------------------------
    async def _put_artifacts(self, tenant_id: str, artifacts: Sequence[Artifact]) -> None:
        """Stored in their project's partition, conditional on their builds and projects
        existing, so that a build still writing after its project was deleted leaves nothing
        behind."""
        operation = "put_artifacts"
        scope = _scope(tenant_id)
        latest: dict[tuple[str, str], Artifact] = {}
        for artifact in artifacts:
            latest[(_part("project_id", artifact.project_id), _part("path", artifact.path))] = artifact
        items = []
        for (project_id, path), artifact in latest.items():
            item = {**_key(f"{scope}PROJECT#{project_id}", f"ARTIFACT#{path}"),
                    **_record_attributes(artifact, ARTIFACT_FIELDS, tenant_id=tenant_id)}
            _check_size(item)
            items.append(item)
        builds = {_part("build_id", artifact.build_id) for artifact in latest.values()}
        parents = sorted({(f"{scope}BUILD#{build_id}", LOGS_SK) for build_id in builds}
                         | {(f"{scope}PROJECT#{project_id}", PROJECT_SK) for project_id, _ in latest})
        checks = [self._exists(_key(pk, sk)) for pk, sk in parents]
        for chunk in self._transaction_chunks(items, len(checks)):
            if not await self._put_artifact_chunk(operation, checks, chunk):
                logger.info("Artifacts of a build that no longer exists were dropped")
                return

    async def _put_artifact_chunk(self, operation: str, checks: list[dict[str, Any]],
                                  chunk: list[Item]) -> bool:
        """False when a build or project no longer exists (nothing was written)."""
        actions = [*checks, *(self._put(item) for item in chunk)]
        for attempt in range(CONTENTION_ATTEMPTS):
            try:
                await self._transact(operation, actions)
                return True
            except _Refused as refused:
                if any(refused.failed(n) for n in range(len(checks))):
                    return False
                if not refused.contended:
                    raise StoreError(f"DynamoDB refused artifacts: {refused}") from refused
                await _back_off(attempt)
        raise RecordConflict("artifacts stayed contended")

    @staticmethod
    def _transaction_chunks(items: list[Item], beside: int) -> Iterable[list[Item]]:
        """Groups that fit one transaction beside `beside` condition checks (count, bytes)."""
        if beside >= MAX_TRANSACTION_ITEMS:
            raise StoreError("artifacts of too many builds in one write")
        chunk: list[Item] = []
        size = 0
        for item in items:
            item_size = sum(len(name) + _attribute_bytes(value) for name, value in item.items())
            if chunk and (len(chunk) == MAX_TRANSACTION_ITEMS - beside
                          or size + item_size > MAX_TRANSACTION_BYTES):
                yield chunk
                chunk, size = [], 0
            chunk.append(item)
            size += item_size
        if chunk:
            yield chunk

    async def list_artifacts(self, *, tenant_id: str, project_id: str) -> list[Artifact]:
        if not _keyable(project_id):
            return []
        items = await self._query_all("list_artifacts",
                                      partition=f"{_scope(tenant_id)}PROJECT#{project_id}",
                                      sk_prefix="ARTIFACT#", projection=ARTIFACT_LISTED_FIELDS)
        return [_model(Artifact, item, ARTIFACT_LISTED_FIELDS) for item in items]

    async def get_artifact(self, *, tenant_id: str, project_id: str, path: str) -> Artifact | None:
        if not _keyable(project_id, path):
            return None
        item = await self._get("get_artifact", _key(f"{_scope(tenant_id)}PROJECT#{project_id}",
                                                    f"ARTIFACT#{path}"))
        return _model(Artifact, item) if item else None
