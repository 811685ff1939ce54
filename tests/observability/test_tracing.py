"""Request ids, response headers, the access line and the last-resort 500, on the real app."""

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from api.config import Settings
from api.main import create_app
from tests.conftest import make_settings, wait_until
from tests.observability.conftest import access_entries, log_entries

BAD_IDS = ["has space", "semi;colon", "x" * 129, "é-accent", ""]


async def boom() -> None:
    raise RuntimeError("kaboom")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, log_health_requests=False)


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    """The real app with one more route, whose handler raises."""
    application = create_app(settings)
    application.add_api_route("/boom", boom)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://testserver") as client:
        yield client


def access_line(settings: Settings, request_id: str) -> dict[str, Any]:
    log = settings.log_dir / "api.log"
    return wait_until(lambda: next((e for e in access_entries(log) if e["request_id"] == request_id), None),
                      what=f"the access line of {request_id}")


async def test_a_sane_request_id_is_echoed(client: httpx.AsyncClient, settings: Settings) -> None:
    response = await client.get("/api/v1/projects", headers={"X-Request-ID": "req-42.a_B"})
    assert response.headers["X-Request-ID"] == "req-42.a_B"
    assert response.json()["request_id"] == "req-42.a_B"
    assert float(response.headers["X-Response-Time"]) > 0
    line = access_line(settings, "req-42.a_B")
    assert line["message"] == "Request completed" and line["level"] == "INFO"
    assert {k: line[k] for k in ("method", "path", "route", "status_code", "client_address")} == {
        "method": "GET", "path": "/api/v1/projects", "route": "/api/v1/projects",
        "status_code": 200, "client_address": "127.0.0.1"}
    assert 0 < line["duration_seconds"] < 10


@pytest.mark.parametrize("bad", BAD_IDS)
async def test_a_missing_or_unsafe_request_id_is_replaced(client: httpx.AsyncClient, bad: str) -> None:
    headers = {"X-Request-ID": bad.encode()} if bad else {}
    response = await client.get("/api/v1/projects", headers=headers)
    generated = response.headers["X-Request-ID"]
    assert generated != bad and uuid.UUID(generated).version == 4
    assert response.json()["request_id"] == generated


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "route"), [
    ("GET", "/no/such/route", {}, 404, "<unmatched>"),
    ("GET", "/api/v1/projects/proj_000000000000", {}, 404, "/api/v1/projects/{project_id}"),
    ("DELETE", "/api/v1/statistics/overview", {}, 405, "/api/v1/statistics/overview"),
    ("POST", "/api/v1/projects", {"content": b"x" * (1024 * 1024 + 1),
                                  "headers": {"Content-Type": "application/json"}}, 413, None),
    ("POST", "/api/v1/projects", {"json": {"requirement": "short"}}, 400, "/api/v1/projects"),
])
async def test_every_error_carries_the_id_in_header_envelope_and_log(
        client: httpx.AsyncClient, settings: Settings, method: str, path: str,
        kwargs: dict[str, Any], status: int, route: str | None) -> None:
    request_id = f"err-{status}-{uuid.uuid4().hex[:8]}"
    headers = {"X-Request-ID": request_id, **kwargs.pop("headers", {})}
    response = await client.request(method, path, headers=headers, **kwargs)
    assert response.status_code == status
    assert response.headers["X-Request-ID"] == request_id
    assert "X-Response-Time" in response.headers
    body = response.json()
    assert body["request_id"] == body["error"]["trace_id"] == request_id
    line = access_line(settings, request_id)
    assert line["status_code"] == status
    if route is not None:
        assert line["route"] == route


async def test_an_unhandled_exception_is_logged_once_and_answered_in_the_envelope(
        client: httpx.AsyncClient, settings: Settings) -> None:
    response = await client.get("/boom", headers={"X-Request-ID": "boom-1"})
    assert response.status_code == 500
    assert response.headers["X-Request-ID"] == "boom-1" and "X-Response-Time" in response.headers
    body = response.json()
    assert body["error"]["code"] == "INTERNAL_ERROR" and body["error"]["trace_id"] == "boom-1"
    assert body["error"]["details"] is None  # no exception details without DEBUG
    assert access_line(settings, "boom-1")["status_code"] == 500
    errors = [e for e in log_entries(settings.log_dir / "api.log")
              if e.get("request_id") == "boom-1" and e["level"] == "ERROR"]
    assert len(errors) == 1
    assert "RuntimeError: kaboom" in errors[0]["exception"] and "Traceback" in errors[0]["exception"]


async def test_debug_mode_puts_the_exception_in_the_response(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path, debug=True))
    app.add_api_route("/boom", boom)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://testserver") as client:
            details = (await client.get("/boom")).json()["error"]["details"]
    assert details["exception"] == "RuntimeError" and details["message"] == "kaboom"
    assert any("kaboom" in line for line in details["traceback"])


async def test_debug_details_mask_secrets_as_the_logs_do(tmp_path: Path) -> None:
    async def leaky() -> None:
        raise RuntimeError("cannot reach https://admin:hunter2@db.invalid with token=abc123secret")

    app = create_app(make_settings(tmp_path, debug=True))
    app.add_api_route("/leaky", leaky)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://testserver") as client:
            body = (await client.get("/leaky")).text
    assert "hunter2" not in body and "abc123secret" not in body
    assert "https://admin:***@db.invalid" in body


async def test_successful_probes_stay_out_of_the_access_log(
        app: FastAPI, client: httpx.AsyncClient, settings: Settings) -> None:
    for path in ("/health", "/health/live", "/health/ready", "/health/detailed"):
        response = await client.get(path, headers={"X-Request-ID": f"probe{path.replace('/', '-')}"})
        assert response.status_code == 200 and response.headers["X-Request-ID"]
    await client.get("/api/v1/projects", headers={"X-Request-ID": "after-probes"})
    access_line(settings, "after-probes")
    assert not [e for e in access_entries(settings.log_dir / "api.log") if e["path"].startswith("/health")]

    app.state.draining = True
    assert (await client.get("/health/ready", headers={"X-Request-ID": "failing-probe"})).status_code == 503
    assert access_line(settings, "failing-probe")["status_code"] == 503


async def test_probes_are_logged_when_asked(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, log_health_requests=True)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://testserver") as client:
            await client.get("/health", headers={"X-Request-ID": "logged-probe"})
    assert access_line(settings, "logged-probe")["route"] == "/health"


async def test_the_access_line_follows_the_log_level_and_masks_the_path(tmp_path: Path) -> None:
    quiet = make_settings(tmp_path / "quiet", log_level="WARNING")
    app = create_app(quiet)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://testserver") as client:
            await client.get("/api/v1/projects", headers={"X-Request-ID": "quiet"})
            await client.get("/api/v1/projects/token=s3cr3tvalue", headers={"X-Request-ID": "warned"})
    # The 404 is answered, but at WARNING no access line is written at all.
    assert not access_entries(quiet.log_dir / "api.log")

    settings = make_settings(tmp_path / "info")
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://testserver") as client:
            await client.get("/api/v1/projects/token=s3cr3tvalue", headers={"X-Request-ID": "masked"})
    line = access_line(settings, "masked")
    assert (line["path"], line["status_code"], line["logger"]) == ("/api/v1/projects/token=***", 404, "api.access")
    assert "s3cr3tvalue" not in (settings.log_dir / "api.log").read_text()


@pytest.mark.parametrize(("path", "route"), [
    *((path, path) for path in ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")),
    # The pages' files: one template for them all.
    *((f"/docs/static/{name}", "/docs/static/{path}")
      for name in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")),
])
async def test_the_documentation_pages_are_counted_under_their_own_route(
        client: httpx.AsyncClient, settings: Settings, path: str, route: str) -> None:
    request_id = f"docs-{uuid.uuid4().hex[:8]}"
    response = await client.get(path, headers={"X-Request-ID": request_id})
    assert response.status_code == 200
    assert access_line(settings, request_id)["route"] == route
    series = f'http_requests_total{{method="GET",route="{route}",status="200"}}'
    assert series in (await client.get("/metrics")).text
