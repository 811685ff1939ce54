"""The API on DynamoDB: the health checks name it, an unreachable endpoint fails readiness, and
bad input reaching DynamoDB answers the documented error envelope, never a raw botocore error."""

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.config import Settings
from api.main import create_app
from tests import moto_server
from tests.conftest import REQUIREMENT, Api, make_settings
from tests.database.test_dynamodb_store import ThrottlingProxy


@pytest.fixture
def storage_backend() -> str:
    return "dynamodb"


def assert_error_envelope(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    body = response.json()
    assert response.status_code == status, body
    assert body["success"] is False and set(body) == {"success", "error", "timestamp", "request_id"}
    error = body["error"]
    assert set(error) == {"code", "message", "details", "suggestion", "trace_id"}
    assert error["code"] == code and error["trace_id"] == body["request_id"]
    assert "botocore" not in response.text and "ClientError" not in response.text
    return error


async def test_health_names_dynamodb_with_its_latency(api: Api) -> None:
    database = (await api.call("GET", "/health/detailed"))["checks"]["database"]
    assert database["status"] == "healthy" and database["backend"] == "dynamodb"
    assert database["message"] == "DynamoDB connection successful"
    assert database["latency_ms"] >= 0
    assert (await api.call("GET", "/health/ready"))["checks"]["database"]["backend"] == "dynamodb"


async def test_an_oversized_item_is_payload_too_large_and_stores_nothing(api: Api) -> None:
    agent = await api.built_agent()
    response = await api.client.post(f"/api/v1/agents/{agent['agent_id']}/sessions",
                                     json={"metadata": {"notes": "x" * 600_000}})
    error = assert_error_envelope(response, 413, "PAYLOAD_TOO_LARGE")
    assert error["details"][0]["field"] == "metadata"
    assert "409600 bytes" in error["details"][0]["message"]
    sessions = await api.call("GET", f"/api/v1/agents/{agent['agent_id']}/sessions")
    assert sessions["count"] == 0


async def test_reserved_words_empty_and_long_values_are_ordinary_input(api: Api) -> None:
    project = await api.create_project(REQUIREMENT, user_id="status", tags=["size", "name", "select"])
    listed = await api.call("GET", "/api/v1/projects", params={"user_id": "status"})
    assert [p["project_id"] for p in listed["items"]] == [project["project_id"]]
    assert (await api.call("GET", "/api/v1/agents", params={"project_id": ""}))["count"] == 0
    assert (await api.call("GET", "/api/v1/agents", params={"capabilities": "data,owner"}))["count"] == 0
    assert_error_envelope(await api.client.get(f"/api/v1/agents/{'a' * 200}"), 404,
                          "RESOURCE_NOT_FOUND")
    assert_error_envelope(await api.client.get(f"/api/v1/projects/{'p' * 64}"), 404,
                          "RESOURCE_NOT_FOUND")
    assert_error_envelope(await api.client.get("/api/v1/projects", params={"last_key": "garbage"}),
                          400, "VALIDATION_ERROR")
    await api.wait_status(project["project_id"], "completed")


@pytest.fixture
async def lonely_moto() -> AsyncIterator[moto_server.MotoServer]:
    """A moto server of the test's own, to take away."""
    server = moto_server.MotoServer().start()
    try:
        yield server
    finally:
        server.stop()


async def test_readiness_fails_fast_when_the_endpoint_is_unreachable(
        lonely_moto: moto_server.MotoServer, tmp_path: Path, settings: Settings) -> None:
    app = create_app(make_settings(
        tmp_path, storage_backend="dynamodb", dynamodb_endpoint_url=lonely_moto.endpoint,
        dynamodb_region=moto_server.REGION, dynamodb_table_prefix="lonely_",
        dynamodb_max_attempts=2))
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client:
        assert (await client.get("/health/ready")).status_code == 200
        lonely_moto.stop()

        response = await client.get("/health/ready")
        error = assert_error_envelope(response, 503, "DATABASE_ERROR")
        assert error["message"].startswith("DynamoDB connection failed")
        assert float(response.headers["X-Response-Time"].rstrip("ms")) < 1500
        detailed = (await client.get("/health/detailed")).json()["data"]
        assert detailed["status"] == "degraded"
        assert_error_envelope(await client.get("/api/v1/projects"), 503, "DATABASE_ERROR")


async def test_throttling_past_the_retries_is_503_with_retry_after(settings: Settings) -> None:
    async with ThrottlingProxy("Query", throttle=0) as proxy:
        app = create_app(settings.model_copy(update={"dynamodb_endpoint_url": proxy.endpoint,
                                                     "dynamodb_max_attempts": 2}))
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client:
            proxy.throttle = 1_000
            response = await client.get("/api/v1/projects")
            error = assert_error_envelope(response, 503, "DATABASE_ERROR")
            assert response.headers["Retry-After"] == "1"
            assert "Throughput" not in response.text and "Query" not in response.text
            throttled = 1_000 - proxy.throttle
            assert throttled >= 2, throttled  # retried before giving up
            assert error["message"] == "The database could not complete the request."

            proxy.throttle = 0
            listed = await client.get("/api/v1/projects")
            assert listed.status_code == 200 and listed.json()["data"]["count"] == 0
