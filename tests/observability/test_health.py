"""The health probes, with the fields the operator's guide shows, on the real app and store."""

import os
from pathlib import Path

import pytest
from fastapi import FastAPI

from api.config import Settings
from tests.conftest import Api
from tests.observability.conftest import TIMESTAMP


async def test_basic_and_liveness_probes(api: Api) -> None:
    response = await api.client.get("/health")
    body = response.json()
    assert response.status_code == 200 and body["success"] is True
    assert body["data"]["status"] == "healthy" and body["data"]["version"] == "1.0.0"
    assert TIMESTAMP.fullmatch(body["data"]["timestamp"])
    assert (await api.call("GET", "/health/live"))["status"] == "alive"


async def test_detailed_reports_every_check(api: Api) -> None:
    await api.call("GET", "/api/v1/projects")
    data = await api.call("GET", "/health/detailed")
    assert data["status"] == "healthy" and data["version"] == "1.0.0"
    database = data["checks"]["database"]
    assert database["status"] == "healthy" and database["backend"] == "sqlite"
    assert database["message"] == "SQLite connection successful"
    assert database["latency_ms"] >= 0
    # SQLite and the offline provider need no AWS credentials: none found is not a gap.
    assert data["checks"]["aws_credentials"] == {
        "status": "not_needed",
        "message": "No AWS credentials found; none are needed (STORAGE_BACKEND=sqlite, MODEL_PROVIDER=offline)"}
    assert set(data["system"]) == {"cpu_percent", "memory_percent", "process_memory_mb", "uptime_seconds"}
    assert data["system"]["process_memory_mb"] > 0 and data["system"]["uptime_seconds"] >= 0
    figures = data["database"]
    assert figures["queries_succeeded"] > 0 and figures["query_success_rate"] <= 100
    assert {"queries_failed", "queries_per_second", "slow_queries"} <= figures.keys()


async def test_aws_credentials_come_from_the_standard_chain(
        api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Not only environment variables: the shared credentials file counts too.
    (tmp_path / "aws-credentials").write_text(
        "[default]\naws_access_key_id = AKIAIOSFODNN7EXAMPLE\n"
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n")
    aws = (await api.call("GET", "/health/detailed"))["checks"]["aws_credentials"]
    assert aws == {"status": "configured", "message": "AWS credentials configured",
                   "source": "shared-credentials-file"}

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    aws = (await api.call("GET", "/health/detailed"))["checks"]["aws_credentials"]
    assert aws["status"] == "configured" and aws["source"] == "env"


async def test_readiness_follows_the_database_file(api: Api, settings: Settings) -> None:
    assert (await api.call("GET", "/health/ready"))["checks"]["database"]["status"] == "healthy"

    # The data directory moved away (a lost volume): not ready, and detailed says why.
    data_dir = settings.sqlite_path.parent
    os.rename(data_dir, data_dir.with_name("data-away"))
    error = await api.call("GET", "/health/ready", expect=503)
    assert error["code"] == "DATABASE_ERROR"
    assert error["message"].startswith("SQLite connection failed")
    detailed = await api.call("GET", "/health/detailed")
    assert detailed["status"] == "degraded"
    assert detailed["checks"]["database"]["status"] == "unhealthy"
    os.rename(data_dir.with_name("data-away"), data_dir)
    assert (await api.call("GET", "/health/ready"))["status"] == "ready"

    # The file replaced by garbage: not ready until the real file is back.
    original = settings.sqlite_path.with_name("original.db")
    os.rename(settings.sqlite_path, original)
    settings.sqlite_path.write_bytes(b"this is not a database" * 100)
    assert (await api.call("GET", "/health/ready", expect=503))["code"] == "DATABASE_ERROR"
    os.replace(original, settings.sqlite_path)
    assert (await api.call("GET", "/health/ready"))["status"] == "ready"


async def test_readiness_fails_while_draining(api: Api, app: FastAPI) -> None:
    app.state.draining = True
    error = await api.call("GET", "/health/ready", expect=503)
    assert error["code"] == "SERVICE_UNAVAILABLE"
    assert (await api.call("GET", "/health/live"))["status"] == "alive"
