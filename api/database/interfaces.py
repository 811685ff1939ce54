"""The storage interface, one abstract class per domain; `api.database.store.Store` composes
them into the one object the app holds, and each backend implements a domain per module.

A service or the engine names the domains it uses (the statistics service needs only
`StatisticsStore`), so that what a caller may touch is visible in its signature. Every method
takes keyword arguments only. Conditional updates return False instead of raising when their
condition does not hold, so the caller learns that another actor (a control action, another
instance) got there first.

Tenants: every record of a project, build, artifact, agent, invocation, session and message
carries the `tenant_id` it was written for, and every method takes `tenant_id` and reads,
lists, counts and deletes within it only, through keys and indexes that lead with it: a record
of another tenant is exactly as absent as one that does not exist. Writes store each record
under the `tenant_id` argument, which the record read back carries. Two kinds of method span tenants:
the engine's lease methods (`list_claimable_builds`, `renew_leases`: one engine serves every
tenant, and the builds they return carry their `tenant_id`), and the statistics reads with
`tenant_id=None`, the platform-wide totals operators see. Idempotency keys are a tenant's
too: the same key of two tenants names two unrelated requests; so are the rate limits'
counters and slots. API keys are looked up by their id alone (the key names its tenant;
nothing is known of the caller before), and listed per tenant or, for the command line,
platform-wide.
"""

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from api.core.records import (
    Agent, Artifact, Build, BuildLogLine, Invocation, Message, Project, Session, StoredRecord)

R = TypeVar("R", bound=StoredRecord)
T = TypeVar("T")
# A partial update: record fields by name, each value a record's own or what validates into it
# (StoredRecord.changed applies it).
Changes = dict[str, Any]


@dataclass
class Page(Generic[T]):
    items: list[T]
    last_key: str | None = None


@dataclass
class Daily:
    """One UTC day of the statistics aggregates."""

    date: str
    counts: dict[str, float] = field(default_factory=dict)
    failed_stages: dict[str, int] = field(default_factory=dict)


class ProjectStore(abc.ABC):
    """Projects, their builds, the builds' stage logs and artifacts."""

    @abc.abstractmethod
    async def create_project(self, *, tenant_id: str, project: Project, build: Build) -> None:
        """Insert a project with its first (queued) build and count the build."""

    @abc.abstractmethod
    async def get_project(self, *, tenant_id: str, project_id: str) -> Project | None: ...

    @abc.abstractmethod
    async def list_projects(
        self, *, tenant_id: str, limit: int, last_key: str | None, status: str | None = None,
        user_id: str | None = None,
    ) -> Page[Project]:
        """Newest first."""

    @abc.abstractmethod
    async def delete_project(self, *, tenant_id: str, project_id: str) -> bool:
        """Delete the project and everything under it. Builds still active count as cancelled."""

    @abc.abstractmethod
    async def add_build(self, *, tenant_id: str, build: Build) -> bool:
        """Queue a new build of an existing project whose latest build is finished.

        False when the project is gone or its latest build is still active."""

    @abc.abstractmethod
    async def get_build(self, *, tenant_id: str, build_id: str) -> Build | None: ...

    @abc.abstractmethod
    async def get_project_with_latest_build(self, *, tenant_id: str, project_id: str) -> tuple[Project, Build] | None:
        """The project and its latest build (None when either is missing): one snapshot where
        the backend has them (SQLite), two reads where it does not (DynamoDB)."""

    @abc.abstractmethod
    async def list_builds(self, *, tenant_id: str, project_id: str, limit: int, last_key: str | None) -> Page[Build]:
        """Newest first."""

    @abc.abstractmethod
    async def update_build(
        self, *, tenant_id: str, build_id: str, changes: Changes, expect_status: tuple[str, ...],
        expect_owner: str | None = None, logs: Sequence[BuildLogLine] = (),
        artifacts: Sequence[Artifact] = (),
    ) -> bool:
        """Apply `changes` to the build (and mirror status, progress and stage on its
        project) if its status is one of `expect_status` (and, given, its owner matches).

        `changes` may carry `usage` (BuildUsage: the model use of the build's stages so far).
        A change to a final status updates the build aggregates in the same transaction,
        the build's usage tokens (as changed, else as stored) included.
        `logs` are appended to the build's stage logs and `artifacts` upserted by
        (project_id, path) with the change: a build step's output and progress are one write.
        Lines are written only when the change is; so are artifacts on SQLite (one
        transaction), while DynamoDB writes them first, so that a step is never recorded
        complete without its output."""

    @abc.abstractmethod
    async def list_build_logs(self, *, tenant_id: str, build_id: str, stage: str) -> list[BuildLogLine]: ...

    @abc.abstractmethod
    async def list_artifacts(self, *, tenant_id: str, project_id: str) -> list[Artifact]:
        """Without content, ordered by path."""

    @abc.abstractmethod
    async def get_artifact(self, *, tenant_id: str, project_id: str, path: str) -> Artifact | None: ...


@dataclass(frozen=True, slots=True)
class LeasedBuild:
    """A build whose lease an engine renewed: enough to see what became of it."""

    tenant_id: str
    build_id: str
    status: str


class LeaseStore(abc.ABC):
    """How engines share builds: claims under a lease that the owner renews."""

    @abc.abstractmethod
    async def list_claimable_builds(self, *, now: str, limit: int) -> list[Build]:
        """Builds an engine may take: unowned in CLAIMABLE_UNOWNED_STATUSES, or active and
        owned under an expired lease; oldest first."""

    @abc.abstractmethod
    async def claim_build(self, *, tenant_id: str, build_id: str, owner: str, lease_until: str, now: str) -> bool:
        """Take a claimable build. Queued builds become running; others keep their status."""

    @abc.abstractmethod
    async def renew_leases(self, *, owner: str, lease_until: str) -> list[LeasedBuild]:
        """Extend the lease of every active build this owner holds; returns those builds
        (the owner learns about control actions sent to other instances from them)."""

    @abc.abstractmethod
    async def list_held_build_ids(self, *, owner: str) -> list[str]:
        """The ids of the builds `owner` holds now, read without writing anything: how an
        engine learns, between renewals, that a build it runs was stopped or deleted through
        another process (a build worker, another instance)."""


class AgentStore(abc.ABC):
    """Agents and their invocations."""

    @abc.abstractmethod
    async def put_agent(self, *, tenant_id: str, agent: Agent, expect_owner: str | None = None) -> bool:
        """Register or re-register (a rebuilt project) an agent, keeping its runtime stats.

        With `expect_owner`, only while the agent's build (`agent.build_id`) is still held
        (HELD_BUILD_STATUSES) by that owner: a build stopped or deleted meanwhile (perhaps
        through another instance) registers nothing. False when nothing was registered."""

    @abc.abstractmethod
    async def get_agent(self, *, tenant_id: str, agent_id: str) -> Agent | None: ...

    @abc.abstractmethod
    async def list_agents(
        self, *, tenant_id: str, limit: int, last_key: str | None, project_id: str | None = None,
        status: str | None = None, category: str | None = None,
        capabilities: list[str] | None = None,
    ) -> Page[Agent]:
        """Newest first; `capabilities` matches agents having any of them."""

    @abc.abstractmethod
    async def update_agent(self, *, tenant_id: str, agent_id: str, changes: Changes) -> Agent | None:
        """Returns the updated agent, None when it does not exist."""

    @abc.abstractmethod
    async def delete_agent(self, *, tenant_id: str, agent_id: str) -> bool: ...

    @abc.abstractmethod
    async def record_invocation(self, *, tenant_id: str, invocation: Invocation, messages: list[Message]) -> None:
        """Store an invocation (and, for a session turn, its messages), counting it in the
        agent's runtime stats, the daily and overall aggregates, and the session.

        What it adds to the agent and the aggregates is `invocation_deltas`."""

    @abc.abstractmethod
    async def list_invocations(self, *, tenant_id: str, agent_id: str, limit: int, last_key: str | None) -> Page[Invocation]: ...


class SessionStore(abc.ABC):
    """Sessions and their messages."""

    @abc.abstractmethod
    async def create_session(self, *, tenant_id: str, session: Session) -> bool:
        """False when the agent does not exist."""

    @abc.abstractmethod
    async def get_session(self, *, tenant_id: str, session_id: str) -> Session | None: ...

    @abc.abstractmethod
    async def list_sessions(self, *, tenant_id: str, agent_id: str, limit: int, last_key: str | None) -> Page[Session]:
        """Most recently active first."""

    @abc.abstractmethod
    async def list_messages(self, *, tenant_id: str, session_id: str, limit: int, last_key: str | None) -> Page[Message]:
        """Oldest first."""

    @abc.abstractmethod
    async def recent_messages(self, *, tenant_id: str, session_id: str, limit: int) -> list[Message]:
        """The last `limit` messages, oldest first (the history an invocation sees)."""

    @abc.abstractmethod
    async def delete_session(self, *, tenant_id: str, session_id: str) -> bool: ...


class StatisticsStore(abc.ABC):
    """The aggregates behind the statistics, kept exact by the writes that count."""

    @abc.abstractmethod
    async def get_counters(self, *, tenant_id: str | None) -> dict[str, float]:
        """Every name in COUNTER_NAMES."""

    @abc.abstractmethod
    async def get_daily(self, *, tenant_id: str | None, start: str, end: str) -> list[Daily]:
        """Days from start to end inclusive (ISO dates) that have any aggregate."""

    @abc.abstractmethod
    async def add_api_calls(self, *, tenant_id: str, counts: dict[str, int]) -> None:
        """Add HTTP request counts per ISO date."""



@dataclass(frozen=True)
class IdempotentAnswer:
    """The response to a request made with an idempotency key, kept to answer its retries."""

    status: int
    content_type: str
    body: bytes


@dataclass(frozen=True)
class IdempotencyKeyState:
    """A key another request holds: what that request was (`fingerprint`), and its answer,
    or None while it is still being answered."""

    fingerprint: str
    answer: IdempotentAnswer | None


class IdempotencyStore(abc.ABC):
    """Idempotency keys (`Idempotency-Key`): a claim per key, then the answer to replay."""

    @abc.abstractmethod
    async def claim_idempotency_key(
        self, *, tenant_id: str, key: str, fingerprint: str, claim_id: str, now: str,
        expires_at: str, stale_before: str,
    ) -> IdempotencyKeyState | None:
        """Claim `key` for a request, atomically: None when this call holds it now (the key
        was unused, expired at `now`, or claimed before `stale_before` and never answered: the
        process answering it is taken to have died); otherwise the state of the key."""

    @abc.abstractmethod
    async def keep_idempotent_answer(self, *, tenant_id: str, key: str, claim_id: str,
                                     answer: IdempotentAnswer) -> bool:
        """Store the answer of claim `claim_id`; False when the claim is no longer held.
        Raises RecordTooLarge for an answer over MAX_RECORD_BYTES."""

    @abc.abstractmethod
    async def release_idempotency_key(self, *, tenant_id: str, key: str, claim_id: str) -> None:
        """Drop claim `claim_id` if it is still held and unanswered, so a retry runs anew."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key as stored: never its secret, only the secret's SHA-256 (`secret_hash`).

    `tenant_id` is None for an `operator` key, which no tenant owns. Timestamps as every
    record's; `expires_at` None never expires, `revoked_at` None is not revoked."""

    key_id: str
    tenant_id: str | None
    role: str
    name: str | None
    secret_hash: str
    created_at: str
    expires_at: str | None = None
    revoked_at: str | None = None


class KeyStore(abc.ABC):
    """API keys (access control)."""

    @abc.abstractmethod
    async def put_api_key(self, *, key: ApiKey) -> None:
        """Store a new key (its id is new: ids are random)."""

    @abc.abstractmethod
    async def get_api_key(self, *, key_id: str) -> ApiKey | None:
        """The key with this id, whichever tenant's (a caller is known only once it is read)."""

    @abc.abstractmethod
    async def list_api_keys(self, *, tenant_id: str | None) -> list[ApiKey]:
        """A tenant's keys, or with None every key (operators' too), oldest first."""

    @abc.abstractmethod
    async def revoke_api_key(self, *, key_id: str, tenant_id: str | None, revoked_at: str) -> ApiKey | None:
        """Mark the key revoked (once: a revoked key keeps its first `revoked_at`); None when
        there is no such key (of `tenant_id`, unless None)."""


class LimitStore(abc.ABC):
    """What the rate limits and quotas of every process share (api.services.limits): counters
    (a window's requests, builds or tokens: the window is part of the counter's name) and
    slots (invocations in flight). Both expire at `expires_at` (epoch seconds), so that a
    process that died holding them frees them in time; expired rows go with later writes."""

    @abc.abstractmethod
    async def take_allowance(self, *, tenant_id: str, counter: str, amount: int,
                             limit: int | None, now: float, expires_at: float) -> tuple[int, int]:
        """Add to the counter (new: 0) as much of `amount` as keeps it at most `limit`,
        atomically: (the amount added, the counter's total after). With `limit` None all of
        `amount` is added (negative: given back), and `amount` 0 reads the total."""

    @abc.abstractmethod
    async def acquire_slot(self, *, tenant_id: str, pool: str, slot_id: str, limit: int,
                           now: float, expires_at: float) -> bool:
        """Hold slot `slot_id` of `pool` until released or `expires_at`, if fewer than
        `limit` unexpired slots are held, atomically; False when the pool is full."""

    @abc.abstractmethod
    async def release_slot(self, *, tenant_id: str, pool: str, slot_id: str) -> None: ...
