"""What the DynamoDB store adds to the contract: the table it creates, requests that stay few
and constant, throttling retried and counted, bad input refused cleanly, cascade deletes that
leave nothing, several instances on one table. Against the session's moto server."""

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from api.config import Settings
from api.core.records import Agent, Project
from api.database.dynamodb_client import COUNTER_SHARDS, DynamoDBStore
from api.database.factory import BackendUnavailable, create_store
from api.core.store_errors import InvalidValue, StoreError, StoreThrottled
from api.observability import db_observer
from tests import moto_server
from tests.conftest import free_port
from tests.database.test_store_contract import (
    TENANT,
    add_project,
    log_line,
    new_agent,
    new_artifact,
    new_invocation,
    new_session,
    registered_agent,
    session_turn,
    ts,
)

REPO = Path(__file__).resolve().parents[2]


def table(store: DynamoDBStore) -> Any:
    return boto3.resource(
        "dynamodb", endpoint_url=moto_server.endpoint(), region_name=moto_server.REGION,
        aws_access_key_id=moto_server.CREDENTIALS[0],
        aws_secret_access_key=moto_server.CREDENTIALS[1]).Table(store.table)


def stored_keys(store: DynamoDBStore) -> set[str]:
    """Every item's partition key (a test may scan; the store never does)."""
    return {item["pk"] for item in table(store).scan()["Items"]}


def unscoped(key: str) -> str:
    """A partition key without its tenant's scope (T#<tenant>#)."""
    return key.split("#", 2)[2] if key.startswith("T#") else key


def aggregates_only(keys: set[str]) -> bool:
    return all(key == "#LAYOUT" or unscoped(key).startswith(("COUNTERS#", "DAILY#")) for key in keys)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[DynamoDBStore]:
    opened = moto_server.dynamodb_store(tmp_path)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()
        moto_server.delete_tables([opened.table[:-len("platform")]])


async def everything_under_a_project(store: DynamoDBStore) -> tuple[Project, Agent]:
    project, build = await add_project(store)
    assert await store.claim_build(tenant_id=TENANT, build_id=build.build_id, owner="engine_a",
                                   lease_until=ts(600), now=ts(1))
    assert await store.update_build(tenant_id=TENANT,
        build_id=build.build_id, changes={"updated_at": ts(3)}, expect_status=("running",),
        logs=[log_line("orchestrator", "started", at=ts(2))],
        artifacts=[new_artifact(build, "agent/a.py", "x = 1\n", stage="agent_developer_manager",
                                at=ts(3))])
    agent = new_agent(project.project_id, capabilities=["alpha", "beta"])
    await store.put_agent(tenant_id=TENANT, agent=agent)
    session = new_session(agent, at=ts(4))
    assert await store.create_session(tenant_id=TENANT, session=session)
    await session_turn(store, agent, session, at=ts(5))
    await store.record_invocation(tenant_id=TENANT, invocation=new_invocation(agent, created_at=ts(6)), messages=[])
    return project, agent


# -- the table -------------------------------------------------------------------------------
async def test_open_creates_the_table_on_demand_once_and_a_second_instance_reuses_it(
        store: DynamoDBStore, tmp_path: Path) -> None:
    assert store.request_counts["CreateTable"] == 1
    description = table(store).meta.client.describe_table(TableName=store.table)["Table"]
    assert description["TableStatus"] == "ACTIVE"
    assert description["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert {index["IndexName"]: index["IndexStatus"] for index in
            description["GlobalSecondaryIndexes"]} == {f"gsi{n}": "ACTIVE" for n in range(1, 5)}

    other = moto_server.dynamodb_store(tmp_path)
    await other.open()
    try:
        assert other.request_counts["CreateTable"] == 0
        assert other.request_counts["DescribeTable"] == 1
    finally:
        await other.close()


def test_init_db_creates_the_table_idempotently(tmp_path: Path) -> None:
    prefix = moto_server.new_prefix()
    env = {"PATH": "/usr/bin:/bin", "AWS_EC2_METADATA_DISABLED": "true",
           **moto_server.server_env(prefix)}
    try:
        for _ in range(2):
            result = subprocess.run([str(Path(sys.executable).parent / "nexus-ai"), "init-db"],
                                    cwd=tmp_path, capture_output=True, text=True, env=env,
                                    timeout=60, check=False)
            assert result.returncode == 0, result.stderr
            assert "Database ready (dynamodb)" in result.stderr
        client = boto3.client("dynamodb", endpoint_url=moto_server.endpoint(),
                              region_name=moto_server.REGION,
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        assert client.describe_table(TableName=f"{prefix}platform")["Table"]["TableStatus"] == "ACTIVE"
    finally:
        moto_server.delete_tables([prefix])


async def test_an_unreachable_endpoint_fails_fast_as_a_store_error() -> None:
    store = DynamoDBStore(region=moto_server.REGION, endpoint_url=f"http://127.0.0.1:{free_port()}",
                          table_prefix="nowhere_", connect_timeout_seconds=1.0,
                          read_timeout_seconds=1.0, max_attempts=2, retry_mode="standard",
                          slow_query_threshold_seconds=1.0, credentials=moto_server.CREDENTIALS)
    started = time.monotonic()
    with pytest.raises(StoreError, match="DynamoDB DescribeTable failed"):
        await store.open()
    assert time.monotonic() - started < 5


async def test_ping_fails_within_a_second_once_the_endpoint_is_gone(tmp_path: Path) -> None:
    server = moto_server.MotoServer().start()
    store = DynamoDBStore(region=moto_server.REGION, endpoint_url=server.endpoint,
                          table_prefix="ping_", connect_timeout_seconds=2.0,
                          read_timeout_seconds=5.0, max_attempts=5, retry_mode="standard",
                          slow_query_threshold_seconds=1.0, credentials=moto_server.CREDENTIALS)
    try:
        await store.open()
        await store.ping()
        server.stop()
        started = time.monotonic()
        with pytest.raises(StoreError):
            await store.ping()
        assert time.monotonic() - started < 1.5
    finally:
        server.stop()
        await store.close()


def test_settings_choose_region_retries_and_timeouts(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    settings = Settings(_env_file=None, storage_backend="dynamodb")
    with pytest.raises(BackendUnavailable, match="without an AWS region"):
        create_store(settings)

    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    store = create_store(Settings(_env_file=None, storage_backend="dynamodb",
                                  dynamodb_retry_mode="ADAPTIVE", dynamodb_max_attempts=7,
                                  dynamodb_table_prefix="prod_"))
    assert isinstance(store, DynamoDBStore)
    assert (store.region, store.retry_mode, store.max_attempts, store.table) == (
        "eu-west-1", "adaptive", 7, "prod_platform")
    store = create_store(Settings(_env_file=None, storage_backend="dynamodb",
                                  dynamodb_region="ap-south-1"))
    assert isinstance(store, DynamoDBStore) and store.region == "ap-south-1"


# -- requests ------------------------------------------------------------------------------------
async def overview_requests(store: DynamoDBStore) -> int:
    before = sum(store.request_counts.values())
    await store.get_counters(tenant_id=TENANT)
    await store.get_daily(tenant_id=TENANT, start="2024-03-01", end="2024-03-01")
    return sum(store.request_counts.values()) - before


async def test_the_overview_costs_the_same_requests_whatever_the_data_size(
        store: DynamoDBStore) -> None:
    assert await overview_requests(store) == 2
    agent = await registered_agent(store)
    for n in range(40):
        await add_project(store, created_at=ts(n))
        await store.record_invocation(tenant_id=TENANT, invocation=new_invocation(agent, created_at=ts(n)),
                                      messages=[])
    await store.add_api_calls(tenant_id=TENANT, counts={"2024-03-01": 500})
    assert await overview_requests(store) == 2
    assert (await store.get_counters(tenant_id=TENANT))["invocations_total"] == 40


async def test_counters_are_sharded_and_summed_exactly(store: DynamoDBStore) -> None:
    agent = await registered_agent(store)
    await asyncio.gather(*(store.record_invocation(tenant_id=TENANT,
        invocation=new_invocation(agent, created_at=ts(n / 100), duration_ms=1.5), messages=[])
        for n in range(60)))
    for scope in (f"T#{TENANT}#", "T#*#"):  # the tenant's shards and the platform's
        shards = {key for key in stored_keys(store) if key.startswith(f"{scope}COUNTERS#")}
        assert 1 < len(shards) <= COUNTER_SHARDS
    for tenant_id in (TENANT, None):
        counters = await store.get_counters(tenant_id=tenant_id)
        assert (counters["invocations_total"], counters["invocation_ms_total"]) == (60, 90.0)


async def test_no_operation_scans(store: DynamoDBStore) -> None:
    project, _ = await everything_under_a_project(store)
    for call in (store.list_projects(tenant_id=TENANT, limit=5, last_key=None, status="building", user_id="alice"),
                 store.list_agents(tenant_id=TENANT, limit=5, last_key=None, capabilities=["beta", "gamma"]),
                 store.list_agents(tenant_id=TENANT, limit=5, last_key=None, category="customer_support",
                                   status="running"),
                 store.list_claimable_builds(now=ts(10_000), limit=5),
                 store.renew_leases(owner="engine_a", lease_until=ts(900)),
                 store.get_daily(tenant_id=TENANT, start="2000-01-01", end="2100-01-01")):
        await call
    assert await store.delete_project(tenant_id=TENANT, project_id=project.project_id)
    assert "Scan" not in store.request_counts
    assert set(store.request_counts) <= {"DescribeTable", "CreateTable", "GetItem", "Query",
                                         "BatchGetItem", "BatchWriteItem", "TransactWriteItems",
                                         "UpdateItem",
                                         # A new table's set-up: idempotency keys' expiry, the layout marker.
                                         "DescribeTimeToLive", "UpdateTimeToLive", "PutItem"}


# -- throttling ----------------------------------------------------------------------------------
class ThrottlingProxy:
    """A loopback HTTP endpoint in front of moto that answers the first `throttle` requests
    of one DynamoDB operation with ProvisionedThroughputExceededException."""

    def __init__(self, operation: str, throttle: int) -> None:
        self.operation = operation
        self.throttle = throttle
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> "ThrottlingProxy":
        self.upstream = httpx.AsyncClient(base_url=moto_server.endpoint())
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *_: object) -> None:
        self.server.close()
        await self.upstream.aclose()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                lines = head.decode().split("\r\n")
                headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
                body = await reader.readexactly(int(headers.get("Content-Length", "0")))
                target = headers.get("X-Amz-Target", "")
                if target.endswith(f".{self.operation}") and self.throttle > 0:
                    self.throttle -= 1
                    status, payload = 400, json.dumps({
                        "__type": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
                        "message": "The level of configured provisioned throughput was exceeded"}).encode()
                else:
                    answer = await self.upstream.post("/", content=body, headers={
                        k: v for k, v in headers.items() if k.lower() not in ("host", "content-length")})
                    status, payload = answer.status_code, answer.content
                writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: application/x-amz-json-1.0\r\n"
                             f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def test_throttling_is_retried_counted_and_finally_a_store_error(tmp_path: Path) -> None:
    async with ThrottlingProxy("GetItem", throttle=0) as proxy:
        store = DynamoDBStore(region=moto_server.REGION, endpoint_url=proxy.endpoint,
                              table_prefix=moto_server.new_prefix(), connect_timeout_seconds=2.0,
                              read_timeout_seconds=5.0, max_attempts=3, retry_mode="standard",
                              slow_query_threshold_seconds=10.0, credentials=moto_server.CREDENTIALS)
        await store.open()
        proxy.throttle = 2
        reported, gets = db_observer.figures.throttle_retries, store.request_counts["GetItem"]
        try:
            assert await store.get_project(tenant_id=TENANT, project_id="proj_000000000000") is None
            assert (store.throttle_retries, store.request_counts["GetItem"] - gets) == (2, 3)
            # ... and reported where the health check and /metrics read it.
            assert db_observer.figures.throttle_retries == reported + 2
            assert db_observer.figures.snapshot()["throttle_retries"] == reported + 2

            proxy.throttle = 3
            with pytest.raises(StoreThrottled, match="throttled GetItem after 3 attempts"):
                await store.get_project(tenant_id=TENANT, project_id="proj_000000000000")
            assert store.throttle_retries == 4
        finally:
            await store.close()
            moto_server.delete_tables([store.table[:-len("platform")]])


# -- bad input -----------------------------------------------------------------------------------
async def test_empty_and_oversized_key_values_are_handled_without_raw_errors(
        store: DynamoDBStore) -> None:
    project, build = await add_project(store, user_id="")
    assert [p.project_id for p in (await store.list_projects(tenant_id=TENANT,
        limit=5, last_key=None, user_id="")).items] == [project.project_id]
    assert await store.update_build(tenant_id=TENANT, build_id=build.build_id, changes={"updated_at": ts(1)},
                                    expect_status=("queued",), artifacts=[
        new_artifact(build, "", "", stage="", at=ts(1))])
    assert (await store.get_artifact(tenant_id=TENANT, project_id=project.project_id, path="")).content == ""
    assert await store.get_project(tenant_id=TENANT, project_id="") is None
    assert (await store.list_agents(tenant_id=TENANT, limit=5, last_key=None, category="")).items == []
    assert (await store.list_agents(tenant_id=TENANT, limit=5, last_key=None, capabilities=[""])).items == []

    huge = "x" * 3000
    assert await store.get_project(tenant_id=TENANT, project_id=huge) is None
    assert await store.get_agent(tenant_id=TENANT, agent_id=huge) is None
    assert (await store.list_agents(tenant_id=TENANT, limit=5, last_key=None, project_id=huge)).items == []
    assert await store.update_build(tenant_id=TENANT, build_id=huge, changes={}, expect_status=("queued",)) is False
    with pytest.raises(InvalidValue) as refused:
        await store.put_agent(tenant_id=TENANT, agent=new_agent(project.project_id, name=huge))
    assert refused.value.field == "agent_id"


async def test_reserved_words_are_ordinary_values_and_names(store: DynamoDBStore) -> None:
    project, _ = await add_project(store, user_id="status")
    agent = new_agent(project.project_id, category="size", capabilities=["name", "data", "select"])
    await store.put_agent(tenant_id=TENANT, agent=agent)
    session = new_session(agent, at=ts(1)).model_copy(
        update={"metadata": {"status": 1, "size": "x", "owner": None}})
    assert await store.create_session(tenant_id=TENANT, session=session)
    assert (await store.get_session(tenant_id=TENANT, session_id=session.session_id)).metadata == session.metadata
    assert len((await store.list_projects(tenant_id=TENANT, limit=5, last_key=None, user_id="status")).items) == 1
    assert len((await store.list_agents(tenant_id=TENANT, limit=5, last_key=None, category="size",
                                        capabilities=["select"])).items) == 1
    updated = await store.update_agent(tenant_id=TENANT, agent_id=agent.agent_id, changes={"status": "offline",
                                                                            "error_message": "size"})
    assert updated is not None and updated.status == "offline"


# -- deletes -------------------------------------------------------------------------------------
async def test_deletes_leave_nothing_but_the_aggregates(store: DynamoDBStore) -> None:
    project, agent = await everything_under_a_project(store)
    kept, kept_agent = await everything_under_a_project(store)
    before = stored_keys(store)

    assert await store.delete_project(tenant_id=TENANT, project_id=project.project_id)
    left = stored_keys(store)
    assert not any(project.project_id in key or agent.agent_id in key for key in left)
    assert not any(key.startswith(("CLEANUP", "LEASE#")) for key in left - before)

    sessions = (await store.list_sessions(tenant_id=TENANT, agent_id=kept_agent.agent_id, limit=5, last_key=None)).items
    assert await store.delete_session(tenant_id=TENANT, session_id=sessions[0].session_id)
    assert await store.delete_agent(tenant_id=TENANT, agent_id=kept_agent.agent_id)
    assert await store.delete_project(tenant_id=TENANT, project_id=kept.project_id)
    assert aggregates_only(stored_keys(store))


async def test_a_delete_interrupted_by_a_crash_is_finished_by_the_next_open(
        store: DynamoDBStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project, _ = await everything_under_a_project(store)
    counters = await store.get_counters(tenant_id=TENANT)

    async def process_dies(*_: Any) -> None:
        raise SystemExit("killed after the first write of the delete")

    monkeypatch.setattr(store, "_purge_project", process_dies)
    with pytest.raises(SystemExit):
        await store.delete_project(tenant_id=TENANT, project_id=project.project_id)
    assert await store.get_project(tenant_id=TENANT, project_id=project.project_id) is None
    assert "CLEANUP" in stored_keys(store)

    restarted = moto_server.dynamodb_store(tmp_path)
    await restarted.open()
    try:
        assert aggregates_only(stored_keys(restarted))
        after = await restarted.get_counters(tenant_id=TENANT)
        assert (after["builds_cancelled"] - counters["builds_cancelled"],
                after["agents_running"] - counters["agents_running"]) == (1, -1)
    finally:
        await restarted.close()


# -- several instances ---------------------------------------------------------------------------
async def test_instances_racing_for_one_build_let_exactly_one_claim_it(
        store: DynamoDBStore, tmp_path: Path) -> None:
    others = [moto_server.dynamodb_store(tmp_path) for _ in range(4)]
    for other in others:
        await other.open()
    try:
        _, build = await add_project(store)
        claims = await asyncio.gather(*(other.claim_build(tenant_id=TENANT,
            build_id=build.build_id, owner=f"engine_{n}", lease_until=ts(60), now=ts(1))
            for n, other in enumerate(others)))
        assert sorted(claims) == [False, False, False, True]
        winner = f"engine_{claims.index(True)}"
        assert (await store.get_build(tenant_id=TENANT, build_id=build.build_id)).owner == winner
        # The winner's renewal finds the build; the losers hold nothing.
        renewals = await asyncio.gather(*(other.renew_leases(owner=f"engine_{n}", lease_until=ts(90))
                                          for n, other in enumerate(others)))
        assert [len(r) for r in renewals] == [int(c) for c in claims]
    finally:
        for other in others:
            await other.close()


async def test_a_stop_through_another_instance_reaches_the_owner_through_its_lease(
        store: DynamoDBStore, tmp_path: Path) -> None:
    other = moto_server.dynamodb_store(tmp_path)
    await other.open()
    try:
        _, build = await add_project(store)
        assert await store.claim_build(tenant_id=TENANT, build_id=build.build_id, owner="engine_a",
                                       lease_until=ts(60), now=ts(1))
        # The owner's copy is cached; the other instance's write must still win.
        assert await store.update_build(tenant_id=TENANT, build_id=build.build_id, changes={"progress": 5.0},
                                        expect_status=("running",), expect_owner="engine_a")
        assert await other.update_build(tenant_id=TENANT, build_id=build.build_id,
                                        changes={"status": "cancelled", "owner": None,
                                                 "lease_until": None, "finished_at": ts(2),
                                                 "updated_at": ts(2)},
                                        expect_status=("running",))
        assert await store.update_build(tenant_id=TENANT, build_id=build.build_id, changes={"progress": 9.0},
                                        expect_status=("running",), expect_owner="engine_a") is False
        assert await store.renew_leases(owner="engine_a", lease_until=ts(90)) == []
        assert (await store.get_build(tenant_id=TENANT, build_id=build.build_id)).progress == 5.0
    finally:
        await other.close()


async def test_session_turns_from_two_instances_keep_one_sequence(store: DynamoDBStore,
                                                                 tmp_path: Path) -> None:
    other = moto_server.dynamodb_store(tmp_path)
    await other.open()
    try:
        agent = await registered_agent(store)
        session = new_session(agent, at=ts(1))
        assert await store.create_session(tenant_id=TENANT, session=session)
        await asyncio.gather(*(session_turn(instance, agent, session, at=ts(10 + n))
                               for n in range(6) for instance in (store, other)))
        messages = (await store.list_messages(tenant_id=TENANT, session_id=session.session_id, limit=100,
                                              last_key=None)).items
        assert [m.seq for m in messages] == list(range(1, 25))
        assert (await other.get_session(tenant_id=TENANT, session_id=session.session_id)).message_count == 24
        assert (await store.get_agent(tenant_id=TENANT, agent_id=agent.agent_id)).total_invocations == 12
    finally:
        await other.close()


def test_the_store_modules_never_scan() -> None:
    database = REPO / "api" / "database"
    # layout.py scans by design and only there: one item at the start of an instance that finds
    # a table without the layout marker, and the whole table in `nexus-ai migrate`.
    modules = [*sorted(set((database / "dynamodb").glob("*.py")) - {database / "dynamodb" / "layout.py"}),
               database / "dynamodb_client.py"]
    assert len(modules) > 2
    for module in modules:
        source = module.read_text()
        assert '"Scan"' not in source and ".scan(" not in source, module.name

