"""The key schema: one table, its indexes, the partitions and sort keys every item lives under.

docs/DYNAMODB.md describes the items, keys and indexes.
"""

from typing import Any

from api.core.store_errors import InvalidValue
from api.database.dynamodb.codec import Item, _s
from api.database.store import PLATFORM_SCOPE

Key = tuple[str, str]

TABLE_NAME = "platform"
INDEXES = ("gsi1", "gsi2", "gsi3", "gsi4")
# gsi2 lists active builds for the claim loop, which filters on these without reading items.
CLAIM_ATTRIBUTES = ("status", "owner", "lease_until")

COUNTER_SHARDS = 10
DAILY_SHARDS = 10

# Ours for key components: a prefix and a timestamp share the key.
MAX_KEY_PART_BYTES = 900

# Sort keys of the items that head each partition; '#' sorts before every child prefix.
PROJECT_SK, BUILD_SK, AGENT_SK, STATS_SK, SESSION_SK = "#PROJECT", "#BUILD", "#AGENT", "#STATS", "#SESSION"
# A build's log counter: small, so advancing it costs one write unit, and present exactly as
# long as the build is, so that writes of the build's children can require it cheaply.
LOGS_SK = "#LOGS"
# A project's build references sort just before the project item: one Query reads both.
BUILD_REF = "#BUILD#"
FAILED_STAGE_PREFIX = "failed_stage#"
# Partitions shared by every tenant: cleanup markers, each engine's lease rows (LEASE#<owner>),
# the claim loop's gsi2 partition of active builds, and API keys (APIKEY#<key_id>, looked up
# before the caller's tenant is known; api_keys.py).
CLEANUP_PK = "CLEANUP"
ACTIVE_BUILDS = "BUILDS#active"
# Every other partition key, of the table and of its indexes, starts with its tenant's scope,
# so that a tenant's lookups and listings never reach another tenant's items.
TENANT_PREFIX = "T#"


def _key(pk: str, sk: str) -> Item:
    return {"pk": _s(pk), "sk": _s(sk)}


def _part(field_name: str, value: Any) -> str:
    """A value used inside a key: a string short enough for DynamoDB's key limits."""
    if not isinstance(value, str):
        raise InvalidValue(field_name, "must be a string")
    if len(value.encode()) > MAX_KEY_PART_BYTES:
        raise InvalidValue(field_name, f"must be at most {MAX_KEY_PART_BYTES} bytes")
    return value


def _keyable(*values: Any) -> bool:
    """Whether values can be part of a key: a lookup with any other value finds nothing."""
    return all(isinstance(v, str) and len(v.encode()) <= MAX_KEY_PART_BYTES for v in values)


def _position(timestamp: str, identifier: str) -> str:
    """A list sort key: newest first by timestamp, ties broken by id, as SQLite orders them."""
    return f"{timestamp}#{identifier}"


def _scope(tenant_id: str) -> str:
    """The prefix of the tenant's partition keys (PLATFORM_SCOPE's holds platform totals)."""
    tenant = _part("tenant_id", tenant_id)
    if "#" in tenant:
        raise InvalidValue("tenant_id", "must not contain '#'")
    return f"{TENANT_PREFIX}{tenant}#"


def _platform_scope() -> str:
    return _scope(PLATFORM_SCOPE)


def _cleanup_sk(kind: str, scope: str, identifier: str) -> str:
    """A cleanup marker's sort key: what to finish (a project, agent or session) and where."""
    return f"{kind}#{scope}{identifier}"


def _parse_cleanup_sk(sk: str) -> tuple[str, str, str]:
    """(kind, scope, identifier) of a cleanup marker."""
    kind, rest = sk.split("#", 1)
    tenant, identifier = rest[len(TENANT_PREFIX):].split("#", 1)
    return kind, f"{TENANT_PREFIX}{tenant}#", identifier


def _project_status_keys(scope: str, status: str, user_id: str) -> Item:
    """A project's index keys that follow its status (its latest build's)."""
    return {"gsi2pk": _s(f"{scope}PROJECTS#status#{status}"),
            "gsi4pk": _s(f"{scope}PROJECTS#status_user#{status}#{user_id}")}
