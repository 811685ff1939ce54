"""What the health probes answer (api.routers.health)."""

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from api.schemas.envelope import Record


class Health(Record):
    status: str = Field(description="`healthy`, `alive`, `ready`, or `degraded` (/health/detailed)")
    version: str
    timestamp: datetime


class DatabaseCheck(Record):
    status: Literal["healthy", "unhealthy"]
    message: str
    backend: str = Field(description="`sqlite` or `dynamodb`")
    latency_ms: float


class AwsCredentialsCheck(Record):
    status: Literal["configured", "not_configured", "not_needed"]
    message: str
    source: str | None = Field(default=None, description="Where botocore found them, when configured")


class ReadyChecks(Record):
    database: DatabaseCheck


class Ready(Health):
    checks: ReadyChecks


class DetailedChecks(ReadyChecks):
    aws_credentials: AwsCredentialsCheck
    model_provider: dict[str, Any] = Field(
        description="The background probe's last result (api.observability.model_probe)")


class Detailed(Health):
    checks: DetailedChecks
    system: dict[str, float] = Field(description="CPU and memory figures, uptime")
    database: dict[str, float] = Field(description="Store calls since start: counts, rates")
