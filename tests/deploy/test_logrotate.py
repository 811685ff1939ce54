"""The shipped logrotate policy, run by the real logrotate while requests flow: no line lost,
new lines in the new file, the audit trail's (audit.log) as the others'."""

import json
import subprocess
import threading
from pathlib import Path

import httpx

from tests.conftest import REPO, REQUIREMENT, wait_until
from tests.deploy.conftest import DEPLOY, Deployment
from tests.tooling import tool


def _access_ids(files: list[Path]) -> list[str]:
    ids = []
    for path in files:
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record["message"] == "Request completed" and record["request_id"].startswith("rot-"):
                ids.append(record["request_id"])
    return ids


def _audited_request_ids(path: Path) -> list[str]:
    lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [line["request_id"] for line in lines if line["request_id"]]


def _audited_delete(deployment: Deployment, request_id: str) -> None:
    """An audited act (the delete of a project that does not exist: 404) with this request id."""
    response = httpx.delete(f"{deployment.base_url}/api/v1/projects/proj_gone", timeout=10,
                            headers={**deployment.headers, "X-Request-ID": request_id})
    assert response.status_code == 404


def test_forced_rotation_under_steady_requests_loses_no_line(deployment: Deployment) -> None:
    logrotate = tool("logrotate", "apt-get install logrotate")
    assert deployment.run("start").returncode == 0
    audit_log = deployment.logs / "audit.log"
    _audited_delete(deployment, "audit-before")
    wait_until(lambda: "audit-before" in _audited_request_ids(audit_log), what="the audit line")
    policy = (REPO / "deploy" / "logrotate" / "nexus-ai").read_text()
    config = deployment.root / "logrotate.conf"
    config.write_text(policy.replace("/opt/nexus-ai/logs", str(deployment.logs))
                      .replace("/opt/nexus-ai/scripts/deploy.sh", str(DEPLOY)))
    name = "access.log" if deployment.env["ENVIRONMENT"] == "production" else "api.log"

    answered: list[str] = []
    stop = threading.Event()

    def steady_requests() -> None:
        with httpx.Client(base_url=deployment.base_url, timeout=10, headers=deployment.headers) as client:
            number = 0
            while not stop.is_set() and number < 2000:
                request_id = f"rot-{number}"
                if client.get("/api/v1/projects", headers={"X-Request-ID": request_id}).status_code == 200:
                    answered.append(request_id)
                number += 1

    sender = threading.Thread(target=steady_requests)
    sender.start()
    try:
        wait_until(lambda: len(answered) >= 50, what="requests before the rotation")
        rotated = subprocess.run([logrotate, "--force", "--state", str(deployment.root / "state"), str(config)],
                                 env=deployment.env, capture_output=True, text=True, timeout=60)
        assert rotated.returncode == 0, rotated.stderr
        at_rotation = len(answered)
        _audited_delete(deployment, "audit-after")
        wait_until(lambda: len(answered) >= at_rotation + 50, what="requests after the rotation")
    finally:
        stop.set()
        sender.join()

    current, previous = deployment.logs / name, deployment.logs / f"{name}.1"
    assert previous.exists(), sorted(p.name for p in deployment.logs.iterdir())
    # Lines are written by a background thread: wait until the last answered request is there.
    wait_until(lambda: answered[-1] in _access_ids([current]), what="the last request's line")
    logged = _access_ids([previous, current])
    assert sorted(logged) == sorted(answered), "every answered request has exactly one line"
    assert _access_ids([current]), "new lines go to the new file"
    assert _access_ids([previous]), "earlier lines stay in the rotated file"
    # The audit trail too: rotated, and its next line in the new file.
    wait_until(lambda: "audit-after" in _audited_request_ids(audit_log), what="the audit line after")
    assert _audited_request_ids(audit_log) == ["audit-after"]
    assert _audited_request_ids(deployment.logs / "audit.log.1") == ["audit-before"]
    assert deployment.run("status").returncode == 0




def test_rotation_with_a_build_worker_reopens_its_file_too(deployment: Deployment) -> None:
    """The policy's postrotate (deploy.sh reopen-logs) reaches the build workers: the lines of a
    build run after the rotation, which only the worker writes, are in the new file."""
    logrotate = tool("logrotate", "apt-get install logrotate")
    split = {"BUILD_WORKERS": "1", "OFFLINE_STAGE_DELAY_SECONDS": "0"}
    assert deployment.run("start", **split).returncode == 0
    [worker] = deployment.worker_pids()
    policy = (REPO / "deploy" / "logrotate" / "nexus-ai").read_text()
    config = deployment.root / "logrotate.conf"
    config.write_text(policy.replace("/opt/nexus-ai/logs", str(deployment.logs))
                      .replace("/opt/nexus-ai/scripts/deploy.sh", str(DEPLOY)))
    name = "error.log" if deployment.env["ENVIRONMENT"] == "production" else "api.log"

    rotated = subprocess.run([logrotate, "--force", "--state", str(deployment.root / "state"), str(config)],
                             env=deployment.env, capture_output=True, text=True, timeout=60)
    assert rotated.returncode == 0, rotated.stderr
    current, previous = deployment.logs / name, deployment.logs / f"{name}.1"

    def messages(path: Path, project_id: str | None = None) -> list[str]:
        lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        return [line["message"] for line in lines if project_id in (None, line.get("project_id"))]

    assert "Nexus-AI build worker started" in messages(previous)
    with httpx.Client(base_url=deployment.base_url, timeout=10, headers=deployment.headers) as client:
        created = client.post("/api/v1/projects", json={"requirement": REQUIREMENT})
        assert created.status_code == 201
        project_id = created.json()["data"]["project_id"]
        wait_until(lambda: client.get(f"/api/v1/projects/{project_id}").json()["data"]["status"] == "completed",
                   what="the build to complete")
    # Lines are written by a background thread: wait for the worker's last one.
    wait_until(lambda: "Build succeeded" in messages(current, project_id), what="the build's lines")
    assert "Build started" in messages(current, project_id)
    assert messages(previous, project_id) == []
    status = deployment.run("status", **split)
    assert status.returncode == 0, status.stdout
    assert f"build worker 1: pid {worker}," in status.stdout
