"""Health probes as the operator's guide shows them, in the contract's envelope.

/health and /health/live do no I/O: they answer as long as the process serves requests.
/health/ready asks the store (briefly) and says 503 when it cannot serve or is draining.
/health/detailed adds the database check, the AWS credential chain, the model endpoint (the
cached result of a background probe: api.observability.model_probe) and the system figures;
it answers 200 with `degraded` when the database check fails, so its details stay readable.
Neither readiness nor the overall status depends on the model endpoint (the probe's module
says why).
"""

import asyncio
import time
from typing import Any

import botocore.session
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api import __version__
from api.config import Settings
from api.core.clock import utc_now
from api.core.envelope import error_response, ok
from api.observability import db_observer
from api.observability.model_probe import ModelProbe
from api.observability.system import sampler
from api.routers.openapi import errors
from api.schemas.envelope import Envelope
from api.schemas.health import Detailed, Health, Ready

PING_TIMEOUT_SECONDS = 2.0
# The chain ends with the EC2/ECS metadata services, which can be slow to give up.
AWS_LOOKUP_TIMEOUT_SECONDS = 3.0
BACKEND_NAMES = {"sqlite": "SQLite", "dynamodb": "DynamoDB"}

router = APIRouter(tags=["health"])


def _status(status: str) -> dict[str, Any]:
    return {"status": status, "version": __version__, "timestamp": utc_now()}


@router.get("/health", response_model=Envelope[Health], responses=errors(api=False))
async def health() -> JSONResponse:
    return ok(_status("healthy"))


@router.get("/health/live", response_model=Envelope[Health], responses=errors(api=False))
async def live() -> JSONResponse:
    return ok(_status("alive"))


@router.get("/health/ready", response_model=Envelope[Ready],
            responses=errors("SERVICE_UNAVAILABLE", "DATABASE_ERROR", api=False))
async def ready(request: Request) -> JSONResponse:
    if getattr(request.app.state, "draining", False):
        return error_response("SERVICE_UNAVAILABLE", "The service is shutting down.")
    database = await check_database(request.app.state.store)
    if database["status"] != "healthy":
        return error_response("DATABASE_ERROR", database["message"], details={"database": database})
    return ok({**_status("ready"), "checks": {"database": database}})


@router.get("/health/detailed", response_model=Envelope[Detailed],
            responses=errors("AUTHENTICATION_REQUIRED", "PERMISSION_DENIED", api=False))
async def detailed(request: Request) -> JSONResponse:
    settings = request.app.state.settings
    database, aws_credentials = await asyncio.gather(
        check_database(request.app.state.store), check_aws_credentials())
    if aws_credentials["status"] == "not_configured" and not _uses_aws(settings):
        aws_credentials = {"status": "not_needed", "message": (
            f"No AWS credentials found; none are needed (STORAGE_BACKEND={settings.storage_backend}, "
            f"MODEL_PROVIDER={settings.model_provider})")}
    return ok({
        **_status("healthy" if database["status"] == "healthy" else "degraded"),
        "checks": {"database": database, "aws_credentials": aws_credentials,
                   "model_provider": check_model_provider(request)},
        "system": sampler.snapshot(),
        "database": db_observer.figures.snapshot(),
    })


async def check_database(store: Any) -> dict[str, Any]:
    name = BACKEND_NAMES.get(store.backend_name, store.backend_name)
    start = time.perf_counter()
    try:
        await asyncio.wait_for(store.ping(), PING_TIMEOUT_SECONDS)
    except TimeoutError:
        status, message = "unhealthy", f"{name} did not answer within {PING_TIMEOUT_SECONDS:g} s"
    except Exception as exc:  # whatever broke, the store cannot serve: report why
        status, message = "unhealthy", f"{name} connection failed: {exc}"
    else:
        status, message = "healthy", f"{name} connection successful"
    return {"status": status, "message": message, "backend": store.backend_name,
            "latency_ms": round((time.perf_counter() - start) * 1000, 2)}


def check_model_provider(request: Request) -> dict[str, Any]:
    """The probe's cached result (no I/O)."""
    probe: ModelProbe = request.app.state.model_probe
    return probe.snapshot()


def _uses_aws(settings: Settings) -> bool:
    return settings.storage_backend == "dynamodb" or settings.model_provider == "bedrock"


async def check_aws_credentials() -> dict[str, Any]:
    try:
        return await asyncio.wait_for(asyncio.to_thread(_resolve_aws_credentials),
                                      AWS_LOOKUP_TIMEOUT_SECONDS)
    except TimeoutError:
        return {"status": "not_configured",
                "message": f"AWS credential lookup did not finish within {AWS_LOOKUP_TIMEOUT_SECONDS:g} s"}


def _resolve_aws_credentials() -> dict[str, Any]:
    # A fresh session each time, so credentials added or removed since start-up are seen.
    try:
        credentials = botocore.session.Session().get_credentials()
    except Exception as exc:  # a broken profile or config file means: not usable
        return {"status": "not_configured", "message": f"AWS credential chain failed: {exc}"}
    if credentials is None:
        return {"status": "not_configured", "message": "No AWS credentials found"}
    return {"status": "configured", "message": "AWS credentials configured", "source": credentials.method}
