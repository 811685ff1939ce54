"""CORS_ALLOWED_ORIGINS: preflights answered without a key, the headers a page needs on every
answer (the refusals and the last-resort 500 included), nothing granted to other origins, and
no CORS headers at all by default. The real app, through httpx.ASGITransport."""

from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from pydantic import ValidationError
from starlette.middleware.cors import CORSMiddleware

from api.config import Settings
from api.main import create_app, create_worker_app
from tests.conftest import make_settings, serving

ALLOWED = "https://app.example.com"
OTHER_ALLOWED = "http://localhost:3000"
DISALLOWED = "https://evil.example"
EXPOSED = {"x-request-id", "x-response-time", "idempotent-replayed", "ratelimit-limit",
           "ratelimit-remaining", "ratelimit-reset", "retry-after"}
REQUESTED = "authorization, x-api-key, content-type, idempotency-key, x-request-id"


def preflight(origin: str, method: str = "POST", headers: str = REQUESTED) -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": headers}


def cors_headers(response: httpx.Response) -> dict[str, str]:
    return {name: value for name, value in response.headers.items()
            if name.startswith("access-control-")}


def listed(value: str) -> set[str]:
    return {item.strip().lower() for item in value.split(",")}


def assert_readable_by(response: httpx.Response, origin: str) -> None:
    """What a page of `origin` needs to read the answer and quote its request id."""
    assert response.headers["access-control-allow-origin"] == origin
    assert EXPOSED <= listed(response.headers["access-control-expose-headers"])
    assert "origin" in listed(response.headers["vary"])
    assert "access-control-allow-credentials" not in response.headers
    assert response.headers["x-request-id"]


def auth_failures() -> float:
    return REGISTRY.get_sample_value("auth_failures_total", {"reason": "missing"}) or 0.0


async def boom() -> None:
    raise RuntimeError("boom")


def with_keys(tmp_path: Path, **overrides: Any) -> Settings:
    return make_settings(tmp_path, auth_mode="api_key", offline_stage_delay_seconds=0.0,
                         cors_allowed_origins=f"{ALLOWED},{OTHER_ALLOWED}", **overrides)


async def test_without_origins_no_answer_has_cors_headers(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    assert settings.cors_allowed_origins == []
    async with serving(settings) as (app, api):
        # Not even installed: the default costs nothing per request.
        assert not any(middleware.cls is CORSMiddleware for middleware in app.user_middleware)
        asked = await api.client.options("/api/v1/projects", headers=preflight(ALLOWED))
        answered = await api.client.get("/api/v1/projects", headers={"Origin": ALLOWED})
    # The preflight reaches the app, which serves no OPTIONS: a browser sends nothing more.
    assert asked.status_code == 405 and cors_headers(asked) == {}
    assert answered.status_code == 200 and cors_headers(answered) == {}


async def test_a_preflight_from_an_allowed_origin_is_answered_without_a_key(tmp_path: Path) -> None:
    async with serving(with_keys(tmp_path)) as (_, api):
        failures = auth_failures()
        for origin in (ALLOWED, OTHER_ALLOWED):
            response = await api.client.options("/api/v1/projects", headers=preflight(origin))
            assert response.status_code == 200, response.text
            assert response.headers["access-control-allow-origin"] == origin
            assert {"get", "post", "put", "delete"} <= listed(response.headers["access-control-allow-methods"])
            assert listed(REQUESTED) <= listed(response.headers["access-control-allow-headers"])
            assert response.headers["access-control-max-age"] == "600"
            assert "access-control-allow-credentials" not in response.headers
            assert "origin" in listed(response.headers["vary"])
        # A preflight is neither a request for the API nor a failed authentication.
        assert auth_failures() == failures


async def test_answers_to_an_allowed_origin_expose_the_request_id(tmp_path: Path) -> None:
    async with serving(with_keys(tmp_path)) as (app, api):
        _, token = await app.state.key_service.create(tenant_id="acme", role="builder")
        headers = {"Origin": ALLOWED, "Authorization": f"Bearer {token}", "X-Request-ID": "page-1"}
        listed_projects = await api.client.get("/api/v1/projects", headers=headers)
        created = await api.client.post("/api/v1/projects", headers={**headers, "Idempotency-Key": "k1"},
                                        json={"requirement": "Build an agent that answers refund questions"})
    for response in (listed_projects, created):
        assert response.status_code in (200, 201), response.text
        assert_readable_by(response, ALLOWED)
        assert response.headers["x-request-id"] == "page-1"


async def test_refusals_and_the_last_resort_500_carry_the_cors_headers(tmp_path: Path) -> None:
    # Two failed authentications a minute, then 429 (the address's limit).
    async with serving(with_keys(tmp_path, auth_failures_per_minute=2)) as (app, api):
        _, viewer = await app.state.key_service.create(tenant_id="acme", role="viewer")
        _, builder = await app.state.key_service.create(tenant_id="acme", role="builder")
        app.add_api_route("/boom", boom)
        origin = {"Origin": ALLOWED}
        as_viewer = {**origin, "Authorization": f"Bearer {viewer}"}
        as_builder = {**origin, "Authorization": f"Bearer {builder}"}
        responses = {
            "forbidden": await api.client.post("/api/v1/projects", headers=as_viewer, json={}),
            "too large": await api.client.post("/api/v1/projects", headers=as_builder,
                                               content=b"x" * (1024 * 1024 + 1)),
            "unhandled": await api.client.get("/boom", headers=as_viewer),
            "no key": await api.client.get("/api/v1/projects", headers=origin),
        }
        await api.client.get("/api/v1/projects", headers=origin)
        responses["too many"] = await api.client.get("/api/v1/projects", headers=origin)
    statuses = {name: response.status_code for name, response in responses.items()}
    assert statuses == {"forbidden": 403, "too large": 413, "unhandled": 500, "no key": 401,
                        "too many": 429}
    for response in responses.values():
        assert_readable_by(response, ALLOWED)
        assert response.json()["success"] is False
    assert responses["no key"].headers["www-authenticate"].startswith("Bearer")
    assert responses["too many"].headers["retry-after"]


async def test_another_origin_is_granted_nothing(tmp_path: Path) -> None:
    async with serving(with_keys(tmp_path)) as (app, api):
        _, token = await app.state.key_service.create(tenant_id="acme", role="viewer")
        asked = await api.client.options("/api/v1/projects", headers=preflight(DISALLOWED))
        answered = await api.client.get("/api/v1/projects",
                                        headers={"Origin": DISALLOWED, "Authorization": f"Bearer {token}"})
        # Nor a method or a header outside the policy, from an allowed origin.
        patch = await api.client.options("/api/v1/projects", headers=preflight(ALLOWED, "PATCH"))
        cookie = await api.client.options("/api/v1/projects", headers=preflight(ALLOWED, "GET", "cookie"))
    # Starlette's refusal is a 400 naming what failed; without Access-Control-Allow-Origin the
    # browser neither sends the request nor lets the page read an answer (the methods, headers
    # and exposed names Starlette still lists grant nothing by themselves).
    assert asked.status_code == 400 and asked.text == "Disallowed CORS origin"
    assert answered.status_code == 200  # the server answers; the browser keeps it from the page
    for response in (asked, answered):
        assert "access-control-allow-origin" not in response.headers
        assert "origin" in listed(response.headers["vary"])
    assert (patch.status_code, patch.text) == (400, "Disallowed CORS method")
    assert (cookie.status_code, cookie.text) == (400, "Disallowed CORS headers")


async def test_any_origin_with_a_star(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, cors_allowed_origins="*")
    async with serving(settings) as (_, api):
        asked = await api.client.options("/api/v1/projects", headers=preflight(DISALLOWED))
        answered = await api.client.get("/api/v1/projects", headers={"Origin": DISALLOWED})
    assert asked.status_code == 200 and answered.status_code == 200
    for response in (asked, answered):
        assert response.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in response.headers
    assert EXPOSED <= listed(answered.headers["access-control-expose-headers"])


def test_origins_are_read_comma_separated_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORS_ALLOWED_ORIGINS", " https://App.Example.com, http://localhost:3000 ,")
    assert Settings(_env_file=None).cors_allowed_origins == [ALLOWED, OTHER_ALLOWED]
    monkeypatch.setenv("CORS_ALLOWED_ORIGINS", "")
    assert Settings(_env_file=None).cors_allowed_origins == []
    refused = {
        "https://app.example.com/": "is not an origin",  # a trailing slash never matches
        "https://app.example.com/path": "is not an origin",
        "app.example.com": "is not an origin",
        "null": "is not an origin",
        '["https://app.example.com"]': "is not an origin",  # comma-separated, not JSON
        "*,https://app.example.com": "list none beside it",
    }
    for value, message in refused.items():
        monkeypatch.setenv("CORS_ALLOWED_ORIGINS", value)
        with pytest.raises(ValidationError, match=message):
            Settings(_env_file=None)


def test_the_worker_app_has_no_cors(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, cors_allowed_origins=ALLOWED)
    assert any(middleware.cls is CORSMiddleware for middleware in create_app(settings).user_middleware)
    # A build worker serves probes and /metrics to orchestrators and Prometheus, not to pages.
    assert not any(middleware.cls is CORSMiddleware
                   for middleware in create_worker_app(settings).user_middleware)
