"""Real server processes: the log files an operator reads, rotation, several workers, promtool."""

import json
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
from prometheus_client.mmap_dict import MmapedDict

from tests.conftest import REQUIREMENT, ServerProcess, wait_until
from tests.observability.conftest import (
    FAILING_APP,
    access_entries,
    log_entries,
    parse_samples,
    sample,
)
from tests.tooling import tool

Serve = Callable[..., ServerProcess]


def shell(command: str, cwd: Path) -> str:
    """Run one of the guide's commands as written."""
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=cwd,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, (command, result.stderr)
    return result.stdout


def send_invalid_http(server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        sock.recv(1024)


def test_a_real_run_writes_only_json_lines_that_the_guide_commands_find(server_factory: Serve) -> None:
    server = server_factory(command=FAILING_APP, SLOW_QUERY_THRESHOLD_SECONDS="0")
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        created = client.post("/api/v1/projects", json={"requirement": REQUIREMENT},
                              headers={"X-Request-ID": "build-req-1"}).json()["data"]
        project_id, build_id = created["project_id"], created["latest_build"]["build_id"]
        wait_until(lambda: client.get(f"/api/v1/projects/{project_id}").json()["data"]["status"]
                   == "completed", what="the build to complete")
        failed = client.get("/boom", headers={"X-Request-ID": "boom-req-1"})
    assert failed.status_code == 500 and failed.headers["X-Request-ID"] == "boom-req-1"
    assert failed.json()["error"]["trace_id"] == "boom-req-1"
    send_invalid_http(server)
    server.stop()

    log = server.log_dir / "api.log"
    entries = log_entries(log)
    messages = [e["message"] for e in entries]
    for expected in ("Started server process [", "Application startup complete.", "Uvicorn running on",
                     "Application shutdown complete.", "Finished server process ["):
        assert any(m.startswith(expected) for m in messages), expected
    assert any(e["logger"] == "uvicorn.error" and e["level"] == "WARNING"
               and e["message"] == "Invalid HTTP request received." for e in entries)

    build_lines = [e for e in entries if e.get("build_id") == build_id]
    assert any(e["message"] == "Build succeeded" for e in build_lines)
    assert {e.get("stage") for e in build_lines} >= {"orchestrator", "agent_deployer"}
    assert all(e["project_id"] == project_id and e["request_id"] == "build-req-1" for e in build_lines)

    (error,) = [e for e in entries if e["level"] == "ERROR"]
    assert error["request_id"] == "boom-req-1" and "RuntimeError: boom" in error["exception"]
    assert "hunter2" not in log.read_text()
    # Nothing is printed outside the log file (LOG_STDOUT is off), so nothing plain-text either.
    assert server.output.read_text() == ""

    workdir = server.workdir
    slow = [json.loads(line) for line in shell('grep "Slow query" logs/api.log', workdir).splitlines()]
    assert slow and all(e["level"] == "WARNING" and e["duration_seconds"] >= 0 and e["operation"]
                        for e in slow)
    assert "boom-req-1" in shell('grep "ERROR" logs/api.log', workdir)
    assert len(shell('grep "build-req-1" logs/api.log', workdir).splitlines()) >= len(build_lines)
    assert shell(f'grep "{project_id}" logs/api.log', workdir)

    tool("jq", "apt-get install -y jq")
    assert shell("""cat logs/api.log | jq 'select(.level == "ERROR") | .message'""",
                 workdir).splitlines() == ['"Unhandled exception"']
    counts = dict(reversed(line.split()) for line in
                  shell("cat logs/api.log | jq -r '.logger' | sort | uniq -c", workdir).splitlines())
    assert {"api.access", "uvicorn.error", "api.engine.build_engine", "api.database"} <= counts.keys()
    after_2024 = shell("""cat logs/api.log | jq 'select(.timestamp > "2024-01-01T00:00:00Z")'""", workdir)
    assert after_2024.count('"timestamp":') == len(entries)
    traced = shell("""cat logs/api.log | jq -c 'select(.request_id == "build-req-1")'""", workdir)
    assert len(traced.splitlines()) >= len(build_lines)


def test_production_writes_one_access_line_per_request(server_factory: Serve) -> None:
    server = server_factory(ENVIRONMENT="production", AUTH_MODE="none")  # production without keys, on loopback
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        statuses = [client.get("/api/v1/projects").status_code for _ in range(5)]
        statuses += [client.get("/nope").status_code for _ in range(2)]
        statuses.append(client.post("/api/v1/projects", json={}).status_code)
        statuses.append(client.get("/metrics").status_code)
        for _ in range(3):
            assert client.get("/health").status_code == 200  # not access-logged
    assert statuses == [200] * 5 + [404] * 2 + [400, 200]
    server.stop()

    access = log_entries(server.log_dir / "access.log")
    assert [e["status_code"] for e in access] == statuses
    assert all(e["logger"] == "api.access" and e["message"] == "Request completed" for e in access)
    errors = log_entries(server.log_dir / "error.log")
    assert any(e["message"].startswith("Started server process") for e in errors)
    assert not [e for e in errors if e["logger"] == "api.access"]
    assert not (server.log_dir / "api.log").exists()


def test_rotation_under_steady_requests_loses_no_line(server_factory: Serve) -> None:
    server = server_factory()
    log = server.log_dir / "api.log"
    sent: list[int] = []
    stop = threading.Event()

    def steady_requests() -> None:
        with httpx.Client(base_url=server.base_url, timeout=10) as client:
            while not stop.is_set() and len(sent) < 5000:
                sent.append(client.get("/api/v1/projects").status_code)

    def lines_in(path: Path) -> int:
        return len([e for e in access_entries(path) if e["path"] == "/api/v1/projects"])

    traffic = threading.Thread(target=steady_requests)
    traffic.start()
    try:
        wait_until(lambda: lines_in(log) >= 100, what="traffic in api.log")
        # logrotate with `create`: move, then the postrotate reload sends SIGHUP.
        os.rename(log, server.log_dir / "api.log.1")
        server.process.send_signal(signal.SIGHUP)
        wait_until(lambda: lines_in(log) >= 100, what="traffic in the new api.log")
        # Moved without any signal: noticed at the next line.
        os.rename(log, server.log_dir / "api.log.2")
        wait_until(lambda: lines_in(log) >= 100, what="traffic in the third api.log")
    finally:
        stop.set()
        traffic.join()
    assert server.process.poll() is None, "SIGHUP must not stop the server"
    server.stop()

    assert set(sent) == {200}
    logged = sum(lines_in(server.log_dir / name) for name in ("api.log.1", "api.log.2", "api.log"))
    assert logged == len(sent)


def test_two_workers_count_every_request_exactly_once(server_factory: Serve, tmp_path: Path) -> None:
    multiproc_dir = tmp_path / "prometheus-multiproc"
    server = server_factory(WORKERS="2", PROMETHEUS_MULTIPROC_DIR=str(multiproc_dir))
    wait_until(lambda: [e["message"] for e in log_entries(server.log_dir / "api.log")]
               .count("Application startup complete.") == 2, what="both workers to start")
    requests = 120
    for _ in range(requests):
        # A new connection each time, so that both workers take requests.
        assert httpx.get(f"{server.base_url}/api/v1/projects", timeout=10).status_code == 200
    for _ in range(6):
        exposition = httpx.get(f"{server.base_url}/metrics", timeout=10).text
        samples = parse_samples(exposition)
        assert sample(samples, "http_requests_total", method="GET", route="/api/v1/projects",
                      status="200") == requests
        assert sample(samples, "http_request_duration_seconds_count", method="GET",
                      route="/api/v1/projects") == requests
        assert sample(samples, "http_requests_in_progress") == 0  # scrapes are not counted
    promtool_check(exposition)

    served = {pid: count for pid, count in requests_per_worker(multiproc_dir).items() if count}
    assert len(served) == 2 and sum(served.values()) == requests, served
    pids = set(served)
    assert any(e["message"].startswith("Started parent process")
               for e in log_entries(server.log_dir / "api.log")), "the supervisor logs JSON too"
    server.stop()
    left = [path.name for path in multiproc_dir.iterdir()
            if path.name.startswith("gauge_live") and int(path.stem.rsplit("_", 1)[1]) in pids]
    assert left == [], "stopped workers leave no live gauges behind"


def requests_per_worker(multiproc_dir: Path, status: str | None = None) -> dict[int, float]:
    """GET /api/v1/projects (answered `status`, given) as each worker process counted it in
    its own file."""
    counts = {}
    for path in multiproc_dir.glob("counter_*.db"):
        counts[int(path.stem.split("_")[1])] = sum(
            value for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path))
            if json.loads(key)[1] == "http_requests_total"
            and json.loads(key)[2].get("route") == "/api/v1/projects"
            and status in (None, json.loads(key)[2].get("status")))
    return counts


def test_promtool_accepts_the_exposition(server_factory: Serve) -> None:
    server = server_factory()
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        client.get("/api/v1/projects")
        client.get("/nope")
        promtool_check(client.get("/metrics").text)


def promtool_check(exposition: str) -> None:
    result = subprocess.run([tool("promtool", "apt-get install -y prometheus"), "check", "metrics"], input=exposition,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
