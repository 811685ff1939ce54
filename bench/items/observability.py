"""Items 1-3: what the observability layer costs, against nothing, against the generic
stack, and how far the whole app is from a bare ASGI answer."""

import httpx

from bench.client import built_project
from bench.context import Context
from bench.results import Row, Target
from bench.servers import Server

PROJECT_ROUTE = "GET /api/v1/projects/{project_id}"


# Item 1 measures with API keys and rate limits on, as production runs: limits far above the
# load, so that every request is counted (a store write per share) and none refused.
WITH_KEYS = {"AUTH_MODE": "api_key", **{name: "1000000000" for name in (
    "TENANT_REQUESTS_PER_MINUTE", "KEY_REQUESTS_PER_MINUTE")}}


def _project_url(server: Server) -> str:
    project_id = built_project(server.base_url, headers=server.headers)
    return f"{server.base_url}/api/v1/projects/{project_id}"


def _compare(ctx: Context, ours: Server, theirs: Server, labels: tuple[str, str],
             target: Target | None) -> list[Row]:
    connections = ctx.profile.connections
    return [
        ctx.alternate("GET /health", a=(labels[0], f"{ours.base_url}/health", ours),
                      b=(labels[1], f"{theirs.base_url}/health", theirs), measure="throughput",
                      connections=connections, target=target),
        ctx.alternate(PROJECT_ROUTE, a=(labels[0], _project_url(ours), ours),
                      b=(labels[1], _project_url(theirs), theirs), measure="throughput",
                      connections=connections, target=target),
    ]


def cost(ctx: Context) -> list[Row]:
    """Item 1: full stack vs the same app with logging, tracing and metrics off, both with
    API keys; and the full stack with keys vs without (AUTH_MODE=none), what authentication
    and rate limiting cost."""
    full = ctx.server("full", "full", settings=WITH_KEYS)
    off = ctx.server("off", "off", settings=WITH_KEYS)
    rows = _compare(ctx, full, off, ("full stack", "observability off"), Target(">=", 0.85))
    open_ = ctx.server("full", "no keys")
    rows.append(ctx.alternate(f"{PROJECT_ROUTE}, keys", a=("keys", _project_url(full), full),
                              b=("no keys", _project_url(open_), open_), measure="throughput",
                              connections=ctx.profile.connections, target=Target(">=", 0.9)))
    return rows


def generic_stack(ctx: Context) -> list[Row]:
    """Item 2: ours vs the same app instrumented with the generic FastAPI stack."""
    ours = ctx.server("full", "ours")
    theirs = ctx.server("generic", "generic")
    return _compare(ctx, ours, theirs, ("ours", "generic stack"), Target(">=", 1.3))


def limit(ctx: Context) -> list[Row]:
    """Item 3: the full app's GET /health vs a bare ASGI app answering the same bytes."""
    full = ctx.server("full", "full")
    body = httpx.get(f"{full.base_url}/health", timeout=10).text
    bare = ctx.server("bare", "bare", settings={"BENCH_BARE_BODY": body})
    if httpx.get(f"{bare.base_url}/health", timeout=10).text != body:
        raise RuntimeError("the bare app does not answer the full app's bytes")
    return [ctx.alternate("GET /health", a=("full app", f"{full.base_url}/health", full),
                          b=("bare ASGI", f"{bare.base_url}/health", bare), measure="throughput",
                          connections=ctx.profile.connections)]
