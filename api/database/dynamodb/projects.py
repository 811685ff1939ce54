"""Projects on DynamoDB, and the cascade of their deletes: a project's partition refers to
its builds and agents, its delete removes it with a cleanup marker, then its children, then
the marker."""

import asyncio

from api.core.store_errors import RecordConflict, StoreError
from api.database.dynamodb.agents import DynamoDBAgents
from api.database.dynamodb.builds import DynamoDBBuilds
from api.database.dynamodb.client import (
    CONTENTION_ATTEMPTS, MAX_TRANSACTION_ITEMS, _back_off, _Refused)
from api.core.records import Build, Project
from api.database.dynamodb.codec import PROJECT_FIELDS, Item, _model, _record_attributes, _s, _text
from api.database.dynamodb.expressions import _Expression
from api.database.dynamodb.keys import (
    BUILD_REF, BUILD_SK, CLEANUP_PK, PROJECT_SK, _cleanup_sk, _key, _keyable, _part, _position,
    _project_status_keys, _scope)
from api.database.dynamodb.paging import _decode_position, _Index, _items_by_id, _list_index
from api.database.interfaces import ProjectStore
from api.database.store import ACTIVE_BUILD_STATUSES, PROJECT_STATUS_FOR_BUILD, Page


class DynamoDBProjects(DynamoDBBuilds, DynamoDBAgents, ProjectStore):
    """ProjectStore's projects, on the builds and agents their writes and deletes reach."""

    @staticmethod
    def _project_item(tenant_id: str, project: Project) -> Item:
        scope = _scope(tenant_id)
        project_id = _part("project_id", project.project_id)
        user_id = _part("user_id", project.user_id)
        position = _position(project.created_at, project_id)
        item = _record_attributes(project, PROJECT_FIELDS, tenant_id=tenant_id)
        item.update(_key(f"{scope}PROJECT#{project_id}", PROJECT_SK))
        item.update({
            "gsi1pk": _s(f"{scope}PROJECTS"), "gsi1sk": _s(position),
            "gsi3pk": _s(f"{scope}PROJECTS#user#{user_id}"), "gsi3sk": _s(position),
            "gsi2sk": _s(position), "gsi4sk": _s(position),
            **_project_status_keys(scope, project.status, user_id)})
        return item

    async def create_project(self, *, tenant_id: str, project: Project, build: Build) -> None:
        expression = _Expression()
        actions = [self._put(self._project_item(tenant_id, project),
                             f"attribute_not_exists({expression.name('pk')})", expression),
                   *self._new_build_actions(tenant_id, build, project.user_id)]
        try:
            await self._transact("create_project", actions)
        except _Refused as refused:
            raise StoreError(f"project {project.project_id} or build {build.build_id} "
                             f"already exists ({refused})") from refused

    async def get_project(self, *, tenant_id: str, project_id: str) -> Project | None:
        if not _keyable(project_id):
            return None
        item = await self._get("get_project", _key(f"{_scope(tenant_id)}PROJECT#{project_id}",
                                                   PROJECT_SK))
        return _model(Project, item) if item else None

    async def get_project_with_latest_build(self, *, tenant_id: str,
                                            project_id: str) -> tuple[Project, Build] | None:
        project = await self.get_project(tenant_id=tenant_id, project_id=project_id)
        build = project and await self.get_build(tenant_id=tenant_id,
                                                 build_id=project.latest_build_id)
        return (project, build) if project and build else None

    async def list_projects(self, *, tenant_id: str, limit: int, last_key: str | None,
                            status: str | None = None, user_id: str | None = None) -> Page[Project]:
        start = _decode_position(last_key)
        scope = _scope(tenant_id)
        if not _keyable(*(value for value in (status, user_id) if value is not None)):
            return Page(items=[])
        if status is not None and user_id is not None:
            partition = f"{scope}PROJECTS#status_user#{status}#{user_id}"
            index = _Index("gsi4", partition, f"{scope}PROJECT#", PROJECT_SK)
        elif status is not None:
            index = _Index("gsi2", f"{scope}PROJECTS#status#{status}", f"{scope}PROJECT#", PROJECT_SK)
        elif user_id is not None:
            index = _Index("gsi3", f"{scope}PROJECTS#user#{user_id}", f"{scope}PROJECT#", PROJECT_SK)
        else:
            index = _Index("gsi1", f"{scope}PROJECTS", f"{scope}PROJECT#", PROJECT_SK)

        def accept(project: Project) -> bool:
            return status in (None, project.status) and user_id in (None, project.user_id)

        return await _list_index(
            self, "list_projects", [index], start=start, limit=limit,
            load=_items_by_id(self, "list_projects", index, "project_id", Project),
            accept=accept)

    async def delete_project(self, *, tenant_id: str, project_id: str) -> bool:
        operation = "delete_project"
        if not _keyable(project_id):
            return False
        scope = _scope(tenant_id)
        pk = f"{scope}PROJECT#{project_id}"
        for attempt in range(CONTENTION_ATTEMPTS):
            head = [item["sk"]["S"] for item in await self._query_all(
                operation, partition=pk, sk_between=(BUILD_REF, PROJECT_SK), projection=("sk",))]
            if PROJECT_SK not in head:
                return False
            builds = await self._batch_get(
                operation, [(f"{scope}BUILD#{sk[len(BUILD_REF):]}", BUILD_SK) for sk in head
                            if sk.startswith(BUILD_REF)],
                projection=("status", "owner", "version", "lease_until"))
            active = [item for item in builds.values()
                      if _text(item, "status") in ACTIVE_BUILD_STATUSES]
            expression = _Expression()
            actions = [self._delete(_key(pk, PROJECT_SK),
                                    f"attribute_exists({expression.name('pk')})", expression)]
            for item in active:
                actions += self._release_build_actions(item)
            actions += self._bump_counters(scope, {"builds_active": -len(active),
                                                   "builds_cancelled": len(active)})
            actions.append(self._put(_key(CLEANUP_PK, _cleanup_sk("project", scope, project_id))))
            if len(actions) > MAX_TRANSACTION_ITEMS:
                raise StoreError(f"project {project_id} has too many active builds to delete")
            try:
                await self._transact(operation, actions)
                break
            except _Refused as refused:
                if refused.failed(0):
                    return False
                await _back_off(attempt)
        else:
            raise RecordConflict(f"project {project_id} kept changing while it was deleted")
        await self._purge_project(scope, project_id)
        return True

    async def _purge_project(self, scope: str, project_id: str) -> None:
        """Everything left under a deleted project, then its cleanup marker."""
        operation = "delete_project"
        pk = f"{scope}PROJECT#{project_id}"
        keys = await self._query_all(operation, partition=pk, projection=("pk", "sk"))
        sort_keys = [item["sk"]["S"] for item in keys]
        agents = [sk[len("AGENT#"):] for sk in sort_keys if sk.startswith("AGENT#")]
        builds = [sk[len(BUILD_REF):] for sk in sort_keys if sk.startswith(BUILD_REF)]
        for agent_id in agents:
            await self._delete_agent(operation, scope, agent_id, in_project=True)
        await asyncio.gather(*(self._purge_build(operation, f"{scope}BUILD#{build_id}")
                               for build_id in builds))
        await self._batch_delete(operation, [(pk, sk) for sk in sort_keys])
        await self._batch_delete(operation, [(CLEANUP_PK, _cleanup_sk("project", scope, project_id))])

    async def add_build(self, *, tenant_id: str, build: Build) -> bool:
        operation = "add_build"
        if not _keyable(build.project_id):
            return False
        scope = _scope(tenant_id)
        pk = f"{scope}PROJECT#{build.project_id}"
        for attempt in range(CONTENTION_ATTEMPTS):
            project = await self._get(operation, _key(pk, PROJECT_SK))
            if project is None:
                return False
            latest_id = _text(project, "latest_build_id")
            latest = await self._get(operation, _key(f"{scope}BUILD#{latest_id}", BUILD_SK)) \
                if latest_id else None
            if latest is not None and _text(latest, "status") in ACTIVE_BUILD_STATUSES:
                return False
            user_id = project["user_id"]["S"]
            expression = _Expression()
            latest_alias = expression.name("latest_build_id")
            condition = (f"{latest_alias} = {expression.value(_s(latest_id))}" if latest_id
                         else f"attribute_not_exists({latest_alias})")
            mirrored = {"latest_build_id": build.build_id,
                        "status": PROJECT_STATUS_FOR_BUILD[build.status],
                        "progress": build.progress, "current_stage": build.current_stage,
                        "updated_at": build.created_at}
            update = self._mirror_expression(expression, scope, mirrored, user_id)
            actions = [self._update(_key(pk, PROJECT_SK), expression, update, condition)]
            checked = latest is not None
            if checked:
                check = _Expression()
                actions.append({"ConditionCheck": {
                    "TableName": self.table, "Key": _key(latest["pk"]["S"], BUILD_SK),
                    "ConditionExpression":
                        f"{check.name('version')} = {check.value(latest['version'])}",
                    **check.params()}})
            actions += self._new_build_actions(tenant_id, build, user_id)
            try:
                await self._transact(operation, actions)
                return True
            except _Refused as refused:
                if not (refused.failed(0) or (checked and refused.failed(1)) or refused.contended):
                    raise RecordConflict(f"build {build.build_id} already exists") from refused
                await _back_off(attempt)
        raise RecordConflict(f"project {build.project_id} kept changing while a build was added")
