"""Build claims and leases on DynamoDB, how engines share builds: a claim is a conditional
build change, and a renewal reads the owner's lease rows, which the transactions changing a
build's owner keep."""

import asyncio

from api.database.dynamodb.builds import DynamoDBBuilds
from api.database.dynamodb.client import _Refused
from api.core.records import Build
from api.database.dynamodb.codec import Item, _model, _s, _text
from api.database.dynamodb.expressions import _Expression, _update_expression
from api.database.dynamodb.keys import (
    ACTIVE_BUILDS, BUILD_SK, CLAIM_ATTRIBUTES, _key, _keyable, _scope)
from api.database.interfaces import Changes, LeaseStore
from api.database.store import ACTIVE_BUILD_STATUSES, CLAIMABLE_UNOWNED_STATUSES, LeasedBuild


class DynamoDBLeases(DynamoDBBuilds, LeaseStore):
    """LeaseStore on DynamoDB; a claim is a build change (DynamoDBBuilds)."""

    @staticmethod
    def _claimable(build: Build, now: str) -> bool:
        if build.owner is None:
            return build.status in CLAIMABLE_UNOWNED_STATUSES
        return (build.status in ACTIVE_BUILD_STATUSES and build.lease_until is not None
                and build.lease_until < now)

    async def list_claimable_builds(self, *, now: str, limit: int) -> list[Build]:
        """Active builds, of every tenant, are the sparse gsi2 partition BUILDS#active, which
        carries status, owner and lease, so the claim filter runs inside the Query."""
        operation = "list_claimable_builds"
        claimable: list[Build] = []
        start = None
        while len(claimable) < limit:
            expression = _Expression()
            status, owner, lease = (expression.name(name) for name in CLAIM_ATTRIBUTES)
            filter_ = (f"(attribute_not_exists({owner}) AND {status} IN "
                       f"({expression.values_of(CLAIMABLE_UNOWNED_STATUSES)})) OR "
                       f"(attribute_exists({owner}) AND {lease} < {expression.value(_s(now))})")
            page, start = await self._query(operation, index="gsi2", partition=ACTIVE_BUILDS,
                                            forward=True, start=start, filter_=filter_,
                                            expression=expression)
            keys = [(item["pk"]["S"], BUILD_SK) for item in page]
            # The index may lag its items: read the candidates needed, check them, read on.
            while keys and len(claimable) < limit:
                wanted, keys = keys[:limit - len(claimable)], keys[limit - len(claimable):]
                found = await self._batch_get(operation, wanted)
                builds = [_model(Build, found[key]) for key in wanted if key in found]
                claimable += [build for build in builds if self._claimable(build, now)]
            if start is None:
                break
        return claimable

    async def claim_build(self, *, tenant_id: str, build_id: str, owner: str, lease_until: str,
                          now: str) -> bool:
        def decide(build: Build) -> Changes | None:
            if not self._claimable(build, now):
                return None
            return {"owner": owner, "lease_until": lease_until,
                    "recoveries": build.recoveries + (build.owner is not None),
                    "status": "running" if build.status == "queued" else build.status,
                    "started_at": build.started_at or now, "updated_at": now}

        # A claim always reads afresh and requires the lease it read: a renewal between the
        # read and the write keeps the build with its live owner.
        return await self._change_build("claim_build", _scope(tenant_id), build_id, decide,
                                        cached=False, check_lease=True)

    async def renew_leases(self, *, owner: str, lease_until: str) -> list[LeasedBuild]:
        """The owner's lease rows name its builds (their partition keys); each renewal is
        conditional on the build still being active and owned by it. The rows are read again until no claim made
        meanwhile is missing, so the answer covers every build held when it returns."""
        operation = "renew_leases"
        if not _keyable(owner):
            return []
        renewed: dict[str, LeasedBuild | None] = {}
        while True:
            rows = await self._query_all(operation, partition=f"LEASE#{owner}", projection=("sk",))
            new = [row["sk"]["S"] for row in rows if row["sk"]["S"] not in renewed]
            if not new:
                return [build for build in renewed.values() if build is not None]
            results = await asyncio.gather(*(self._renew_lease(owner, pk, lease_until)
                                             for pk in new))
            renewed.update(zip(new, results, strict=True))

    async def list_held_build_ids(self, *, owner: str) -> list[str]:
        """One consistent Query of the owner's lease rows: the transactions that change a
        build's owner (a stop, a pause settled, a delete, a finish) keep them exact."""
        if not _keyable(owner):
            return []
        rows = await self._query_all("list_held_build_ids", partition=f"LEASE#{owner}",
                                     projection=("sk",))
        return [row["sk"]["S"].rsplit("BUILD#", 1)[1] for row in rows]

    async def _renew_lease(self, owner: str, pk: str, lease_until: str) -> LeasedBuild | None:
        """The build (tenant, id and status) when the owner still holds it."""
        expression = _Expression()
        update = _update_expression(expression, set_={"lease_until": _s(lease_until)})
        condition = (f"{expression.name('owner')} = {expression.value(_s(owner))} AND "
                     f"{expression.name('status')} IN ({expression.values_of(ACTIVE_BUILD_STATUSES)})")
        try:
            response = await self._call("renew_leases", "UpdateItem", {
                "TableName": self.table, "Key": _key(pk, BUILD_SK),
                "UpdateExpression": update, "ConditionExpression": condition,
                "ReturnValues": "ALL_NEW", "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                **expression.params()})
            item: Item | None = response["Attributes"]
        except _Refused as refused:
            item = refused.item
            if not item or _text(item, "owner") != owner:
                return None
        assert item is not None
        return LeasedBuild(**{name: _text(item, name) for name in ("tenant_id", "build_id", "status")})  # type: ignore[arg-type]
