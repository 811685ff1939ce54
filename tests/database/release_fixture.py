"""`python -m tests.database.release_fixture [--dynamodb]`: writes the data of a release, for
the migration test of the next schema (issue 11, item 7): a project with its finished build,
the agent it registered, one direct invocation and a session with one turn, all through the API
of the code checked out. Then the SQLite file, checkpointed and vacuumed, with the ids it holds
beside it; or, with --dynamodb (on the tests' moto server), every item of the table and the ids
in one JSON file.

The committed file was written by the commit its name gives; write a new one only for a new
release, never over an old one: an old file is what a migration must keep reading.
"""

import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from contextlib import closing
from pathlib import Path
from typing import Any

from tests import moto_server
from tests.conftest import REQUIREMENT, make_settings, serving

FIXTURES = Path(__file__).resolve().parent / "fixtures"


async def _populate(workdir: Path, **settings: Any) -> dict[str, str]:
    async with serving(make_settings(workdir, offline_stage_delay_seconds=0, **settings)) as (_, api):
        project_id = (await api.create_project(REQUIREMENT, user_id="release_user"))["project_id"]
        await api.wait_status(project_id, "completed")
        agents = await api.call("GET", "/api/v1/agents", params={"project_id": project_id})
        agent_id = agents["items"][0]["agent_id"]
        invocation = await api.call("POST", f"/api/v1/agents/{agent_id}/invoke",
                                    json={"input_text": "Where is my refund?"})
        session = await api.call("POST", f"/api/v1/agents/{agent_id}/sessions",
                                 json={"display_name": "release session"}, expect=201)
        await api.call("POST", f"/api/v1/sessions/{session['session_id']}/messages",
                       json={"content": "I was charged twice."}, expect=201)
    return {"project_id": project_id, "agent_id": agent_id,
            "invocation_id": invocation["invocation_id"], "session_id": session["session_id"]}


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()


def write_sqlite_file() -> Path:
    commit = _commit()
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        ids = asyncio.run(_populate(workdir))
        database = workdir / "data" / "nexus-ai.db"
        with closing(sqlite3.connect(database, isolation_level=None)) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.execute("VACUUM")
        target = FIXTURES / f"release-{commit}.db"
        shutil.copyfile(database, target)
    (FIXTURES / f"release-{commit}.json").write_text(json.dumps({"commit": commit, **ids}, indent=2) + "\n")
    return target


def write_dynamodb_items() -> Path:
    import boto3

    commit = _commit()
    prefix = moto_server.new_prefix()
    os.environ.update(moto_server.AWS_ENV)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            ids = asyncio.run(_populate(
                Path(scratch), storage_backend="dynamodb", dynamodb_endpoint_url=moto_server.endpoint(),
                dynamodb_region=moto_server.REGION, dynamodb_table_prefix=prefix))
        client = boto3.client("dynamodb", endpoint_url=moto_server.endpoint(),
                              region_name=moto_server.REGION)
        items = [item for page in client.get_paginator("scan").paginate(TableName=f"{prefix}platform")
                 for item in page["Items"]]
    finally:
        moto_server.delete_tables([prefix])
    target = FIXTURES / f"release-{commit}-dynamodb.json"
    items.sort(key=lambda item: (item["pk"]["S"], item["sk"]["S"]))
    target.write_text(json.dumps({"commit": commit, **ids, "items": items}, indent=1) + "\n")
    return target


def main() -> None:
    target = write_dynamodb_items() if "--dynamodb" in sys.argv[1:] else write_sqlite_file()
    print(target, file=sys.stderr)


if __name__ == "__main__":
    main()
