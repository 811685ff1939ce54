"""The audit trail with AUTH_MODE=api_key, on the real app: each audited act through the API
writes exactly one line to audit.log naming the key, its tenant and role, the target, the
outcome and the request's X-Request-ID; denied acts are there too, other requests are not; a
storm of failed authentications writes a bounded number of lines that still count every one."""

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.config import Settings
from tests.conftest import Api, make_settings, serving, wait_for
from tests.routers.test_auth import bearer, key

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"auth_mode": "api_key", "offline_stage_delay_seconds": 0.0}


def audit_lines(settings: Settings) -> list[dict[str, Any]]:
    log = settings.log_dir / "audit.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


async def lines_of(settings: Settings, count: int) -> list[dict[str, Any]]:
    """Wait for `count` lines (a writer thread writes them), and check that no more come."""
    async def written() -> list[dict[str, Any]] | None:
        lines = audit_lines(settings)
        return lines if len(lines) >= count else None

    await wait_for(written, what=f"{count} audit lines")
    await asyncio.sleep(0.05)  # a line more would be written by now: the writer batches 10 ms
    lines = audit_lines(settings)
    assert len(lines) == count, lines
    return lines


async def test_each_audited_act_writes_one_line_naming_the_key_and_the_request(
        app: Any, api: Api, settings: Settings) -> None:
    token = await key(app, "acme", "admin", name="alice")
    alice_key = token.split("_")[1]
    api.client.headers.update(bearer(token))
    agent = await api.built_agent()
    project_id, agent_id = agent["project_id"], agent["agent_id"]
    session = await api.call("POST", f"/api/v1/agents/{agent_id}/sessions", expect=201, json={})
    await api.call("GET", f"/api/v1/projects/{project_id}")
    assert audit_lines(settings) == [], "creating and reading are not audited"

    expected: dict[str, tuple[str, str, str | None, str, str | None]] = {}

    async def act(method: str, path: str, status: int, action: str, target: tuple[str, str | None],
                  outcome: str, error_code: str | None = None, **kwargs: Any) -> httpx.Response:
        response = await api.client.request(method, path, **kwargs)
        assert response.status_code == status, response.text
        expected[response.headers["x-request-id"]] = (action, *target, outcome, error_code)
        return response

    await act("PUT", f"/api/v1/agents/{agent_id}/status", 200, "agent.status", ("agent", agent_id),
              "success", json={"status": "offline"})
    await act("DELETE", f"/api/v1/sessions/{session['session_id']}", 200, "session.delete",
              ("session", session["session_id"]), "success")
    await act("DELETE", "/api/v1/sessions/sess_missing", 404, "session.delete",
              ("session", "sess_missing"), "not_found", "RESOURCE_NOT_FOUND")
    await act("DELETE", f"/api/v1/agents/{agent_id}", 200, "agent.delete", ("agent", agent_id), "success")
    await act("PUT", f"/api/v1/projects/{project_id}/control", 409, "project.pause",
              ("project", project_id), "failed", "INVALID_STATE", json={"action": "pause"})
    await act("PUT", "/api/v1/projects/proj_missing/control", 404, "project.stop",
              ("project", "proj_missing"), "not_found", "RESOURCE_NOT_FOUND", json={"action": "stop"})
    await act("PUT", f"/api/v1/projects/{project_id}/control", 200, "project.restart",
              ("project", project_id), "success", json={"action": "restart", "reason": "new prompt"})
    await act("DELETE", f"/api/v1/projects/{project_id}", 200, "project.delete", ("project", project_id),
              "success")
    await act("DELETE", f"/api/v1/projects/{project_id}", 404, "project.delete", ("project", project_id),
              "not_found", "RESOURCE_NOT_FOUND")
    created = await act("POST", "/api/v1/keys", 201, "key.create", ("key", None), "success",
                        json={"role": "builder", "name": "ci"})
    new_key = created.json()["data"]["key_id"]
    await act("DELETE", f"/api/v1/keys/{new_key}", 200, "key.revoke", ("key", new_key), "success")
    await act("DELETE", "/api/v1/keys/0123456789abcdef", 404, "key.revoke", ("key", "0123456789abcdef"),
              "not_found", "RESOURCE_NOT_FOUND")

    lines = await lines_of(settings, len(expected))
    by_request = {line["request_id"]: line for line in lines}
    assert by_request.keys() == expected.keys(), "one line per audited request, with its X-Request-ID"
    for request_id, (action, target_type, target_id, outcome, error_code) in expected.items():
        line = by_request[request_id]
        assert TIMESTAMP.fullmatch(line["timestamp"]) and line["logger"] == "nexus_ai.audit"
        assert line["level"] == ("INFO" if outcome == "success" else "WARNING")
        assert (line["tenant_id"], line["user_id"], line["key_id"], line["role"]) == (
            "acme", "alice", alice_key, "admin"), line
        assert line["client_address"] == "127.0.0.1"
        assert (line["action"], line["outcome"], line.get("error_code")) == (action, outcome, error_code)
        assert line["target"] == {"type": target_type, "id": target_id or new_key}, line
    details = {line["action"]: line.get("details") for line in lines if line["outcome"] == "success"}
    assert details["agent.status"] == {"status": "offline"}
    assert details["project.restart"] == {"reason": "new prompt"}
    assert details["key.create"] == details["key.revoke"] == {"role": "builder", "name": "ci",
                                                              "expires_at": None}
    # The new key's token is in the answer only; the application's log has no audit line.
    assert created.json()["data"]["token"] not in (settings.log_dir / "audit.log").read_text()
    assert "nexus_ai.audit" not in (settings.log_dir / "api.log").read_text()


async def test_denied_acts_are_audited_and_other_refusals_are_not(
        app: Any, api: Api, settings: Settings) -> None:
    api.client.headers.update(bearer(await key(app, "acme", "admin")))
    project = await api.create_project()
    viewer = await key(app, "acme", "viewer", name="victor")
    api.client.headers.update(bearer(viewer))
    denied = {}
    for method, path, action, target_id, body in (
            ("DELETE", f"/api/v1/projects/{project['project_id']}", "project.delete", project["project_id"], None),
            ("PUT", f"/api/v1/projects/{project['project_id']}/control", "project.control",
             project["project_id"], {"action": "stop"}),
            ("POST", "/api/v1/keys", "key.create", None, {"role": "admin"})):
        response = await api.client.request(method, path, json=body)
        assert response.status_code == 403
        denied[response.headers["x-request-id"]] = (action, target_id)
    # Refused too, but not audited acts: creating a project, listing keys.
    assert (await api.client.post("/api/v1/projects", json={"requirement": "x" * 20})).status_code == 403
    assert (await api.client.get("/api/v1/keys")).status_code == 403

    lines = await lines_of(settings, len(denied))
    for line in lines:
        action, target_id = denied[line["request_id"]]
        assert (line["action"], line["outcome"], line["error_code"]) == (action, "denied", "PERMISSION_DENIED")
        assert line["target"]["id"] == target_id
        assert (line["tenant_id"], line["user_id"], line["key_id"], line["role"]) == (
            "acme", "victor", viewer.split("_")[1], "viewer")
    assert {line["request_id"] for line in lines} == denied.keys()


async def test_a_failed_authentication_storm_writes_bounded_lines_that_count_every_failure(
        tmp_path: Path) -> None:
    settings = make_settings(tmp_path, auth_mode="api_key")
    storm = {"missing": {}, "malformed": bearer("nope"),
             "unknown": bearer("nxk_0123456789abcdef_" + "A" * 43)}
    firsts = {}
    async with serving(settings) as (_, api):
        for reason, headers in storm.items():
            for number in range(100):
                response = await api.client.get("/api/v1/projects", headers=headers)
                # Past AUTH_FAILURES_PER_MINUTE the answer is a 429: a failure all the same.
                assert response.status_code in (401, 429)
                if number == 0:
                    firsts[reason] = response.headers["x-request-id"]
        # One line per address and reason in the window, the first failure's.
        lines = await lines_of(settings, 3)
    assert {line["reason"]: line["request_id"] for line in lines} == firsts
    for line in lines:
        # What was answered: the first 60 failures (all `missing`) a 401, the address's later
        # ones a 429 (AUTH_FAILURES_PER_MINUTE).
        answered = "AUTHENTICATION_REQUIRED" if line["reason"] == "missing" else "RATE_LIMIT_EXCEEDED"
        assert (line["action"], line["outcome"], line["error_code"]) == (
            "authenticate", "denied", answered)
        assert line["client_address"] == "127.0.0.1" and line["target"] is None
        assert line["tenant_id"] is line["user_id"] is line["key_id"] is line["role"] is None
    # At shutdown, the count of each window's suppressed failures: every one is accounted for.
    counts = audit_lines(settings)[3:]
    assert {line["reason"]: line["suppressed"] for line in counts} == {reason: 99 for reason in storm}
    assert all(line["request_id"] is None and line["window_seconds"] == 60 for line in counts)
    assert sum(line.get("suppressed", 1) for line in audit_lines(settings)) == 300


async def test_a_window_s_count_is_written_when_it_ends(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, auth_mode="api_key", audit_refusal_window_seconds=0.3)
    async with serving(settings) as (_, api):
        for _ in range(10):
            await api.client.get("/api/v1/projects")
        await lines_of(settings, 1)
        await asyncio.sleep(0.35)
        last = await api.client.get("/api/v1/projects")
        first, count, new = await lines_of(settings, 3)
    assert first["reason"] == count["reason"] == new["reason"] == "missing"
    assert (count["suppressed"], count["message"]) == (9, "authenticate: denied 9 more times in 0.3 s")
    assert new["request_id"] == last.headers["x-request-id"] and "suppressed" not in new
    assert len(audit_lines(settings)) == 3, "nothing left to count at shutdown"
