"""The DynamoDB store: every domain module on one table."""

import logging

from api.database.dynamodb.agents import DynamoDBAgents
from api.database.dynamodb.api_keys import DynamoDBApiKeys
from api.database.dynamodb.idempotency import DynamoDBIdempotency
from api.database.dynamodb.keys import CLEANUP_PK, _parse_cleanup_sk
from api.database.dynamodb.layout import DynamoDBLayout
from api.database.dynamodb.leases import DynamoDBLeases
from api.database.dynamodb.limits import DynamoDBLimits
from api.database.dynamodb.projects import DynamoDBProjects
from api.database.dynamodb.sessions import DynamoDBSessions
from api.database.dynamodb.statistics import DynamoDBStatistics
from api.database.store import Store

logger = logging.getLogger("api.database.dynamodb")


class DynamoDBStore(DynamoDBProjects, DynamoDBLeases, DynamoDBAgents, DynamoDBSessions,
                    DynamoDBStatistics, DynamoDBIdempotency, DynamoDBApiKeys, DynamoDBLimits,
                    DynamoDBLayout, Store):
    """The store `STORAGE_BACKEND=dynamodb` runs."""

    async def _finish_interrupted_deletes(self) -> None:
        """Each cleanup marker finished by the purge of its kind, then removed (a project's
        purge removes its own)."""
        markers = await self._query_all("open", partition=CLEANUP_PK, projection=("sk",))
        for marker in markers:
            kind, scope, identifier = _parse_cleanup_sk(marker["sk"]["S"])
            logger.warning("Finishing an interrupted delete", extra={"kind": kind, "id": identifier})
            if kind == "project":
                await self._purge_project(scope, identifier)
                continue
            if kind == "agent":
                await self._purge_agent("open", scope, identifier)
            elif kind == "session":
                await self._purge_partition("open", f"{scope}SESSION#{identifier}")
            await self._batch_delete("open", [(CLEANUP_PK, marker["sk"]["S"])])
