"""The apps compared with the full one, each served by `python -m bench.serve VARIANT`.

`off` and `generic` are `api.main.create_app` itself with its observability seam (the
`api.instrumentation` module that create_app and its lifespan call: configure_logging,
include_routes, add_tracing, start, stop) replaced, and the store's per-query observer
silenced. Routers, services, store, error handlers and the body-size limit are the same
objects in all three, so the comparisons measure the observability layer and nothing else.

`full_app` is the full app itself, for an item that serves it with other uvicorn options.
`bare` is the limit: an ASGI callable that answers every request with the bytes the full
app's GET /health returned.
"""

import json
import logging
import os
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from starlette.types import Receive, Scope, Send

import api.main
from api.config import Settings
from api.main import create_app
from api.observability import db_observer
from api.routers import health

BARE_BODY_VARIABLE = "BENCH_BARE_BODY"


def _silence_store_observer() -> None:
    # Every store call reports its timing to db_observer (Prometheus series, /health/detailed
    # figures): that is metrics, so it goes with them.
    db_observer.observe = lambda **_: None  # type: ignore[assignment]


class _Probes:
    """The seam with no observability behind it: the probes stay (they are API), /metrics,
    logging, tracing and the background sampler go."""

    @staticmethod
    def configure_logging(settings: Settings) -> None:
        # No handler on the root logger and its default WARNING level: INFO lines are dropped
        # at the first level check, warnings would reach stderr.
        pass

    @staticmethod
    def include_routes(app: FastAPI) -> None:
        app.include_router(health.router)

    @staticmethod
    def add_tracing(app: FastAPI, settings: Settings) -> None:
        pass

    @staticmethod
    async def start(app: FastAPI) -> None:
        pass

    @staticmethod
    async def stop(app: FastAPI) -> None:
        pass


def full_app() -> FastAPI:
    """The full app itself, for an item that serves it with other uvicorn options."""
    return create_app(Settings())


def off() -> FastAPI:
    """The full app with logging, tracing and metrics off."""
    _silence_store_observer()
    api.main.instrumentation = _Probes  # type: ignore[assignment]
    return create_app(Settings())


# -- the generic stack ---------------------------------------------------------------------------
guide_logger = logging.getLogger("app")


async def guide_tracing(request: Request, call_next: Any) -> Any:
    """The operator's guide's `@app.middleware("http")` snippet, verbatim but for the logger."""
    request_id = str(uuid.uuid4())
    request.state.request_id = request_id

    start_time = time.time()

    response = await call_next(request)

    duration = time.time() - start_time
    response.headers["X-Request-ID"] = request_id
    response.headers["X-Response-Time"] = str(duration)

    guide_logger.info(
        "Request completed",
        extra={
            "request_id": request_id,
            "path": request.url.path,
            "method": request.method,
            "status_code": response.status_code,
            "duration_seconds": duration,
        },
    )

    return response


class _GenericStack(_Probes):
    """What the FastAPI guides assemble: prometheus-fastapi-instrumentator with its defaults,
    asgi-correlation-id, python-json-logger on a file handler, and the guide's tracing
    middleware, whose "Request completed" line is the one access line per request."""

    @staticmethod
    def configure_logging(settings: Settings) -> None:
        from asgi_correlation_id import CorrelationIdFilter
        from pythonjsonlogger.json import JsonFormatter

        settings.log_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(settings.log_dir / "api.log")
        handler.addFilter(CorrelationIdFilter())
        handler.setFormatter(JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s %(correlation_id)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(settings.log_level)

    @staticmethod
    def include_routes(app: FastAPI) -> None:
        from prometheus_client import CollectorRegistry
        from prometheus_fastapi_instrumentator import Instrumentator

        app.include_router(health.router)
        # Its own registry: ours (imported with the app) already defines http_requests_total.
        Instrumentator(registry=CollectorRegistry()).instrument(app).expose(app)

    @staticmethod
    def add_tracing(app: FastAPI, settings: Settings) -> None:
        from asgi_correlation_id import CorrelationIdMiddleware

        app.add_middleware(CorrelationIdMiddleware)
        app.middleware("http")(guide_tracing)


def generic() -> FastAPI:
    """The full app instrumented instead with the generic stack."""
    _silence_store_observer()
    api.main.instrumentation = _GenericStack  # type: ignore[assignment]
    return create_app(Settings())


# -- the limit -----------------------------------------------------------------------------------
def bare() -> Any:
    """Answers every request with the body (and header names) of the full app's /health."""
    body = os.environ[BARE_BODY_VARIABLE].encode()
    start = {
        "type": "http.response.start",
        "status": 200,
        "headers": [
            (b"content-length", str(len(body)).encode()),
            (b"content-type", b"application/json"),
            (b"x-request-id", json.loads(body).get("request_id", "").encode()),
            (b"x-response-time", b"0.000100"),
        ],
    }
    answer = {"type": "http.response.body", "body": body}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await send(start)
        await send(answer)

    return app


VARIANTS = {"full_app": full_app, "off": off, "generic": generic, "bare": bare}
