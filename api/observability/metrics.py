"""Prometheus metrics: the series the guide's alerts and dashboard use, correct with N workers.

With PROMETHEUS_MULTIPROC_DIR set (in the environment, before the process starts: the
client picks its storage at import time), every worker writes its samples to files in that
directory and a scrape answered by any worker sums them all. Gauges say how to combine
workers: `livesum` for what adds up across workers (requests in progress, builds running,
memory and CPU of the service) and only live workers count, so a worker's files are
dropped when it exits (`mark_process_dead`). The directory must be emptied before the
server starts (`prepare_multiprocess_dir`).

Values that only the store knows (database up, build success rate) are read at scrape time.
`build_success_rate` is absent until a build has finished (and while the store is down):
"no data" rather than a made-up 100 %, so `build_success_rate < 70` neither fires nor hides.
"""

import asyncio
import functools
import glob
import os
import re
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import (
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    multiprocess,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, InfoMetricFamily, Metric

from api import __version__

MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if MULTIPROC_DIR:
    # Metrics without labels open their file as soon as they are defined, below.
    os.makedirs(MULTIPROC_DIR, exist_ok=True)

# `_created` series exist only in single-process mode; drop them so both modes expose the same.
disable_created_metrics()

STORE_PROBE_TIMEOUT_SECONDS = 2.0
UNMATCHED_ROUTE = "<unmatched>"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# -- HTTP --------------------------------------------------------------------------------------
http_requests_total = Counter(
    "http_requests_total", "HTTP requests served, by route template and exact status code.",
    ["method", "route", "status"])
http_request_duration_seconds = Histogram(
    "http_request_duration_seconds", "Time to serve an HTTP request.", ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0))
http_requests_in_progress = Gauge(
    "http_requests_in_progress", "HTTP requests being served now.", multiprocess_mode="livesum")

# -- process (sampled in the background by api.observability.system) ---------------------------
process_memory_percent = Gauge(
    "process_memory_percent",
    "Resident memory of the API processes, percent of what they may use (container limit, else host).",
    multiprocess_mode="livesum")
process_cpu_percent = Gauge(
    "process_cpu_percent", "CPU used by the API processes, percent of one core.",
    multiprocess_mode="livesum")

# -- database ----------------------------------------------------------------------------------
db_queries_total = Counter(
    "db_queries_total", "Store operations, by operation and outcome (success, error).",
    ["operation", "outcome"])
db_query_duration_seconds = Histogram(
    "db_query_duration_seconds", "Time of one store operation.", ["operation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))
db_slow_queries_total = Counter(
    "db_slow_queries_total", "Store operations slower than SLOW_QUERY_THRESHOLD_SECONDS.")
db_throttle_retries_total = Counter(
    "db_throttle_retries", "Store requests the database throttled and the client retried.")

# -- builds and agents -------------------------------------------------------------------------
builds_total = Counter("builds_total", "Builds finished, by final status.", ["status"])
builds_active = Gauge("builds_active", "Builds running in this service now.",
                      multiprocess_mode="livesum")
build_duration_seconds = Histogram(
    "build_duration_seconds", "Duration of a finished build, by final status.", ["status"],
    buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200))
build_stage_duration_seconds = Histogram(
    "build_stage_duration_seconds", "Duration of one build stage.", ["stage"],
    buckets=(0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1800))
agent_invocations_total = Counter(
    "agent_invocations_total", "Agent invocations, by outcome (success, failed).", ["status"])
agent_invocation_duration_seconds = Histogram(
    "agent_invocation_duration_seconds", "Duration of one agent invocation.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))


# -- model calls (names after the OpenTelemetry GenAI metrics: docs/MONITORING.md) -------------
# `model` is the model named in the settings (MODEL_NAME, BUILD_MODEL, AGENT_MODEL,
# BEDROCK_MODEL_ID), never what an endpoint answers, so the label stays bounded.
MODEL_LABELS = ["provider", "model", "operation"]
model_requests_total = Counter(
    "model_requests_total",
    "Model calls, by outcome (success, error, timeout, rate_limited, cancelled).",
    [*MODEL_LABELS, "outcome"])
model_request_duration_seconds = Histogram(
    "model_request_duration_seconds", "Time of one model call, retries included.", MODEL_LABELS,
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300))
model_time_to_first_token_seconds = Histogram(
    "model_time_to_first_token_seconds", "Time from a streamed model call to its first text.",
    MODEL_LABELS, buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
model_tokens_total = Counter(
    "model_tokens_total", "Tokens of model calls, by type (input, output).", [*MODEL_LABELS, "type"])
# Reasons are the few api.middleware.auth names (its REFUSALS): labels stay bounded.
auth_failures_total = Counter(
    "auth_failures_total", "Requests refused 401 for want of a valid API key, by reason.", ["reason"])
# `limit` and `scope` are api.services.limits' few names (requests, builds, invocations,
# tokens, auth_failures; tenant, key, address): labels stay bounded.
rate_limited_total = Counter(
    "rate_limited_total", "Requests refused 429 by a rate limit or quota.", ["limit", "scope"])
log_lines_dropped_total = Counter(
    "log_lines_dropped_total", "Log lines a sink could not take (its queue was full), by sink.",
    ["sink"])

# -- recording (called by the middleware, the store observer, the build engine, the log sinks) --

def is_excluded(path: str) -> bool:
    """Probes and scrapes would drown the request series; they are not counted."""
    return path == "/metrics" or path == "/health" or path.startswith("/health/")


def method_label(method: str) -> str:
    # Clients can send any method name; keep the label bounded.
    return method if method in _METHODS else "OTHER"


# labels() validates and converts its arguments on every call, a few microseconds on every
# request and store call; the children are kept here instead. Every key is bounded: methods
# by method_label, routes by the app's templates, statuses by HTTP, operations by the store.
@functools.cache
def _request_series(method: str, route: str, status: int) -> tuple[Any, Any]:
    return (http_requests_total.labels(method, route, str(status)),
            http_request_duration_seconds.labels(method, route))


@functools.cache
def _db_series(operation: str, ok: bool) -> tuple[Any, Any]:
    return (db_queries_total.labels(operation, "success" if ok else "error"),
            db_query_duration_seconds.labels(operation))


def record_request(*, method: str, route: str, status: int, seconds: float) -> None:
    total, duration = _request_series(method_label(method), route, status)
    total.inc()
    duration.observe(seconds)


def record_db_operation(*, operation: str, seconds: float, ok: bool, slow: bool) -> None:
    total, duration = _db_series(operation, ok)
    total.inc()
    duration.observe(seconds)
    if slow:
        db_slow_queries_total.inc()


def record_db_throttle_retry() -> None:
    db_throttle_retries_total.inc()


def record_build_finished(*, status: str, duration_seconds: float | None) -> None:
    builds_total.labels(status).inc()
    if duration_seconds is not None:
        build_duration_seconds.labels(status).observe(duration_seconds)


def record_stage(*, stage: str, seconds: float) -> None:
    build_stage_duration_seconds.labels(stage).observe(seconds)


def build_started() -> None:
    builds_active.inc()


def build_stopped() -> None:
    builds_active.dec()


def record_invocation(*, status: str, seconds: float) -> None:
    agent_invocations_total.labels(status).inc()
    agent_invocation_duration_seconds.observe(seconds)


def expose_auth_failures(reasons: Iterable[str]) -> None:
    """Every reason's series at 0 from the start (AuthFailuresHigh needs them to compute
    an increase from the first failure on)."""
    for reason in reasons:
        auth_failures_total.labels(reason)


def record_auth_failure(*, reason: str) -> None:
    auth_failures_total.labels(reason).inc()


def record_rate_limited(*, limit: str, scope: str) -> None:
    rate_limited_total.labels(limit, scope).inc()


def expose_log_sink(*, sink: str) -> None:
    """The sink's drop counter at 0 from the start: a series that first appears at N hides
    those N from increase(), and LogLinesDropped would miss a first burst of drops."""
    log_lines_dropped_total.labels(sink)


def record_log_lines_dropped(*, sink: str) -> None:
    log_lines_dropped_total.labels(sink).inc()


def record_model_call(*, provider: str, model: str, operation: str, outcome: str, seconds: float,
                      ttft_seconds: float | None, input_tokens: int, output_tokens: int) -> None:
    labels = (provider, model, operation)
    model_requests_total.labels(*labels, outcome).inc()
    model_request_duration_seconds.labels(*labels).observe(seconds)
    if ttft_seconds is not None:
        model_time_to_first_token_seconds.labels(*labels).observe(ttft_seconds)
    if input_tokens:
        model_tokens_total.labels(*labels, "input").inc(input_tokens)
    if output_tokens:
        model_tokens_total.labels(*labels, "output").inc(output_tokens)

# -- multiprocess bookkeeping ------------------------------------------------------------------
def prepare_multiprocess_dir() -> None:
    """Empty the multiprocess directory; call once before the workers start."""
    if MULTIPROC_DIR:
        for path in glob.glob(os.path.join(MULTIPROC_DIR, "*.db")):
            os.remove(path)


def forget_dead_workers() -> None:
    """Drop the live gauges of workers that died without cleaning up (kill -9, OOM)."""
    if not MULTIPROC_DIR:
        return
    pids = {int(m.group(1)) for path in glob.glob(os.path.join(MULTIPROC_DIR, "gauge_live*_*.db"))
            if (m := re.search(r"_(\d+)\.db$", path))}
    for pid in pids:
        if not _alive(pid):
            multiprocess.mark_process_dead(pid, MULTIPROC_DIR)


def forget_this_worker() -> None:
    if MULTIPROC_DIR:
        multiprocess.mark_process_dead(os.getpid(), MULTIPROC_DIR)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        pass
    return True


# -- exposition --------------------------------------------------------------------------------
class _Exposition:
    """What one scrape shows: every worker's samples plus the values read from the store."""

    def __init__(self, extra: Iterable[Metric]) -> None:
        self.extra = list(extra)

    def collect(self) -> Iterator[Metric]:
        if MULTIPROC_DIR:
            yield from multiprocess.MultiProcessCollector(None, MULTIPROC_DIR).collect()
        else:
            # The default registry also holds prometheus_client's process_* collectors, which
            # describe only the process answering, so they are left out with several workers.
            yield from REGISTRY.collect()
        yield from self.extra


async def _store_families(store: Any) -> list[Metric]:
    up = GaugeMetricFamily("database_up", "1 when the store answered a ping at scrape time.",
                           labels=["backend"])
    families: list[Metric] = [up]
    try:
        await asyncio.wait_for(store.ping(), STORE_PROBE_TIMEOUT_SECONDS)
        counters = await asyncio.wait_for(store.get_counters(tenant_id=None),
                                         STORE_PROBE_TIMEOUT_SECONDS)
    except Exception:  # the store is down, whatever the reason: say so, serve the rest
        up.add_metric([store.backend_name], 0)
        return families
    up.add_metric([store.backend_name], 1)
    finished = counters["builds_succeeded"] + counters["builds_failed"]
    if finished:
        families.append(GaugeMetricFamily(
            "build_success_rate",
            "Percent of finished builds that succeeded (cancelled builds excluded).",
            value=100.0 * counters["builds_succeeded"] / finished))
    return families


async def render(store: Any, accept: str | None) -> tuple[bytes, str]:
    """The exposition body and its content type, in the format the scraper asked for."""
    info = InfoMetricFamily("nexus_api", "Version of the running API.", value={"version": __version__})
    families = [info, *await _store_families(store)]
    encoder, content_type = choose_encoder(accept or "")
    # Reading the multiprocess files is disk I/O: off the event loop.
    body = await asyncio.to_thread(encoder, _Exposition(families))
    return body, content_type
