"""The ASGI application: `uvicorn api.main:app`, or `python api/main.py` to serve it."""

import asyncio
import logging
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # `python api/main.py` (the operator's guide runs it that way, also under cProfile and
    # memory_profiler): make the package importable from the repository root.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastapi import APIRouter, Depends, FastAPI
from starlette.middleware.cors import CORSMiddleware

from api import __version__, instrumentation
from api.config import Settings, get_settings
from api.core.handlers import register_error_handlers
from api.database.factory import create_store
from api.dependencies import count_api_call, refuse_unknown_query_params
from api.engine.build_engine import BuildEngine
from api.engine.stage_work import StageWorker
from api.middleware.auth import REFUSALS, AuthMiddleware
from api.middleware import cors
from api.middleware.body_limit import BodySizeLimitMiddleware
from api.middleware.idempotency import IdempotencyMiddleware
from api.observability.model_probe import ModelProbe
from api.providers.base import ModelProvider
from api.providers.client import ModelClient
from api.providers.factory import create_provider
from api.routers import agents, docs, keys, openapi, projects, sessions, statistics
from api.observability import metrics
from api.services.agent_service import AgentService
from api.services.api_call_counter import ApiCallCounter
from api.services.keys import KeyService
from api.services.limits import FailedAuthentications, Limits
from api.services.project_service import ProjectService
from api.services.statistics_service import StatisticsService

logger = logging.getLogger("api.main")


def _drain_on_sigterm(app: FastAPI, drain_seconds: float) -> None:
    """On SIGTERM: stop taking builds and fail readiness at once, keep serving for
    `drain_seconds` (load balancers see the failing probe and stop sending traffic), then let
    the server's own handler (installed before the lifespan starts) shut down gracefully."""
    previous = signal.getsignal(signal.SIGTERM)
    loop = asyncio.get_running_loop()

    def drain(signum: int, frame: object) -> None:
        logger.info("SIGTERM received: draining", extra={"drain_seconds": drain_seconds})
        if callable(previous):
            loop.call_later(drain_seconds, previous, signum, frame)

    def handle(signum: int, frame: object) -> None:
        app.state.draining = True
        app.state.engine.accepting = False
        # Nothing else in the signal context: the main thread may be holding the log queue's
        # lock at this very moment, and logging here would deadlock the shutdown.
        loop.call_soon_threadsafe(drain, signum, frame)

    signal.signal(signal.SIGTERM, handle)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The API (`create_app`) or a build worker (`create_worker_app`): the same store, model
    client and engine; the API adds its services, and runs builds unless RUN_BUILDS=false."""
    settings: Settings = app.state.settings
    serves_api: bool = app.state.serves_api
    try:
        provider = app.state.provider or create_provider(settings)
        store = create_store(settings)
        await store.open()
    except Exception as exc:
        logger.critical(f"Start-up failed: {exc}")
        raise
    client = ModelClient(provider, max_concurrency=settings.model_max_concurrency,
                         timeout_seconds=settings.model_timeout_seconds,
                         max_retries=settings.model_max_retries)
    worker = StageWorker(client, model=settings.model_for("build"),
                         temperature=settings.model_temperature,
                         max_output_tokens=settings.model_max_output_tokens)
    engine = BuildEngine(store=store, worker=worker,
                         max_concurrent_builds=settings.max_concurrent_builds,
                         lease_seconds=settings.build_lease_seconds)
    app.state.model_probe = ModelProbe(
        list_models=client.list_models, provider=settings.model_provider,
        endpoint=provider.endpoint,
        models={"build": settings.model_for("build"), "invoke": settings.model_for("invoke")})
    app.state.store = store
    app.state.engine = engine
    app.state.key_service = KeyService(store=store, cache_seconds=settings.auth_cache_seconds)
    app.state.limits = limits = Limits(store=store, statistics=store, settings=settings)
    app.state.failed_authentications = FailedAuthentications(
        per_minute=settings.auth_failures_per_minute)
    if serves_api:
        api_calls = ApiCallCounter(store=store, flush_seconds=settings.api_calls_flush_seconds)
        # A model call's deadline bounds how long a request runs (the idempotency keys' claims).
        app.state.model_deadline_seconds = client.deadline_seconds
        app.state.api_calls = api_calls
        app.state.project_service = ProjectService(store=store, engine=engine, limits=limits)
        app.state.agent_service = AgentService(store=store, client=client, settings=settings,
                                               limits=limits)
        app.state.statistics_service = StatisticsService(store=store, api_calls=api_calls)
    await instrumentation.start(app)
    app.state.model_probe.start()
    runs_builds = settings.run_builds or not serves_api
    await engine.start(run_builds=runs_builds)
    if serves_api:
        api_calls.start()
    _drain_on_sigterm(app, settings.shutdown_drain_seconds)
    metrics.expose_auth_failures(REFUSALS)
    if settings.auth_mode == "api_key" and serves_api and not await store.list_api_keys(tenant_id=None):
        logger.warning("AUTH_MODE=api_key and no API key exists yet: the API answers 401 "
                       "until one does. Create the first with `nexus-ai keys create --tenant "
                       "NAME --role admin` (docs/SECURITY.md)")
    if settings.debug and settings.environment == "production":
        logger.warning("DEBUG=true in production: error responses include exception details")
    role = ("Nexus-AI Platform API" if serves_api else "Nexus-AI build worker")
    logger.info(f"{role} started", extra={
        "version": __version__, "environment": settings.environment,
        "storage_backend": store.backend_name, "model_provider": provider.name,
        "build_model": settings.model_for("build"), "agent_model": settings.model_for("invoke"),
        "runs_builds": runs_builds, "engine_instance": engine.instance_id if runs_builds else None})
    try:
        yield
    finally:
        try:
            app.state.draining = True
            await engine.shutdown()
            await app.state.model_probe.stop()
            if serves_api:
                await app.state.agent_service.drain()
            await client.close()
            if serves_api:
                await api_calls.stop()
            await store.close()
            logger.info(f"{role} stopped")
        finally:
            # uvicorn re-raises SIGTERM after shutdown, so atexit never runs: the log queue
            # must be written out here whatever failed above.
            await instrumentation.stop(app)


def _new_app(settings: Settings | None, provider: ModelProvider | None, *, serves_api: bool,
             **options: Any) -> tuple[FastAPI, Settings]:
    settings = settings or get_settings()
    instrumentation.configure_logging(settings)
    app = FastAPI(version=__version__, lifespan=lifespan, debug=False, docs_url=None,
                  redoc_url=None, **options)
    app.state.settings = settings
    app.state.provider = provider
    app.state.serves_api = serves_api
    app.state.draining = False
    register_error_handlers(app)
    instrumentation.include_routes(app)
    return app, settings


def create_app(settings: Settings | None = None, *, provider: ModelProvider | None = None) -> FastAPI:
    """The application. `provider` replaces the configured model provider (tests use it to
    stand in for a hosted model)."""
    # FastAPI's own /docs and /redoc load their scripts from a CDN: api.routers.docs serves them.
    app, settings = _new_app(settings, provider, serves_api=True, title="Nexus-AI Platform API",
                             generate_unique_id_function=openapi.operation_id)
    v1 = APIRouter(prefix="/api/v1", dependencies=[Depends(count_api_call),
                                                   Depends(refuse_unknown_query_params)])
    for module in (projects, agents, sessions, statistics, keys):
        v1.include_router(module.router)
    app.include_router(v1)
    docs.include(app)
    openapi.install(app)
    # Inside the body limit, which refuses an oversized body before anything reads it; both
    # inside the authentication, which decides the tenant the idempotency keys belong to.
    app.add_middleware(IdempotencyMiddleware)
    app.add_middleware(BodySizeLimitMiddleware)
    app.add_middleware(AuthMiddleware)
    instrumentation.add_tracing(app, settings)
    # Outermost, added last: a preflight needs no key, and every answer (refusals and the
    # tracing's own 500 included) carries the CORS headers a page needs to read it.
    if settings.cors_allowed_origins:
        app.add_middleware(CORSMiddleware, **cors.options(settings))
    return app


def create_worker_app(settings: Settings | None = None, *,
                      provider: ModelProvider | None = None) -> FastAPI:
    """`nexus-ai worker`: runs builds from the shared store and serves only the probes and
    /metrics (no API, no OpenAPI document)."""
    app, settings = _new_app(settings, provider, serves_api=False,
                             title="Nexus-AI build worker", openapi_url=None)
    app.add_middleware(AuthMiddleware)
    instrumentation.add_tracing(app, settings)
    return app


def __getattr__(name: str) -> FastAPI:
    # `uvicorn api.main:app` reads the attribute; building the app on first access rather than
    # at import keeps `import api.main` (tests, tools) free of start-up side effects.
    if name != "app":
        raise AttributeError(name)
    global app
    app = create_app()
    return app


if __name__ == "__main__":
    from api.cli import main

    main(["serve"])
