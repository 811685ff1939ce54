"""The Store contract: what every storage backend must do, run against each one in BACKENDS.

Nothing here knows which backend it talks to. Timestamps are given by the caller (the store
never reads the clock), so the tests pin them to fixed days and check the daily aggregates
exactly.
"""

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from api.core import ids
from api.core.records import (
    Agent, Artifact, Build, BuildError, BuildLogLine, BuildUsage, Invocation, Message, Project,
    Session, StoredRecord)
from api.core.store_errors import InvalidCursor, RecordTooLarge
from api.database.store import (
    ACTIVE_BUILD_STATUSES,
    COUNTER_NAMES,
    FINAL_BUILD_STATUSES,
    PROJECT_STATUS_FOR_BUILD,
    Page,
    Store,
)
from api.engine.stages import initial_stages

# Not the default tenant, so that nothing here passes by reading the default's records; the
# two-tenant tests (test_store_tenants.py) add a second.
TENANT = "acme"
BASE = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)
DAY0, DAY1, DAY2, DAY3 = ("2024-03-01", "2024-03-02", "2024-03-03", "2024-03-04")
AGENT_STATS = {"total_invocations": 0, "successful_invocations": 0, "failed_invocations": 0,
               "cancelled_invocations": 0, "total_duration_ms": 0, "total_input_tokens": 0,
               "total_output_tokens": 0, "ttft_ms_total": 0, "ttft_count": 0,
               "last_invoked_at": None}


def ts(seconds: float = 0.0, *, day: int = 0) -> str:
    """A timestamp `seconds` after 08:00 UTC on DAY0 + `day` days."""
    return (BASE + timedelta(days=day, seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- records ---------------------------------------------------------------------------------
def new_build(project_id: str, *, created_at: str, tenant_id: str = TENANT) -> Build:
    return Build(
        tenant_id=tenant_id, build_id=ids.build_id(), project_id=project_id, status="queued",
        progress=0.0, current_stage=None, stages=initial_stages(), context={}, error=None,
        request_id="req-contract", owner=None, lease_until=None, created_at=created_at,
        started_at=None, finished_at=None, updated_at=created_at)


async def add_project(store: Store, *, created_at: str | None = None, user_id: str = "alice",
                      tenant_id: str = TENANT) -> tuple[Project, Build]:
    created_at = created_at or ts()
    project_id = ids.project_id()
    build = new_build(project_id, created_at=created_at, tenant_id=tenant_id)
    project = Project(
        tenant_id=tenant_id, project_id=project_id, user_id=user_id,
        project_name=f"project {project_id}",
        requirement="Build an agent that triages support tickets", priority=3,
        tags=["contract", user_id], status="pending", progress=0.0, current_stage=None,
        latest_build_id=build.build_id, created_at=created_at, updated_at=created_at)
    await store.create_project(tenant_id=tenant_id, project=project, build=build)
    return project, build


def finished(status: str, *, at: str, duration: float = 60.0,
             error: BuildError | None = None) -> dict[str, Any]:
    """The changes the engine (or a stop) writes when a build reaches a final status."""
    return {"status": status, "finished_at": at, "updated_at": at,
            "duration_seconds": duration if status == "succeeded" else None, "error": error,
            "progress": 100.0 if status == "succeeded" else 40.0, "current_stage": None,
            "owner": None, "lease_until": None}


async def finish(store: Store, build: Build, status: str = "succeeded", *, at: str | None = None,
                 duration: float = 60.0, error: BuildError | None = None) -> None:
    assert await store.update_build(tenant_id=build.tenant_id, build_id=build.build_id,
                                    changes=finished(status, at=at or ts(60), duration=duration,
                                                     error=error),
                                    expect_status=ACTIVE_BUILD_STATUSES)


def log_line(stage: str, message: str, *, at: str) -> BuildLogLine:
    return BuildLogLine(stage=stage, timestamp=at, level="INFO", message=message)


def new_artifact(build: Build, path: str, content: str, *, stage: str, at: str) -> Artifact:
    return Artifact(tenant_id=build.tenant_id, project_id=build.project_id, path=path,
                    build_id=build.build_id, stage=stage, content=content,
                    size=len(content.encode()), created_at=at)


def new_agent(project_id: str, *, name: str = "triage_agent", created_at: str | None = None,
              status: str = "running", category: str = "customer_support",
              capabilities: list[str] | None = None, tenant_id: str = TENANT) -> Agent:
    """A new agent: its runtime stats are the model's defaults, all zero (AGENT_STATS)."""
    now = created_at or ts(100)
    return Agent(
        tenant_id=tenant_id, agent_id=f"{project_id}:{name}", project_id=project_id,
        agent_name=name, description=f"Agent {name}", category=category,
        capabilities=capabilities if capabilities is not None else ["ticket_triage"],
        tools=[{"name": "lookup_order", "description": "Fetch an order",
                "parameters": [{"name": "order_id", "type": "str", "required": True}]}],
        system_prompt=f"You are {name}.", status=status, error_message=None,
        build_id=ids.build_id(), created_at=now, updated_at=now)


async def registered_agent(store: Store, *, tenant_id: str = TENANT, **fields: Any) -> Agent:
    project, _ = await add_project(store, tenant_id=tenant_id)
    agent = new_agent(project.project_id, tenant_id=tenant_id, **fields)
    await store.put_agent(tenant_id=tenant_id, agent=agent)
    return agent


def new_invocation(agent: Agent, *, created_at: str, status: str = "success",
                   duration_ms: float = 10.0, session_id: str | None = None,
                   tokens: tuple[int, int] = (0, 0), ttft_ms: float | None = None) -> Invocation:
    return Invocation(
        tenant_id=agent.tenant_id, invocation_id=ids.invocation_id(), agent_id=agent.agent_id,
        project_id=agent.project_id, session_id=session_id,
        input_text=f"question at {created_at}",
        output="answer" if status == "success" else None, status=status,
        error=None if status == "success" else "provider failed", duration_ms=duration_ms,
        trace=[{"step": "respond"}], created_at=created_at,
        model="offline" if any(tokens) else None, input_tokens=tokens[0],
        output_tokens=tokens[1], tokens_estimated=False, time_to_first_token_ms=ttft_ms,
        finish_reason="stop" if status == "success" else None)


def new_session(agent: Agent, *, at: str) -> Session:
    return Session(tenant_id=agent.tenant_id, session_id=ids.session_id(),
                   agent_id=agent.agent_id, display_name="chat", metadata={"channel": "web"},
                   message_count=0, created_at=at, last_active_at=at)


def turn(invocation: Invocation, *, at: str) -> list[Message]:
    """The user and assistant messages of one session turn (unnumbered: the store numbers them)."""
    assert invocation.session_id is not None
    return [
        Message(tenant_id=invocation.tenant_id, message_id=ids.message_id(),
                session_id=invocation.session_id, role="user", content=invocation.input_text,
                invocation_id=invocation.invocation_id, created_at=at),
        Message(tenant_id=invocation.tenant_id, message_id=ids.message_id(),
                session_id=invocation.session_id, role="assistant",
                content=f"reply to {invocation.input_text}",
                invocation_id=invocation.invocation_id, created_at=at),
    ]


async def session_turn(store: Store, agent: Agent, session: Session, *, at: str) -> list[Message]:
    invocation = new_invocation(agent, created_at=at, session_id=session.session_id)
    messages = turn(invocation, at=at)
    await store.record_invocation(tenant_id=agent.tenant_id, invocation=invocation,
                                  messages=messages)
    return messages


# -- checks ----------------------------------------------------------------------------------
def pick(record: StoredRecord, names: Iterable[str]) -> dict[str, Any]:
    """Some of a record's fields by name."""
    return {name: getattr(record, name) for name in names}


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The counters that changed, by how much."""
    assert set(after) == set(COUNTER_NAMES)
    return {name: after[name] - before[name] for name in COUNTER_NAMES if after[name] != before[name]}


async def day_counts(store: Store, date: str, tenant_id: str | None = TENANT) -> dict[str, float]:
    days = await store.get_daily(tenant_id=tenant_id, start=date, end=date)
    assert len(days) <= 1
    return {name: value for name, value in days[0].counts.items() if value} if days else {}


async def walk(list_page: Callable[[str | None], Awaitable[Page[Any]]], *, limit: int) -> list[Any]:
    """Every item of a paginated listing; checks that no page is short while more follow."""
    items: list[Any] = []
    last_key: str | None = None
    for _ in range(1000):
        page = await list_page(last_key)
        assert len(page.items) <= limit
        if page.last_key is None:
            assert page.items or not items, "an empty last page after a full one"
            return items + page.items
        assert len(page.items) == limit, "a short page while more items follow"
        items += page.items
        last_key = page.last_key
    raise AssertionError("pagination did not end")


def assert_newest_first(items: list[Any], key: str = "created_at") -> None:
    values = [getattr(item, key) for item in items]
    assert values == sorted(values, reverse=True)


def id_list(items: list[Any], key: str) -> list[str]:
    values = [getattr(item, key) for item in items]
    assert len(values) == len(set(values)), "duplicates across pages"
    return values


def cursor_of(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


# -- lifecycle -------------------------------------------------------------------------------
async def test_a_new_store_answers_ping_and_holds_nothing(store: Store) -> None:
    await store.ping()
    assert await store.get_counters(tenant_id=TENANT) == {name: 0 for name in COUNTER_NAMES}
    assert await store.get_daily(tenant_id=TENANT, start="2000-01-01", end="2100-12-31") == []
    for page in (await store.list_projects(tenant_id=TENANT, limit=5, last_key=None),
                 await store.list_agents(tenant_id=TENANT, limit=5, last_key=None)):
        assert (page.items, page.last_key) == ([], None)


async def test_a_second_instance_on_the_same_data_sees_what_the_first_wrote(
        store: Store, make_store: Callable[[], Store]) -> None:
    project, build = await add_project(store)
    other = make_store()
    await other.open()
    try:
        assert await other.get_project(tenant_id=TENANT, project_id=project.project_id) == project
        assert (await other.get_build(tenant_id=TENANT, build_id=build.build_id)).status == "queued"
        assert (await other.get_counters(tenant_id=TENANT))["builds_total"] == 1
    finally:
        await other.close()


# -- projects --------------------------------------------------------------------------------
async def test_create_project_stores_the_project_with_its_queued_build_and_counts_it(
        store: Store) -> None:
    before = await store.get_counters(tenant_id=TENANT)
    project, build = await add_project(store, created_at=ts(5))

    assert await store.get_project(tenant_id=TENANT, project_id=project.project_id) == project
    stored = await store.get_build(tenant_id=TENANT, build_id=build.build_id)
    assert stored == build
    assert stored.recoveries == 0 and stored.duration_seconds is None
    assert delta(before, await store.get_counters(tenant_id=TENANT)) == {"builds_total": 1, "builds_active": 1}
    assert await day_counts(store, DAY0) == {"builds_total": 1}
    assert await store.get_project(tenant_id=TENANT, project_id="proj_000000000000") is None
    assert await store.get_build(tenant_id=TENANT, build_id="build_000000000000") is None


async def test_list_projects_pages_newest_first_with_and_without_filters(store: Store) -> None:
    users = ("alice", "bob", "carol")
    builds = []
    for n in range(26):
        # Pairs share a timestamp: ties on the sort key are where keyset pages go wrong.
        _, build = await add_project(store, created_at=ts(n // 2), user_id=users[n % 3])
        builds.append(build)
    for n, build in enumerate(builds):
        if n % 4 == 1:
            await finish(store, build, "succeeded")
        elif n % 4 == 2:
            assert await store.claim_build(tenant_id=TENANT, build_id=build.build_id, owner="engine_a",
                                           lease_until=ts(600), now=ts(30))
        elif n % 8 == 3:
            await finish(store, build, "cancelled")
    everything = [await store.get_project(tenant_id=TENANT, project_id=b.project_id) for b in builds]
    assert {p.status for p in everything} == {"pending", "completed", "building", "stopped"}

    for status in (None, "pending", "completed", "building", "stopped", "failed"):
        for user_id in (None, *users):
            expected = {p.project_id: p for p in everything
                        if status in (None, p.status) and user_id in (None, p.user_id)}
            items = await walk(lambda key, status=status, user_id=user_id: store.list_projects(tenant_id=TENANT,
                limit=4, last_key=key, status=status, user_id=user_id), limit=4)
            assert set(id_list(items, "project_id")) == set(expected), (status, user_id)
            assert_newest_first(items)
            assert all(item == expected[item.project_id] for item in items)


LISTINGS: dict[str, Callable[[Store, str], Awaitable[Page]]] = {
    "projects": lambda store, key: store.list_projects(tenant_id=TENANT, limit=5, last_key=key),
    "projects by status": lambda store, key: store.list_projects(tenant_id=TENANT, limit=5, last_key=key,
                                                                 status="pending"),
    "agents": lambda store, key: store.list_agents(tenant_id=TENANT, limit=5, last_key=key),
    "agents by capability": lambda store, key: store.list_agents(tenant_id=TENANT, limit=5, last_key=key,
                                                                 capabilities=["x"]),
    "builds": lambda store, key: store.list_builds(tenant_id=TENANT, project_id="proj_000000000000", limit=5,
                                                   last_key=key),
    "invocations": lambda store, key: store.list_invocations(tenant_id=TENANT, agent_id="a:b", limit=5, last_key=key),
    "sessions": lambda store, key: store.list_sessions(tenant_id=TENANT, agent_id="a:b", limit=5, last_key=key),
    "messages": lambda store, key: store.list_messages(tenant_id=TENANT, session_id="sess_0000000000000000",
                                                       limit=5, last_key=key),
}


@pytest.mark.parametrize("listing", sorted(LISTINGS))
async def test_every_listing_refuses_a_cursor_it_did_not_issue(store: Store, listing: str) -> None:
    with pytest.raises(InvalidCursor):
        await LISTINGS[listing](store, "not-a-cursor")


@pytest.mark.parametrize("last_key", [
    pytest.param("%%%", id="not base64"),
    pytest.param(base64.urlsafe_b64encode(b"\xff\xfe garbage").decode(), id="not json"),
    pytest.param(cursor_of({"created_at": "2024-03-01"}), id="json object"),
    pytest.param(cursor_of(["2024-03-01T08:00:00.000000Z"]), id="too few values"),
    pytest.param(cursor_of([["2024"], {"id": 1}]), id="nested values"),
    pytest.param(cursor_of([10 ** 30, "proj_000000000000"]), id="number out of range"),
])
async def test_list_projects_refuses_garbage_cursors(store: Store, last_key: str) -> None:
    await add_project(store)
    with pytest.raises(InvalidCursor):
        await store.list_projects(tenant_id=TENANT, limit=5, last_key=last_key)


async def test_delete_project_removes_everything_under_it(store: Store) -> None:
    project, first = await add_project(store)
    project_id = project.project_id
    await finish(store, first, "succeeded")
    second = new_build(project_id, created_at=ts(120))
    assert await store.add_build(tenant_id=TENANT, build=second)
    assert await store.claim_build(tenant_id=TENANT, build_id=second.build_id, owner="engine_a",
                                   lease_until=ts(600), now=ts(121))
    for build in (first, second):
        assert await store.update_build(tenant_id=TENANT,
            build_id=build.build_id, changes={"updated_at": ts(130)},
            expect_status=("succeeded", "running"),
            logs=[log_line("orchestrator", "started", at=ts(130))],
            artifacts=[new_artifact(build, f"agent/{build.build_id}.py", "x = 1\n",
                                    stage="agent_developer_manager", at=ts(130))])
    agent = new_agent(project_id, capabilities=["cascade_cap"])
    await store.put_agent(tenant_id=TENANT, agent=agent)
    session = new_session(agent, at=ts(200))
    assert await store.create_session(tenant_id=TENANT, session=session)
    await session_turn(store, agent, session, at=ts(210))
    await store.record_invocation(tenant_id=TENANT, invocation=new_invocation(agent, created_at=ts(220)), messages=[])
    # A neighbour with the same capability must survive.
    neighbour = await registered_agent(store, capabilities=["cascade_cap"])
    neighbour_session = new_session(neighbour, at=ts(200))
    assert await store.create_session(tenant_id=TENANT, session=neighbour_session)
    await session_turn(store, neighbour, neighbour_session, at=ts(230))

    before = await store.get_counters(tenant_id=TENANT)
    assert await store.delete_project(tenant_id=TENANT, project_id=project_id) is True

    # The active build counts as cancelled; agent counts describe agents that exist; builds
    # and invocations are history and stay counted.
    assert delta(before, await store.get_counters(tenant_id=TENANT)) == {
        "builds_active": -1, "builds_cancelled": 1, "agents_running": -1}
    assert await store.get_project(tenant_id=TENANT, project_id=project_id) is None
    for build in (first, second):
        assert await store.get_build(tenant_id=TENANT, build_id=build.build_id) is None
        assert await store.list_build_logs(tenant_id=TENANT, build_id=build.build_id, stage="orchestrator") == []
    assert (await store.list_builds(tenant_id=TENANT, project_id=project_id, limit=10, last_key=None)).items == []
    claimable = await store.list_claimable_builds(now=ts(10_000), limit=10)
    assert second.build_id not in {b.build_id for b in claimable}
    assert await store.list_artifacts(tenant_id=TENANT, project_id=project_id) == []
    for build in (first, second):
        assert await store.get_artifact(tenant_id=TENANT, project_id=project_id, path=f"agent/{build.build_id}.py") is None
    assert await store.get_agent(tenant_id=TENANT, agent_id=agent.agent_id) is None
    assert (await store.list_agents(tenant_id=TENANT, limit=10, last_key=None, project_id=project_id)).items == []
    by_capability = await store.list_agents(tenant_id=TENANT, limit=10, last_key=None, capabilities=["cascade_cap"])
    assert [a.agent_id for a in by_capability.items] == [neighbour.agent_id]
    assert (await store.list_invocations(tenant_id=TENANT, agent_id=agent.agent_id, limit=10,
                                         last_key=None)).items == []
    assert await store.get_session(tenant_id=TENANT, session_id=session.session_id) is None
    assert (await store.list_sessions(tenant_id=TENANT, agent_id=agent.agent_id, limit=10,
                                      last_key=None)).items == []
    assert (await store.list_messages(tenant_id=TENANT, session_id=session.session_id, limit=10,
                                      last_key=None)).items == []
    assert await store.recent_messages(tenant_id=TENANT, session_id=session.session_id, limit=10) == []

    assert (await store.get_session(tenant_id=TENANT, session_id=neighbour_session.session_id)).message_count == 2
    assert len((await store.list_invocations(tenant_id=TENANT, agent_id=neighbour.agent_id, limit=10,
                                             last_key=None)).items) == 1

    before = await store.get_counters(tenant_id=TENANT)
    assert await store.delete_project(tenant_id=TENANT, project_id=project_id) is False
    assert await store.get_counters(tenant_id=TENANT) == before


async def test_deleting_a_project_whose_build_finished_cancels_nothing(store: Store) -> None:
    project, build = await add_project(store)
    await finish(store, build, "failed", error=BuildError(stage="agent_design", code="X", message="x"))
    before = await store.get_counters(tenant_id=TENANT)
    assert await store.delete_project(tenant_id=TENANT, project_id=project.project_id)
    assert delta(before, await store.get_counters(tenant_id=TENANT)) == {}


# -- builds ----------------------------------------------------------------------------------
@pytest.mark.parametrize("active_status", ACTIVE_BUILD_STATUSES)
async def test_add_build_is_refused_while_the_latest_build_is_active(
        store: Store, active_status: str) -> None:
    project, build = await add_project(store)
    if active_status != "queued":
        assert await store.update_build(tenant_id=TENANT, build_id=build.build_id,
                                        changes={"status": active_status, "updated_at": ts(1)},
                                        expect_status=("queued",))
    before = await store.get_counters(tenant_id=TENANT)
    again = new_build(project.project_id, created_at=ts(60))

    assert await store.add_build(tenant_id=TENANT, build=again) is False
    assert await store.get_build(tenant_id=TENANT, build_id=again.build_id) is None
    listed = await store.list_builds(tenant_id=TENANT, project_id=project.project_id, limit=10, last_key=None)
    assert [b.build_id for b in listed.items] == [build.build_id]
    stored = await store.get_project(tenant_id=TENANT, project_id=project.project_id)
    assert (stored.latest_build_id, stored.status) == (
        build.build_id, PROJECT_STATUS_FOR_BUILD[active_status])
    assert await store.get_counters(tenant_id=TENANT) == before


async def test_add_build_queues_a_new_build_once_the_latest_is_finished(store: Store) -> None:
    project, first = await add_project(store)
    await finish(store, first, "failed", at=ts(30),
                 error=BuildError(stage="orchestrator", code="PROVIDER_ERROR", message="down"))
    before = await store.get_counters(tenant_id=TENANT)
    second = new_build(project.project_id, created_at=ts(40))

    assert await store.add_build(tenant_id=TENANT, build=second) is True
    stored = await store.get_project(tenant_id=TENANT, project_id=project.project_id)
    assert pick(stored, ("latest_build_id", "status", "progress", "current_stage")) == {
        "latest_build_id": second.build_id, "status": "pending", "progress": 0.0,
        "current_stage": None}
    assert delta(before, await store.get_counters(tenant_id=TENANT)) == {"builds_total": 1, "builds_active": 1}
    assert (await day_counts(store, DAY0))["builds_total"] == 2
    listed = await store.list_builds(tenant_id=TENANT, project_id=project.project_id, limit=10, last_key=None)
    assert [b.build_id for b in listed.items] == [second.build_id, first.build_id]
    assert await store.get_project_with_latest_build(tenant_id=TENANT, project_id=project.project_id) == (
        stored, listed.items[0])
    assert await store.get_project_with_latest_build(tenant_id=TENANT, project_id="proj_000000000000") is None

    assert await store.add_build(tenant_id=TENANT, build=new_build(project.project_id, created_at=ts(50))) is False
    assert await store.add_build(tenant_id=TENANT, build=new_build("proj_000000000000", created_at=ts(50))) is False
    assert (await store.get_counters(tenant_id=TENANT))["builds_total"] == before["builds_total"] + 1


async def test_list_builds_pages_the_history_newest_first(store: Store) -> None:
    project, build = await add_project(store)
    history = [build]
    for n in range(1, 8):
        await finish(store, history[-1], "succeeded", at=ts(10 * n - 1))
        history.append(new_build(project.project_id, created_at=ts(10 * n)))
        assert await store.add_build(tenant_id=TENANT, build=history[-1])
    _, other = await add_project(store)

    items = await walk(lambda key: store.list_builds(tenant_id=TENANT, project_id=project.project_id, limit=3,
                                                     last_key=key), limit=3)
    assert id_list(items, "build_id") == [b.build_id for b in reversed(history)]
    assert other.build_id not in id_list(items, "build_id")


async def test_claimable_builds_are_the_queued_and_the_abandoned_oldest_first(store: Store) -> None:
    builds = [(await add_project(store, created_at=ts(n)))[1] for n in range(8)]
    live, expired, expired_paused, released_paused, done = builds[3:]
    assert await store.claim_build(tenant_id=TENANT, build_id=live.build_id, owner="engine_a",
                                   lease_until=ts(100), now=ts(10))
    for build in (expired, expired_paused):
        assert await store.claim_build(tenant_id=TENANT, build_id=build.build_id, owner="engine_a",
                                       lease_until=ts(20), now=ts(10))
    assert await store.update_build(tenant_id=TENANT, build_id=expired_paused.build_id,
                                    changes={"status": "paused", "updated_at": ts(11)},
                                    expect_status=("running",))
    assert await store.claim_build(tenant_id=TENANT, build_id=released_paused.build_id, owner="engine_a",
                                   lease_until=ts(20), now=ts(10))
    assert await store.update_build(tenant_id=TENANT, build_id=released_paused.build_id,
                                    changes={"status": "paused", "owner": None, "lease_until": None,
                                             "updated_at": ts(11)},
                                    expect_status=("running",))
    await finish(store, done, "succeeded")

    claimable = await store.list_claimable_builds(now=ts(50), limit=10)
    assert [b.build_id for b in claimable] == [
        b.build_id for b in (*builds[:3], expired, expired_paused)]
    first_two = await store.list_claimable_builds(now=ts(50), limit=2)
    assert [b.build_id for b in first_two] == [b.build_id for b in builds[:2]]
    # Before the leases run out only the queued builds are free.
    early = await store.list_claimable_builds(now=ts(15), limit=10)
    assert [b.build_id for b in early] == [b.build_id for b in builds[:3]]


async def test_claim_takes_a_queued_build_and_a_live_lease_keeps_others_out(store: Store) -> None:
    project, build = await add_project(store)
    build_id = build.build_id

    assert await store.claim_build(tenant_id=TENANT, build_id=build_id, owner="engine_a", lease_until=ts(30),
                                   now=ts(10)) is True
    stored = await store.get_build(tenant_id=TENANT, build_id=build_id)
    assert pick(stored, ("status", "owner", "lease_until", "started_at",
                                         "recoveries")) == {
        "status": "running", "owner": "engine_a", "lease_until": ts(30), "started_at": ts(10),
        "recoveries": 0}
    assert (await store.get_project(tenant_id=TENANT, project_id=project.project_id)).status == "building"

    assert await store.claim_build(tenant_id=TENANT, build_id=build_id, owner="engine_b", lease_until=ts(40),
                                   now=ts(20)) is False
    assert (await store.get_build(tenant_id=TENANT, build_id=build_id)).owner == "engine_a"
    assert await store.claim_build(tenant_id=TENANT, build_id="build_000000000000", owner="engine_b",
                                   lease_until=ts(40), now=ts(20)) is False

    # The lease ran out: the owner is presumed dead and its build is taken over.
    assert await store.claim_build(tenant_id=TENANT, build_id=build_id, owner="engine_b", lease_until=ts(60),
                                   now=ts(31)) is True
    stored = await store.get_build(tenant_id=TENANT, build_id=build_id)
    assert pick(stored, ("status", "owner", "lease_until", "started_at",
                                         "recoveries")) == {
        "status": "running", "owner": "engine_b", "lease_until": ts(60), "started_at": ts(10),
        "recoveries": 1}


async def test_a_paused_build_taken_over_stays_paused(store: Store) -> None:
    project, build = await add_project(store)
    assert await store.claim_build(tenant_id=TENANT, build_id=build.build_id, owner="engine_a",
                                   lease_until=ts(30), now=ts(10))
    assert await store.update_build(tenant_id=TENANT, build_id=build.build_id,
                                    changes={"status": "paused", "updated_at": ts(12)},
                                    expect_status=("running",), expect_owner="engine_a")

    assert await store.claim_build(tenant_id=TENANT, build_id=build.build_id, owner="engine_b",
                                   lease_until=ts(90), now=ts(31))
    stored = await store.get_build(tenant_id=TENANT, build_id=build.build_id)
    assert (stored.status, stored.owner, stored.recoveries) == ("paused", "engine_b", 1)
    assert (await store.get_project(tenant_id=TENANT, project_id=project.project_id)).status == "paused"


async def test_a_pausing_build_is_held_until_settled_and_claimable_when_handed_back(
        store: Store) -> None:
    project, build = await add_project(store)
    build_id = build.build_id
    assert await store.claim_build(tenant_id=TENANT, build_id=build_id, owner="engine_a", lease_until=ts(30), now=ts(10))
    assert await store.update_build(tenant_id=TENANT, build_id=build_id, changes={"status": "pausing", "updated_at": ts(11)},
                                    expect_status=("running",))
    assert (await store.get_project(tenant_id=TENANT, project_id=project.project_id)).status == "pausing"
    # Held: its owner still saves the step in progress, renews and may register the agent.
    assert await store.update_build(tenant_id=TENANT, build_id=build_id, changes={"progress": 20.0, "updated_at": ts(12)},
                                    expect_status=("running", "pausing"), expect_owner="engine_a")
    assert [b.build_id for b in await store.renew_leases(owner="engine_a", lease_until=ts(40))] == [build_id]
    held_agent = new_agent(project.project_id).model_copy(update={"build_id": build_id})
    assert await store.put_agent(tenant_id=TENANT, agent=held_agent, expect_owner="engine_a")
    assert await store.list_claimable_builds(now=ts(20), limit=10) == []

    # Handed back unowned (a shutdown mid-step): another engine claims it to settle it.
    assert await store.update_build(tenant_id=TENANT, build_id=build_id, changes={"owner": None, "lease_until": None},
                                    expect_status=("pausing",), expect_owner="engine_a")
    assert [b.build_id for b in await store.list_claimable_builds(now=ts(20), limit=10)] == [build_id]
    assert await store.claim_build(tenant_id=TENANT, build_id=build_id, owner="engine_b", lease_until=ts(60), now=ts(21))
    stored = await store.get_build(tenant_id=TENANT, build_id=build_id)
    assert (stored.status, stored.owner, stored.recoveries) == ("pausing", "engine_b", 0)
    assert await store.update_build(tenant_id=TENANT, build_id=build_id, expect_status=("pausing",), expect_owner="engine_b",
                                    changes={"status": "paused", "owner": None, "lease_until": None})
    assert (await store.get_project(tenant_id=TENANT, project_id=project.project_id)).status == "paused"
    assert await store.list_claimable_builds(now=ts(90), limit=10) == []


async def test_recoveries_count_only_takeovers_of_an_expired_lease(store: Store) -> None:
    _, build = await add_project(store)
    build_id = build.build_id
    assert await store.claim_build(tenant_id=TENANT, build_id=build_id, owner="engine_a", lease_until=ts(30),
                                   now=ts(10))
    # Paused at a boundary: the engine releases its claim; a resume makes it claimable again.
    assert await store.update_build(tenant_id=TENANT, build_id=build_id, changes={"status": "paused", "updated_at": ts(11)},
                                    expect_status=("running",))
    assert await store.update_build(tenant_id=TENANT, build_id=build_id,
                                    changes={"owner": None, "lease_until": None, "updated_at": ts(12)},
                                    expect_status=("paused",), expect_owner="engine_a")
    assert await store.list_claimable_builds(now=ts(13), limit=5) == []
    assert await store.update_build(tenant_id=TENANT, build_id=build_id, changes={"status": "running", "updated_at": ts(14)},
                                    expect_status=("paused",))
    assert await store.claim_build(tenant_id=TENANT, build_id=build_id, owner="engine_b", lease_until=ts(40), now=ts(15))
    assert (await store.get_build(tenant_id=TENANT, build_id=build_id)).recoveries == 0

    assert await store.claim_build(tenant_id=TENANT, build_id=build_id, owner="engine_c", lease_until=ts(80), now=ts(41))
    assert await store.claim_build(tenant_id=TENANT, build_id=build_id, owner="engine_d", lease_until=ts(99), now=ts(81))
    assert (await store.get_build(tenant_id=TENANT, build_id=build_id)).recoveries == 2


async def test_renew_leases_extends_only_the_owners_active_builds(store: Store) -> None:
    builds = [(await add_project(store, created_at=ts(n)))[1] for n in range(3)]
    running, paused, foreign = builds
    for build, owner in ((running, "engine_a"), (paused, "engine_a"), (foreign, "engine_b")):
        assert await store.claim_build(tenant_id=TENANT, build_id=build.build_id, owner=owner,
                                       lease_until=ts(30), now=ts(10))
    assert await store.update_build(tenant_id=TENANT, build_id=paused.build_id,
                                    changes={"status": "paused", "updated_at": ts(11)},
                                    expect_status=("running",))

    renewed = await store.renew_leases(owner="engine_a", lease_until=ts(90))
    assert {(b.build_id, b.status) for b in renewed} == {
        (running.build_id, "running"), (paused.build_id, "paused")}
    for build in (running, paused):
        assert (await store.get_build(tenant_id=TENANT, build_id=build.build_id)).lease_until == ts(90)
    assert (await store.get_build(tenant_id=TENANT, build_id=foreign.build_id)).lease_until == ts(30)

    # Stopped elsewhere (a control action on another instance): the owner learns by its absence.
    assert await store.update_build(tenant_id=TENANT, build_id=running.build_id,
                                    changes=finished("cancelled", at=ts(40)),
                                    expect_status=ACTIVE_BUILD_STATUSES)
    renewed = await store.renew_leases(owner="engine_a", lease_until=ts(120))
    assert [b.build_id for b in renewed] == [paused.build_id]


async def test_held_build_ids_follow_claims_stops_releases_and_deletes_without_writing(
        store: Store) -> None:
    """What an engine's control watch reads between renewals."""
    pairs = [await add_project(store, created_at=ts(n)) for n in range(4)]
    (_, stopped), (_, released), (deleted_project, deleted), (_, foreign) = pairs
    for build, owner in ((stopped, "engine_a"), (released, "engine_a"), (deleted, "engine_a"),
                         (foreign, "engine_b")):
        assert await store.claim_build(tenant_id=TENANT, build_id=build.build_id, owner=owner,
                                       lease_until=ts(30), now=ts(10))
    assert sorted(await store.list_held_build_ids(owner="engine_a")) == sorted(
        b.build_id for b in (stopped, released, deleted))
    # Paused but not yet handed back: still held.
    assert await store.update_build(tenant_id=TENANT, build_id=released.build_id,
                                    changes={"status": "paused", "updated_at": ts(11)},
                                    expect_status=("running",))
    assert released.build_id in await store.list_held_build_ids(owner="engine_a")

    assert await store.update_build(tenant_id=TENANT, build_id=stopped.build_id,
                                    changes=finished("cancelled", at=ts(12)),
                                    expect_status=ACTIVE_BUILD_STATUSES)
    assert await store.update_build(tenant_id=TENANT, build_id=released.build_id,
                                    changes={"owner": None, "lease_until": None},
                                    expect_status=("paused",), expect_owner="engine_a")
    assert await store.delete_project(tenant_id=TENANT, project_id=deleted_project.project_id)
    assert await store.list_held_build_ids(owner="engine_a") == []
    assert await store.list_held_build_ids(owner="engine_b") == [foreign.build_id]
    # A read: the lease it found is as the claim wrote it.
    assert (await store.get_build(tenant_id=TENANT, build_id=foreign.build_id)).lease_until == ts(30)


async def test_update_build_applies_changes_only_when_status_and_owner_match(store: Store) -> None:
    project, build = await add_project(store)
    build_id = build.build_id
    assert await store.claim_build(tenant_id=TENANT, build_id=build_id, owner="engine_a", lease_until=ts(30), now=ts(10))
    before = await store.get_build(tenant_id=TENANT, build_id=build_id)
    counters = await store.get_counters(tenant_id=TENANT)
    changes = {"progress": 17.5, "current_stage": "system_architecture", "updated_at": ts(20)}

    assert await store.update_build(tenant_id=TENANT, build_id=build_id, changes=changes,
                                    expect_status=("queued", "paused")) is False
    assert await store.update_build(tenant_id=TENANT, build_id=build_id, changes=changes, expect_status=("running",),
                                    expect_owner="engine_b") is False
    assert await store.update_build(tenant_id=TENANT, build_id="build_000000000000", changes=changes,
                                    expect_status=ACTIVE_BUILD_STATUSES) is False
    assert await store.get_build(tenant_id=TENANT, build_id=build_id) == before

    assert await store.update_build(tenant_id=TENANT, build_id=build_id, changes=changes, expect_status=("running",),
                                    expect_owner="engine_a") is True
    stored = await store.get_build(tenant_id=TENANT, build_id=build_id)
    assert pick(stored, changes) == changes
    assert stored.owner == "engine_a"
    mirrored = await store.get_project(tenant_id=TENANT, project_id=project.project_id)
    assert pick(mirrored, ("status", "progress", "current_stage")) == {
        "status": "building", "progress": 17.5, "current_stage": "system_architecture"}
    # Without expect_owner any owner will do.
    assert await store.update_build(tenant_id=TENANT, build_id=build_id, changes={"progress": 20.0},
                                    expect_status=("running",)) is True
    assert (await store.get_project(tenant_id=TENANT, project_id=project.project_id)).progress == 20.0
    assert await store.get_counters(tenant_id=TENANT) == counters


@pytest.mark.parametrize(("status", "counted", "finish_day"), [
    ("succeeded", {"builds_active": -1, "builds_succeeded": 1, "build_seconds_succeeded": 90},
     {"builds_succeeded": 1, "build_seconds_succeeded": 90}),
    ("failed", {"builds_active": -1, "builds_failed": 1}, {"builds_failed": 1}),
    ("cancelled", {"builds_active": -1, "builds_cancelled": 1}, {}),
])
async def test_a_final_status_is_counted_once_on_the_day_it_finished(
        store: Store, status: str, counted: dict[str, float], finish_day: dict[str, float]) -> None:
    project, build = await add_project(store, created_at=ts(0))
    assert await store.claim_build(tenant_id=TENANT, build_id=build.build_id, owner="engine_a",
                                   lease_until=ts(30), now=ts(10))
    before = await store.get_counters(tenant_id=TENANT)
    error = BuildError(stage="agent_design", code="PROVIDER_ERROR", message="boom") \
        if status == "failed" else None

    assert await store.update_build(tenant_id=TENANT, build_id=build.build_id,
                                    changes=finished(status, at=ts(100, day=1), duration=90.0,
                                                     error=error),
                                    expect_status=ACTIVE_BUILD_STATUSES, expect_owner="engine_a")
    assert delta(before, await store.get_counters(tenant_id=TENANT)) == counted
    # A later write to the finished build (same status) counts nothing more.
    assert await store.update_build(tenant_id=TENANT, build_id=build.build_id,
                                    changes={"status": status, "updated_at": ts(200, day=1)},
                                    expect_status=FINAL_BUILD_STATUSES)
    assert delta(before, await store.get_counters(tenant_id=TENANT)) == counted

    assert await day_counts(store, DAY1) == finish_day
    assert await day_counts(store, DAY0) == {"builds_total": 1}
    failed_stages = [day.failed_stages for day in await store.get_daily(tenant_id=TENANT, start=DAY0, end=DAY3)]
    assert failed_stages == ([{}, {"agent_design": 1}] if status == "failed" else
                             [{}, {}] if status == "succeeded" else [{}])
    stored = await store.get_project(tenant_id=TENANT, project_id=project.project_id)
    assert (stored.status, stored.progress) == (
        PROJECT_STATUS_FOR_BUILD[status], 100.0 if status == "succeeded" else 40.0)


async def test_update_build_changes_may_be_the_plain_dicts_of_their_records(store: Store) -> None:
    """`changes` values may be records or the dicts that validate into them (interfaces.Changes)."""
    _, build = await add_project(store, created_at=ts(0))
    error = {"stage": "agent_design", "code": "PROVIDER_ERROR", "message": "boom"}
    usage = {"calls": 1, "input_tokens": 10, "output_tokens": 5, "tokens_estimated": False,
             "duration_ms": 3.0}
    assert await store.update_build(tenant_id=TENANT, build_id=build.build_id,
                                    changes={**finished("failed", at=ts(60)), "error": error,
                                             "usage": usage},
                                    expect_status=ACTIVE_BUILD_STATUSES)
    stored = await store.get_build(tenant_id=TENANT, build_id=build.build_id)
    assert (stored.error, stored.usage) == (BuildError(**error), BuildUsage(**usage))
    [day] = await store.get_daily(tenant_id=TENANT, start=DAY0, end=DAY0)
    assert day.failed_stages == {"agent_design": 1}
    assert (await store.get_counters(tenant_id=TENANT))["build_input_tokens"] == 10


async def test_only_the_latest_build_is_mirrored_on_its_project(store: Store) -> None:
    project, first = await add_project(store)
    await finish(store, first, "succeeded")
    second = new_build(project.project_id, created_at=ts(70))
    assert await store.add_build(tenant_id=TENANT, build=second)

    assert await store.update_build(tenant_id=TENANT, build_id=first.build_id,
                                    changes={"progress": 100.0, "updated_at": ts(80)},
                                    expect_status=("succeeded",))
    stored = await store.get_project(tenant_id=TENANT, project_id=project.project_id)
    assert (stored.latest_build_id, stored.status, stored.progress) == (
        second.build_id, "pending", 0.0)


async def test_build_logs_are_kept_per_build_and_stage_in_order(store: Store) -> None:
    _, build = await add_project(store)
    _, other = await add_project(store)

    def entry(stage: str, message: str, at: float) -> BuildLogLine:
        return log_line(stage, message, at=ts(at))

    async def write(build: Build, *lines: BuildLogLine, expect_status: tuple[str, ...] = ("queued",)) -> bool:
        return await store.update_build(tenant_id=TENANT, build_id=build.build_id, changes={"updated_at": ts(4)},
                                        expect_status=expect_status, logs=list(lines))

    assert await write(build, entry("orchestrator", "one", 1), entry("requirements_analysis", "two", 2))
    assert await write(build, entry("orchestrator", "three", 3), entry("orchestrator", "four", 3))
    assert await write(other, entry("orchestrator", "x", 1))
    # Lines go with the change: a refused change writes none.
    assert not await write(build, entry("orchestrator", "refused", 4), expect_status=("running",))

    assert await store.list_build_logs(tenant_id=TENANT, build_id=build.build_id, stage="orchestrator") == [
        entry("orchestrator", "one", 1), entry("orchestrator", "three", 3),
        entry("orchestrator", "four", 3)]
    assert await store.list_build_logs(tenant_id=TENANT, build_id=build.build_id, stage="requirements_analysis") == [
        entry("requirements_analysis", "two", 2)]
    assert await store.list_build_logs(tenant_id=TENANT, build_id=build.build_id, stage="agent_deployer") == []


async def test_artifacts_are_upserted_by_path_and_listed_without_content(store: Store) -> None:
    project, build = await add_project(store)
    project_id = project.project_id

    def artifact(path: str, content: str, stage: str, at: float) -> Artifact:
        return new_artifact(build, path, content, stage=stage, at=ts(at))

    async def write(*artifacts: Artifact) -> None:
        assert await store.update_build(tenant_id=TENANT, build_id=build.build_id, changes={"updated_at": ts(5)},
                                        expect_status=("queued",), artifacts=list(artifacts))

    await write(artifact("tools/b.py", "b = 2\n", "agent_developer_manager", 1),
                artifact("design/a.json", "{}\n", "agent_design", 1))
    newer = artifact("design/a.json", '{"v": 2}\n', "agent_design", 5)
    await write(newer)

    listed = await store.list_artifacts(tenant_id=TENANT, project_id=project_id)
    assert [a.path for a in listed] == ["design/a.json", "tools/b.py"]
    assert all(a.content is None for a in listed)
    assert pick(listed[0], ("project_id", "build_id", "stage", "size", "created_at")) == pick(
        newer, ("project_id", "build_id", "stage", "size", "created_at"))
    stored = await store.get_artifact(tenant_id=TENANT, project_id=project_id, path="design/a.json")
    assert stored == newer
    assert await store.get_artifact(tenant_id=TENANT, project_id=project_id, path="design/none.json") is None


# -- agents ----------------------------------------------------------------------------------
async def test_put_agent_registers_an_agent_with_empty_runtime_stats(store: Store) -> None:
    project, _ = await add_project(store)
    agent = new_agent(project.project_id)
    before = await store.get_counters(tenant_id=TENANT)

    await store.put_agent(tenant_id=TENANT, agent=agent)
    assert await store.get_agent(tenant_id=TENANT, agent_id=agent.agent_id) == agent.model_copy(update=AGENT_STATS)
    assert delta(before, await store.get_counters(tenant_id=TENANT)) == {"agents_running": 1}
    assert await store.get_agent(tenant_id=TENANT, agent_id=f"{project.project_id}:nobody") is None


async def test_re_registering_an_agent_keeps_its_stats_and_moves_its_status_count(
        store: Store) -> None:
    agent = await registered_agent(store, capabilities=["old_cap"], created_at=ts(100))
    await store.record_invocation(tenant_id=TENANT, invocation=new_invocation(agent, created_at=ts(110), duration_ms=10),
                                  messages=[])
    await store.record_invocation(tenant_id=TENANT, invocation=new_invocation(agent, created_at=ts(120), status="failed",
                                                            duration_ms=30), messages=[])
    await store.update_agent(tenant_id=TENANT, agent_id=agent.agent_id, changes={"status": "offline"})
    before = await store.get_counters(tenant_id=TENANT)

    rebuilt = agent.model_copy(update={
        "description": "Agent v2", "capabilities": ["new_cap"], "status": "running",
        "build_id": ids.build_id(), "created_at": ts(500), "updated_at": ts(500)})
    await store.put_agent(tenant_id=TENANT, agent=rebuilt)

    stored = await store.get_agent(tenant_id=TENANT, agent_id=agent.agent_id)
    assert stored == rebuilt.model_copy(update={
        **AGENT_STATS, "created_at": ts(100), "total_invocations": 2,
        "successful_invocations": 1, "failed_invocations": 1, "total_duration_ms": 40,
        "last_invoked_at": ts(120)})
    assert delta(before, await store.get_counters(tenant_id=TENANT)) == {"agents_offline": -1, "agents_running": 1}
    assert (await store.list_agents(tenant_id=TENANT, limit=5, last_key=None, capabilities=["old_cap"])).items == []
    assert [a.agent_id for a in (await store.list_agents(tenant_id=TENANT,
        limit=5, last_key=None, capabilities=["new_cap"])).items] == [agent.agent_id]

    before = await store.get_counters(tenant_id=TENANT)
    await store.put_agent(tenant_id=TENANT, agent=rebuilt)
    assert await store.get_counters(tenant_id=TENANT) == before


async def test_update_agent_changes_fields_and_moves_status_counts(store: Store) -> None:
    agent = await registered_agent(store, capabilities=["triage"])
    agent_id = agent.agent_id
    before = await store.get_counters(tenant_id=TENANT)

    updated = await store.update_agent(tenant_id=TENANT, agent_id=agent_id, changes={
        "status": "offline", "error_message": "maintenance", "updated_at": ts(300)})
    assert updated == agent.model_copy(update={
        **AGENT_STATS, "status": "offline", "error_message": "maintenance", "updated_at": ts(300)})
    assert delta(before, await store.get_counters(tenant_id=TENANT)) == {"agents_running": -1, "agents_offline": 1}
    await store.update_agent(tenant_id=TENANT, agent_id=agent_id, changes={"status": "offline", "updated_at": ts(301)})
    assert delta(before, await store.get_counters(tenant_id=TENANT)) == {"agents_running": -1, "agents_offline": 1}

    updated = await store.update_agent(tenant_id=TENANT, agent_id=agent_id, changes={
        "capabilities": ["refunds", "faq"], "category": "finance", "updated_at": ts(302)})
    assert (updated.capabilities, updated.category) == (["refunds", "faq"], "finance")
    assert (await store.list_agents(tenant_id=TENANT, limit=5, last_key=None, capabilities=["triage"])).items == []
    assert len((await store.list_agents(tenant_id=TENANT, limit=5, last_key=None, capabilities=["faq"])).items) == 1

    await store.update_agent(tenant_id=TENANT, agent_id=agent_id, changes={"status": "running", "updated_at": ts(303)})
    assert delta(before, await store.get_counters(tenant_id=TENANT)) == {}
    assert await store.update_agent(tenant_id=TENANT, agent_id="proj_000000000000:nobody",
                                    changes={"status": "offline"}) is None
    assert delta(before, await store.get_counters(tenant_id=TENANT)) == {}


async def test_list_agents_filters_and_pages_newest_first(store: Store) -> None:
    projects = [(await add_project(store))[0].project_id for _ in range(2)]
    categories = ("customer_support", "data_analysis", "research")
    agents = []
    for n in range(16):
        agent = new_agent(projects[n % 2], name=f"agent_{n:02d}", created_at=ts(100 + n // 2),
                          status="offline" if n % 3 == 0 else "running",
                          category=categories[n % 3],
                          capabilities=[f"cap{n % 4}", f"cap{(n + 1) % 4}"])
        await store.put_agent(tenant_id=TENANT, agent=agent)
        agents.append(agent.model_copy(update=AGENT_STATS))

    filters: list[dict[str, Any]] = [
        {}, {"project_id": projects[0]}, {"status": "offline"}, {"category": "data_analysis"},
        {"capabilities": ["cap0"]},
        {"capabilities": ["cap0", "cap1"]},  # agents having both must come once
        {"capabilities": ["cap2", "no_such_cap"]}, {"capabilities": ["no_such_cap"]},
        {"project_id": projects[1], "status": "running", "capabilities": ["cap1", "cap3"]},
        {"category": "research", "status": "offline", "project_id": projects[0]},
    ]
    for chosen in filters:
        expected = {
            a.agent_id: a for a in agents
            if all(getattr(a, key) == value for key, value in chosen.items() if key != "capabilities")
            and (not chosen.get("capabilities") or set(chosen["capabilities"]) & set(a.capabilities))}
        items = await walk(lambda key, chosen=chosen: store.list_agents(tenant_id=TENANT, limit=3, last_key=key, **chosen),
                           limit=3)
        assert set(id_list(items, "agent_id")) == set(expected), chosen
        assert_newest_first(items)
        assert all(item == expected[item.agent_id] for item in items)


async def test_delete_agent_removes_its_invocations_sessions_and_messages(store: Store) -> None:
    doomed = await registered_agent(store)
    kept = await registered_agent(store, name="kept_agent")
    sessions = {}
    for agent in (doomed, kept):
        sessions[agent.agent_id] = session = new_session(agent, at=ts(150))
        assert await store.create_session(tenant_id=TENANT, session=session)
        await session_turn(store, agent, session, at=ts(160))
    before = await store.get_counters(tenant_id=TENANT)

    assert await store.delete_agent(tenant_id=TENANT, agent_id=doomed.agent_id) is True
    assert delta(before, await store.get_counters(tenant_id=TENANT)) == {"agents_running": -1}
    assert await store.get_agent(tenant_id=TENANT, agent_id=doomed.agent_id) is None
    doomed_session = sessions[doomed.agent_id].session_id
    assert await store.get_session(tenant_id=TENANT, session_id=doomed_session) is None
    assert (await store.list_messages(tenant_id=TENANT, session_id=doomed_session, limit=5, last_key=None)).items == []
    assert (await store.list_invocations(tenant_id=TENANT, agent_id=doomed.agent_id, limit=5,
                                         last_key=None)).items == []
    assert (await store.get_session(tenant_id=TENANT,
                                    session_id=sessions[kept.agent_id].session_id)).message_count == 2
    assert len((await store.list_invocations(tenant_id=TENANT, agent_id=kept.agent_id, limit=5,
                                             last_key=None)).items) == 1
    assert await store.delete_agent(tenant_id=TENANT, agent_id=doomed.agent_id) is False
    assert delta(before, await store.get_counters(tenant_id=TENANT)) == {"agents_running": -1}


# -- invocations -----------------------------------------------------------------------------
async def test_record_invocation_counts_in_the_agent_the_counters_and_the_day(store: Store) -> None:
    agent = await registered_agent(store)
    before = await store.get_counters(tenant_id=TENANT)
    succeeded = new_invocation(agent, created_at=ts(10, day=2), duration_ms=12.5)
    failed = new_invocation(agent, created_at=ts(20, day=3), status="failed", duration_ms=7.5)

    await store.record_invocation(tenant_id=TENANT, invocation=succeeded, messages=[])
    await store.record_invocation(tenant_id=TENANT, invocation=failed, messages=[])

    stored = await store.get_agent(tenant_id=TENANT, agent_id=agent.agent_id)
    assert pick(stored, AGENT_STATS) == {
        **AGENT_STATS, "total_invocations": 2, "successful_invocations": 1,
        "failed_invocations": 1, "total_duration_ms": 20.0, "last_invoked_at": ts(20, day=3)}
    assert delta(before, await store.get_counters(tenant_id=TENANT)) == {
        "invocations_total": 2, "invocations_succeeded": 1, "invocations_failed": 1,
        "invocation_ms_total": 20.0}
    assert await day_counts(store, DAY2) == {"invocations_total": 1, "invocations_succeeded": 1,
                                             "invocation_ms_total": 12.5}
    assert await day_counts(store, DAY3) == {"invocations_total": 1, "invocations_failed": 1,
                                             "invocation_ms_total": 7.5}
    listed = await store.list_invocations(tenant_id=TENANT, agent_id=agent.agent_id, limit=5, last_key=None)
    assert listed.items == [failed, succeeded]


async def test_list_invocations_pages_newest_first(store: Store) -> None:
    agent = await registered_agent(store)
    other = await registered_agent(store, name="other_agent")
    recorded = []
    for n in range(11):
        invocation = new_invocation(agent, created_at=ts(10 + n // 2))
        await store.record_invocation(tenant_id=TENANT, invocation=invocation, messages=[])
        recorded.append(invocation)
    await store.record_invocation(tenant_id=TENANT, invocation=new_invocation(other, created_at=ts(12)), messages=[])

    items = await walk(lambda key: store.list_invocations(tenant_id=TENANT, agent_id=agent.agent_id, limit=4,
                                                          last_key=key), limit=4)
    assert set(id_list(items, "invocation_id")) == {i.invocation_id for i in recorded}
    assert_newest_first(items)


async def test_a_session_turn_stores_its_messages_in_sequence(store: Store) -> None:
    agent = await registered_agent(store)
    session = new_session(agent, at=ts(200))
    assert await store.create_session(tenant_id=TENANT, session=session)
    messages = []
    for n in range(3):
        messages += await session_turn(store, agent, session, at=ts(210 + n))

    stored = await store.get_session(tenant_id=TENANT, session_id=session.session_id)
    assert stored == session.model_copy(update={"message_count": 6, "last_active_at": ts(212)})
    items = await walk(lambda key: store.list_messages(tenant_id=TENANT, session_id=session.session_id, limit=4,
                                                       last_key=key), limit=4)
    assert [m.seq for m in items] == [1, 2, 3, 4, 5, 6]
    # As recorded, but for the number the store gave each.
    assert [m.model_copy(update={"seq": 0}) for m in items] == messages
    assert [m.message_id for m in await store.recent_messages(tenant_id=TENANT,
        session_id=session.session_id, limit=3)] == [m.message_id for m in messages[3:]]
    assert [m.message_id for m in await store.recent_messages(tenant_id=TENANT,
        session_id=session.session_id, limit=50)] == [m.message_id for m in messages]
    assert (await store.get_agent(tenant_id=TENANT, agent_id=agent.agent_id)).total_invocations == 3


async def test_an_invocation_of_a_deleted_agent_raises_and_writes_nothing(store: Store) -> None:
    agent = await registered_agent(store)
    await store.delete_agent(tenant_id=TENANT, agent_id=agent.agent_id)
    before, days_before = await store.get_counters(tenant_id=TENANT), await store.get_daily(tenant_id=TENANT, start=DAY0, end=DAY3)

    with pytest.raises(LookupError):
        await store.record_invocation(tenant_id=TENANT, invocation=new_invocation(agent, created_at=ts(10, day=2)),
                                      messages=[])
    assert await store.get_counters(tenant_id=TENANT) == before
    assert await store.get_daily(tenant_id=TENANT, start=DAY0, end=DAY3) == days_before
    assert (await store.list_invocations(tenant_id=TENANT, agent_id=agent.agent_id, limit=5,
                                         last_key=None)).items == []


async def test_a_turn_in_a_deleted_session_raises_and_writes_nothing(store: Store) -> None:
    agent = await registered_agent(store)
    session = new_session(agent, at=ts(200))
    assert await store.create_session(tenant_id=TENANT, session=session)
    assert await store.delete_session(tenant_id=TENANT, session_id=session.session_id)
    before, agent_before = await store.get_counters(tenant_id=TENANT), await store.get_agent(tenant_id=TENANT, agent_id=agent.agent_id)
    days_before = await store.get_daily(tenant_id=TENANT, start=DAY0, end=DAY3)

    invocation = new_invocation(agent, created_at=ts(10, day=2), session_id=session.session_id)
    with pytest.raises(LookupError):
        await store.record_invocation(tenant_id=TENANT, invocation=invocation, messages=turn(invocation, at=ts(10, day=2)))
    assert await store.get_counters(tenant_id=TENANT) == before
    assert await store.get_agent(tenant_id=TENANT, agent_id=agent.agent_id) == agent_before
    assert await store.get_daily(tenant_id=TENANT, start=DAY0, end=DAY3) == days_before
    assert (await store.list_invocations(tenant_id=TENANT, agent_id=agent.agent_id, limit=5,
                                         last_key=None)).items == []
    assert (await store.list_messages(tenant_id=TENANT, session_id=session.session_id, limit=5,
                                      last_key=None)).items == []


async def test_fifty_concurrent_invocations_count_exactly_fifty(store: Store) -> None:
    agent = await registered_agent(store)
    session = new_session(agent, at=ts(200))
    assert await store.create_session(tenant_id=TENANT, session=session)
    before = await store.get_counters(tenant_id=TENANT)

    async def one(n: int) -> None:
        at = ts(300 + n / 1000, day=2)
        in_session = n % 5 == 0
        invocation = new_invocation(agent, created_at=at, status="failed" if n % 10 == 9 else "success",
                                    duration_ms=2.0,
                                    session_id=session.session_id if in_session else None)
        await store.record_invocation(tenant_id=TENANT, invocation=invocation,
                                      messages=turn(invocation, at=at) if in_session else [])

    await asyncio.gather(*(one(n) for n in range(50)))

    stored = await store.get_agent(tenant_id=TENANT, agent_id=agent.agent_id)
    assert pick(stored, ("total_invocations", "successful_invocations",
                                         "failed_invocations", "total_duration_ms")) == {
        "total_invocations": 50, "successful_invocations": 45, "failed_invocations": 5,
        "total_duration_ms": 100.0}
    assert delta(before, await store.get_counters(tenant_id=TENANT)) == {
        "invocations_total": 50, "invocations_succeeded": 45, "invocations_failed": 5,
        "invocation_ms_total": 100.0}
    assert await day_counts(store, DAY2) == {"invocations_total": 50, "invocations_succeeded": 45,
                                             "invocations_failed": 5, "invocation_ms_total": 100.0}
    items = await walk(lambda key: store.list_invocations(tenant_id=TENANT, agent_id=agent.agent_id, limit=20,
                                                          last_key=key), limit=20)
    assert len(id_list(items, "invocation_id")) == 50
    assert (await store.get_session(tenant_id=TENANT, session_id=session.session_id)).message_count == 20
    messages = (await store.list_messages(tenant_id=TENANT, session_id=session.session_id, limit=100,
                                          last_key=None)).items
    assert [m.seq for m in messages] == list(range(1, 21))
    # Each turn's two messages stay together.
    for user, assistant in zip(messages[::2], messages[1::2]):
        assert (user.role, assistant.role) == ("user", "assistant")
        assert user.invocation_id == assistant.invocation_id


# -- sessions --------------------------------------------------------------------------------
async def test_sessions_are_listed_most_recently_active_first(store: Store) -> None:
    agent = await registered_agent(store)
    sessions = [new_session(agent, at=ts(200 + n)) for n in range(5)]
    for session in sessions:
        assert await store.create_session(tenant_id=TENANT, session=session)
    await session_turn(store, agent, sessions[1], at=ts(300))
    await session_turn(store, agent, sessions[3], at=ts(310))

    items = await walk(lambda key: store.list_sessions(tenant_id=TENANT, agent_id=agent.agent_id, limit=2,
                                                       last_key=key), limit=2)
    assert id_list(items, "session_id") == [sessions[n].session_id for n in (3, 1, 4, 2, 0)]
    assert await store.get_session(tenant_id=TENANT, session_id=sessions[0].session_id) == sessions[0]


async def test_sessions_need_an_agent_and_delete_with_their_messages(store: Store) -> None:
    agent = await registered_agent(store)
    orphan = new_session(agent, at=ts(1)).model_copy(update={"agent_id": "proj_000000000000:nobody"})
    assert await store.create_session(tenant_id=TENANT, session=orphan) is False
    assert await store.get_session(tenant_id=TENANT, session_id=orphan.session_id) is None

    session = new_session(agent, at=ts(200))
    assert await store.create_session(tenant_id=TENANT, session=session)
    await session_turn(store, agent, session, at=ts(210))
    assert await store.delete_session(tenant_id=TENANT, session_id=session.session_id) is True
    assert await store.get_session(tenant_id=TENANT, session_id=session.session_id) is None
    assert (await store.list_messages(tenant_id=TENANT, session_id=session.session_id, limit=5,
                                      last_key=None)).items == []
    assert (await store.list_sessions(tenant_id=TENANT, agent_id=agent.agent_id, limit=5, last_key=None)).items == []
    assert await store.delete_session(tenant_id=TENANT, session_id=session.session_id) is False
    # The invocation behind the turn is history, kept with the agent.
    assert (await store.get_agent(tenant_id=TENANT, agent_id=agent.agent_id)).total_invocations == 1


# -- size limit ------------------------------------------------------------------------------
async def test_items_over_400_kb_are_refused_naming_the_field(store: Store) -> None:
    agent = await registered_agent(store)
    session = new_session(agent, at=ts(1)).model_copy(update={"metadata": {"notes": "x" * 420_000}})
    with pytest.raises(RecordTooLarge) as refused:
        await store.create_session(tenant_id=TENANT, session=session)
    assert refused.value.field == "metadata"
    assert await store.get_session(tenant_id=TENANT, session_id=session.session_id) is None

    project, build = await add_project(store)
    before = await store.get_build(tenant_id=TENANT, build_id=build.build_id)
    with pytest.raises(RecordTooLarge) as refused:
        await store.update_build(tenant_id=TENANT, build_id=build.build_id, changes={"progress": 5.0},
                                 expect_status=("queued",), artifacts=[
            new_artifact(build, "big.txt", "y" * 500_000, stage="agent_design", at=ts(2))])
    assert refused.value.field == "content"
    assert await store.get_build(tenant_id=TENANT, build_id=build.build_id) == before
    with pytest.raises(RecordTooLarge) as refused:
        await store.update_build(tenant_id=TENANT, build_id=build.build_id, changes={"context": {"blob": "z" * 450_000}},
                                 expect_status=("queued",))
    assert refused.value.field == "context"
    assert await store.get_build(tenant_id=TENANT, build_id=build.build_id) == before

    stored_agent = await store.get_agent(tenant_id=TENANT, agent_id=agent.agent_id)
    with pytest.raises(RecordTooLarge) as refused:
        await store.update_agent(tenant_id=TENANT, agent_id=agent.agent_id, changes={"description": "d" * 410_000})
    assert refused.value.field == "description"
    assert await store.get_agent(tenant_id=TENANT, agent_id=agent.agent_id) == stored_agent


async def test_get_daily_returns_the_days_in_range_that_have_aggregates(store: Store) -> None:
    await store.add_api_calls(tenant_id=TENANT, counts={DAY0: 3, DAY1: 4})
    await store.add_api_calls(tenant_id=TENANT, counts={DAY0: 2, "2024-03-06": 1})

    def summary(days: list[Any]) -> list[tuple[str, float]]:
        return [(day.date, day.counts["api_calls"]) for day in days]

    assert summary(await store.get_daily(tenant_id=TENANT, start=DAY0, end="2024-03-06")) == [
        (DAY0, 5), (DAY1, 4), ("2024-03-06", 1)]
    assert summary(await store.get_daily(tenant_id=TENANT, start=DAY1, end=DAY1)) == [(DAY1, 4)]
    assert summary(await store.get_daily(tenant_id=TENANT, start="2024-02-01", end=DAY0)) == [(DAY0, 5)]
    assert summary(await store.get_daily(tenant_id=TENANT, start="2024-03-06", end="2024-03-31")) == [("2024-03-06", 1)]
    assert await store.get_daily(tenant_id=TENANT, start=DAY2, end="2024-03-05") == []
    # API calls are a daily figure only.
    assert await store.get_counters(tenant_id=TENANT) == {name: 0 for name in COUNTER_NAMES}


async def test_get_daily_combines_every_aggregate_of_a_day(store: Store) -> None:
    _, build = await add_project(store, created_at=ts(0, day=1))
    await finish(store, build, "failed", at=ts(50, day=1),
                 error=BuildError(stage="system_architecture", code="PROVIDER_ERROR", message="x"))
    agent = await registered_agent(store)
    await store.record_invocation(tenant_id=TENANT, invocation=new_invocation(agent, created_at=ts(60, day=1),
                                                            duration_ms=4.0), messages=[])
    await store.add_api_calls(tenant_id=TENANT, counts={DAY1: 7})

    [day] = await store.get_daily(tenant_id=TENANT, start=DAY1, end=DAY1)
    assert day.date == DAY1
    assert {name: value for name, value in day.counts.items() if value} == {
        "builds_total": 1, "builds_failed": 1, "invocations_total": 1, "invocations_succeeded": 1,
        "invocation_ms_total": 4.0, "api_calls": 7}
    assert day.failed_stages == {"system_architecture": 1}
