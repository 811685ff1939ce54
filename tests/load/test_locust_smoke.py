"""The load scenario runs clean: headless locust, 20 users for 30 s against a live server."""

import csv
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.tooling import tool

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def test_locust_scenario_runs_without_failures(tmp_path: Path, server_factory: Any) -> None:
    locust = tool("locust", "pip install locust")
    server = server_factory()
    result = subprocess.run(
        [locust, "-f", str(LOCUSTFILE), "--headless", "--users", "20", "--spawn-rate", "10",
         "--run-time", "30s", "--host", server.base_url, "--csv", str(tmp_path / "smoke"),
         "--only-summary"],
        capture_output=True, text=True, timeout=120)
    with open(tmp_path / "smoke_stats.csv") as stats:
        rows = {row["Name"]: row for row in csv.DictReader(stats)}
    total = rows["Aggregated"]
    assert int(total["Request Count"]) > 100, result.stderr[-2000:]
    assert int(total["Failure Count"]) == 0, (tmp_path / "smoke_failures.csv").read_text()
    # Every task of the scenario ran against ids that exist.
    assert {"/api/v1/projects", "/api/v1/projects/{project_id}", "/api/v1/statistics/overview",
            "/api/v1/agents/{agent_id}/invoke"} <= set(rows)
    assert result.returncode == 0, result.stderr[-2000:]
    print(f"locust smoke: {total['Request Count']} requests, median {total['Median Response Time']} ms, "
          f"p95 {total['95%']} ms, {total['Requests/s']} req/s", file=sys.stderr)
