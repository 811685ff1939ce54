"""A DynamoDB table written by an earlier release (fixtures/release-*-dynamodb.json, written by
release_fixture.py --dynamodb) is refused until `nexus-ai migrate` converts it, then reads back
as the default tenant's and keeps working (issue 11, item 7)."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest

from api.database.dynamodb.layout import OldLayout
from api.database.factory import create_store
from api.database.store import DEFAULT_TENANT
from tests import moto_server
from tests.conftest import make_settings, serving

RELEASE_TABLES = sorted((Path(__file__).resolve().parent / "fixtures").glob("release-*-dynamodb.json"))
NEXUS_AI = Path(sys.executable).parent / "nexus-ai"
# Layout-1 items no finished release leaves behind, written as that layout had them: a lease row
# of an engine that died holding a build since deleted, and the marker of an interrupted delete.
LEFT_BEHIND = [{"pk": {"S": "LEASE#engine_gone"}, "sk": {"S": "BUILD#build_gone"}},
               {"pk": {"S": "CLEANUP"}, "sk": {"S": "agent#proj_gone:agent_gone"}}]


def migrate(prefix: str, workdir: Path) -> str:
    """`nexus-ai migrate` as an operator runs it; its last line."""
    env = {**os.environ, **moto_server.server_env(prefix), "DATA_DIR": str(workdir / "data"),
           "LOG_DIR": str(workdir / "logs")}
    done = subprocess.run([str(NEXUS_AI), "migrate"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("fixture", RELEASE_TABLES, ids=lambda path: path.stem)
async def test_a_release_table_migrates_to_the_default_tenant(
        fixture: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = json.loads(fixture.read_text())
    items: list[dict[str, Any]] = release["items"]
    with moto_server.dynamodb_settings(monkeypatch) as overrides:
        settings = make_settings(tmp_path, offline_stage_delay_seconds=0, **overrides)
        # The release's table: keys and indexes as this release creates them, holding the
        # release's items and no layout marker.
        store = create_store(settings)
        await store.open()
        await store.close()
        client = boto3.client("dynamodb", endpoint_url=moto_server.endpoint(),
                              region_name=moto_server.REGION)
        client.delete_item(TableName=store.table, Key={"pk": {"S": "#LAYOUT"}, "sk": {"S": "#LAYOUT"}})
        for item in [*items, *LEFT_BEHIND]:
            client.put_item(TableName=store.table, Item=item)
        counters_before = {name: sum(float(item[name]["N"]) for item in items
                                     if item["pk"]["S"].startswith("COUNTERS#") and name in item)
                           for name in ("builds_total", "builds_succeeded", "invocations_total")}

        with pytest.raises(OldLayout, match="nexus-ai migrate"):
            await create_store(settings).open()

        converted = len(items) + len(LEFT_BEHIND)
        assert migrate(settings.dynamodb_table_prefix, tmp_path) == (
            f"Database ready (dynamodb, {converted} items converted)")
        assert migrate(settings.dynamodb_table_prefix, tmp_path) == (
            "Database ready (dynamodb, 0 items converted)")
        keys = {(item["pk"]["S"], item["sk"]["S"]) for page in
                client.get_paginator("scan").paginate(TableName=store.table) for item in page["Items"]}
        assert all(pk.startswith("T#") or pk.startswith("LEASE#") or pk == "#LAYOUT"
                   for pk, _ in keys), keys
        assert ("LEASE#engine_gone", "T#default#BUILD#build_gone") in keys
        assert not any(pk == "CLEANUP" for pk, _ in keys)  # the interrupted delete finished

        store = create_store(settings)
        await store.open()
        try:
            for tenant, found in ((DEFAULT_TENANT, True), ("globex", False)):
                records = [await store.get_project(tenant_id=tenant, project_id=release["project_id"]),
                           await store.get_agent(tenant_id=tenant, agent_id=release["agent_id"]),
                           await store.get_session(tenant_id=tenant, session_id=release["session_id"])]
                assert [record and record.tenant_id for record in records] == (
                    [DEFAULT_TENANT] * 3 if found else [None] * 3)
                page = await store.list_projects(tenant_id=tenant, limit=10, last_key=None)
                assert [p.project_id for p in page.items] == ([release["project_id"]] if found else [])
            for scope in (DEFAULT_TENANT, None):
                counters = await store.get_counters(tenant_id=scope)
                assert {name: counters[name] for name in counters_before} == counters_before
            assert not any((await store.get_counters(tenant_id="globex")).values())
        finally:
            await store.close()

        async with serving(settings) as (_, api):
            project = await api.project(release["project_id"])
            assert (project["status"], project["user_id"]) == ("completed", "release_user")
            invocations = await api.call("GET", f"/api/v1/agents/{release['agent_id']}/invocations")
            assert release["invocation_id"] in {item["invocation_id"] for item in invocations["items"]}
            messages = await api.call("GET", f"/api/v1/sessions/{release['session_id']}/messages")
            assert [message["role"] for message in messages["items"]] == ["user", "assistant"]
            overview = await api.call("GET", "/api/v1/statistics/overview")
            assert (overview["total_builds"], overview["successful_builds"],
                    overview["total_invocations"], overview["total_agents"]) == (1, 1, 2, 1)

            # And the table keeps working: a new build of the old project runs to its end.
            await api.call("PUT", f"/api/v1/projects/{release['project_id']}/control",
                           json={"action": "restart"})
            rebuilt = await api.wait_status(release["project_id"], "completed")
            assert rebuilt["latest_build_id"] != project["latest_build_id"]
            overview = await api.call("GET", "/api/v1/statistics/overview")
            assert (overview["total_builds"], overview["successful_builds"]) == (2, 2)
