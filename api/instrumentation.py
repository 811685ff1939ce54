"""Wires the observability layer into the app: JSON logging (the audit trail's too), tracing,
metrics, health probes.

At the top of the package, beside `api.main`: it imports routers and middleware, which
`api.observability` (below them) must not. `bench/apps.py` swaps this module to measure the app
without it, so everything observability adds to the app goes through here."""

import asyncio
import signal
import threading
from typing import Any

from fastapi import FastAPI

from api.config import Settings
from api.middleware.tracing import TracingMiddleware
from api.observability import audit
from api.observability import logging as json_logging
from api.observability import metrics
from api.observability.system import sampler
from api.routers import health
from api.routers import metrics as metrics_router


def configure_logging(settings: Settings) -> None:
    json_logging.configure_logging(settings)
    audit.configure(refusal_window_seconds=settings.audit_refusal_window_seconds)


def include_routes(app: FastAPI) -> None:
    """The probes and /metrics; include them before the API so that probes match first."""
    app.include_router(health.router)
    app.include_router(metrics_router.router)


def add_tracing(app: FastAPI, settings: Settings) -> None:
    """Call after every other add_middleware but CORS's (which answers preflights before
    anything else): the last added is the outermost, and tracing must see every response
    (including the body limit's 413) to stamp its headers."""
    app.add_middleware(TracingMiddleware, settings=settings)


async def start(app: FastAPI) -> None:
    metrics.forget_dead_workers()
    sampler.start()
    # logrotate's postrotate reload sends SIGHUP; files also reopen by themselves when moved.
    # Signal handlers can only be installed from the main thread (not under a TestClient).
    if threading.current_thread() is threading.main_thread():
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, json_logging.reopen_log_files)


async def stop(app: FastAPI) -> None:
    await asyncio.to_thread(sampler.stop)
    metrics.forget_this_worker()
    audit.flush()
    await asyncio.to_thread(json_logging.write_logs_directly)


def prepare_server(settings: Settings) -> dict[str, Any]:
    """Call in the process that starts uvicorn, before `uvicorn.run(..., **prepare_server(s))`.

    The parent process (the worker supervisor with WORKERS > 1) then logs JSON as well, the
    multiprocess metrics directory starts empty, and uvicorn's own logging stays out of the
    way: its records go through our handlers, and its access line is replaced by ours.
    """
    configure_logging(settings)
    metrics.prepare_multiprocess_dir()
    return {"log_config": None, "access_log": False}
