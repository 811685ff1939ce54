"""Access control with AUTH_MODE=api_key: every operation of the app's own document (and the
operations endpoints outside it) against every kind of caller, the roles, the tenancy (404 for
another tenant's record), the principal as `user_id`, revocation and expiry, and the modes."""

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from pydantic import ValidationError

from api.config import Settings
from api.core.principal import PROBES
from tests.conftest import REQUIREMENT, Api, make_settings, serving, wait_for

# The tenant role each operation needs ("open": the probes; "operator": the operations
# endpoints). An operation added without an entry here fails the matrix: decide its role.
ROLES = {
    ("GET", "/health"): "open", ("GET", "/health/live"): "open", ("GET", "/health/ready"): "open",
    ("GET", "/health/detailed"): "operator", ("GET", "/metrics"): "operator",
    ("GET", "/docs"): "operator", ("GET", "/redoc"): "operator", ("GET", "/openapi.json"): "operator",
    ("GET", "/api/v1/projects"): "viewer", ("POST", "/api/v1/projects"): "builder",
    ("GET", "/api/v1/projects/{project_id}"): "viewer",
    ("DELETE", "/api/v1/projects/{project_id}"): "admin",
    ("PUT", "/api/v1/projects/{project_id}/control"): "builder",
    ("GET", "/api/v1/projects/{project_id}/builds"): "viewer",
    ("GET", "/api/v1/projects/{project_id}/stages"): "viewer",
    ("GET", "/api/v1/projects/{project_id}/stages/{stage_name}"): "viewer",
    ("GET", "/api/v1/projects/{project_id}/artifacts"): "viewer",
    ("GET", "/api/v1/projects/{project_id}/artifacts/{path}"): "viewer",
    ("GET", "/api/v1/agents"): "viewer", ("GET", "/api/v1/agents/{agent_id}"): "viewer",
    ("PUT", "/api/v1/agents/{agent_id}"): "builder", ("DELETE", "/api/v1/agents/{agent_id}"): "admin",
    ("PUT", "/api/v1/agents/{agent_id}/status"): "admin",
    ("POST", "/api/v1/agents/{agent_id}/invoke"): "builder",
    ("GET", "/api/v1/agents/{agent_id}/invocations"): "viewer",
    ("POST", "/api/v1/agents/{agent_id}/sessions"): "builder",
    ("GET", "/api/v1/agents/{agent_id}/sessions"): "viewer",
    ("GET", "/api/v1/sessions/{session_id}"): "viewer",
    ("DELETE", "/api/v1/sessions/{session_id}"): "admin",
    ("POST", "/api/v1/sessions/{session_id}/messages"): "builder",
    ("GET", "/api/v1/sessions/{session_id}/messages"): "viewer",
    ("GET", "/api/v1/statistics/overview"): "viewer", ("GET", "/api/v1/statistics/builds"): "viewer",
    ("GET", "/api/v1/statistics/invocations"): "viewer", ("GET", "/api/v1/statistics/trends"): "viewer",
    ("POST", "/api/v1/keys"): "admin", ("GET", "/api/v1/keys"): "admin",
    ("DELETE", "/api/v1/keys/{key_id}"): "admin",
}
RANK = ("viewer", "builder", "admin")
BODIES = {
    ("POST", "/api/v1/projects"): {"requirement": REQUIREMENT},
    ("PUT", "/api/v1/projects/{project_id}/control"): {"action": "pause"},
    ("PUT", "/api/v1/agents/{agent_id}"): {"category": "support"},
    ("PUT", "/api/v1/agents/{agent_id}/status"): {"status": "running"},
    ("POST", "/api/v1/agents/{agent_id}/invoke"): {"input_text": "hello"},
    ("POST", "/api/v1/agents/{agent_id}/sessions"): {},
    ("POST", "/api/v1/sessions/{session_id}/messages"): {"content": "hello"},
    ("POST", "/api/v1/keys"): {"role": "viewer"},
}
PARAMS = {("GET", "/api/v1/statistics/trends"): {"metric": "builds"}}
OPERATIONS_OUTSIDE_THE_DOCUMENT = [("GET", "/metrics"), ("GET", "/docs"), ("GET", "/redoc"),
                                   ("GET", "/openapi.json")]


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    # The matrix fails to authenticate hundreds of times a minute from one address, and
    # makes more than a key's requests a minute: tests/routers/test_limits.py tests those limits.
    return {"auth_mode": "api_key", "offline_stage_delay_seconds": 0.0,
            "auth_failures_per_minute": 0, "key_requests_per_minute": 0}


async def key(app: Any, tenant_id: str | None, role: str, **options: Any) -> str:
    return (await app.state.key_service.create(tenant_id=tenant_id, role=role, **options))[1]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def world(app: Any, api: Api, token: str) -> dict[str, str]:
    """A built project with its agent, a session and a key, of the token's tenant."""
    api.client.headers.update(bearer(token))
    agent = await api.built_agent()
    session = await api.call("POST", f"/api/v1/agents/{agent['agent_id']}/sessions", expect=201, json={})
    artifacts = await api.call("GET", f"/api/v1/projects/{agent['project_id']}/artifacts")
    victim = await api.call("POST", "/api/v1/keys", expect=201, json={"role": "viewer"})
    del api.client.headers["Authorization"]
    return {"project_id": agent["project_id"], "agent_id": agent["agent_id"],
            "session_id": session["session_id"], "stage_name": "requirements_analyst",
            "path": artifacts["items"][0]["path"], "key_id": victim["key_id"]}


async def test_every_operation_against_every_kind_of_caller(app: Any, api: Api) -> None:
    document = app.openapi()
    operations = [(method.upper(), path) for path, methods in document["paths"].items() for method in methods]
    operations += OPERATIONS_OUTSIDE_THE_DOCUMENT
    assert not set(operations) - set(ROLES), f"decide the role of {set(operations) - set(ROLES)}"
    assert set(ROLES) == set(operations)
    admin = await key(app, "acme", "admin")
    ids = await world(app, api, admin)
    revoked = await key(app, "acme", "admin")
    await app.state.key_service.revoke(key_id=revoked.split("_")[1], tenant_id=None)
    expired_key, expired = await app.state.key_service.create(tenant_id="acme", role="admin",
                                                              expires_days=1e-9)
    refused = {"no key": {}, "malformed": {"Authorization": "Bearer nope"},
               "another scheme": {"Authorization": f"Basic {admin}"},
               "unknown": bearer("nxk_0123456789abcdef_" + "A" * 43),
               "wrong secret": bearer(admin[:-4] + "AAAA"), "revoked": bearer(revoked),
               "expired": bearer(expired)}
    callers = {role: bearer(await key(app, "acme", role)) for role in RANK}
    callers["operator"] = bearer(await key(app, None, "operator"))
    intruder = bearer(await key(app, "globex", "admin"))
    # Deletes last, the project's last of all: they take the world with them.
    order = sorted(operations, key=lambda op: (op[0] == "DELETE", op[1] == "/api/v1/projects/{project_id}"))
    for method, template in order:
        role, path = ROLES[(method, template)], template.format(**ids)
        kwargs = {"json": BODIES.get((method, template)), "params": PARAMS.get((method, template))}

        async def send(headers: dict[str, str]) -> httpx.Response:
            return await api.client.request(method, path, headers=headers, **kwargs)

        for name, headers in refused.items():
            response = await send(headers)
            if role == "open":
                assert response.status_code == 200, (method, template, name)
                continue
            assert response.status_code == 401, (method, template, name, response.text)
            assert response.headers["www-authenticate"] == 'Bearer realm="nexus-ai"'
            assert response.json()["error"]["code"] == "AUTHENTICATION_REQUIRED"
        if "{" in template and role not in ("open", "operator"):
            response = await send(intruder)
            assert response.status_code == 404, (method, template, "another tenant", response.text)
            assert response.json()["error"]["code"] == "RESOURCE_NOT_FOUND"
        for name, headers in callers.items():
            response = await send(headers)
            if role == "open" or name == "operator" and (
                    role == "operator" or method == "GET" and template.startswith("/api/v1/statistics/")):
                allowed = True
            elif role == "operator" or name == "operator":
                allowed = False
            else:
                allowed = RANK.index(name) >= RANK.index(role)
            if allowed:
                assert response.status_code not in (401, 403), (method, template, name, response.text)
            else:
                assert response.status_code == 403, (method, template, name, response.text)
                assert response.json()["error"]["code"] == "PERMISSION_DENIED"
    assert expired_key.expires_at is not None


async def test_with_keys_the_principal_is_the_user_and_the_body_s_claim_is_ignored(
        app: Any, api: Api, settings: Settings) -> None:
    token = await key(app, "acme", "builder", name="alice")
    api.client.headers.update(bearer(token))
    project = await api.create_project(user_id="mallory")
    assert (project["tenant_id"], project["user_id"]) == ("acme", "alice")
    assert (await api.call("GET", "/api/v1/projects", params={"user_id": "alice"}))["count"] == 1
    unnamed = await key(app, "acme", "viewer")
    api.client.headers.update(bearer(unnamed))
    await api.project(project["project_id"])
    log = settings.log_dir / "api.log"

    async def completed() -> list[dict[str, Any]] | None:
        lines = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        requests = [line for line in lines if line.get("message") == "Request completed"]
        return requests if len(requests) >= 3 else None

    requests = await wait_for(completed, what="the three requests' access lines")
    assert [line.get("user_id") for line in requests] == ["alice", "alice", unnamed.split("_")[1]]
    assert "mallory" not in (settings.log_dir / "api.log").read_text()
    # No key, and no secret, in any line.
    for secret in (token, unnamed, token.split("_", 2)[2]):
        assert secret not in (settings.log_dir / "api.log").read_text()


async def test_refusals_are_counted_by_reason(app: Any, api: Api) -> None:
    def count(reason: str) -> float:
        return REGISTRY.get_sample_value("auth_failures_total", {"reason": reason}) or 0.0

    before = {reason: count(reason) for reason in ("missing", "malformed", "unknown", "revoked")}
    revoked = await key(app, "acme", "viewer")
    await app.state.key_service.revoke(key_id=revoked.split("_")[1], tenant_id="acme")
    await api.call("GET", "/api/v1/projects", expect=401)
    await api.call("GET", "/api/v1/projects", expect=401, headers={"X-API-Key": "nxk_x"})
    await api.call("GET", "/api/v1/projects", expect=401, headers=bearer("nxk_0123456789abcdef_" + "A" * 43))
    await api.call("GET", "/api/v1/projects", expect=401, headers=bearer(revoked))
    await api.call("GET", "/health/ready")  # probes are not refusals
    assert {reason: count(reason) - before[reason] for reason in before} == {
        "missing": 1, "malformed": 1, "unknown": 1, "revoked": 1}


async def test_an_admin_manages_its_own_tenant_s_keys(app: Any, api: Api) -> None:
    api.client.headers.update(bearer(await key(app, "acme", "admin", name="root")))
    created = await api.call("POST", "/api/v1/keys", expect=201,
                             json={"role": "builder", "name": "ci", "expires_days": 30})
    assert re.fullmatch(r"nxk_[0-9a-f]{16}_[A-Za-z0-9_-]{43}", created["token"])
    assert (created["tenant_id"], created["role"], created["name"]) == ("acme", "builder", "ci")
    listed = await api.call("GET", "/api/v1/keys")
    assert [item["name"] for item in listed["items"]] == ["root", "ci"]
    assert all("token" not in item and "secret_hash" not in item for item in listed["items"])
    builder = bearer(created["token"])
    await api.call("GET", "/api/v1/projects", headers=builder)
    await api.call("POST", "/api/v1/keys", expect=400, json={"role": "operator"})
    # Another tenant's admin neither sees nor revokes it.
    other = bearer(await key(app, "globex", "admin"))
    assert (await api.call("GET", "/api/v1/keys", headers=other))["count"] == 1
    await api.call("DELETE", f"/api/v1/keys/{created['key_id']}", expect=404, headers=other)
    revoked = await api.call("DELETE", f"/api/v1/keys/{created['key_id']}")
    assert revoked["revoked_at"] is not None
    # This process forgets a key it revoked at once.
    error = await api.call("GET", "/api/v1/projects", expect=401, headers=builder)
    assert error["message"] == "The API key was revoked."


async def test_an_expired_key_stops_working(app: Any, api: Api) -> None:
    token = await key(app, "acme", "viewer", expires_days=2 / 86400)  # two seconds
    await api.call("GET", "/api/v1/projects", headers=bearer(token))

    async def refused() -> bool:
        response = await api.client.get("/api/v1/projects", headers=bearer(token))
        return response.status_code == 401 and response.json()["error"]["message"] == "The API key has expired."

    await wait_for(refused, timeout=10, what="the key to expire")


async def test_a_key_revoked_elsewhere_stops_working_within_the_cache_time(tmp_path: Path) -> None:
    """Two instances on one store, each with its own cache: a key revoked through one is
    refused by the other within AUTH_CACHE_SECONDS."""
    settings = make_settings(tmp_path, auth_mode="api_key", auth_cache_seconds=1.0)
    async with serving(settings) as (first_app, first), serving(settings) as (_, second):
        token = await key(first_app, "acme", "viewer")
        await second.call("GET", "/api/v1/projects", headers=bearer(token))  # cached there now
        await first_app.state.key_service.revoke(key_id=token.split("_")[1], tenant_id=None)
        await first.call("GET", "/api/v1/projects", expect=401, headers=bearer(token))

        async def refused() -> bool:
            return (await second.client.get("/api/v1/projects", headers=bearer(token))).status_code == 401

        await wait_for(refused, timeout=1.0 + 0.5, interval=0.05, what="the other instance to refuse it")


async def test_the_operator_token_reads_the_operations_endpoints_only(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, auth_mode="api_key", operator_token="scrape-" + "s" * 40)
    async with serving(settings) as (_, api):
        token = bearer("scrape-" + "s" * 40)
        assert "auth_failures_total" in (await api.client.get("/metrics", headers=token)).text
        await api.call("GET", "/health/detailed", headers=token)
        await api.call("GET", "/api/v1/statistics/overview", expect=401, headers=token)
        assert (await api.client.get("/metrics", headers=bearer("scrape-wrong"))).status_code == 401
        for probe in PROBES:
            await api.call("GET", probe)


def test_the_modes_and_their_listen_addresses(tmp_path: Path) -> None:
    development = Settings(_env_file=None)
    assert (development.auth_mode, development.api_host, development.worker_host) == (
        "none", "127.0.0.1", "127.0.0.1")
    production = Settings(_env_file=None, environment="production")
    assert (production.auth_mode, production.api_host) == ("api_key", "0.0.0.0")
    assert Settings(_env_file=None, auth_mode="none", api_host="::1").api_host == "::1"
    with pytest.raises(ValidationError, match="AUTH_MODE=none serves everyone who can reach API_HOST=0.0.0.0"):
        Settings(_env_file=None, api_host="0.0.0.0")
    with pytest.raises(ValidationError, match="WORKER_HOST=10.0.0.5"):
        Settings(_env_file=None, environment="production", auth_mode="none", api_host="127.0.0.1",
                 worker_host="10.0.0.5")
