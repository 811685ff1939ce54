"""scripts/deploy.sh in both environments: start, status, logs, stop, and its failure paths;
with BUILD_WORKERS, the API and its build workers."""

import json
import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import OTHER_REQUIREMENT, REQUIREMENT, wait_until
from tests.deploy.conftest import DEPLOY, Deployment


def _alive(pid: int) -> bool:
    """Running: a zombie (exited, its parent gone and nobody reaping it, as under a container's
    PID 1 that does not reap) is not."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


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
        assert httpx.get(f"{deployment.base_url}/api/v1/projects", headers=deployment.headers).status_code == 200

    status = deployment.run("status")
    assert status.returncode == 0, status.stdout
    assert f"pid:     {pid}" in status.stdout
    assert "ready:   200" in status.stdout
    assert ("workers: 2" if production else "workers: 1") in status.stdout
    health = json.loads(status.stdout.split("health:  ", 1)[1])
    assert health["data"]["checks"]["database"]["status"] == "healthy"

    if production:
        # Several workers, one answer: the scrape sums every worker's count.
        metrics = httpx.get(f"{deployment.base_url}/metrics", headers=deployment.operator_headers).text
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
        httpx.get(f"{deployment.base_url}/api/v1/projects", headers=deployment.headers)
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


# -- build workers (BUILD_WORKERS) --------------------------------------------------------------
def _children(pid: int, *pattern: str) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid), *pattern], capture_output=True, text=True)
    return [int(child) for child in found.stdout.split()]


def _environ(pid: int) -> dict[str, str]:
    entries = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
    return dict(entry.split("=", 1) for entry in entries if "=" in entry)


def _samples(url: str, name: str, headers: dict[str, str]) -> dict[str, float]:
    """The samples of metric `name` at `url`/metrics, by their `status` label ("" without)."""
    text = httpx.get(f"{url}/metrics", headers=headers).text
    return {sample.labels.get("status", ""): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples
            if sample.name == name}


def _finished(base_url: str, project_id: str, headers: dict[str, str]) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        project = httpx.get(f"{base_url}/api/v1/projects/{project_id}", headers=headers).json()["data"]
        return project if project["status"] in ("completed", "failed", "cancelled") else None

    return wait_until(finished, what=f"{project_id} to finish")


def test_build_workers_run_the_builds_while_the_api_only_serves(deployment: Deployment) -> None:
    production = deployment.env["ENVIRONMENT"] == "production"
    split = {"BUILD_WORKERS": "2", "OFFLINE_STAGE_DELAY_SECONDS": "0"}
    first, second = deployment.worker_port, deployment.worker_port + 1

    started = deployment.run("start", **split)
    assert started.returncode == 0, started.stdout + started.stderr
    assert f"Nexus-AI API is ready on port {deployment.port}" in started.stdout
    assert f"Nexus-AI build worker 1 is ready on port {first}" in started.stdout
    assert f"Nexus-AI build worker 2 is ready on port {second}" in started.stdout
    api_pid, workers = deployment.pid(), deployment.worker_pids()
    assert len(workers) == 2 and all(map(_alive, [api_pid, *workers]))
    api_processes = [api_pid, *_children(api_pid)]
    assert len(_children(api_pid, "-f", "spawn_main")) == (2 if production else 0)
    # The API serves without running builds; the workers are one process each, without the
    # multiprocess directory the fixture (and production) put in the environment.
    assert _environ(api_pid)["RUN_BUILDS"] == "false"
    assert _environ(api_pid)["PROMETHEUS_MULTIPROC_DIR"] == str(deployment.multiproc)
    for pid in workers:
        assert "PROMETHEUS_MULTIPROC_DIR" not in _environ(pid)
        assert _children(pid) == []

    # A worker serves its probes and /metrics, and nothing of the API.
    ready = httpx.get(f"{deployment.worker_url(1)}/health/ready")
    assert ready.status_code == 200 and ready.json()["data"]["status"] == "ready"
    assert ready.json()["data"]["checks"]["database"]["status"] == "healthy"
    assert httpx.get(f"{deployment.worker_url(2)}/health/live").json()["data"]["status"] == "alive"
    assert httpx.get(f"{deployment.worker_url(1)}/api/v1/projects", headers=deployment.headers).status_code == 404
    assert _samples(deployment.worker_url(2), "builds_active", deployment.operator_headers) == {"": 0}

    again = deployment.run("start", **split)
    assert again.returncode == 0, again.stderr
    assert f"Nexus-AI build worker 1 is already running (pid {workers[0]}, port {first})" in again.stdout
    assert deployment.worker_pids() == workers

    status = deployment.run("status", **split)
    assert status.returncode == 0, status.stdout
    assert f"pid:     {api_pid}" in status.stdout and "ready:   200" in status.stdout
    for number, (pid, port) in enumerate(zip(workers, (first, second)), start=1):
        line = next(line for line in status.stdout.splitlines() if line.startswith(f"build worker {number}:"))
        assert line.startswith(f"build worker {number}: pid {pid}, port {port}, uptime "), line
        assert line.endswith("ready 200 (GET /health/ready), builds running 0"), line

    # Projects created through the API are built by the workers (and by nothing else).
    requirements = [REQUIREMENT, OTHER_REQUIREMENT, REQUIREMENT]
    created = [httpx.post(f"{deployment.base_url}/api/v1/projects", json={"requirement": requirement},
                          headers=deployment.headers)
               for requirement in requirements]
    assert [response.status_code for response in created] == [201] * 3
    for response in created:
        project = _finished(deployment.base_url, response.json()["data"]["project_id"], deployment.headers)
        assert project["status"] == "completed", project
        assert project["progress"] == 100
    built = [_samples(deployment.worker_url(number), "builds_total", deployment.operator_headers) for number in (1, 2)]
    assert sum(samples.get("succeeded", 0) for samples in built) == 3
    assert _samples(deployment.base_url, "builds_total", deployment.operator_headers) == {}
    agents = httpx.get(f"{deployment.base_url}/api/v1/agents", headers=deployment.headers).json()["data"]
    assert agents["count"] == 3

    # SIGHUP reopens the workers' log files; it does not end them.
    reopened = deployment.run("reopen-logs", **split)
    assert reopened.returncode == 0
    assert all(str(pid) in reopened.stdout for pid in workers), reopened.stdout
    assert deployment.run("status", **split).returncode == 0

    stopped = deployment.run("stop", **split)
    assert stopped.returncode == 0, stopped.stderr
    assert f"Nexus-AI API stopped (pid {api_pid})" in stopped.stdout
    for number, pid in enumerate(workers, start=1):
        assert f"Nexus-AI build worker {number} stopped (pid {pid})" in stopped.stdout
    assert "SIGKILL" not in stopped.stderr
    # The supervisor's helpers (its resource tracker) may outlive it by a moment.
    wait_until(lambda: not [pid for pid in [*api_processes, *workers] if _alive(pid)], timeout=10,
               what="every process of the deployment to exit")
    assert not deployment.pid_file.exists() and not deployment.worker_pid_file.exists()
    after = deployment.run("status", **split)
    assert after.returncode == 3
    assert "Nexus-AI API is not running" in after.stdout
    assert f"build worker 2: not running (port {second})" in after.stdout
    # Both kinds of process wrote the environment's log files.
    name = "error.log" if production else "api.log"
    messages = [json.loads(line)["message"] for line in (deployment.logs / name).read_text().splitlines()]
    assert messages.count("Nexus-AI build worker started") == 2
    assert messages.count("Nexus-AI build worker stopped") == 2
    assert "Nexus-AI Platform API stopped" in messages


def test_a_build_worker_that_cannot_start_fails_start_and_start_again_brings_it_up(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path, "development")
    try:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", deployment.worker_port))
            taken.listen()
            result = deployment.run("start", BUILD_WORKERS="1")
            assert result.returncode == 1
            assert f"Nexus-AI API is ready on port {deployment.port}" in result.stdout
            assert "Nexus-AI build worker 1 exited during start-up" in result.stderr
            assert "address already in use" in result.stderr.lower()
            assert "run start again" in result.stderr
            assert not deployment.worker_pid_file.exists()
            # The API runs (without builds); status says the worker is missing.
            status = deployment.run("status", BUILD_WORKERS="1")
            assert status.returncode == 1
            assert "ready:   200" in status.stdout
            assert f"build worker 1: not running (port {deployment.worker_port})" in status.stdout
        api_pid = deployment.pid()
        again = deployment.run("start", BUILD_WORKERS="1")
        assert again.returncode == 0, again.stderr
        assert f"Nexus-AI API is already running (pid {api_pid})" in again.stdout
        assert f"Nexus-AI build worker 1 is ready on port {deployment.worker_port}" in again.stdout
        assert deployment.run("status", BUILD_WORKERS="1").returncode == 0
    finally:
        deployment.run("stop")
    assert not deployment.worker_pid_file.exists()


def test_stop_escalates_to_sigkill_for_a_build_worker_too(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path, "development")
    try:
        assert deployment.run("start", BUILD_WORKERS="1").returncode == 0
        api_pid, [worker] = deployment.pid(), deployment.worker_pids()
        os.kill(worker, signal.SIGSTOP)  # a process that cannot act on SIGTERM
        # stop needs no BUILD_WORKERS: it stops what the pid file names. (The API may need the
        # SIGKILL too: the stopped worker can hold SQLite's write lock.)
        result = deployment.run("stop", STOP_TIMEOUT="1")
        assert "Nexus-AI build worker 1 did not stop within 1s; sending SIGKILL" in result.stderr
        assert f"Nexus-AI build worker 1 stopped (pid {worker})" in result.stdout
        assert not _alive(worker) and not _alive(api_pid)
        assert not deployment.worker_pid_file.exists() and not deployment.pid_file.exists()
    finally:
        deployment.run("stop", STOP_TIMEOUT="1")
