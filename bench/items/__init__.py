"""The items by number: 1-8 from issue 6, 9-10 (a real model's calls) from issue 10, 11-13 (the
server against plain FastAPI, and uvicorn's stack) from issue 13."""

from collections.abc import Callable
from dataclasses import dataclass

from bench.context import Context
from bench.items import builds, memory, model_calls, observability, scale, stack, workers
from bench.results import Row


@dataclass(frozen=True)
class Item:
    title: str
    what: str
    run: Callable[[Context], list[Row]]


ITEMS: dict[int, Item] = {
    1: Item("Observability cost",
            "GET /health and GET /api/v1/projects/{id}, full stack vs logging, tracing and metrics "
            "off, both with API keys and rate limits; target ≥ 0.85; and the project GET with "
            "keys vs without (AUTH_MODE=none): target ≥ 0.9", observability.cost),
    2: Item("Against the generic stack",
            "the same app instrumented instead with prometheus-fastapi-instrumentator, "
            "asgi-correlation-id, python-json-logger and the guide's @app.middleware tracing; "
            "target ours ≥ 1.3× theirs", observability.generic_stack),
    3: Item("Distance to the limit",
            "full app GET /health vs a bare ASGI app returning the same bytes; reported",
            observability.limit),
    4: Item("Statistics at scale",
            "statistics overview latency, 1,000 vs 1,000,000 builds and invocations; target ≤ 1.5",
            scale.statistics),
    5: Item("Deep pages",
            "project page at depth 1,000 vs the first page, 100,000 projects; target ≤ 1.5",
            scale.pagination),
    6: Item("Build engine",
            "500 builds, offline provider, no stage delay: builds/s, and API p99 while they run vs "
            "idle, with builds in the API process (target ≤ 2) and in a build worker (target ≤ 1.2)",
            builds.engine),
    7: Item("Memory under steady load",
            "10 minutes of the locust scenario: RSS after warm-up vs at the end; target growth ≤ 5 %",
            memory.steady_load),
    8: Item("Several workers", "throughput of 1 vs 2 worker processes; reported",
            workers.one_vs_two),
    9: Item("Added latency per model call",
            "JSON invocations of an agent on llama-server (SmolLM2-135M, 32 tokens, temperature 0): "
            "client time minus the model server's time at a timing proxy; target p50 ≤ 5 ms",
            model_calls.added_latency),
    10: Item("Streamed time to first token",
             "first `event: delta` through the platform vs the first content delta straight from "
             "llama-server (openai SDK), the same messages, alternated; target ≤ 1.1",
             model_calls.streamed_ttft),
    11: Item("Against plain FastAPI: the probe",
             "GET /health, full app vs a one-route FastAPI app answering the same body on the same "
             "uvicorn; target ≥ 0.9", stack.health_vs_fastapi),
    12: Item("Against plain FastAPI: a read",
             "GET /api/v1/projects/{id}, full app vs a hand-written FastAPI + sqlite3 app reading "
             "the same project and latest build from the same file, same envelope; target ≥ 1.5",
             stack.project_vs_fastapi_sqlite),
    13: Item("uvicorn's stack",
             "the full app on uvloop + httptools (uvicorn[standard]) vs asyncio + h11; reported",
             stack.uvicorn_stack),
}
