"""scripts/deploy.sh in both environments: start, status, logs, stop, and its failure paths."""

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.conftest import DEPLOY, Deployment


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_start_status_logs_stop(deployment: Deployment) -> None:
    production = deployment.env["ENVIRONMENT"] == "production"
    stale = deployment.multiproc / "counter_999.db"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left by an earlier run")

    started = deployment.run("start")
    assert started.returncode == 0, started.stderr
    assert f"Nexus-AI API is ready on port {deployment.port}" in started.stdout
    pid = deployment.pid()
    assert _alive(pid)
    assert not stale.exists() or not production

    again = deployment.run("start")
    assert again.returncode == 0
    assert f"already running (pid {pid})" in again.stdout
    assert deployment.pid() == pid

    sent = 12
    for _ in range(sent):
        assert httpx.get(f"{deployment.base_url}/api/v1/projects").status_code == 200

    status = deployment.run("status")
    assert status.returncode == 0, status.stdout
    assert f"pid:     {pid}" in status.stdout
    assert "ready:   200" in status.stdout
    assert ("workers: 2" if production else "workers: 1") in status.stdout
    health = json.loads(status.stdout.split("health:  ", 1)[1])
    assert health["data"]["checks"]["database"]["status"] == "healthy"

    if production:
        # Several workers, one answer: the scrape sums every worker's count.
        metrics = httpx.get(f"{deployment.base_url}/metrics").text
        count = sum(sample.value for family in text_string_to_metric_families(metrics)
                    for sample in family.samples
                    if sample.name == "http_requests_total" and sample.labels["route"] == "/api/v1/projects")
        assert count == sent
        files = {"access.log", "error.log"}
    else:
        files = {"api.log"}
    assert files <= {path.name for path in deployment.logs.iterdir()}
    for name in files:
        for line in (deployment.logs / name).read_text().splitlines():
            json.loads(line)
    if production:
        access = [json.loads(line) for line in (deployment.logs / "access.log").read_text().splitlines()]
        assert all(line["message"] == "Request completed" for line in access)
        assert sum(line["route"] == "/api/v1/projects" for line in access) == sent

    # `logs` follows the guide's files; a few seconds of it show what is there.
    followed = subprocess.run(["timeout", "3", str(DEPLOY), "logs"], env=deployment.env,
                              capture_output=True, text=True)
    assert ("Request completed" if production else "Nexus-AI Platform API started") in followed.stdout
    if production:
        assert all(f"==> {deployment.logs / name} <==" in followed.stdout for name in files)

    stopped = deployment.run("stop")
    assert stopped.returncode == 0
    assert f"stopped (pid {pid})" in stopped.stdout
    assert not _alive(pid)
    assert not deployment.pid_file.exists()
    assert deployment.run("status").returncode == 3


def test_env_file_values_with_spaces_and_quotes_are_data(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path, "development")
    marker = tmp_path / "executed"
    (tmp_path / ".env").write_text(
        'LOG_LEVEL="DEBUG"\n'
        f"GREETING='hello \"quoted\" world'  # comment\n"
        f"INJECTED=$(touch {marker})\n"
        f"ALSO_INJECTED=`touch {marker}`; touch {marker}\n"
        "not a variable line\n")
    try:
        started = deployment.run("start")
        assert started.returncode == 0, started.stderr
        assert not marker.exists()
        # LOG_LEVEL=DEBUG from .env reached the service: debug lines are in its log.
        httpx.get(f"{deployment.base_url}/api/v1/projects")
        levels = {json.loads(line)["level"] for line in (deployment.logs / "api.log").read_text().splitlines()}
        assert "DEBUG" in levels
        environ = Path(f"/proc/{deployment.pid()}/environ").read_bytes().split(b"\0")
        assert b"GREETING=hello \"quoted\" world" in environ
    finally:
        deployment.run("stop")


def test_start_fails_with_the_last_log_lines_when_the_service_cannot_come_up(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path, "development")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", deployment.port))
        taken.listen()
        result = deployment.run("start", API_HOST="127.0.0.1")
    assert result.returncode == 1
    assert "exited during start-up" in result.stderr or "did not become ready" in result.stderr
    assert "--- last lines of" in result.stderr
    assert "address already in use" in result.stderr.lower()
    assert not deployment.pid_file.exists()


def test_stop_escalates_to_sigkill_after_the_timeout(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path, "development")
    assert deployment.run("start").returncode == 0
    pid = deployment.pid()
    os.kill(pid, signal.SIGSTOP)  # a process that cannot act on SIGTERM
    result = deployment.run("stop", STOP_TIMEOUT="1")
    assert "sending SIGKILL" in result.stderr
    assert not _alive(pid)
    assert not deployment.pid_file.exists()


def test_help_and_unknown_commands() -> None:
    help_text = subprocess.run([str(DEPLOY), "help"], capture_output=True, text=True)
    assert help_text.returncode == 0
    for command in ("start", "stop", "restart", "status", "logs", "reopen-logs"):
        assert f"  {command}" in help_text.stdout
    unknown = subprocess.run([str(DEPLOY), "launch"], capture_output=True, text=True)
    assert unknown.returncode == 2
    assert "Usage: scripts/deploy.sh COMMAND" in unknown.stderr
