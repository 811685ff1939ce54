"""Model usage in the store contract, on every backend: invocations keep their tokens, model
and time to first token; agents, counters and days count them exactly by outcome; a build's
usage is kept and counted once when it finishes. And records stored before usage existed (an
SQLite file of migration 0001, DynamoDB items without the attributes) read the defaults."""

import sqlite3
from importlib import resources
from pathlib import Path
from typing import Any

import boto3
import pytest

from api.database.sqlite import SQLiteStore
from api.core.records import BuildUsage
from api.database.store import ACTIVE_BUILD_STATUSES, DEFAULT_TENANT, FINAL_BUILD_STATUSES, Store
from tests import moto_server
from tests.database.test_store_contract import (
    TENANT,
    AGENT_STATS,
    DAY0,
    DAY1,
    DAY2,
    add_project,
    day_counts,
    delta,
    finished,
    new_agent,
    new_invocation,
    pick,
    registered_agent,
    ts,
)

USAGE = BuildUsage(calls=7, input_tokens=1200, output_tokens=345, tokens_estimated=True,
                   duration_ms=812.5)


# -- invocations -----------------------------------------------------------------------------
async def test_an_invocation_keeps_its_model_tokens_and_time_to_first_token(store: Store) -> None:
    agent = await registered_agent(store)
    invocation = new_invocation(agent, created_at=ts(10), tokens=(321, 54), ttft_ms=120.0).model_copy(
        update={"model": "gpt-4o-mini", "tokens_estimated": True, "finish_reason": "length"})
    plain = new_invocation(agent, created_at=ts(20))

    await store.record_invocation(tenant_id=TENANT, invocation=invocation, messages=[])
    await store.record_invocation(tenant_id=TENANT, invocation=plain, messages=[])

    listed = (await store.list_invocations(tenant_id=TENANT, agent_id=agent.agent_id, limit=5, last_key=None)).items
    assert listed == [plain, invocation]
    stored = listed[1]
    # Types as given: a bool is not 1, a whole number of milliseconds stays a float.
    assert stored.tokens_estimated is True and listed[0].tokens_estimated is False
    assert isinstance(stored.time_to_first_token_ms, float)
    assert type(stored.input_tokens) is int and type(stored.output_tokens) is int
    assert listed[0].time_to_first_token_ms is None and listed[0].model is None


async def test_every_outcome_counts_its_tokens_and_only_a_first_token_counts_in_ttft(
        store: Store) -> None:
    agent = await registered_agent(store)
    before = await store.get_counters(tenant_id=TENANT)
    success = new_invocation(agent, created_at=ts(10, day=1), duration_ms=40.0, tokens=(30, 12),
                             ttft_ms=100.5)
    # A failed call spent its prompt but never produced a token.
    failure = new_invocation(agent, created_at=ts(20, day=1), status="failed", duration_ms=5.0,
                             tokens=(20, 0))
    # The client went away mid-stream: tokens were produced and a first one arrived.
    cancelled = new_invocation(agent, created_at=ts(30, day=2), status="cancelled",
                               duration_ms=15.0, tokens=(25, 7), ttft_ms=80.25)
    for invocation in (success, failure, cancelled):
        await store.record_invocation(tenant_id=TENANT, invocation=invocation, messages=[])

    stored = await store.get_agent(tenant_id=TENANT, agent_id=agent.agent_id)
    assert pick(stored, AGENT_STATS) == {
        "total_invocations": 3, "successful_invocations": 1, "failed_invocations": 1,
        "cancelled_invocations": 1, "total_duration_ms": 60.0, "total_input_tokens": 75,
        "total_output_tokens": 19, "ttft_ms_total": 180.75, "ttft_count": 2,
        "last_invoked_at": ts(30, day=2)}
    listed = (await store.list_agents(tenant_id=TENANT, limit=5, last_key=None)).items
    assert [pick(a, AGENT_STATS) for a in listed] == [
        pick(stored, AGENT_STATS)]
    assert delta(before, await store.get_counters(tenant_id=TENANT)) == {
        "invocations_total": 3, "invocations_succeeded": 1, "invocations_failed": 1,
        "invocations_cancelled": 1, "invocation_ms_total": 60.0, "invocation_input_tokens": 75,
        "invocation_output_tokens": 19, "invocation_ttft_ms_total": 180.75,
        "invocation_ttft_count": 2}
    assert await day_counts(store, DAY1) == {
        "invocations_total": 2, "invocations_succeeded": 1, "invocations_failed": 1,
        "invocation_ms_total": 45.0, "invocation_input_tokens": 50, "invocation_output_tokens": 12,
        "invocation_ttft_ms_total": 100.5, "invocation_ttft_count": 1}
    assert await day_counts(store, DAY2) == {
        "invocations_total": 1, "invocations_cancelled": 1, "invocation_ms_total": 15.0,
        "invocation_input_tokens": 25, "invocation_output_tokens": 7,
        "invocation_ttft_ms_total": 80.25, "invocation_ttft_count": 1}


# -- builds ----------------------------------------------------------------------------------
@pytest.mark.parametrize("status", FINAL_BUILD_STATUSES)
@pytest.mark.parametrize("usage_with_final_change", [True, False],
                         ids=["usage-in-final-change", "usage-stored-earlier"])
async def test_a_finished_build_adds_its_usage_tokens_once(
        store: Store, status: str, usage_with_final_change: bool) -> None:
    project, build = await add_project(store, created_at=ts(0))
    build_id = build.build_id
    assert await store.claim_build(tenant_id=TENANT, build_id=build_id, owner="engine_a", lease_until=ts(600),
                                   now=ts(1))
    early = USAGE.model_copy(update={"calls": 2, "input_tokens": 400, "output_tokens": 100})
    assert await store.update_build(tenant_id=TENANT, build_id=build_id, expect_status=("running",),
                                    changes={"usage": early if usage_with_final_change else USAGE,
                                             "progress": 30.0, "updated_at": ts(5)})
    # Usage on a running build is kept, not counted.
    assert (await store.get_build(tenant_id=TENANT, build_id=build_id)).usage == (
        early if usage_with_final_change else USAGE)
    before = await store.get_counters(tenant_id=TENANT)

    changes = finished(status, at=ts(50, day=1), duration=90.0)
    if usage_with_final_change:
        changes["usage"] = USAGE
    assert await store.update_build(tenant_id=TENANT, build_id=build_id, changes=changes,
                                    expect_status=ACTIVE_BUILD_STATUSES, expect_owner="engine_a")
    tokens = {"build_input_tokens": 1200, "build_output_tokens": 345}
    assert {name: value for name, value in delta(before, await store.get_counters(tenant_id=TENANT)).items()
            if name.startswith("build_") and name.endswith("_tokens")} == tokens
    after = await store.get_counters(tenant_id=TENANT)

    # A second final change is refused by its condition, and adds nothing.
    assert not await store.update_build(tenant_id=TENANT, build_id=build_id, expect_status=ACTIVE_BUILD_STATUSES,
                                        changes={**finished(status, at=ts(70, day=1)),
                                                 "usage": USAGE.model_copy(update={"input_tokens": 9999})})
    # A later write to the finished build, with usage, counts nothing more either.
    assert await store.update_build(tenant_id=TENANT, build_id=build_id, expect_status=FINAL_BUILD_STATUSES,
                                    changes={"usage": USAGE, "updated_at": ts(80, day=1)})
    assert await store.get_counters(tenant_id=TENANT) == after

    day = await day_counts(store, DAY1)
    assert {name: day.get(name) for name in tokens} == tokens
    assert await day_counts(store, DAY0) == {"builds_total": 1}
    stored = await store.get_build(tenant_id=TENANT, build_id=build_id)
    assert stored.usage == USAGE and stored.usage.tokens_estimated is True
    listed = (await store.list_builds(tenant_id=TENANT, project_id=project.project_id, limit=5, last_key=None)).items
    assert [b.usage for b in listed] == [USAGE]


async def test_a_build_without_usage_counts_no_tokens(store: Store) -> None:
    _, build = await add_project(store, created_at=ts(0))
    before = await store.get_counters(tenant_id=TENANT)
    assert await store.update_build(tenant_id=TENANT, build_id=build.build_id,
                                    changes=finished("succeeded", at=ts(30, day=2)),
                                    expect_status=ACTIVE_BUILD_STATUSES)
    assert (await store.get_build(tenant_id=TENANT, build_id=build.build_id)).usage is None
    assert delta(before, await store.get_counters(tenant_id=TENANT)) == {
        "builds_active": -1, "builds_succeeded": 1, "build_seconds_succeeded": 60}
    assert await day_counts(store, DAY2) == {"builds_succeeded": 1, "build_seconds_succeeded": 60}


# -- records stored before usage existed ----------------------------------------------------
def _insert(conn: sqlite3.Connection, table: str, row: dict[str, Any]) -> None:
    conn.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                 list(row.values()))


async def test_an_sqlite_file_of_migration_0001_migrates_on_open_and_keeps_its_rows(
        tmp_path: Path) -> None:
    path = tmp_path / "nexus-ai.db"
    migration = resources.files("api.database.migrations.sqlite") / "0001_initial.sql"
    conn = sqlite3.connect(path)
    conn.executescript(f"BEGIN; {migration.read_text()}; PRAGMA user_version = 1; COMMIT;")
    at = ts(0)
    _insert(conn, "builds", {"build_id": "build_old", "project_id": "proj_old",
                             "status": "succeeded", "progress": 100.0, "stages": "[]",
                             "context": "{}", "created_at": at, "updated_at": at})
    _insert(conn, "agents", {
        "agent_id": "proj_old:agent", "project_id": "proj_old", "agent_name": "agent",
        "description": "old", "category": "general", "capabilities": "[]", "tools": "[]",
        "system_prompt": "You are old.", "status": "running", "total_invocations": 4,
        "successful_invocations": 3, "failed_invocations": 1, "total_duration_ms": 44.0,
        "created_at": at, "updated_at": at})
    _insert(conn, "invocations", {
        "invocation_id": "inv_old", "agent_id": "proj_old:agent", "project_id": "proj_old",
        "input_text": "hello", "output": "hi", "status": "success", "duration_ms": 11.0,
        "created_at": at})
    conn.commit()
    conn.close()

    store = SQLiteStore(path=path, slow_query_threshold_seconds=1.0)
    await store.open()
    try:
        agent = await store.get_agent(tenant_id=DEFAULT_TENANT, agent_id="proj_old:agent")
        assert pick(agent, AGENT_STATS) == {
            **AGENT_STATS, "total_invocations": 4, "successful_invocations": 3,
            "failed_invocations": 1, "total_duration_ms": 44.0}
        [old] = (await store.list_invocations(tenant_id=DEFAULT_TENANT, agent_id="proj_old:agent", limit=5,
                                              last_key=None)).items
        assert (old.invocation_id, old.output) == ("inv_old", "hi")
        assert pick(old, ("model", "input_tokens", "output_tokens",
                                          "tokens_estimated", "time_to_first_token_ms",
                                          "finish_reason")) == {
            "model": None, "input_tokens": 0, "output_tokens": 0, "tokens_estimated": False,
            "time_to_first_token_ms": None, "finish_reason": None}
        assert old.tokens_estimated is False
        assert (await store.get_build(tenant_id=DEFAULT_TENANT, build_id="build_old")).usage is None

        # The migrated file takes the new records.
        new = new_invocation(agent, created_at=ts(5), tokens=(9, 3), ttft_ms=12.5)
        await store.record_invocation(tenant_id=DEFAULT_TENANT, invocation=new, messages=[])
        agent = await store.get_agent(tenant_id=DEFAULT_TENANT, agent_id="proj_old:agent")
        assert (agent.total_invocations, agent.total_input_tokens, agent.ttft_count) == (
            5, 9, 1)
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 9  # every migration applied, up to 0009 (project description)
    conn.close()


async def test_dynamodb_items_written_before_usage_read_the_defaults(tmp_path: Path) -> None:
    store = moto_server.dynamodb_store(tmp_path)
    await store.open()
    try:
        project, build = await add_project(store)
        agent = new_agent(project.project_id)
        await store.put_agent(tenant_id=TENANT, agent=agent)
        invocation = new_invocation(agent, created_at=ts(10), tokens=(5, 2), ttft_ms=3.0)
        await store.record_invocation(tenant_id=TENANT, invocation=invocation, messages=[])
        table = boto3.resource(
            "dynamodb", endpoint_url=moto_server.endpoint(), region_name=moto_server.REGION,
            aws_access_key_id=moto_server.CREDENTIALS[0],
            aws_secret_access_key=moto_server.CREDENTIALS[1]).Table(store.table)
        new_fields: dict[str, tuple[str, ...]] = {
            "INVOCATION#": ("model", "input_tokens", "output_tokens", "tokens_estimated",
                            "time_to_first_token_ms", "finish_reason"),
            "#STATS": ("cancelled_invocations", "total_input_tokens", "total_output_tokens",
                       "ttft_ms_total", "ttft_count")}
        agent_items = table.query(KeyConditionExpression="pk = :pk",
                                  ExpressionAttributeValues={":pk": f"T#{TENANT}#AGENT#{agent.agent_id}"})
        for item in agent_items["Items"]:
            for prefix, fields in new_fields.items():
                if item["sk"].startswith(prefix):
                    table.update_item(Key={"pk": item["pk"], "sk": item["sk"]},
                                      UpdateExpression="REMOVE " + ", ".join(fields))

        stored = await store.get_agent(tenant_id=TENANT, agent_id=agent.agent_id)
        assert pick(stored, AGENT_STATS) == {
            **AGENT_STATS, "total_invocations": 1, "successful_invocations": 1,
            "total_duration_ms": 10.0, "last_invoked_at": ts(10)}
        [old] = (await store.list_invocations(tenant_id=TENANT, agent_id=agent.agent_id, limit=5,
                                              last_key=None)).items
        expected = invocation.model_copy(update={
            "model": None, "input_tokens": 0, "output_tokens": 0, "tokens_estimated": False,
            "time_to_first_token_ms": None, "finish_reason": None})
        assert old == expected
        assert (await store.get_build(tenant_id=TENANT, build_id=build.build_id)).usage is None
    finally:
        await store.close()
        moto_server.delete_tables([store.table[:-len("platform")]])
