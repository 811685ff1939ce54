"""`nexus-ai keys` and the modes, as an operator runs them: a production server without a key
starts, serves its probes, answers 401 and says how to make the first key; a key made with the
command line works at once, a revoked one stops within AUTH_CACHE_SECONDS; what the command
line does to keys is in the audit trail; AUTH_MODE=none refuses a non-loopback address."""

import getpass
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.conftest import REPO, ServerProcess, wait_until
from tests.secrets_check import record_secret

CLI = [sys.executable, "-m", "api.cli"]


def nexus_ai(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO),
                               "DATA_DIR": str(tmp_path / "data"), **env})


def test_a_production_server_without_keys_then_with_one(
        server_factory: Callable[..., ServerProcess], tmp_path: Path) -> None:
    server = server_factory(ENVIRONMENT="production", AUTH_CACHE_SECONDS="1")
    assert httpx.get(f"{server.base_url}/health/ready").json()["data"]["status"] == "ready"
    refused = httpx.get(f"{server.base_url}/api/v1/projects")
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "AUTHENTICATION_REQUIRED"
    assert httpx.get(f"{server.base_url}/metrics").status_code == 401
    errors = [json.loads(line) for line in (server.log_dir / "error.log").read_text().splitlines()]
    assert any("no API key exists yet" in line["message"] and "nexus-ai keys create" in line["message"]
               for line in errors)

    created = nexus_ai(tmp_path, "keys", "create", "--tenant", "acme", "--role", "builder", "--name", "ci")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    record_secret(token)
    key_id = token.split("_")[1]
    assert f"Created key {key_id} (tenant acme, role builder)" in created.stderr
    headers = {"Authorization": f"Bearer {token}"}
    answered = httpx.get(f"{server.base_url}/api/v1/projects", headers=headers)
    assert answered.status_code == 200 and answered.json()["data"]["count"] == 0

    listed = nexus_ai(tmp_path, "keys", "list")
    assert listed.returncode == 0
    header, row = listed.stdout.splitlines()
    assert header.split("\t") == ["KEY_ID", "TENANT", "ROLE", "NAME", "CREATED", "EXPIRES", "REVOKED"]
    assert row.split("\t")[:4] == [key_id, "acme", "builder", "ci"] and row.endswith("\t-\t-")
    assert token.split("_", 2)[2] not in listed.stdout

    revoked = nexus_ai(tmp_path, "keys", "revoke", key_id)
    assert revoked.returncode == 0 and f"Revoked key {key_id}" in revoked.stderr
    wait_until(lambda: httpx.get(f"{server.base_url}/api/v1/projects", headers=headers).status_code == 401,
               timeout=1.5, what="the revoked key to be refused (AUTH_CACHE_SECONDS=1)")
    assert nexus_ai(tmp_path, "keys", "revoke", "0" * 16).returncode == 1
    # No key or secret in any log line.
    for log in server.log_dir.iterdir():
        assert token.split("_", 2)[2] not in log.read_text(), log


def test_the_command_line_s_key_changes_are_audited(tmp_path: Path) -> None:
    # LOG_STDOUT as in the container: the token is still all that stdout gets.
    created = nexus_ai(tmp_path, "keys", "create", "--tenant", "acme", "--role", "admin",
                       "--name", "alice", "--expires", "30", LOG_STDOUT="true")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    record_secret(token)
    assert created.stdout == token + "\n"
    key_id = token.split("_")[1]
    assert nexus_ai(tmp_path, "keys", "revoke", key_id).returncode == 0
    assert nexus_ai(tmp_path, "keys", "revoke", "0" * 16).returncode == 1
    assert nexus_ai(tmp_path, "keys", "create", "--tenant", "a#b", "--role", "viewer").returncode == 1
    assert nexus_ai(tmp_path, "keys", "list").returncode == 0

    audit_log = tmp_path / "logs" / "audit.log"
    lines = [json.loads(line) for line in audit_log.read_text().splitlines()]
    command_line = {"user_id": f"cli:{getpass.getuser()}", "key_id": None, "role": "cli",
                    "request_id": None, "client_address": None, "logger": "nexus_ai.audit"}
    for line in lines:
        assert {name: line[name] for name in command_line} == command_line, line
    made, revoked, unknown, refused = lines  # `keys list` is not audited
    expires_at = made["details"].pop("expires_at")
    assert expires_at > made["timestamp"]
    assert (made["action"], made["outcome"], made["tenant_id"], made["target"], made["details"]) == (
        "key.create", "success", "acme", {"type": "key", "id": key_id}, {"role": "admin", "name": "alice"})
    assert (revoked["action"], revoked["outcome"], revoked["tenant_id"], revoked["target"]) == (
        "key.revoke", "success", "acme", {"type": "key", "id": key_id})
    assert (unknown["action"], unknown["outcome"], unknown["error_code"], unknown["target"]) == (
        "key.revoke", "not_found", "RESOURCE_NOT_FOUND", {"type": "key", "id": "0" * 16})
    assert (refused["action"], refused["outcome"], refused["error_code"], refused["tenant_id"]) == (
        "key.create", "failed", "VALIDATION_ERROR", "a#b")
    for log in (tmp_path / "logs").iterdir():
        assert token.split("_", 2)[2] not in log.read_text(), log


def test_bad_key_requests_are_refused_with_a_reason(tmp_path: Path) -> None:
    missing_tenant = nexus_ai(tmp_path, "keys", "create", "--role", "viewer")
    assert missing_tenant.returncode == 1 and "needs --tenant" in missing_tenant.stderr
    bad_tenant = nexus_ai(tmp_path, "keys", "create", "--role", "viewer", "--tenant", "a#b")
    assert bad_tenant.returncode == 1 and "a tenant is 1 to 64 letters" in bad_tenant.stderr
    operator = nexus_ai(tmp_path, "keys", "create", "--role", "operator", "--name", "prometheus")
    assert operator.returncode == 0 and "(tenant -, role operator)" in operator.stderr


def test_without_keys_only_loopback_is_served(tmp_path: Path) -> None:
    for args, env in ((["serve", "--host", "0.0.0.0"], {}), (["worker", "--host", "192.0.2.1"], {}),
                      (["serve"], {"API_HOST": "0.0.0.0"})):
        refused = nexus_ai(tmp_path, *args, **env)
        assert refused.returncode == 1, (args, env, refused.stderr)
        assert "AUTH_MODE=none serves everyone who can reach" in refused.stderr, refused.stderr
