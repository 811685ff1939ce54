"""The load scenario runs clean with a key: a production-like server (AUTH_MODE=api_key), a
builder's key made with `nexus-ai keys create` in NEXUS_API_KEY, headless locust, 20 users for
30 s; every request authenticated (no 401 or 403, no failure at all)."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import REPO
from tests.tooling import tool

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
KEY_NAME = "locust"


def create_key(tmp_path: Path, **env: str) -> str:
    """A builder's key, as the locustfile's docstring makes it (the scenario deletes nothing)."""
    created = subprocess.run(
        [sys.executable, "-m", "api.cli", "keys", "create", "--tenant", "load", "--role", "builder",
         "--name", KEY_NAME], cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO), **env})
    assert created.returncode == 0, created.stderr
    return created.stdout.strip()


def test_locust_scenario_runs_with_a_key_without_failures(tmp_path: Path, server_factory: Any) -> None:
    locust = tool("locust", "pip install locust")
    # 20 users create about 60 projects in 30 s, one key's default builds for an hour: a load
    # test's key gets room for them (the limits themselves: tests/routers/test_limits.py).
    server = server_factory(ENVIRONMENT="production", AUTH_MODE="api_key",
                            KEY_BUILDS_PER_HOUR="1000", TENANT_BUILDS_PER_HOUR="1000")
    assert httpx.get(f"{server.base_url}/api/v1/projects").status_code == 401  # keys are required
    token = create_key(tmp_path, DATA_DIR=server.env["DATA_DIR"])
    result = subprocess.run(
        [locust, "-f", str(LOCUSTFILE), "--headless", "--users", "20", "--spawn-rate", "10",
         "--run-time", "30s", "--host", server.base_url, "--csv", str(tmp_path / "smoke"),
         "--only-summary"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "NEXUS_API_KEY": token})
    with open(tmp_path / "smoke_stats.csv") as stats:
        rows = {row["Name"]: row for row in csv.DictReader(stats)}
    total = rows["Aggregated"]
    assert int(total["Request Count"]) > 100, result.stderr[-2000:]
    # A refused key (401, 403) or any other error status would be a failure here.
    assert int(total["Failure Count"]) == 0, (tmp_path / "smoke_failures.csv").read_text()
    # Every task of the scenario ran against ids that exist.
    assert {"/api/v1/projects", "/api/v1/projects/{project_id}", "/api/v1/statistics/overview",
            "/api/v1/agents/{agent_id}/invoke"} <= set(rows)
    assert result.returncode == 0, result.stderr[-2000:]
    # The server served them as the key's principal, and wrote the key nowhere.
    # (Production's access lines go to access.log; the one request not the key's is the 401.)
    lines = [json.loads(line) for line in (server.log_dir / "access.log").read_text().splitlines()]
    api_lines = [line for line in lines if line["path"].startswith("/api/v1/")]
    assert len(api_lines) > 100
    assert [line["status_code"] for line in api_lines if line.get("user_id") != KEY_NAME] == [401]
    for log in server.log_dir.iterdir():
        assert token.split("_", 2)[2] not in log.read_text(), log
    print(f"locust smoke: {total['Request Count']} requests, median {total['Median Response Time']} ms, "
          f"p95 {total['95%']} ms, {total['Requests/s']} req/s", file=sys.stderr)
