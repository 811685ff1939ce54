"""Every dashboard query and alert expression, executed by a real Prometheus scraping a real
server that has served traffic, builds and invocations (failures included): the embedded
default (the API runs the builds) and the split (the API with RUN_BUILDS=false and a build
worker, `nexus-ai worker`, scraped as job nexus-ai-worker).

Grafana cannot be installed here; running its queries through Prometheus' HTTP API is how we
know the dashboard shows data rather than "No data".
"""

import json
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import (
    BUILD_WORKER,
    OTHER_REQUIREMENT,
    REQUIREMENT,
    ServerProcess,
    free_port,
    wait_until,
)
from tests.secrets_check import record_secret
from tests.tooling import tool

ROOT = Path(__file__).resolve().parents[2]
GUIDE_PANELS = ("Request rate", "Response time (p50, p95, p99)", "Error rate", "Active builds",
                "Agent invocations")
# Every call of the offline provider succeeds: "Model error rate" may have nothing to show.
MODEL_PANELS = ("Model tokens per second", "Model latency (p50, p95, p99)",
                "Model time to first token (p50, p95)")
WORKER_PANELS = ("Workers up", "Active builds by instance")
# What Grafana would put in for the dashboard's variables (Job: All, Instance: All).
VARIABLES = {"$job": "(nexus-ai-api|nexus-ai-worker)", "$instance": ".+", "$__rate_interval": "1m"}




def _drive_traffic(base: str, key: str) -> None:
    """Successes and failures of every kind the dashboard and alerts look at."""
    with httpx.Client(base_url=base, timeout=10, headers={"Authorization": f"Bearer {key}"}) as client:
        projects = [client.post("/api/v1/projects", json={"requirement": requirement}).json()["data"]
                    for requirement in (REQUIREMENT, OTHER_REQUIREMENT, REQUIREMENT)]
        stopped = projects[2]["project_id"]
        assert client.put(f"/api/v1/projects/{stopped}/control", json={"action": "stop"}).status_code == 200
        for project in projects[:2]:
            wait_until(lambda: client.get(f"/api/v1/projects/{project['project_id']}").json()["data"]["status"]
                  == "completed", what="a build to complete")
        agents = client.get("/api/v1/agents").json()["data"]["items"]
        for number in range(10):
            answer = client.post(f"/api/v1/agents/{agents[number % 2]['agent_id']}/invoke",
                                 json={"input_text": f"request {number}"})
            assert answer.status_code == 200
        offline = agents[1]["agent_id"]
        client.put(f"/api/v1/agents/{offline}/status", json={"status": "offline"})
        assert client.post(f"/api/v1/agents/{offline}/invoke", json={"input_text": "x"}).status_code == 409
        assert client.get("/api/v1/projects/proj_000000000000").status_code == 404
        assert client.post("/api/v1/projects", json={"requirement": "short"}).status_code == 400
        assert client.get("/no/such/route").status_code == 404
        for _ in range(20):
            client.get("/api/v1/projects")
            client.get("/api/v1/statistics/overview")


@dataclass
class Scraped:
    url: str  # Prometheus
    server: ServerProcess  # the API
    worker: ServerProcess | None  # the build worker, in the split


@pytest.fixture
def prometheus(request: pytest.FixtureRequest, tmp_path: Path, server_factory: Any) -> Iterator[Scraped]:
    """`request.param` (indirect): "embedded" (the default) or "split"."""
    split = getattr(request, "param", "embedded") == "split"
    binary = tool("prometheus", "apt-get install prometheus")
    # As in production: API keys, and Prometheus scraping with the operator token from a file.
    token = secrets.token_urlsafe(32)
    (tmp_path / "operator-token").write_text(token + "\n")
    secured = {"AUTH_MODE": "api_key", "OPERATOR_TOKEN": token, "OFFLINE_STAGE_DELAY_SECONDS": "0.02"}
    server = server_factory(**secured, **({"RUN_BUILDS": "false"} if split else {}))
    key = subprocess.run([sys.executable, "-m", "api.cli", "keys", "create", "--tenant", "default",
                          "--role", "admin"], env=server.env, cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout.strip()
    record_secret(key)
    worker = None
    if split:
        # On the API's data directory (the same SQLite file), its probes and /metrics on a port
        # of its own.
        worker = ServerProcess(tmp_path, secured, BUILD_WORKER).start()
    try:
        assert httpx.get(f"{server.base_url}/metrics").status_code == 401  # Prometheus needs the file
        _drive_traffic(server.base_url, key)

        # The shipped configuration and rules, pointed at the test servers and sped up.
        config = yaml.safe_load((ROOT / "monitoring" / "prometheus.yml").read_text())
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")
        config.pop("alerting")
        config["rule_files"] = [str(ROOT / "monitoring" / "alert-rules.yml")]
        jobs = {job["job_name"]: job for job in config["scrape_configs"]}
        assert list(jobs) == ["nexus-ai-api", "nexus-ai-worker"]
        targets = {"nexus-ai-api": server, "nexus-ai-worker": worker}
        for name, job in jobs.items():
            job["scrape_interval"] = "1s"
            assert job["authorization"] == {"credentials_file": "/etc/prometheus/nexus-ai-operator-token"}
            job["authorization"]["credentials_file"] = str(tmp_path / "operator-token")
            if targets[name]:
                job["static_configs"] = [{"targets": [f"127.0.0.1:{targets[name].port}"]}]
        if not split:
            # Without workers the operator deletes their job (docs/MONITORING.md).
            config["scrape_configs"].remove(jobs["nexus-ai-worker"])
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))

        port = free_port()
        log = open(tmp_path / "prometheus.log", "wb")
        process = subprocess.Popen(
            [binary, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=log)
        url = f"http://127.0.0.1:{port}"
        try:
            # rate() needs two samples inside its window; a few scrapes give them.
            for job in jobs if split else ["nexus-ai-api"]:
                wait_until(lambda: _samples(url, f'up{{job="{job}"}}') >= 5, what=f"Prometheus to scrape {job}")
            yield Scraped(url, server, worker)
        finally:
            process.terminate()
            process.wait(timeout=30)
            log.close()
    finally:
        if worker is not None:
            worker.stop()


def _query(url: str, expr: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert response["status"] == "success", (expr, response)
    return response["data"]["result"]


def _samples(url: str, selector: str) -> int:
    try:
        result = _query(url, f"count_over_time({selector}[1m])")
    except (httpx.TransportError, ValueError):  # not listening yet, or still starting up
        return 0
    return int(float(result[0]["value"][1])) if result else 0


def _dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads((ROOT / "monitoring" / "grafana-dashboard.json").read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in VARIABLES.items():
                expr = expr.replace(name, value)
            queries.append((panel["title"], expr))
    return queries


def _alert_rules() -> list[dict[str, Any]]:
    rules = yaml.safe_load((ROOT / "monitoring" / "alert-rules.yml").read_text())
    return [rule for group in rules["groups"] for rule in group["rules"]]


@pytest.mark.parametrize("prometheus", ["embedded", "split"], indirect=True)
def test_every_dashboard_query_and_alert_evaluates_and_the_guide_panels_show_data(
        prometheus: Scraped) -> None:
    url = prometheus.url
    split = prometheus.worker is not None
    panels_with_data = set()
    results = {}
    for title, expr in _dashboard_queries():
        if result := _query(url, expr):
            panels_with_data.add(title)
            results.setdefault(title, []).extend(result)
    expected = GUIDE_PANELS + MODEL_PANELS + (WORKER_PANELS if split else ())
    missing = [title for title in expected if title not in panels_with_data]
    assert not missing, f"panels without data: {missing}"
    if split:
        # The worker built what the API accepted: its builds, its instance on the panel.
        worker = f"127.0.0.1:{prometheus.worker.port}"
        per_instance = {(r["metric"]["job"], r["metric"]["instance"])
                        for r in results["Active builds by instance"]}
        api = f"127.0.0.1:{prometheus.server.port}"
        assert per_instance == {("nexus-ai-api", api), ("nexus-ai-worker", worker)}
        assert sorted(float(r["value"][1]) for r in results["Workers up"]) == [1.0, 1.0]  # up, scraped
        built = _query(url, 'sum by (job) (builds_total{job=~"nexus-ai-.*", status="succeeded"})')
        assert {r["metric"]["job"]: float(r["value"][1]) for r in built} == {"nexus-ai-worker": 2.0}
        # Every metric the rules watch on the workers' job is one a worker exposes.
        exposed = {r["metric"]["__name__"]
                   for r in _query(url, 'count by (__name__) ({job="nexus-ai-worker"})')}
        watched = set()
        for rule in _alert_rules():
            if "nexus-ai-worker" in rule["expr"]:
                watched |= set(re.findall(r"([a-z_:][a-z0-9_:]*)\{[^}]*nexus-ai-worker", rule["expr"]))
                for alternatives in re.findall(r'__name__=~"([^"]+)"[^}]*nexus-ai-worker', rule["expr"]):
                    watched |= set(alternatives.split("|"))
        assert {"builds_total", "builds_active", "database_up", "model_requests_total"} <= watched
        assert watched - exposed == set()

    for rule in _alert_rules():
        _query(url, rule["expr"])

    # Prometheus' own evaluation of the rule files: every rule healthy, none firing on a
    # healthy service.
    def evaluated() -> list[dict[str, Any]] | None:
        groups = httpx.get(f"{url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return rules if all(rule.get("lastEvaluation", "").startswith("20") for rule in rules) else None

    rules = wait_until(evaluated, what="rule evaluation")
    assert {rule["name"] for rule in rules} == {rule["alert"] for rule in _alert_rules()}
    assert [(rule["name"], rule.get("lastError")) for rule in rules if rule["health"] != "ok"] == []
    assert [rule["name"] for rule in rules if rule["state"] != "inactive"] == []


def test_database_alert_fires_when_the_database_is_gone(prometheus: Scraped) -> None:
    url, server = prometheus.url, prometheus.server
    (server.workdir / "data" / "nexus-ai.db").rename(server.workdir / "data" / "moved.db")
    wait_until(lambda: _query(url, 'database_up{job="nexus-ai-api"} == 0'), what="database_up to drop")
    rule = next(r for r in _alert_rules() if r["alert"] == "DatabaseConnectionFailure")
    assert _query(url, rule["expr"]), "the alert expression must hold while the database is down"


@pytest.mark.parametrize("prometheus", ["split"], indirect=True)
def test_worker_down_alert_holds_for_the_stopped_worker(prometheus: Scraped) -> None:
    url, worker = prometheus.url, prometheus.worker
    assert worker is not None
    target = f"127.0.0.1:{worker.port}"
    assert worker.stop() in (0, -15)  # SIGTERM: a graceful stop (or the signal re-raised)
    wait_until(lambda: _query(url, 'up{job="nexus-ai-worker"} == 0'), what="the worker's scrape to fail")
    tiers = {r["labels"]["severity"]: r["expr"] for r in _alert_rules() if r["alert"] == "BuildWorkerDown"}
    assert set(tiers) == {"warning", "critical"}
    for severity, expr in tiers.items():
        # The only worker is gone: both tiers hold, for it.
        assert [r["metric"]["instance"] for r in _query(url, expr)] == [target], severity
    # The API still answers: InstanceDown's expression does not hold.
    instance_down = next(r["expr"] for r in _alert_rules() if r["alert"] == "InstanceDown")
    assert _query(url, instance_down) == []
