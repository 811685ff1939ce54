"""Items 11-13: the server against what a user would run instead (bench.rivals: plain FastAPI
on the same uvicorn), and what uvicorn[standard]'s uvloop and httptools bring to the full app."""

import json

import httpx

from bench.client import built_project
from bench.context import Context
from bench.results import Row, Target
from bench.rivals import HEALTH_BODY_VARIABLE, SQLITE_PATH_VARIABLE
from bench.servers import Server

PROJECT_ROUTE = "GET /api/v1/projects/{project_id}"
# Fields that differ from one response to the next.
_PER_RESPONSE = ("timestamp", "request_id")


def _same_answer(ours: str, theirs: str) -> None:
    """The rival must do the platform's work: the same data, in the same envelope."""
    mine, other = json.loads(ours), json.loads(theirs)
    for body in (mine, other):
        for field in _PER_RESPONSE:
            body.pop(field)
            body["data"].pop(field, None)
    if mine != other:
        raise RuntimeError(f"the rival answers differently:\n{mine}\n{other}")


def _throughput(ctx: Context, name: str, ours: tuple[str, str, Server],
                theirs: tuple[str, str, Server], target: Target | None) -> Row:
    return ctx.alternate(name, a=ours, b=theirs, measure="throughput",
                         connections=ctx.profile.connections, target=target)


def health_vs_fastapi(ctx: Context) -> list[Row]:
    """Item 11: the full app's GET /health vs a one-route FastAPI app answering its body."""
    full = ctx.server("full", "full")
    body = httpx.get(f"{full.base_url}/health", timeout=10).text
    rival = ctx.server("fastapi_health", "fastapi", settings={HEALTH_BODY_VARIABLE: body})
    _same_answer(body, httpx.get(f"{rival.base_url}/health", timeout=10).text)
    return [_throughput(ctx, "GET /health", ("full app", f"{full.base_url}/health", full),
                        ("FastAPI, one route", f"{rival.base_url}/health", rival),
                        Target(">=", 0.9))]


def project_vs_fastapi_sqlite(ctx: Context) -> list[Row]:
    """Item 12: the full app's project GET vs a hand-written FastAPI + sqlite3 app reading the
    same project and latest build from the same file: a connection per request (the target),
    and one per thread (reported)."""
    full = ctx.server("full", "full")
    path = f"/api/v1/projects/{built_project(full.base_url)}"
    ours = ("full app", full.base_url + path, full)
    database = {SQLITE_PATH_VARIABLE: str(ctx.workdir("full") / "data" / "nexus-ai.db")}
    rows = []
    for variant, label, target in (
            ("fastapi_sqlite", "FastAPI + sqlite3, a connection per request", Target(">=", 1.5)),
            ("fastapi_sqlite_per_thread", "FastAPI + sqlite3, a connection per thread", None)):
        rival = ctx.server(variant, variant, settings=database)
        _same_answer(httpx.get(full.base_url + path, timeout=10).text,
                     httpx.get(rival.base_url + path, timeout=10).text)
        rows.append(_throughput(ctx, PROJECT_ROUTE, ours, (label, rival.base_url + path, rival),
                                target))
        rival.stop()
    return rows


def uvicorn_stack(ctx: Context) -> list[Row]:
    """Item 13: the full app on uvloop + httptools vs on asyncio + h11 (uvicorn without its
    `standard` extra)."""
    fast = ctx.server("full_app", "uvloop_httptools", serve_options=("--loop", "uvloop", "--http", "httptools"))
    plain = ctx.server("full_app", "asyncio_h11", serve_options=("--loop", "asyncio", "--http", "h11"))
    project = f"/api/v1/projects/{built_project(fast.base_url)}"
    plain_project = f"/api/v1/projects/{built_project(plain.base_url)}"
    labels = ("uvloop + httptools", "asyncio + h11")
    return [
        _throughput(ctx, "GET /health", (labels[0], f"{fast.base_url}/health", fast),
                    (labels[1], f"{plain.base_url}/health", plain), None),
        _throughput(ctx, PROJECT_ROUTE, (labels[0], fast.base_url + project, fast),
                    (labels[1], plain.base_url + plain_project, plain), None),
    ]
