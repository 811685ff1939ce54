"""The Store contract with two tenants, on every backend: each operation of the contract suite,
tried by tenant B on tenant A's records. B never sees, counts, pages through, changes or
deletes them; each tenant's statistics are exact and the platform-wide totals add up.

Both tenants use ids that exist (A's), so that a backend which looked records up by id alone
and filtered afterwards would fail here.
"""

from typing import Any

import pytest

from api.core.records import BuildError
from api.database.store import ACTIVE_BUILD_STATUSES, COUNTER_NAMES, Store
from tests.database.test_store_contract import (
    DAY0,
    add_project,
    day_counts,
    finish,
    log_line,
    new_agent,
    new_artifact,
    new_invocation,
    new_session,
    registered_agent,
    session_turn,
    ts,
)

A, B = "acme", "globex"


async def a_world(store: Store) -> dict[str, Any]:
    """Tenant A's records of every kind: a finished build with an artifact and a log line, its
    agent with an invocation and a session turn."""
    project, build = await add_project(store, tenant_id=A, user_id="alice")
    assert await store.update_build(
        tenant_id=A, build_id=build.build_id, changes={"updated_at": ts(5)},
        expect_status=("queued",),
        logs=[log_line("orchestrator", "started", at=ts(5))],
        artifacts=[new_artifact(build, "design/a.json", "{}", stage="agent_design", at=ts(5))])
    await finish(store, build, at=ts(60))
    agent = new_agent(project.project_id, tenant_id=A).model_copy(update={"build_id": build.build_id})
    assert await store.put_agent(tenant_id=A, agent=agent)
    session = new_session(agent, at=ts(200))
    assert await store.create_session(tenant_id=A, session=session)
    messages = await session_turn(store, agent, session, at=ts(300))
    return {"project": project, "build": build, "agent": agent, "session": session,
            "messages": messages}


async def test_another_tenant_reads_none_of_a_tenants_records(store: Store) -> None:
    world = await a_world(store)
    project_id, build_id = world["project"].project_id, world["build"].build_id
    agent_id, session_id = world["agent"].agent_id, world["session"].session_id

    assert await store.get_project(tenant_id=B, project_id=project_id) is None
    assert await store.get_project_with_latest_build(tenant_id=B, project_id=project_id) is None
    assert await store.get_build(tenant_id=B, build_id=build_id) is None
    assert await store.list_build_logs(tenant_id=B, build_id=build_id, stage="orchestrator") == []
    assert await store.list_artifacts(tenant_id=B, project_id=project_id) == []
    assert await store.get_artifact(tenant_id=B, project_id=project_id, path="design/a.json") is None
    assert await store.get_agent(tenant_id=B, agent_id=agent_id) is None
    assert await store.get_session(tenant_id=B, session_id=session_id) is None
    assert await store.recent_messages(tenant_id=B, session_id=session_id, limit=10) == []

    # A reads all of it, each record marked with its tenant.
    assert (await store.get_project(tenant_id=A, project_id=project_id)).tenant_id == A
    assert (await store.get_build(tenant_id=A, build_id=build_id)).tenant_id == A
    assert (await store.get_agent(tenant_id=A, agent_id=agent_id)).tenant_id == A
    assert (await store.get_session(tenant_id=A, session_id=session_id)).tenant_id == A
    assert (await store.get_artifact(tenant_id=A, project_id=project_id,
                                     path="design/a.json")).tenant_id == A
    assert [m.tenant_id for m in await store.recent_messages(
        tenant_id=A, session_id=session_id, limit=10)] == [A, A]
    invocations = await store.list_invocations(tenant_id=A, agent_id=agent_id, limit=5, last_key=None)
    assert [i.tenant_id for i in invocations.items] == [A]


async def test_another_tenant_lists_and_pages_through_only_its_own(store: Store) -> None:
    world = await a_world(store)
    own_project, _ = await add_project(store, tenant_id=B, user_id="alice", created_at=ts(1))
    own_agent = await registered_agent(store, tenant_id=B, capabilities=["ticket_triage"])
    project_id, agent_id = world["project"].project_id, world["agent"].agent_id

    async def everything(listing: Any, **filters: Any) -> list[Any]:
        items, last_key = [], None
        while True:
            page = await listing(tenant_id=B, limit=1, last_key=last_key, **filters)
            items += page.items
            if page.last_key is None:
                return items
            last_key = page.last_key

    # Every filter of every listing, each through its index, pages through B's records only.
    b_projects = {own_project.project_id, own_agent.project_id}
    for filters in ({}, {"user_id": "alice"}, {"status": "completed"}, {"status": "pending"},
                    {"status": "pending", "user_id": "alice"}):
        listed = {p.project_id for p in await everything(store.list_projects, **filters)}
        assert project_id not in listed and listed <= b_projects, filters
    assert {p.project_id for p in await everything(store.list_projects)} == b_projects
    for filters in ({}, {"project_id": project_id}, {"status": "running"},
                    {"category": "customer_support"}, {"capabilities": ["ticket_triage"]}):
        listed = [a.agent_id for a in await everything(store.list_agents, **filters)]
        assert agent_id not in listed, filters
        assert listed in ([], [own_agent.agent_id]), filters
    assert await everything(store.list_builds, project_id=project_id) == []
    assert await everything(store.list_invocations, agent_id=agent_id) == []
    assert await everything(store.list_sessions, agent_id=agent_id) == []
    assert await everything(store.list_messages, session_id=world["session"].session_id) == []


async def test_another_tenant_changes_and_deletes_nothing_of_a_tenants(store: Store) -> None:
    world = await a_world(store)
    project, build, agent, session = (world[k] for k in ("project", "build", "agent", "session"))
    second, _ = await add_project(store, tenant_id=A, created_at=ts(2))
    queued = (await store.get_project_with_latest_build(tenant_id=A, project_id=second.project_id))[1]
    before = {name: await store.get_counters(tenant_id=name) for name in (A, B)}

    assert not await store.update_build(tenant_id=B, build_id=queued.build_id,
                                        changes={"progress": 50.0}, expect_status=ACTIVE_BUILD_STATUSES)
    assert not await store.claim_build(tenant_id=B, build_id=queued.build_id, owner="engine_b",
                                       lease_until=ts(1000), now=ts(10))
    assert not await store.add_build(tenant_id=B, build=queued.model_copy(update={
        "tenant_id": B, "build_id": "build_b00000000000", "project_id": project.project_id}))
    assert await store.update_agent(tenant_id=B, agent_id=agent.agent_id,
                                    changes={"status": "offline", "updated_at": ts(400)}) is None
    assert not await store.create_session(tenant_id=B, session=new_session(agent, at=ts(400)))
    with pytest.raises(LookupError):
        await store.record_invocation(tenant_id=B, invocation=new_invocation(agent, created_at=ts(400)),
                                      messages=[])
    with pytest.raises(LookupError):
        invocation = new_invocation(agent, created_at=ts(400), session_id=session.session_id)
        await store.record_invocation(tenant_id=B, invocation=invocation, messages=[])
    assert not await store.delete_session(tenant_id=B, session_id=session.session_id)
    assert not await store.delete_agent(tenant_id=B, agent_id=agent.agent_id)
    assert not await store.delete_project(tenant_id=B, project_id=project.project_id)

    # All of A's records are as they were, and nothing was counted anywhere.
    assert await store.get_project(tenant_id=A, project_id=project.project_id) is not None
    assert (await store.get_build(tenant_id=A, build_id=queued.build_id)).progress == 0.0
    stored_agent = await store.get_agent(tenant_id=A, agent_id=agent.agent_id)
    assert stored_agent.status == "running" and stored_agent.total_invocations == 1
    assert (await store.get_session(tenant_id=A, session_id=session.session_id)).message_count == 2
    assert {name: await store.get_counters(tenant_id=name) for name in (A, B)} == before
    assert not (await store.list_claimable_builds(now=ts(10), limit=10))[0].owner

    # A's own delete works, and B still counts nothing.
    assert await store.delete_project(tenant_id=A, project_id=project.project_id)
    assert await store.get_agent(tenant_id=A, agent_id=agent.agent_id) is None
    assert (await store.get_counters(tenant_id=B)) == before[B]


async def test_claimable_builds_span_tenants_and_carry_theirs(store: Store) -> None:
    _, build_a = await add_project(store, tenant_id=A, created_at=ts(1))
    _, build_b = await add_project(store, tenant_id=B, created_at=ts(2))
    claimable = await store.list_claimable_builds(now=ts(10), limit=10)
    assert [(b.build_id, b.tenant_id) for b in claimable] == [
        (build_a.build_id, A), (build_b.build_id, B)]
    for build in claimable:
        assert await store.claim_build(tenant_id=build.tenant_id, build_id=build.build_id,
                                       owner="engine_a", lease_until=ts(1000), now=ts(10))
    renewed = await store.renew_leases(owner="engine_a", lease_until=ts(2000))
    assert sorted((b.build_id, b.tenant_id) for b in renewed) == sorted(
        [(build_a.build_id, A), (build_b.build_id, B)])


async def test_statistics_are_exact_per_tenant_and_the_platform_totals_add_up(store: Store) -> None:
    await a_world(store)
    _, failed = await add_project(store, tenant_id=B, created_at=ts(10))
    await finish(store, failed, "failed", at=ts(70), error=BuildError(stage="agent_design", code="X", message="x"))
    agent_b = await registered_agent(store, tenant_id=B)
    for n in range(3):
        await store.record_invocation(tenant_id=B, messages=[], invocation=new_invocation(
            agent_b, created_at=ts(500 + n), tokens=(10, 5)))
    await store.add_api_calls(tenant_id=A, counts={DAY0: 4})
    await store.add_api_calls(tenant_id=B, counts={DAY0: 7})

    a, b, platform = [await store.get_counters(tenant_id=t) for t in (A, B, None)]
    zero = {name: 0 for name in COUNTER_NAMES}
    assert {k: v for k, v in a.items() if v} == {
        "builds_total": 1, "builds_succeeded": 1, "build_seconds_succeeded": 60.0,
        "agents_running": 1, "invocations_total": 1, "invocations_succeeded": 1,
        "invocation_ms_total": 10.0}
    assert {k: v for k, v in b.items() if v} == {
        "builds_total": 2, "builds_failed": 1, "builds_active": 1, "agents_running": 1,
        "invocations_total": 3, "invocations_succeeded": 3, "invocation_ms_total": 30.0,
        "invocation_input_tokens": 30, "invocation_output_tokens": 15}
    assert platform == {name: a[name] + b[name] for name in zero}

    assert await day_counts(store, DAY0, A) == {
        "builds_total": 1, "builds_succeeded": 1, "build_seconds_succeeded": 60.0,
        "invocations_total": 1, "invocations_succeeded": 1, "invocation_ms_total": 10.0,
        "api_calls": 4}
    assert (await day_counts(store, DAY0, B))["api_calls"] == 7
    a_counts, b_counts = await day_counts(store, DAY0, A), await day_counts(store, DAY0, B)
    assert await day_counts(store, DAY0, None) == {
        name: a_counts.get(name, 0) + b_counts.get(name, 0) for name in {*a_counts, *b_counts}}
    [b_day] = await store.get_daily(tenant_id=B, start=DAY0, end=DAY0)
    [a_day] = await store.get_daily(tenant_id=A, start=DAY0, end=DAY0)
    [platform_day] = await store.get_daily(tenant_id=None, start=DAY0, end=DAY0)
    assert (a_day.failed_stages, b_day.failed_stages, platform_day.failed_stages) == (
        {}, {"agent_design": 1}, {"agent_design": 1})
